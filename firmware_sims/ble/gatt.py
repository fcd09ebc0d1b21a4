"""A simulated GATT server: services, characteristics, the link to one central, and faults on demand.

A peripheral holds a table of characteristics (16-bit UUIDs in their 128-bit form, as bleak uses
them). The central side (``firmware_sims.ble.backend``) connects through a :class:`Link`; the
peripheral answers reads and writes and pushes notifications/indications through that link.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from firmware_sims.ble import encoders as enc

log = logging.getLogger(__name__)

BASE_UUID = "0000{:04x}-0000-1000-8000-00805f9b34fb"


def uuid16(short: int) -> str:
    """The 128-bit form of a 16-bit SIG UUID, lower-case as bleak normalises it."""
    return BASE_UUID.format(short)


# Services and characteristics (Bluetooth SIG assigned numbers).
BLOOD_PRESSURE_SERVICE = uuid16(0x1810)
GLUCOSE_SERVICE = uuid16(0x1808)
WEIGHT_SCALE_SERVICE = uuid16(0x181D)
HEART_RATE_SERVICE = uuid16(0x180D)
DEVICE_INFORMATION_SERVICE = uuid16(0x180A)
BATTERY_SERVICE = uuid16(0x180F)
CURRENT_TIME_SERVICE = uuid16(0x1805)

BP_MEASUREMENT = uuid16(0x2A35)
INTERMEDIATE_CUFF_PRESSURE = uuid16(0x2A36)
BP_FEATURE = uuid16(0x2A49)
GLUCOSE_MEASUREMENT = uuid16(0x2A18)
GLUCOSE_CONTEXT = uuid16(0x2A34)
GLUCOSE_FEATURE = uuid16(0x2A51)
RACP = uuid16(0x2A52)
WEIGHT_MEASUREMENT = uuid16(0x2A9D)
WEIGHT_FEATURE = uuid16(0x2A9E)
HEART_RATE_MEASUREMENT = uuid16(0x2A37)
BODY_SENSOR_LOCATION = uuid16(0x2A38)
MANUFACTURER_NAME = uuid16(0x2A29)
MODEL_NUMBER = uuid16(0x2A24)
SERIAL_NUMBER = uuid16(0x2A25)
FIRMWARE_REVISION = uuid16(0x2A26)
BATTERY_LEVEL = uuid16(0x2A19)
CURRENT_TIME = uuid16(0x2A2B)

# ATT error codes a peripheral answers with (Core spec Vol 3 Part F 3.4.1.1).
ATT_READ_NOT_PERMITTED = 0x02
ATT_WRITE_NOT_PERMITTED = 0x03
ATT_REQUEST_NOT_SUPPORTED = 0x06
ATT_VALUE_NOT_ALLOWED = 0x13
ATT_CCCD_IMPROPERLY_CONFIGURED = 0xFD
ATT_PROCEDURE_ALREADY_IN_PROGRESS = 0xFE


class GattError(Exception):
    """An ATT error response from the peripheral (the backend raises bleak's BleakGATTProtocolError)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"ATT error 0x{code:02x}: {reason}")
        self.code = code


class LinkLost(Exception):
    """The link went away while the peripheral was using it."""


@dataclass
class Faults:
    """Misbehaviour on demand. Counters decrement as faults fire, so a retry can succeed."""

    drop_after_records: int | None = None
    """Drop the link after sending this many stored records in one session."""
    drop_times: int = 1
    """How many sessions the drop fault fires in."""
    garbage_at_record: int | None = None
    """Send a malformed frame in place of the record with this index (0-based, in sending order)."""
    garbage_frame: bytes = b"\x1f\x01"
    """What is sent instead (flags announce fields the frame does not have)."""
    response_delay_s: float = 0.0
    """Delay before every read/write answer and every notification."""
    refuse_connections: int = 0
    """Refuse this many connection attempts before accepting."""
    connect_delay_s: float = 0.0
    silent_after_connect: bool = False
    """Accept the connection and then never answer RACP or send stored records (a hung device)."""


@dataclass
class Characteristic:
    uuid: str
    properties: list[str]
    value: bytes = b""
    on_read: Callable[[], bytes] | None = None
    on_write: Callable[[bytes], Awaitable[None] | None] | None = None


@dataclass
class Service:
    uuid: str
    characteristics: list[Characteristic] = field(default_factory=list)


class Link:
    """One connection from a central. The backend client supplies ``deliver`` (notification to the
    central's callbacks) and ``on_drop`` (unsolicited disconnection)."""

    def __init__(self, peripheral: Peripheral, deliver: Callable[[str, bytes], None], on_drop: Callable[[], None]):
        self.peripheral = peripheral
        self._deliver = deliver
        self._on_drop = on_drop
        self.subscriptions: set[str] = set()
        self.connected = True

    async def send(self, uuid: str, data: bytes) -> None:
        """Notify or indicate ``data`` on ``uuid`` (to a subscribed central only, as a real stack does)."""
        if not self.connected:
            raise LinkLost(uuid)
        delay = self.peripheral.faults.response_delay_s
        if delay:
            await asyncio.sleep(delay)
        if not self.connected:
            raise LinkLost(uuid)
        if uuid in self.subscriptions:
            self._deliver(uuid, bytes(data))
        # An indication waits for the central's confirmation; yielding models that round trip.
        await asyncio.sleep(0)

    def drop(self) -> None:
        """The peripheral (or the radio) ends the link without the central asking."""
        if self.connected:
            self.connected = False
            self.peripheral.link_closed(self)
            self._on_drop()

    def close_by_central(self) -> None:
        if self.connected:
            self.connected = False
            self.peripheral.link_closed(self)


class Peripheral:
    """Base of every simulated device: advertising, Device Information, Battery, Current Time.

    The device clock is ``host local time + clock_offset``; with ``clock_unset`` it runs from
    2000-01-01 00:00 (what many meters show after a battery change) until a central sets it.
    """

    profile = "generic"
    primary_service = ""

    def __init__(
        self,
        address: str,
        *,
        name: str | None = None,
        manufacturer: str = "Simulated Health",
        model: str = "SIM-1",
        serial: str | None = None,
        firmware: str = "1.0.0",
        battery: int | None = 87,
        has_current_time: bool = True,
        clock_offset: timedelta = timedelta(0),
        clock_unset: bool = False,
        rssi: int = -60,
        advertising: bool = True,
        faults: Faults | None = None,
    ) -> None:
        self.address = address.upper()
        self.name = name or f"{model} {self.address[-5:]}"
        self.manufacturer = manufacturer
        self.model = model
        self.serial = serial or self.address.replace(":", "")
        self.firmware = firmware
        self.battery = battery
        self.has_current_time = has_current_time
        self.rssi = rssi
        self.advertising = advertising
        self.faults = faults or Faults()
        self._clock_offset = clock_offset
        self._clock_set_at: datetime | None = None
        self._unset_base = datetime.now() if clock_unset else None
        self.clock_writes: list[datetime | None] = []
        self.link: Link | None = None
        self.sessions = 0
        self._table: list[Service] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- clock -----------------------------------------------------------------------------------

    def device_now(self) -> datetime:
        if self._unset_base is not None:
            return datetime(2000, 1, 1) + (datetime.now() - self._unset_base)
        return datetime.now() + self._clock_offset

    def set_clock(self, value: datetime) -> None:
        self._unset_base = None
        self._clock_offset = value - datetime.now()

    # --- GATT table ------------------------------------------------------------------------------

    def services(self) -> list[Service]:
        table = self.profile_services()
        table.append(
            Service(
                DEVICE_INFORMATION_SERVICE,
                [
                    Characteristic(MANUFACTURER_NAME, ["read"], self.manufacturer.encode()),
                    Characteristic(MODEL_NUMBER, ["read"], self.model.encode()),
                    Characteristic(SERIAL_NUMBER, ["read"], self.serial.encode()),
                    Characteristic(FIRMWARE_REVISION, ["read"], self.firmware.encode()),
                ],
            )
        )
        if self.battery is not None:
            table.append(
                Service(BATTERY_SERVICE, [Characteristic(BATTERY_LEVEL, ["read", "notify"],
                                                         on_read=self._read_battery)])
            )
        if self.has_current_time:
            table.append(
                Service(
                    CURRENT_TIME_SERVICE,
                    [Characteristic(CURRENT_TIME, ["read", "write", "notify"], on_read=self._read_current_time,
                                    on_write=self._write_current_time)],
                )
            )
        return table

    def profile_services(self) -> list[Service]:
        return []

    def advertised_services(self) -> list[str]:
        return [self.primary_service] if self.primary_service else []

    def _read_battery(self) -> bytes:
        level = self.battery or 0
        if not 0 <= level <= 100:
            # Some devices report nonsense (e.g. 101 % on a charger); send the byte as such.
            return bytes([level & 0xFF])
        return enc.encode_battery_level(level)

    def _read_current_time(self) -> bytes:
        # An unset clock still ticks: it reads as a date in 2000, which the gateway must judge implausible.
        return enc.encode_current_time(self.device_now())

    def _write_current_time(self, data: bytes) -> None:
        try:
            value = enc.parse_current_time(data)
        except enc.EncodeError as err:
            raise GattError(ATT_VALUE_NOT_ALLOWED, str(err)) from None
        self.clock_writes.append(value)
        if value is not None:
            self.set_clock(value)

    def gatt_table(self) -> list[Service]:
        if not self._table:
            self._table = self.services()
        return self._table

    def find(self, uuid: str) -> Characteristic | None:
        for service in self.gatt_table():
            for characteristic in service.characteristics:
                if characteristic.uuid == uuid:
                    return characteristic
        return None

    # --- link ------------------------------------------------------------------------------------

    async def accept(self, link: Link) -> None:
        """A central connects. Raises ConnectionRefusedError while a refusal fault is armed."""
        if self.faults.connect_delay_s:
            await asyncio.sleep(self.faults.connect_delay_s)
        if self.faults.refuse_connections > 0:
            self.faults.refuse_connections -= 1
            raise ConnectionRefusedError(f"{self.address} refused the connection")
        if self.link is not None and self.link.connected:
            raise ConnectionRefusedError(f"{self.address} is already connected to another central")
        self.link = link
        self.sessions += 1
        self.on_connect(link)

    def on_connect(self, link: Link) -> None:
        """Hook for profiles (reset per-session fault counters)."""

    def link_closed(self, link: Link) -> None:
        if self.link is link:
            self.link = None
        for task in list(self._tasks):
            task.cancel()

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run peripheral behaviour (sending stored records) beside the link; cancelled when it closes."""

        async def guarded() -> None:
            try:
                await coro
            except LinkLost:
                pass

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def read(self, uuid: str) -> bytes:
        await self._delay()
        characteristic = self._require(uuid)
        if "read" not in characteristic.properties:
            raise GattError(ATT_READ_NOT_PERMITTED, f"{uuid} is not readable")
        return characteristic.on_read() if characteristic.on_read else characteristic.value

    async def write(self, uuid: str, data: bytes) -> None:
        await self._delay()
        characteristic = self._require(uuid)
        if not {"write", "write-without-response"} & set(characteristic.properties):
            raise GattError(ATT_WRITE_NOT_PERMITTED, f"{uuid} is not writable")
        if characteristic.on_write is None:
            characteristic.value = bytes(data)
            return
        result = characteristic.on_write(bytes(data))
        if asyncio.iscoroutine(result):
            await result

    async def subscribe(self, link: Link, uuid: str) -> None:
        await self._delay()
        characteristic = self._require(uuid)
        if not {"notify", "indicate"} & set(characteristic.properties):
            raise GattError(ATT_REQUEST_NOT_SUPPORTED, f"{uuid} has no notify/indicate")
        link.subscriptions.add(uuid)
        self.on_subscribe(link, uuid)

    async def unsubscribe(self, link: Link, uuid: str) -> None:
        link.subscriptions.discard(uuid)

    def on_subscribe(self, link: Link, uuid: str) -> None:
        """Hook: a central enabled notifications/indications (CCCD write)."""

    def disconnect_later(self, link: Link) -> None:
        """End the link from the device side once the current event-loop turn is over."""
        asyncio.get_running_loop().call_soon(link.drop)

    async def _delay(self) -> None:
        if self.faults.response_delay_s:
            await asyncio.sleep(self.faults.response_delay_s)

    def _require(self, uuid: str) -> Characteristic:
        characteristic = self.find(uuid)
        if characteristic is None:
            raise GattError(0x0A, f"{uuid} not found")
        return characteristic

    def describe(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "profile": self.profile,
            "model": self.model,
            "services": self.advertised_services(),
            "advertising": self.advertising,
        }
