"""One BLE connection to one health device, through bleak's public API only.

Connect with a timeout and retries (exponential backoff with jitter), put a timeout on every GATT
operation, read Device Information and Battery Level, compare the device clock with the gateway's
through the Current Time Service and set it. The bleak backend is injectable (bleak's own
``backend=``), so the same code runs on BlueZ and on the simulator. Drivers build on this; they
never scan (discovery is one component, ``gateway.discovery.ble``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, TypeVar

from bleak import BleakClient
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError

from gateway.codecs import battery as battery_codec
from gateway.codecs import current_time as current_time_codec
from gateway.codecs.common import DecodeError, Measurement
from gateway.drivers import bleak_private
from gateway.drivers.base import (
    ClockCheck,
    DeviceDisconnectedError,
    DeviceInfo,
    DeviceRecord,
    DeviceTimeoutError,
    DriverError,
    MeasurementSink,
    SessionResult,
    gateway_now,
    undecodable,
)
from gateway.drivers.device_state import DeviceStateStore
from gateway.drivers.device_strings import clean_device_string
from gateway.drivers.pairing import (
    PairingError,
    PasskeySource,
    bluez_device_path,
    is_insufficient_security,
    pair,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


def uuid16(short: int) -> str:
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


MANUFACTURER_NAME = uuid16(0x2A29)
MODEL_NUMBER = uuid16(0x2A24)
SERIAL_NUMBER = uuid16(0x2A25)
FIRMWARE_REVISION = uuid16(0x2A26)
BATTERY_LEVEL = uuid16(0x2A19)
CURRENT_TIME = uuid16(0x2A2B)

# Device clocks before this are unset (meters reset to 2000-01-01 or their firmware date); the same
# threshold gateway.readings.normalise uses for record times.
EARLIEST_PLAUSIBLE = datetime(2010, 1, 1)
# CTS adjust reason bit 0: manual time update (the gateway sets it, no reference source claimed).
ADJUST_REASON_MANUAL = 0x01
BLUEZ_DISCONNECT_SETTLE_S = 2.5
SERVICES_SETTLE_POLLS = 10
SERVICES_SETTLE_POLL_S = 0.1


class DeviceConnectError(DriverError):
    """No connection after every attempt."""


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: Callable[[], float] = random.random) -> float:
    """Wait before retry ``attempt`` (1-based): exponential, capped, with jitter in [0.5, 1.5) x delay so
    devices that failed together do not retry together."""
    delay = min(cap_s, base_s * (2 ** max(0, attempt - 1)))
    return delay * (0.5 + rng())


@dataclass(frozen=True, slots=True)
class SessionTimeouts:
    connect_s: float = 15.0
    connect_attempts: int = 3
    op_s: float = 10.0
    idle_s: float = 5.0
    retry_base_s: float = 0.5
    retry_cap_s: float = 8.0


class BleSession:
    """``async with BleSession(device, ...) as session``: a connected link, closed cleanly on exit."""

    def __init__(
        self,
        device: BLEDevice | str,
        *,
        client_backend: Any = None,
        timeouts: SessionTimeouts = SessionTimeouts(),
        rng: Callable[[], float] = random.random,
        required_services: tuple[str, ...] = (),
        pair_on_connect: bool = False,
        passkey: PasskeySource | None = None,
        bluez: dict[str, Any] | None = None,
        connect_guard: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        """``required_services``: a connection that does not show one of these is retried (BlueZ can
        report its services resolved before it exported them). ``pair_on_connect``: pair (bond) right
        after connecting; a session also pairs when an operation is refused for want of encryption.
        ``bluez``: bleak's BlueZ client arguments (the adapter, for a device given by address).
        ``connect_guard``: held while connecting (discovery pauses its scan under it)."""
        self.device = device
        self.address = (device.address if isinstance(device, BLEDevice) else device).upper()
        self.timeouts = timeouts
        self._backend = client_backend
        self._rng = rng
        self._client: BleakClient | None = None
        self.disconnected = asyncio.Event()
        self.connect_attempts_used = 0
        self.required_services = tuple(u.lower() for u in required_services)
        self.pair_on_connect = pair_on_connect
        self.passkey = passkey
        self._bluez = bluez or {}
        self.paired_now = False
        """True when this session paired the device (False for a bonded device that reconnected)."""
        self._pairing_tried = False
        self._connect_guard = connect_guard

    async def __aenter__(self) -> BleSession:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def client(self) -> BleakClient:
        if self._client is None:
            raise DriverError(f"{self.address}: not connected")
        return self._client

    @property
    def is_connected(self) -> bool:
        return self._client is not None and self._client.is_connected and not self.disconnected.is_set()

    def _on_disconnect(self, _client: BleakClient) -> None:
        self.disconnected.set()

    async def connect(self) -> None:
        if self._connect_guard is None:
            await self._connect()
            return
        async with self._connect_guard():
            await self._connect()

    async def _connect(self) -> None:
        last_error: BaseException | None = None
        for attempt in range(1, self.timeouts.connect_attempts + 1):
            self.connect_attempts_used = attempt
            client = BleakClient(
                self.device,
                disconnected_callback=self._on_disconnect,
                timeout=self.timeouts.connect_s,
                backend=self._backend,
                **({"bluez": self._bluez} if self._bluez else {}),
            )
            self.disconnected.clear()
            try:
                async with asyncio.timeout(self.timeouts.connect_s):
                    await client.connect()
            except (BleakError, TimeoutError, OSError) as err:
                last_error = err
                log.info("%s: connection attempt %d failed: %s", self.address, attempt, err or type(err).__name__)
                with contextlib.suppress(BleakError, TimeoutError, OSError):
                    await client.disconnect()
                if attempt < self.timeouts.connect_attempts:
                    await asyncio.sleep(self._retry_delay(attempt))
                continue
            missing = [] if await self._services_settled(client) else self._missing_services(client)
            if missing:
                last_error = DriverError(f"services {', '.join(u[4:8] for u in missing)} not resolved")
                log.info("%s: connection attempt %d: %s", self.address, attempt, last_error)
                with contextlib.suppress(BleakError, TimeoutError, OSError):
                    async with asyncio.timeout(self.timeouts.op_s):
                        await client.disconnect()
                if attempt < self.timeouts.connect_attempts:
                    await asyncio.sleep(self._retry_delay(attempt))
                continue
            self._client = client
            if self.pair_on_connect:
                try:
                    await self.ensure_paired()
                except PairingError as err:
                    # Proactive only: a device that pairs on demand (or not at all) still gets its
                    # session; an operation refused for want of encryption pairs again, strictly.
                    log.warning("%s: %s", self.address, err)
            return
        reason = "timed out" if isinstance(last_error, TimeoutError) else str(last_error)
        raise DeviceConnectError(
            f"{self.address}: no connection after {self.timeouts.connect_attempts} attempt(s): {reason}"
        )

    def _retry_delay(self, attempt: int) -> float:
        delay = backoff_delay(attempt, self.timeouts.retry_base_s, self.timeouts.retry_cap_s, self._rng)
        if bluez_device_path(self.device) is not None:
            # A failed connect ends with Device1.Disconnect, which BlueZ carries out 2 s later
            # (src/device.c DISCONNECT_TIMER): a retry inside that window finds the link still up,
            # joins it, and loses it when the timer fires (seen as a run of failures in tests/kernel).
            delay = max(delay, BLUEZ_DISCONNECT_SETTLE_S)
        return delay

    async def _services_settled(self, client: BleakClient) -> bool:
        """Whether the services bleak shows are all of them (and include a required one).

        BlueZ can signal ServicesResolved a few milliseconds before it has exported every service and
        characteristic object (bluetoothd flushes the two kinds of D-Bus signal separately; seen often
        under real BlueZ in tests/kernel: a service missing, or a service without its last
        characteristic), and bleak builds ``client.services`` once, at ServicesResolved. A reconnect
        meets the same race, so on the live link let bleak's BlueZ backend read its services again
        until two reads agree (:mod:`gateway.drivers.bleak_private`: bleak has no public refresh); on
        any other backend only the required services are checked."""
        if bluez_device_path(self.device) is None:
            return not self._missing_services(client)
        seen = _shape(client)
        for _ in range(SERVICES_SETTLE_POLLS):
            await asyncio.sleep(SERVICES_SETTLE_POLL_S)
            if not client.is_connected:
                return False
            try:
                if not await bleak_private.reread_services(client):
                    return not self._missing_services(client)
            except BleakError:
                return False
            now = _shape(client)
            if now == seen and not self._missing_services(client):
                return True
            if now != seen:
                log.info("%s: more GATT objects after BlueZ said services were resolved", self.address)
            seen = now
        return not self._missing_services(client)

    def _missing_services(self, client: BleakClient) -> list[str]:
        if not self.required_services:
            return []
        present = {service.uuid.lower() for service in client.services}
        return [] if present.intersection(self.required_services) else list(self.required_services)

    async def ensure_paired(self) -> bool:
        """Pair (and bond) the device unless it already is; True if this call paired it."""
        if self.disconnected.is_set() or self._client is None:
            raise DeviceDisconnectedError(f"{self.address}: pairing: link lost")
        paired = await pair(self._client, self.device, passkey=self.passkey, timeout_s=max(30.0, self.timeouts.op_s))
        self.paired_now = self.paired_now or paired
        if paired:
            log.info("%s: paired and bonded", self.address)
        return paired

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            async with asyncio.timeout(self.timeouts.op_s):
                await client.disconnect()
        except (BleakError, TimeoutError, OSError) as err:
            log.info("%s: disconnect: %s", self.address, err or type(err).__name__)

    # --- GATT operations, each under a timeout ---------------------------------------------------

    def has(self, uuid: str) -> bool:
        return self._client is not None and self._client.services.get_characteristic(uuid) is not None

    async def _guard(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        if self.disconnected.is_set() or self._client is None:
            raise DeviceDisconnectedError(f"{self.address}: {what}: link lost")
        try:
            async with asyncio.timeout(self.timeouts.op_s):
                return await operation()
        except TimeoutError:
            raise DeviceTimeoutError(f"{self.address}: {what} timed out after {self.timeouts.op_s:g} s") from None
        except BleakError as err:
            if self.disconnected.is_set() or not self._client.is_connected:
                raise DeviceDisconnectedError(f"{self.address}: {what}: link lost") from err
            if not is_insufficient_security(err) or self._pairing_tried:
                raise DriverError(f"{self.address}: {what}: {err}") from err
            log.info("%s: %s needs an encrypted link (%s); pairing", self.address, what, err)
        # Refused for want of encryption: pair once (a failure is the session's error), then again.
        self._pairing_tried = True
        await self.ensure_paired()
        return await self._guard(what, operation)

    async def read(self, uuid: str) -> bytes:
        return bytes(await self._guard(f"read {uuid[4:8]}", lambda: self.client.read_gatt_char(uuid)))

    async def write(self, uuid: str, data: bytes, *, response: bool = True) -> None:
        await self._guard(f"write {uuid[4:8]}", lambda: self.client.write_gatt_char(uuid, data, response=response))

    async def subscribe(self, uuid: str, callback: Callable[[str, bytes], None]) -> None:
        """Enable notifications/indications; ``callback(uuid, data)`` runs on the event loop."""

        def deliver(_characteristic: Any, data: bytearray) -> None:
            callback(uuid, bytes(data))

        await self._guard(f"subscribe {uuid[4:8]}", lambda: self.client.start_notify(uuid, deliver))

    async def unsubscribe(self, uuid: str) -> None:
        if self.is_connected:
            with contextlib.suppress(DriverError):
                await self._guard(f"unsubscribe {uuid[4:8]}", lambda: self.client.stop_notify(uuid))

    async def receive(self, queue: asyncio.Queue[tuple[str, bytes]], wait_s: float) -> tuple[str, bytes] | None:
        """The next notification from ``queue``; None when nothing came within ``wait_s``; raises
        DeviceDisconnectedError once the link is gone and every frame sent before it was taken."""
        if not queue.empty():
            return queue.get_nowait()
        if self.disconnected.is_set():
            raise DeviceDisconnectedError(f"{self.address}: link lost")
        getter = asyncio.ensure_future(queue.get())
        lost = asyncio.ensure_future(self.disconnected.wait())
        try:
            done, _ = await asyncio.wait({getter, lost}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (getter, lost):
                if not task.done():
                    task.cancel()
        if getter in done:
            return getter.result()
        if lost in done:
            if not queue.empty():
                return queue.get_nowait()
            raise DeviceDisconnectedError(f"{self.address}: link lost")
        return None

    # --- the facts every session gathers ----------------------------------------------------------

    async def _read_text(self, uuid: str) -> str | None:
        if not self.has(uuid):
            return None
        try:
            raw = await self.read(uuid)
        except (DeviceTimeoutError, DriverError) as err:
            if isinstance(err, DeviceDisconnectedError):
                raise
            log.info("%s: %s", self.address, err)
            return None
        # Device Information strings are UTF-8 (GATT Specification Supplement "utf8s"); devices pad
        # them with NULs, put garbage after a NUL, or send invalid UTF-8.
        return clean_device_string(raw)

    async def device_info(self, profile: str) -> DeviceInfo:
        return DeviceInfo(
            uid=f"ble:{self.address}",
            transport="ble",
            profile=profile,
            model=await self._read_text(MODEL_NUMBER),
            serial=await self._read_text(SERIAL_NUMBER),
            manufacturer=await self._read_text(MANUFACTURER_NAME),
            firmware=await self._read_text(FIRMWARE_REVISION),
        )

    async def read_optional(self, uuid: str, decode: Callable[[bytes], T], what: str) -> T | None:
        """Read and decode a characteristic the session can do without (battery level, a feature or
        type characteristic): None where the device lacks it or its value is unreadable or does not
        decode (logged as ``what``); a lost link still raises DeviceDisconnectedError."""
        if not self.has(uuid):
            return None
        try:
            return decode(await self.read(uuid))
        except DeviceDisconnectedError:
            raise
        except (DecodeError, DriverError) as err:
            # Context only: the records are what the session is for.
            log.warning("%s: %s: %s", self.address, what, err)
            return None

    async def battery(self) -> int | None:
        return await self.read_optional(BATTERY_LEVEL, battery_codec.decode_battery_level, "battery level")

    async def check_clock(
        self,
        *,
        set_clock: bool = True,
        now: Callable[[], datetime] = gateway_now,
        local_tz: tzinfo | None = None,
    ) -> ClockCheck:
        """Read the device clock (Current Time Service, where present), compare it with the gateway's
        and, where the device allows, set it to the gateway's local time.

        The check keeps the clock as it was *before* setting: records already in memory were stamped
        by that clock, so their times are corrected by that offset.
        """
        if not self.has(CURRENT_TIME):
            return ClockCheck(gateway_now=now())
        device_now: datetime | None = None
        unset = False
        try:
            raw = await self.read(CURRENT_TIME)
            gateway_time = now()
            device_now = current_time_codec.decode_current_time(raw)
        except DeviceDisconnectedError:
            raise
        except DecodeError as err:
            log.warning("%s: current time: %s", self.address, err)
            gateway_time = now()
        except DriverError as err:
            # Unreadable clock (read not permitted, slow device): records keep their own times.
            log.warning("%s: current time: %s", self.address, err)
            return ClockCheck(gateway_now=now())
        if device_now is None or device_now < EARLIEST_PLAUSIBLE:
            unset = True
        was_set = False
        if set_clock:
            local_now = now().astimezone(local_tz).replace(tzinfo=None)
            try:
                await self.write(
                    CURRENT_TIME, current_time_codec.encode_current_time(local_now, adjust_reason=ADJUST_REASON_MANUAL)
                )
                was_set = True
            except DeviceDisconnectedError:
                raise
            except DriverError as err:
                # Many meters make Current Time read-only; the offset still corrects their records.
                log.info("%s: clock not set: %s", self.address, err)
        return ClockCheck(gateway_now=gateway_time, device_now=device_now, was_set=was_set, unset=unset)


def _shape(client: BleakClient) -> tuple[int, int]:
    services = list(client.services)
    return len(services), sum(len(service.characteristics) for service in services)


@dataclass
class BleContext:
    """What a driver's ``run_session`` is given: a connected session and where readings go."""

    session: BleSession
    device: DeviceInfo
    sink: MeasurementSink
    state: DeviceStateStore
    clock: ClockCheck | None
    now: Callable[[], datetime] = gateway_now
    heart_rate_cadence_s: float = 60.0
    max_session_s: float | None = None
    notes: list[str] = field(default_factory=list)

    async def emit(self, record: DeviceRecord) -> None:
        """Hand one record to the sink; returns once it is durable (as a reading or quarantined)."""
        await self.sink(self.device, record, self.clock)


