"""``rpm-gateway run``: one supervisor for the uplink, the status publisher and the device managers.

Each component is an asyncio task under :meth:`Gateway._supervise`: an exception in one is logged
(the traceback once, then one line per restart), shown in the status (``component_errors``) and the
component restarted with backoff, while the others carry on (a BLE adapter that vanished does not
stop the USB meters or the uplink). No task ends silently: a component that *returns* is restarted
too. A gateway that cannot do its job exits 2 so systemd restarts it instead of idling: at start,
a data directory or outbox that cannot be written (one line naming the path and the cause); while
running, an outbox that stays unwritable for ``[outbox] unwritable_grace_s`` (a card gone read-only),
or an uplink whose configuration cannot work. A damaged outbox found at start is moved aside and
salvaged by the outbox; the runtime then forgets the devices' download cursors so memory devices are
read again (from the last record the cloud acknowledged where the device numbers its records, else
from the start), and says so in the log and the status.

SIGTERM/SIGINT stop the device managers first (no new readings), give the uplink
``mqtt.drain_timeout_s`` to get in-flight readings acked, publish the offline status, and exit 0;
whatever is still unacked stays in the outbox for the next start.

The same object is the in-process API the demo and tests use::

    gateway = Gateway(config)
    await gateway.start()
    await gateway.sink(device, record, clock)        # what drivers call (a reading, or quarantined)
    await gateway.submit(reading)                    # an already-built contract Reading
    gateway.status()
    await gateway.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, GatewayConfig, MqttConfig
from gateway.contract import ConfigRejection, ConfigStatus, GatewayStatus, Reading, config_topic
from gateway.discovery.ble_config import (
    NAMED_BACKENDS,
    BackendLoadError,
    BleakBackends,
    named_backends,
    normalise_address,
)
from gateway.discovery.enrolment import EnrolmentStore, UnknownDeviceError, normalise_uid
from gateway.drivers.base import ClockCheck, DeviceInfo, DeviceRecord, SerialSession, gateway_now
from gateway.drivers.device_state import DeviceStateStore
from gateway.errors import GatewayError
from gateway.mqtt.backoff import ExponentialBackoff
from gateway.ops.log_repeats import install as install_repeat_filter
from gateway.ops.logging_setup import configure_logging
from gateway.ops.problems import plain_words
from gateway.ops.status import StatusBoard
from gateway.provisioning.credentials import CredentialStore, RemoteConfigState, StoredConfig, StoredRejection
from gateway.provisioning.files import ProvisioningError
from gateway.readings.intake import RecordIntake, RecordOutcome
from gateway.store.acked_positions import AckedPositions
from gateway.store.disk import StorageError, check_data_dir, describe
from gateway.store.outbox import Outbox, OutboxError
from gateway.store.salvage import SalvageReport
from gateway.store.uplink import Uplink, UplinkError, parse_broker_url

log = logging.getLogger(__name__)

RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
RESTART = ExponentialBackoff(RESTART_MIN_S, RESTART_MAX_S)
# A component that ran this long before failing starts its backoff from the beginning again.
HEALTHY_AFTER_S = 60.0
# How often the outbox's upkeep runs (checkpoint, reserve, age limit) and its writability is judged.
STORAGE_CHECK_S = 2.0
# Errors no restart can cure: the gateway exits (2) so its supervisor (systemd) notices.
FATAL_ERRORS: tuple[type[Exception], ...] = (UplinkError, StorageError)
# After a re-poll of the bootstrap endpoint (the broker refused the credentials) brought nothing new,
# the next refusal waits this long before polling again: a broker that lost its password file must not
# make a fleet hammer the cloud.
REPOLL_MIN_INTERVAL_S = 60.0
# A restarted device manager that fails within this is taken as "did not come up" (remote config rollback).
DISCOVERY_SETTLE_S = 3.0


class GatewayFailed(GatewayError):
    """The gateway cannot do its job (no writable outbox, no possible uplink): it must exit non-zero."""


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
        self.failed = asyncio.Event()
        """Set when the gateway cannot do its job; :attr:`failure` says why (``serve`` then exits 2)."""
        self.failure: str | None = None
        self.storage_notice: str | None = None
        """What happened to the outbox at start (damage found and salvaged), for the status."""
        self._stopping = False
        self._error_generation: dict[str, int] = {}
        self._device_tasks: list[asyncio.Task[None]] = []
        self._core_tasks: list[asyncio.Task[None]] = []
        self._closers: list[Callable[[], Any]] = []
        self._metrics: Any = None
        self._intake: RecordIntake | None = None
        self._positions: AckedPositions | None = None
        self._tz = config.tzinfo()
        # ---- provisioning and remote configuration (issue 19)
        self.local_config = config
        """What the TOML and command line set: it wins over the cloud's document for every key it sets."""
        self.credentials: CredentialStore | None = None
        self.remote_state = RemoteConfigState()
        self.provisioning_state: str | None = None
        self.on_device_decisions: Callable[[Any], Any] | None = None
        """Called with ``config.devices`` when a remote config changes the confirm / ignore decisions."""
        self._uplink_task: asyncio.Task[None] | None = None
        self._config_tasks: set[asyncio.Task[None]] = set()
        self._config_lock: asyncio.Lock | None = None
        self._repoll = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._identity_id: str | None = None
        self._mqtt_document: dict[str, Any] | None = None
        # ---- device candidates and the local page (issue 19, H11)
        self.devices: EnrolmentStore | None = None
        """Candidates, confirmed and ignored devices: the enrolment store in the data dir."""
        self.local_page: Any = None
        self.claim_code: Callable[[], str | None] = self._claim_code
        """The code the local page signs in with (the identity's; a test may replace it)."""

    # ---------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        check_data_dir(self.config.data_dir)  # StorageError: one line naming the path and the cause
        self._loop = asyncio.get_running_loop()
        self._config_lock = asyncio.Lock()
        waiting_for_claim = self._prepare_provisioning()  # may set self.config: identity, credentials, remote doc
        config = self.config
        box = config.outbox
        self.outbox = await asyncio.to_thread(
            Outbox, config.data_dir / "outbox.sqlite", max_readings=box.max_readings, when_full=box.when_full,
            remember_delivered_s=box.remember_delivered_days * 86400, max_bytes=box.max_bytes,
            max_age_s=None if box.max_age_days is None else box.max_age_days * 86400, reserve_bytes=box.reserve_bytes)
        if self.outbox.recovery is not None:
            self._after_salvage(self.outbox.recovery)
        self._intake = RecordIntake(self.outbox, local_tz=self._tz, now=gateway_now, submit=self.submit)
        # Memory devices resume from what the cloud acknowledged, not from what is stored here (issue 15).
        self.device_state = DeviceStateStore(config.data_dir / "device_state.sqlite")
        self._closers.append(self.device_state.close)
        self._positions = AckedPositions(self.device_state, self.outbox)
        self.board = StatusBoard(config.gateway_id, self.outbox, uplink_error=self._uplink_error,
                                 publish=self._publish_status, interval_s=config.status_interval_s,
                                 component_errors=lambda: self.component_errors,
                                 storage_notice=lambda: self.storage_notice, config_state=self._config_status,
                                 candidates=self._candidates)
        self._open_devices()  # issue 19 (H11): candidates and decisions, before any manager hears a device
        self.uplink = self._make_uplink(config)
        stats = self.outbox.stats()
        log.info("gateway %s starting: outbox %d reading(s) waiting, %d quarantined, %d device record(s) "
                 "quarantined; broker %s", config.gateway_id, stats.depth, stats.quarantined,
                 stats.device_quarantined, "(waiting for provisioning)" if waiting_for_claim else config.mqtt.url)
        if not waiting_for_claim:
            self._uplink_task = self._spawn("uplink", self.uplink.run)
            self._core_tasks.append(self._uplink_task)
        if config.provisioning.bootstrap_url is not None:
            self._core_tasks.append(self._spawn("provisioning", self._provision))
        self._core_tasks.append(self._spawn("status", self.board.run))
        self._core_tasks.append(self._spawn("storage", self._watch_storage))
        if config.metrics_port:
            self._start_metrics(config.metrics_port)
        if self.start_devices:
            self._start_device_managers()
        if config.local_page.enabled:
            self._start_local_page()

    async def stop(self) -> None:
        """Stop taking readings, drain what is in flight (bounded), say goodbye, close the stores."""
        self._stopping = True
        if self.local_page is not None:
            await asyncio.to_thread(self.local_page.stop)
            self.local_page = None
        await _cancel(self._device_tasks)
        self._device_tasks.clear()
        if self.uplink is not None and self.board is not None:
            drained = await self.uplink.drain(self.config.mqtt.drain_timeout_s)
            depth = self.outbox.depth() if self.outbox else 0
            log.info("gateway stopping: %s; %d reading(s) stay in the outbox", "drained" if drained else
                     "drain timed out or broker unreachable", depth)
            await _cancel(list(self._config_tasks))
            # Status first, so it does not publish over the goodbye.
            await _cancel([task for task in self._core_tasks if task is not self._uplink_task])
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

    async def sink(self, device: DeviceInfo, measurement: DeviceRecord, clock: ClockCheck | None, *,
                   position: int | None = None) -> RecordOutcome:
        """The :class:`~gateway.drivers.base.MeasurementSink` drivers call; returns once durable.

        A record that cannot become a reading is quarantined (:mod:`gateway.readings.intake`) and this returns
        normally, so the driver moves past it; the status counts it under the device. ``position``: the
        record's place in the device's order where the reading carries no sequence number (a TaiDoc
        meter's record count), so the device resumes from what the cloud acknowledged."""
        if self._intake is None:
            raise OutboxError("the gateway is not started")
        outcome, reading = await self._intake.take(device, measurement, clock)
        if self._positions is not None and reading is not None:
            held = reading.sequence if position is None else position
            if held is not None:
                # Held (durably) before the driver moves its cursor on, until the cloud acks the reading.
                await asyncio.to_thread(self._positions.stored, device.uid, reading.id, held,
                                        counted=position is not None)
        if self.board is not None:
            fields: dict[str, Any] = {"profile": device.profile,
                                      "last_seen": reading.received_at if reading else gateway_now()}
            if reading is not None and clock is not None and reading.clock.offset_s is not None:
                fields["clock_offset_s"] = reading.clock.offset_s
            self.board.device_update(device.uid, **fields)
        return outcome

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
        """Run a component until cancelled: on an exception (or an unexpected return) log it, show it
        in the status and restart it with backoff; on an error no restart can cure, fail the gateway."""
        failures = 0
        last_error: str | None = None
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await factory()
                if self._stopping:
                    return
                err: Exception = RuntimeError("stopped by itself")
            except asyncio.CancelledError:
                raise
            except FATAL_ERRORS as fatal:
                self.component_errors[name] = describe(fatal)
                self.fail(f"{name}: {describe(fatal)}")
                return
            except Exception as caught:
                err = caught
            if loop.time() - started >= HEALTHY_AFTER_S:
                failures = 0
            failures += 1
            # A known fact about the machine (no BlueZ, a serial port it may not open) is one sentence, said
            # once; anything else is a bug and keeps its traceback (once per distinct error).
            plain = plain_words(err)
            message = (plain or f"{type(err).__name__}: {describe(err)}")[:500]  # the status's strings are bounded
            self.component_errors[name] = message
            self._error_generation[name] = self._error_generation.get(name, 0) + 1  # void a pending clear
            if self.board is not None:
                self.board.changed()
            delay = RESTART.delay(failures)
            if plain is not None:
                log.log(logging.ERROR if message != last_error else logging.DEBUG,
                        "%s: %s (trying again quietly, next in %.0f s)", name, plain, delay)
            else:
                # The traceback once per distinct error; the same error again is one line with its count.
                log.error("%s failed (%s); restarting in %.0f s (failure %d)", name, message, delay, failures,
                          exc_info=err if message != last_error else None)
            last_error = message
            await asyncio.sleep(delay)
            # Shown until the component proves itself: cleared once it has run as long as it waited.
            self._error_generation[name] = generation = self._error_generation.get(name, 0) + 1
            loop.call_later(max(delay, 2.0), self._clear_error, name, generation)

    def _clear_error(self, name: str, generation: int) -> None:
        if self._error_generation.get(name) == generation and name in self.component_errors:
            del self.component_errors[name]
            if self.board is not None:
                self.board.changed()

    def fail(self, reason: str) -> None:
        """The gateway cannot do its job: log one line and let ``serve`` exit 2 (systemd restarts it)."""
        if self.failure is None:
            self.failure = reason
            log.error("gateway cannot go on: %s", reason)
            self.failed.set()

    async def _watch_storage(self) -> None:
        """The outbox's upkeep, and the judge of an outbox that stopped being writable while running."""
        assert self.outbox is not None
        grace = self.config.outbox.unwritable_grace_s
        was_state = None
        while True:
            await asyncio.to_thread(self.outbox.maintain)
            unwritable = self.outbox.unwritable_for()
            if unwritable is not None and unwritable >= grace:
                stats = await asyncio.to_thread(self.outbox.stats)
                self.fail(f"outbox in {self.config.data_dir} unwritable for {unwritable:.0f} s: {stats.message}")
                return
            state = self.outbox.is_full()
            if state != was_state and self.board is not None:
                self.board.changed()
            was_state = state
            await asyncio.sleep(min(STORAGE_CHECK_S, max(0.1, grace / 4)) if unwritable is not None else
                                STORAGE_CHECK_S)

    def _after_salvage(self, report: SalvageReport) -> None:
        """A damaged outbox was moved aside: forget the download cursors so memory devices are read
        again (what salvage could not keep, they give again; the cloud de-duplicates): from the last
        record the cloud acknowledged where a device has an acked position, else from the start."""
        from gateway.drivers.device_state import ACKED_SEQUENCE_KEY, DeviceStateStore

        path = self.config.data_dir / "device_state.sqlite"
        reset: list[str] = []
        acked: list[str] = []
        if path.exists():
            store = DeviceStateStore(path)
            try:
                reset = store.forget_positions()
                acked = store.uids_with(ACKED_SEQUENCE_KEY)
            finally:
                store.close()
        from_start = len(set(reset) - set(acked))
        again = [f"{n} device{'s' if n != 1 else ''} with memory will be read again {where}"
                 for n, where in ((from_start, "from the start"),
                                  (len(acked), "from the last record the cloud acknowledged")) if n]
        self.storage_notice = (
            f"The outbox was damaged ({report.problem}) and moved aside to {report.moved_to.name}; "
            f"{report.salvaged} reading{'s' if report.salvaged != 1 else ''} salvaged"
            + (f", {report.unreadable} unreadable" if report.unreadable else "")
            + "; " + ("; ".join(again) if again else "devices with memory will be read again from the start"))
        log.warning("%s", self.storage_notice)

    def _start_metrics(self, port: int) -> None:
        from gateway.ops.prometheus import GatewayCollector, MetricsEndpoint

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
        assert self.devices is not None
        from gateway.discovery.ble import BleManager

        backends = load_bleak_backends(self.config.ble.backend)
        return BleManager(self.config.ble, self.sink, self.device_state, self.devices, backends=backends,
                          on_status=self.board.device_update, local_tz=self._tz)

    def _make_usb_manager(self) -> Any:
        assert self.board is not None
        from gateway.discovery.usb import UsbManager

        return UsbManager(self.config.usb, self.sink, self.device_state, load_driver=load_serial_driver,
                          on_status=self.board.device_update, local_tz=self._tz, enrolment=self.devices)

    # ---------------------------------------------------------------------------- device candidates, local page
    # (issue 19, H11) Health devices heard are candidates until someone confirms them: on the local page,
    # with `rpm-gateway pair`, or in the workspace (the config document's `devices` lists).

    def _open_devices(self) -> None:
        assert self.board is not None
        board = self.board
        self.devices = EnrolmentStore.for_config(self.config, on_change=board.changed)
        self.devices.unclaimed = lambda: self.provisioning_state == "waiting_for_claim"
        self._closers.append(self.devices.close)
        self.on_device_decisions = lambda devices: self.apply_device_decisions(
            devices.confirmed, devices.ignored, devices.unpaired)
        devices = self.config.devices
        self.apply_device_decisions(devices.confirmed, devices.ignored, devices.unpaired)
        for device in self.devices.list():  # shown from the start: a confirmed device never seen is a finding too
            board.device_update(device.uid, profile=device.profile)

    def _candidates(self) -> list[Any]:
        return self.devices.candidates() if self.devices is not None else []

    def apply_device_decisions(self, confirmed: Any, ignored: Any, unpaired: Any = ()) -> Any:
        """The config document's ``devices.confirmed`` / ``devices.ignored`` (the TOML's or the cloud's),
        applied as changes since the document applied last (:meth:`EnrolmentStore.apply_decisions`)."""
        assert self.devices is not None and self.board is not None
        changes = self.devices.apply_decisions(confirmed, ignored, unpaired, source="config")
        for uid in changes.confirmed:
            self.board.device_update(uid, profile=self.devices.profile_for(uid))
        for uid in changes.ignored + changes.forgotten:
            self.board.forget_device(uid)
        if changes:
            log.info("device decisions from the config: %d confirmed, %d ignored, %d forgotten",
                     len(changes.confirmed), len(changes.ignored), len(changes.forgotten))
        return changes

    def confirm_candidate(self, uid: str, user_index: int | None = None, *, source: str = "local") -> Any:
        assert self.devices is not None and self.board is not None
        device = self.devices.confirm(uid, source=source, user_index=user_index)
        self.board.device_update(device.uid, profile=device.profile)
        return device

    def ignore_candidate(self, uid: str, *, source: str = "local") -> bool:
        assert self.devices is not None and self.board is not None
        if self.devices.candidate(uid) is None and not self.devices.is_enrolled(uid):
            raise UnknownDeviceError(f"{uid}: not a device this gateway has heard")
        ignored = self.devices.ignore(uid, source=source)
        self.board.forget_device(normalise_uid(uid))
        return ignored

    def unpair_device(self, uid: str, *, source: str = "local") -> bool:
        assert self.devices is not None and self.board is not None
        if not self.devices.remove(uid, source=source):
            raise UnknownDeviceError(f"{uid}: not a device of this gateway")
        self.board.forget_device(normalise_uid(uid))
        return True

    def open_pairing_window(self, seconds: float) -> None:
        assert self.devices is not None
        self.devices.open_window(seconds)

    def _claim_code(self) -> str | None:
        from gateway.provisioning.identity import load_or_create_identity

        try:
            return load_or_create_identity(self.config.data_dir).claim_code
        except ProvisioningError as err:
            log.warning("local page: no claim code (%s); only the gateway's button signs in", err)
            return None

    def _start_local_page(self) -> None:
        from gateway.local_page.server import LocalPage, LocalPageError

        assert self.devices is not None
        page = LocalPage(self.config.local_page, self, self.devices, loop=asyncio.get_running_loop(),
                         claim_code=self.claim_code)
        try:
            page.start()
        except LocalPageError as err:
            self.component_errors["local-page"] = str(err)
            log.error("%s (the gateway runs without its local page)", err)
            return
        self.local_page = page

    # ---------------------------------------------------------------------------- provisioning, remote config
    # (issue 19) The configuration runs in layers: defaults, the credentials from the bootstrap endpoint,
    # the cloud's config document, the TOML (which wins). A new document is applied by restarting only the
    # parts whose settings changed; if they do not come up it is rolled back and reported in the status.

    def _make_uplink(self, config: GatewayConfig) -> Uplink:
        assert self.outbox is not None and self.board is not None
        return Uplink(config.mqtt, config.gateway_id, self.outbox, will_payload=self.board.offline_payload,
                      on_change=self.board.changed, on_auth_refused=self._repoll.set,
                      subscriptions={config_topic(config.gateway_id): self._config_message})

    def _prepare_provisioning(self) -> bool:
        """Compose the configuration to start with (identity, stored credentials, the stored remote
        document); True while the gateway still waits to be claimed (no credentials yet)."""
        from gateway.provisioning.credentials import CREDENTIALS_FILE
        from gateway.provisioning.identity import load_or_create_identity

        local = self.local_config
        store = self.credentials = CredentialStore(local.data_dir)
        self.remote_state = store.load_remote_config()
        bootstrap = local.provisioning.bootstrap_url is not None
        credentials = store.load() if bootstrap or (local.data_dir / CREDENTIALS_FILE).exists() else None
        if bootstrap or credentials is not None:
            self._identity_id = load_or_create_identity(local.data_dir).gateway_id
            self.provisioning_state = "provisioned" if credentials is not None else "waiting_for_claim"
        if credentials is not None:
            self._mqtt_document = store.mqtt_document(credentials)
        running = self.remote_state.running
        if self._identity_id is None and running is None:
            return False  # a TOML-only gateway, as before issue 19
        try:
            self.config = self._compose(running.config if running else None)
        except ConfigError as err:
            # A stored document this software no longer accepts: start without it, and say so.
            assert running is not None
            self._record_rejection(running.version, f"invalid: {err}")
            self.remote_state = RemoteConfigState(rejected=self.remote_state.rejected)
            self.config = self._compose(None)
        self._tz = self.config.tzinfo()
        return bootstrap and credentials is None

    def _compose(self, remote: dict[str, Any] | None) -> GatewayConfig:
        from gateway.provisioning.remote_config import compose_config

        return compose_config(self.local_config, gateway_id=self._identity_id, mqtt=self._mqtt_document,
                              remote=remote)

    def _running_version(self) -> int | None:
        running = self.remote_state.running
        return running.version if running is not None else None

    def _config_status(self) -> ConfigStatus | None:
        running, rejected = self.remote_state.running, self.remote_state.rejected
        if running is None and rejected is None and self.provisioning_state is None:
            return None
        return ConfigStatus(
            version=running.version if running else None, provisioning=self.provisioning_state,
            rejected=ConfigRejection(version=rejected.version, reason=rejected.reason[:2000]) if rejected else None)

    def _is_new(self, version: int) -> bool:
        running, rejected = self.remote_state.running, self.remote_state.rejected
        return (running is None or version > running.version) and (rejected is None or version != rejected.version)

    async def _provision(self) -> None:
        """Poll the bootstrap endpoint until the gateway is claimed and run with what it sends; poll again
        only when the broker refuses the credentials (rotated in the cloud, or lost by the broker)."""
        from gateway.provisioning.bootstrap import BootstrapClient, provision
        from gateway.provisioning.identity import load_or_create_identity

        settings = self.local_config.provisioning
        assert self.credentials is not None and settings.bootstrap_url is not None
        client = BootstrapClient(settings.bootstrap_url, load_or_create_identity(self.local_config.data_dir),
                                 self.config.gateway_id, client_key_path=self.credentials.client_key_path,
                                 ca_file=settings.ca_file, timeout_s=settings.request_timeout_s)
        said_waiting = False

        def waiting() -> None:
            nonlocal said_waiting
            if not said_waiting:
                log.info("provisioning: gateway %s waits to be claimed (its claim code: rpm-gateway identity)",
                         self.config.gateway_id)
                said_waiting = True

        need_poll = self.provisioning_state == "waiting_for_claim"
        while True:
            if not need_poll:
                await self._repoll.wait()
                log.warning("provisioning: the broker refused this gateway's credentials; asking the cloud again")
            self._repoll.clear()
            answer = await provision(client, config_version=self._running_version, on_problem=self._bootstrap_problem,
                                     on_waiting=waiting, cap_s=settings.poll_interval_cap_s)
            await self._provisioned(answer)
            need_poll = False
            # A refusal during this wait is answered after it (the event stays set). An installer on site (or
            # a test) who capped the poll interval wants the re-poll as soon, too.
            cap = settings.poll_interval_cap_s
            await asyncio.sleep(min(REPOLL_MIN_INTERVAL_S, cap) if cap else REPOLL_MIN_INTERVAL_S)

    def _bootstrap_problem(self, sentence: str | None) -> None:
        if sentence is None:
            self.component_errors.pop("provisioning", None)
        else:
            self.component_errors["provisioning"] = sentence[:500]
        if self.board is not None:
            self.board.changed()

    async def _provisioned(self, answer: Any) -> None:
        from gateway.provisioning.credentials import Credentials

        assert self.credentials is not None and self._config_lock is not None
        if answer.gateway_id != self.config.gateway_id:
            log.error("provisioning: the cloud answered for gateway %s, but this gateway is %s (the broker login "
                      "is what the cloud sent)", answer.gateway_id, self.config.gateway_id)
        async with self._config_lock:
            if answer.mqtt is not None:
                credentials = Credentials(gateway_id=self.config.gateway_id, patient_id=answer.patient_id,
                                          mqtt=answer.mqtt)
                await asyncio.to_thread(self.credentials.save, credentials)
                self._mqtt_document = self.credentials.mqtt_document(credentials)
            first = self.provisioning_state != "provisioned"
            self.provisioning_state = "provisioned"
            log.info("provisioning: %s for patient %s; broker %s", "provisioned" if first else "credentials renewed",
                     answer.patient_id or "(none yet)", answer.mqtt.url if answer.mqtt else "(unchanged)")
            running = self.remote_state.running
            new = self._compose(running.config if running else None)
            # Credentials are never rolled back: the old ones (or none) cannot work either.
            await self._switch(new, rollback=False, force_uplink=True)
        if answer.config is not None and answer.config_version is not None:
            await self._apply_remote(answer.config_version, answer.config, source="the bootstrap answer")

    def _config_message(self, payload: bytes) -> None:
        """A message on the config topic (paho's thread)."""
        if self._loop is not None and payload:
            self._loop.call_soon_threadsafe(self._config_arrived, bytes(payload))

    def _config_arrived(self, payload: bytes) -> None:
        from gateway.provisioning.remote_config import parse_config_message

        try:
            message = parse_config_message(payload)
        except ConfigError as err:
            log.warning("remote config: ignoring a message on the config topic: %s", err)
            return
        if not self._is_new(message.version):
            return  # the retained document again (every reconnect), or one already refused
        task = asyncio.create_task(self._apply_remote(message.version, message.config, source="the config topic"))
        self._config_tasks.add(task)
        task.add_done_callback(self._config_tasks.discard)

    async def apply_remote_config(self, version: int, document: dict[str, Any]) -> ConfigStatus | None:
        """Apply a remote config document now (what the config topic does); returns the config status."""
        await self._apply_remote(version, document, source="a direct call")
        return self._config_status()

    async def _apply_remote(self, version: int, document: dict[str, Any], *, source: str) -> None:
        assert self._config_lock is not None
        async with self._config_lock:
            if not self._is_new(version):
                return
            try:
                new = self._compose(document)
                problems = _check_mqtt(new.mqtt)
                if problems:
                    raise ConfigError("; ".join(problems))
            except ConfigError as err:
                self._record_rejection(version, f"invalid: {err}")
                return
            from gateway.config import local_document, overridden_keys

            kept = overridden_keys(document, local_document(self.local_config))
            if kept:
                log.info("remote config version %d: the local TOML sets %s, which it keeps", version, ", ".join(kept))
            reason = await self._switch(new)
            if reason is not None:
                self._record_rejection(version, f"rolled back: {reason}")
                return
            rejected = self.remote_state.rejected
            if rejected is not None and rejected.version < version:
                rejected = None  # a newer version runs: the older refusal is history (kept in the log)
            self.remote_state = RemoteConfigState(running=StoredConfig(version=version, config=document),
                                                  rejected=rejected)
            self._save_remote_state()
            log.info("remote config version %d (from %s) applied", version, source)
            if self.board is not None:
                self.board.changed()

    def _record_rejection(self, version: int, reason: str) -> None:
        log.error("remote config version %d not applied: %s", version, reason)
        self.remote_state = RemoteConfigState(running=self.remote_state.running,
                                              rejected=StoredRejection(version=version, reason=reason[:2000]))
        self._save_remote_state()
        if self.board is not None:
            self.board.changed()

    def _save_remote_state(self) -> None:
        if self.credentials is None:
            return
        try:
            self.credentials.save_remote_config(self.remote_state)
        except ProvisioningError as err:
            # The cloud sends the document again (retained); the status still shows what runs.
            log.warning("remote config: %s", err)

    async def _switch(self, new: GatewayConfig, *, rollback: bool = True, force_uplink: bool = False) -> str | None:
        """Run with ``new``, restarting only the parts it changes; None if they came up, else why not
        (after rolling back to the previous configuration when ``rollback``)."""
        from gateway.provisioning.remote_config import changed_sections

        old = self.config
        sections = changed_sections(old, new)
        if force_uplink:
            sections.add("mqtt")
        before = set(self.component_errors)
        restarted = await self._reconfigure(new, sections)
        reason = await self._came_up(restarted, before)
        if reason is None or not rollback:
            return reason
        log.warning("remote config: %s; rolling back to the previous configuration", reason)
        await self._reconfigure(old, sections)
        return reason

    async def _reconfigure(self, new: GatewayConfig, sections: set[str]) -> set[str]:
        self.config = new
        restarted: set[str] = set()
        if "mqtt" in sections or self._uplink_task is None:
            await self._restart_uplink()
            restarted.add("uplink")
        if sections & {"ble", "usb", "timezone"} and self.start_devices:
            self._tz = new.tzinfo()
            await _cancel(self._device_tasks)
            self._device_tasks.clear()
            for name in ("ble", "usb", "ble-manager", "usb-manager"):
                self.component_errors.pop(name, None)
            self._start_device_managers()
            restarted.add("discovery")
        if "status_interval_s" in sections and self.board is not None:
            self.board.interval_s = new.status_interval_s
        if "log" in sections:
            logging.getLogger().setLevel(logging.getLevelName(new.log.level.upper()))
        if "devices" in sections and self.on_device_decisions is not None:
            outcome = self.on_device_decisions(new.devices)
            if asyncio.iscoroutine(outcome):
                await outcome
        later = sorted(sections & {"outbox", "metrics_port"})
        if later:
            log.info("remote config: %s take effect at the next start", ", ".join(later))
        if self.board is not None:
            self.board.changed()
        return restarted

    async def _restart_uplink(self) -> None:
        if self._uplink_task is not None:
            await _cancel([self._uplink_task])
            self._core_tasks.remove(self._uplink_task)
            self._uplink_task = None
        if self.uplink is not None:
            await self.uplink.close()  # no goodbye: the next connection publishes the current status
        self.uplink = self._make_uplink(self.config)
        self._uplink_task = self._spawn("uplink", self.uplink.run)
        self._core_tasks.append(self._uplink_task)
        self.component_errors.pop("uplink", None)

    async def _came_up(self, restarted: set[str], errors_before: set[str]) -> str | None:
        timeout = self.config.provisioning.config_apply_timeout_s
        if "uplink" in restarted and self.uplink is not None and not await self.uplink.wait_connected(timeout):
            return f"the uplink did not connect within {timeout:g} s ({self.uplink.error or 'no answer'})"
        if "discovery" in restarted:
            await asyncio.sleep(min(DISCOVERY_SETTLE_S, timeout))
            failed = {name: error for name, error in self.component_errors.items()
                      if name in ("ble", "usb", "ble-manager", "usb-manager") and name not in errors_before}
            if failed:
                return "device discovery did not start (" + "; ".join(f"{n}: {e}" for n, e in failed.items()) + ")"
        return None


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
    except (UplinkError, OutboxError, StorageError, ProvisioningError, ConfigError, OSError) as err:
        log.error("gateway cannot start: %s", describe(err))
        with contextlib.suppress(Exception):
            await gateway.stop()
        return 2
    stopping = asyncio.ensure_future(stop.wait())
    failing = asyncio.ensure_future(gateway.failed.wait())
    try:
        await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
        if not gateway.failed.is_set():
            log.info("signal received: stopping")
    finally:
        stopping.cancel()
        failing.cancel()
        await gateway.stop()
    if gateway.failed.is_set():
        log.error("gateway exits 2: %s", gateway.failure)
        return 2
    return 0


