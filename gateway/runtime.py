"""``rpm-gateway run``: one supervisor for the uplink, the status publisher and the device managers.

Each component is an asyncio task under :meth:`Gateway._supervise`: an exception in one is logged
and the component restarted with backoff, while the others carry on (a BLE adapter that vanished
does not stop the USB meters or the uplink). SIGTERM/SIGINT stop the device managers first (no new
readings), give the uplink ``mqtt.drain_timeout_s`` to get in-flight readings acked, publish the
offline status, and exit 0; whatever is still unacked stays in the outbox for the next start.

The same object is the in-process API the demo and tests use::

    gateway = Gateway(config)
    await gateway.start()
    await gateway.sink(device, measurement, clock)   # what drivers call
    await gateway.submit(reading)                    # an already-built contract Reading
    gateway.status()
    await gateway.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.ble_config import normalise_address
from gateway.codecs.common import Measurement
from gateway.config import GatewayConfig
from gateway.contract import GatewayStatus, Reading
from gateway.device_state import DeviceStateStore
from gateway.drivers.base import ClockCheck, DeviceInfo, gateway_now
from gateway.logging_setup import configure_logging
from gateway.normalise import to_reading
from gateway.outbox import Outbox, OutboxError
from gateway.status import StatusBoard
from gateway.uplink import Uplink, UplinkError

log = logging.getLogger(__name__)

RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0


class Gateway:
    """The running gateway: outbox, uplink, status, device managers."""

    def __init__(self, config: GatewayConfig, *, start_devices: bool = True) -> None:
        self.config = config
        self.start_devices = start_devices
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.board: StatusBoard | None = None
        self.device_state: DeviceStateStore | None = None
        self.component_errors: dict[str, str] = {}
        self._device_tasks: list[asyncio.Task[None]] = []
        self._core_tasks: list[asyncio.Task[None]] = []
        self._closers: list[Callable[[], Any]] = []
        self._metrics: Any = None
        self._tz = config.tzinfo()

    # ---------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(config.data_dir / "outbox.sqlite", max_readings=config.outbox.max_readings,
                             when_full=config.outbox.when_full,
                             remember_delivered_s=config.outbox.remember_delivered_days * 86400)
        self.board = StatusBoard(config.gateway_id, self.outbox, uplink_error=self._uplink_error,
                                 publish=self._publish_status, interval_s=config.status_interval_s)
        self.uplink = Uplink(config.mqtt, config.gateway_id, self.outbox, will_payload=self.board.offline_payload,
                             on_change=self.board.changed)
        stats = self.outbox.stats()
        log.info("gateway %s starting: outbox %d reading(s) waiting, %d quarantined; broker %s",
                 config.gateway_id, stats.depth, stats.quarantined, config.mqtt.url)
        self._core_tasks.append(self._spawn("uplink", self.uplink.run))
        self._core_tasks.append(self._spawn("status", self.board.run))
        if config.metrics_port:
            self._start_metrics(config.metrics_port)
        if self.start_devices:
            self._start_device_managers()

    async def stop(self) -> None:
        """Stop taking readings, drain what is in flight (bounded), say goodbye, close the stores."""
        await _cancel(self._device_tasks)
        self._device_tasks.clear()
        if self.uplink is not None and self.board is not None:
            drained = await self.uplink.drain(self.config.mqtt.drain_timeout_s)
            depth = self.outbox.depth() if self.outbox else 0
            log.info("gateway stopping: %s; %d reading(s) stay in the outbox", "drained" if drained else
                     "drain timed out or broker unreachable", depth)
            await _cancel(self._core_tasks[1:])  # status first, so it does not publish over the goodbye
            await self.uplink.close(final_status=self.board.offline_payload())
        await _cancel(self._core_tasks)
        self._core_tasks.clear()
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = None
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()
        self._closers.clear()
        if self.outbox is not None:
            self.outbox.close()

    # ---------------------------------------------------------------------------- readings in

    async def sink(self, device: DeviceInfo, measurement: Measurement, clock: ClockCheck | None) -> None:
        """The :class:`~gateway.drivers.base.MeasurementSink` drivers call; returns once durable."""
        reading = to_reading(device, measurement, clock, gateway_now(), local_tz=self._tz)
        await self.submit(reading)
        if self.board is not None:
            fields: dict[str, Any] = {"profile": device.profile, "last_seen": reading.received_at}
            if clock is not None and reading.clock.offset_s is not None:
                fields["clock_offset_s"] = reading.clock.offset_s
            self.board.device_update(device.uid, **fields)

    async def submit(self, reading: Reading) -> bool:
        """Commit one reading to the outbox (True if new) and wake the uplink."""
        if self.outbox is None or self.uplink is None:
            raise OutboxError("the gateway is not started")
        try:
            added = await asyncio.to_thread(self.outbox.put, reading)
        finally:
            if self.outbox.is_full() and self.board is not None:
                self.board.changed()
        self.uplink.notify()
        return added

    def status(self) -> GatewayStatus:
        if self.board is None:
            raise RuntimeError("the gateway is not started")
        return self.board.snapshot()

    # ---------------------------------------------------------------------------- internals

    def _uplink_error(self) -> str | None:
        return self.uplink.error if self.uplink is not None else None

    def _publish_status(self, payload: str) -> None:
        if self.uplink is not None:
            self.uplink.publish_status(payload)

    def _spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        return asyncio.create_task(self._supervise(name, factory), name=name)

    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run a component; on an exception log it, remember it and restart with backoff."""
        failures = 0
        while True:
            try:
                await factory()
                log.info("%s finished", name)
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:
                failures += 1
                self.component_errors[name] = f"{type(err).__name__}: {err}"
                delay = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** (failures - 1))
                # The traceback once; a component that keeps failing the same way gets one line per retry.
                log.error("%s failed (%s); restarting in %.0f s", name, err, delay, exc_info=failures == 1)
                await asyncio.sleep(delay)

    def _start_metrics(self, port: int) -> None:
        from gateway.prometheus import GatewayCollector, MetricsEndpoint

        assert self.outbox is not None and self.board is not None
        board = self.board
        collector = GatewayCollector(self.outbox, lambda: self.uplink.state if self.uplink else None,
                                     lambda: len(board.snapshot().devices))
        endpoint = MetricsEndpoint(port, collector)
        try:
            endpoint.start()
        except OSError as err:
            log.error("metrics endpoint on port %d could not start: %s (the gateway runs without it)", port, err)
            return
        self._metrics = endpoint

    def _start_device_managers(self) -> None:
        config = self.config
        if not (config.ble.enabled or config.usb.enabled):
            log.warning("both [ble] and [usb] are disabled: no devices will be read")
            return
        assert self.board is not None
        self.device_state = DeviceStateStore(config.data_dir / "device_state.sqlite")
        self._closers.append(self.device_state.close)
        if config.ble.enabled:
            # Enrolled devices show in the status from the start: one never seen is a finding too.
            for device in config.ble.enrolled:
                self.board.device_update(f"ble:{normalise_address(device.address)}", profile=device.profile)
            self._start_manager("ble", self._make_ble_manager)
        if config.usb.enabled:
            self._start_manager("usb", self._make_usb_manager)

    def _start_manager(self, name: str, make: Callable[[], Any]) -> None:
        try:
            manager = make()
        except ImportError as err:
            self.component_errors[name] = f"unavailable: {err}"
            log.error("%s devices: manager unavailable (%s); the gateway runs without it", name.upper(), err)
            return
        except Exception as err:
            self.component_errors[name] = f"{type(err).__name__}: {err}"
            log.exception("%s devices: manager could not start (%s); the gateway runs without it", name.upper(), err)
            return
        self._device_tasks.append(self._spawn(f"{name}-manager", manager.run))
        log.info("%s devices: manager started", name.upper())

    def _make_ble_manager(self) -> Any:
        assert self.board is not None
        discovery = importlib.import_module("gateway.ble_discovery")
        enrolment_module = importlib.import_module("gateway.enrolment")
        enrolment = enrolment_module.EnrolmentStore.for_config(self.config)
        if hasattr(enrolment, "close"):
            self._closers.append(enrolment.close)
        return discovery.BleManager(self.config.ble, self.sink, self.device_state, enrolment,
                                    on_status=self.board.device_update, local_tz=self._tz)

    def _make_usb_manager(self) -> Any:
        assert self.board is not None
        discovery = importlib.import_module("gateway.usb_discovery")
        return discovery.UsbManager(self.config.usb, self.sink, self.device_state,
                                    on_status=self.board.device_update, local_tz=self._tz)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def serve(config: GatewayConfig, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set), then shut down cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    gateway = Gateway(config)
    try:
        await gateway.start()
    except (UplinkError, OutboxError, OSError) as err:
        log.error("gateway cannot start: %s", err)
        await gateway.stop()
        return 2
    try:
        await stop.wait()
        log.info("signal received: stopping")
    finally:
        await gateway.stop()
    return 0


def run_gateway(config: GatewayConfig) -> int:
    """The ``rpm-gateway run --config`` command: exit 0 after a clean stop, 2 if it cannot start."""
    configure_logging(config.log)
    try:
        return asyncio.run(serve(config))
    except KeyboardInterrupt:
        return 0