async def collect_stored_measurements(
    ctx: BleContext, uuid: str, decode: Callable[[bytes], Measurement]
) -> SessionResult:
    """Blood-pressure and weight-scale sessions: subscribe to the measurement's indications and take
    every stored record the device sends; the session ends when the device ends the link (what cuffs
    and scales do once their memory is sent) or when nothing came for ``idle_s``.

    A frame that does not decode goes to the sink as an :class:`UnreadableRecord` (quarantined with its
    bytes): nothing half-parsed becomes a reading, and the records after it still do. The devices
    indicate records one at a time, each confirmed by the stack as it arrives, so the point where the
    driver moves on is the sink returning, for good and bad records alike.
    """
    session = ctx.session
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    await session.subscribe(uuid, lambda u, data: queue.put_nowait((u, data)))
    count = 0
    index = -1
    while True:
        try:
            event = await session.receive(queue, session.timeouts.idle_s)
        except DeviceDisconnectedError:
            break
        if event is None:
            break
        _, frame = event
        index += 1
        try:
            record: DeviceRecord = decode(frame)
        except DecodeError as err:
            ctx.notes.append(f"undecodable frame {index}: {err}")
            record = undecodable(ctx.device.profile, frame, err, index)
        await ctx.emit(record)  # committed (stored or quarantined): the next record may come
        count += isinstance(record, Measurement)
    await session.unsubscribe(uuid)
    return SessionResult(measurements=count, clock=ctx.clock, notes=list(ctx.notes))