# ---------------------------------------------------------------------------- config at start


def check_startup(config: GatewayConfig) -> None:
    """Before ``rpm-gateway run`` starts anything: raise :class:`~gateway.config.ConfigError` (one line
    naming the key) for what would make a component fail at once and then again on every restart: a
    broker URL that cannot work, TLS files that are missing or do not load (the uplink would retry
    for ever and send nothing), a data directory that cannot be written, a BLE backend or USB driver
    that does not import."""
    problems = [*_check_mqtt(config.mqtt), *_check_data_dir(config), *_check_modules(config)]
    if problems:
        raise ConfigError("; ".join(problems))


def _check_mqtt(mqtt: MqttConfig) -> list[str]:
    try:
        tls = parse_broker_url(mqtt.url).tls
    except UplinkError as err:
        return [str(err)]
    problems = [p for p in (_check_file("mqtt.ca_file", mqtt.ca_file), _check_file("mqtt.cert_file", mqtt.cert_file),
                            _check_file("mqtt.key_file", mqtt.key_file)) if p]
    if problems:
        return problems
    if mqtt.key_file is not None and mqtt.cert_file is None:
        return ["mqtt.key_file: set without mqtt.cert_file (the key belongs to a client certificate)"]
    if mqtt.cert_file is not None and not (tls or mqtt.ca_file):
        return ["mqtt.cert_file: set, but mqtt.url is not mqtts:// (the certificate would never be used)"]
    # The same loads paho's tls_set does at connect, so a bad file is found now, not at every retry.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if mqtt.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(mqtt.ca_file))
        except (ssl.SSLError, OSError) as err:
            return [f"mqtt.ca_file: {mqtt.ca_file}: not a PEM CA certificate ({_ssl_reason(err)})"]
    if mqtt.cert_file is not None:
        try:
            context.load_cert_chain(str(mqtt.cert_file), str(mqtt.key_file) if mqtt.key_file else None)
        except (ssl.SSLError, OSError) as err:
            key = "mqtt.key_file" if mqtt.key_file and "KEY" in str(err).upper() else "mqtt.cert_file"
            return [f"{key}: client certificate {mqtt.cert_file} and key {mqtt.key_file or '(in the same file)'} "
                    f"do not load ({_ssl_reason(err)})"]
    return []


def _check_file(key: str, path: Path | None) -> str | None:
    if path is None:
        return None
    if not path.exists():
        return f"{key}: {path}: no such file"
    if not path.is_file():
        return f"{key}: {path}: not a file"
    if not os.access(path, os.R_OK):
        return f"{key}: {path}: not readable by this user"
    return None


def _ssl_reason(err: Exception) -> str:
    return " ".join(str(getattr(err, "reason", None) or err).split())


def _check_data_dir(config: GatewayConfig) -> list[str]:
    try:
        check_data_dir(config.data_dir)
    except StorageError as err:
        return [f"data_dir: {err}"]
    return []


def _check_modules(config: GatewayConfig) -> list[str]:
    problems = []
    if config.ble.enabled and config.ble.backend is not None:
        try:
            load_bleak_backends(config.ble.backend)
        except BackendLoadError as err:
            problems.append(str(err))
    if config.usb.enabled:
        for index, entry in enumerate(config.usb.devices):
            if entry.driver is not None:
                problem = _check_driver(entry.driver)
                if problem:
                    problems.append(f"usb.devices[{index}].driver: {problem}")
    return problems


def _check_driver(spec: str) -> str | None:
    """What would stop the USB manager loading a ``module:Class`` driver named in the config."""
    try:
        load_serial_driver(spec)
    except DriverLoadError as err:
        return str(err)
    return None


# Importing what a config names happens here, at the edge: the BLE and USB managers are handed the
# backend classes and drivers, and the profile table (gateway.profiles) holds the built-in ones.
def load_bleak_backends(name: str | None) -> BleakBackends:
    """(scanner, client) backend classes for ``[ble] backend``: a short name (``sim``) or a module path
    exposing ``scanner_backend`` and ``client_backend``; (None, None) lets bleak pick the platform's."""
    if name is None or name in NAMED_BACKENDS:
        return named_backends(name)
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise BackendLoadError(f"ble.backend: cannot import {name!r}: {err}") from None
    try:
        return module.scanner_backend, module.client_backend
    except AttributeError:
        raise BackendLoadError(f"ble.backend: module {name!r} has no scanner_backend/client_backend") from None


class DriverLoadError(GatewayError, ValueError):
    """A ``[[usb.devices]] driver`` names no importable SerialDriver class."""


def load_serial_driver(spec: str) -> SerialSession:
    """The driver for ``[[usb.devices]] driver = "module:Class"``, a SerialDriver subclass."""
    from gateway.drivers.serial_port import SerialDriver

    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise DriverLoadError(f"expected 'module:Class', got {spec!r}")
    try:
        driver = getattr(importlib.import_module(module_name), class_name)
    except ImportError as err:
        raise DriverLoadError(f"cannot import {module_name!r}: {err}") from None
    except AttributeError:
        raise DriverLoadError(f"module {module_name!r} has no {class_name!r}") from None
    if not (isinstance(driver, type) and issubclass(driver, SerialDriver)):
        raise DriverLoadError(f"{spec!r} is not a SerialDriver")
    return SerialSession(driver)


def run_gateway(config: GatewayConfig) -> int:
    """The ``rpm-gateway run --config`` command: exit 0 after a clean stop, 2 if it cannot start or
    cannot go on (no writable outbox, no possible uplink)."""
    configure_logging(config.log)
    install_repeat_filter()
    try:
        return asyncio.run(serve(config))
    except KeyboardInterrupt:
        return 0
