"""A simulated TaiDoc (FORA) meter on a pseudo-terminal: a BP monitor (TD-3128 / FORA P30) or a 2-in-1
glucose/BP meter (TD-3261 / FORA D40), byte-exact from ``specs/serial-protocols.md`` section 4.

Encodes on its own (no gateway imports): the 8-byte frame ``51 CMD D0 D1 D2 D3 DIR SUM``, the packed
date, the record layouts, and the flag bits of the time record as the public FORA decoders document
them. Record index 0 is the newest record, as on the real meters.

Faults on demand: a wrong clock, a cleared memory, a bad checksum on the n-th reply, garbage before
a reply, and a cable pulled (the pty closed) after n replies. :class:`TaidocMeter` (memory, clock,
replies) outlives a :class:`PtyTaidoc` (one cable): re-plugging is a new ``PtyTaidoc`` on the same meter.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from firmware_sims.serial.pty_device import PtyDevice

START = 0x51
HOST_TO_DEVICE = 0xA3
DEVICE_TO_HOST = 0xA5

WAKE, READ_CLOCK, READ_MODEL, RECORD_TIME, RECORD_VALUE = 0x22, 0x23, 0x24, 0x25, 0x26
SERIAL_LATTER, SERIAL_FORMER, RECORD_COUNT, WRITE_CLOCK, POWER_OFF = 0x27, 0x28, 0x2B, 0x33, 0x50

BP_MONITOR = 0x3128
TWO_IN_ONE = 0x3261


def frame(command: int, data: bytes, direction: int = DEVICE_TO_HOST) -> bytes:
    head = bytes([START, command]) + data + bytes([direction])
    return head + bytes([sum(head) % 256])


def packed_time(when: datetime, minute_bits: int = 0, hour_bits: int = 0) -> bytes:
    """Day word (year-2000 << 9 | month << 5 | day) little-endian, then minute and hour with their
    flag bits (minute bits 6-7, hour bits 5-7)."""
    word = (when.year - 2000) * 512 + when.month * 32 + when.day
    return bytes([word % 256, word // 256, when.minute | (minute_bits << 6), when.hour | (hour_bits << 5)])


def unpack_time(data: bytes) -> datetime:
    word = data[0] + 256 * data[1]
    return datetime(2000 + (word >> 9), (word >> 5) & 0x0F, word & 0x1F, data[3] & 0x1F, data[2] & 0x3F)


@dataclass(frozen=True)
class BpRecord:
    when: datetime
    systolic: int
    diastolic: int
    pulse: int
    mean_arterial: int | None = None
    arrhythmia: bool = False
    ihb: int = 0
    """0 normal, 1 tachy/bradycardia, 2 varied heart rate, 3 atrial fibrillation."""
    averaged: bool = False

    def map_value(self) -> int:
        if self.mean_arterial is not None:
            return self.mean_arterial
        return round(self.diastolic + (self.systolic - self.diastolic) / 3)


@dataclass(frozen=True)
class GlucoseRecord:
    when: datetime
    mg_dl: int
    glucose_type: int = 0
    """0 general, 1 before meal, 2 after meal, 3 control solution."""
    code: int = 0


@dataclass
class Faults:
    """Faults counted over the replies of one cable (``PtyTaidoc``); reply numbers start at 1."""

    bad_checksum_on_reply: set[int] = field(default_factory=set)
    garbage_before_reply: dict[int, bytes] = field(default_factory=dict)
    unplug_after_replies: int | None = None
    silent_on_reply: set[int] = field(default_factory=set)


class TaidocMeter:
    """The device: model, serial, memory (newest first) and clock. Thread-safe."""

    def __init__(
        self,
        model: int = BP_MONITOR,
        serial: str = "3128A0B1C2D3E4F5",
        *,
        clock_offset: timedelta = timedelta(0),
        capacity: int = 450,
    ) -> None:
        if len(serial) != 16 or any(c not in "0123456789ABCDEFabcdef" for c in serial):
            raise ValueError("a TaiDoc serial is 16 hex digits (two 4-byte halves)")
        self.model = model
        self.serial = serial
        self.clock_offset = clock_offset
        self.capacity = capacity
        self.records: list[BpRecord | GlucoseRecord] = []
        self.powered_off = threading.Event()
        self.requests: list[int] = []
        self._lock = threading.Lock()

    @property
    def two_in_one(self) -> bool:
        return self.model == TWO_IN_ONE

    def now(self) -> datetime:
        return (datetime.now() + self.clock_offset).replace(second=0, microsecond=0)

    def store(self, record: BpRecord | GlucoseRecord) -> None:
        """A new measurement: index 0 from now on; the oldest falls off a full memory."""
        if isinstance(record, GlucoseRecord) and not self.two_in_one:
            raise ValueError("a BP monitor does not store glucose records")
        with self._lock:
            self.records.insert(0, record)
            del self.records[self.capacity :]

    def clear(self) -> None:
        with self._lock:
            self.records.clear()

    def reply(self, request: bytes) -> bytes | None:
        """The reply frame to one request frame, or None where the device stays silent."""
        if len(request) != 8 or request[0] != START or request[6] != HOST_TO_DEVICE:
            return None
        if sum(request[:7]) % 256 != request[7]:
            return None  # the meters ignore a corrupt request; the host times out and retries
        command, data = request[1], request[2:6]
        with self._lock:
            self.requests.append(command)
            if command == WAKE:
                self.powered_off.clear()
                return frame(WAKE, bytes(4))
            if command == READ_MODEL:
                return frame(READ_MODEL, bytes([self.model % 256, self.model // 256, 0, 0]))
            if command in (SERIAL_FORMER, SERIAL_LATTER):
                half = self.serial[:8] if command == SERIAL_FORMER else self.serial[8:]
                return frame(command, bytes.fromhex(half)[::-1])
            if command == READ_CLOCK:
                return frame(READ_CLOCK, packed_time(self.now()))
            if command == WRITE_CLOCK:
                written = unpack_time(data)
                self.clock_offset = written - datetime.now().replace(second=0, microsecond=0)
                return frame(WRITE_CLOCK, packed_time(self.now()))
            if command == RECORD_COUNT:
                count = len(self.records)
                return frame(RECORD_COUNT, bytes([count % 256, count // 256, 0, 0]))
            if command in (RECORD_TIME, RECORD_VALUE):
                index = data[0] + 256 * data[1]
                if index >= len(self.records):
                    return frame(command, bytes(4))
                record = self.records[index]
                return frame(command, self._time_data(record) if command == RECORD_TIME else self._value_data(record))
            if command == POWER_OFF:
                self.powered_off.set()
                return None
            return None

    def _time_data(self, record: BpRecord | GlucoseRecord) -> bytes:
        if isinstance(record, GlucoseRecord):
            return packed_time(record.when)
        bp_marker = 0b10 if self.two_in_one else 0
        return packed_time(
            record.when,
            minute_bits=bp_marker | int(record.arrhythmia),
            hour_bits=(0b100 if record.averaged else 0) | record.ihb,
        )

    def _value_data(self, record: BpRecord | GlucoseRecord) -> bytes:
        if isinstance(record, GlucoseRecord):
            return bytes([
                record.mg_dl % 256, record.mg_dl // 256, record.code % 256,
                (record.glucose_type << 6) | ((record.code >> 8) & 0x03),
            ])
        if self.two_in_one:
            # The D40 sends systolic as a 16-bit value and no mean arterial pressure.
            return bytes([record.systolic % 256, record.systolic // 256, record.diastolic, record.pulse])
        return bytes([record.systolic, record.map_value(), record.diastolic, record.pulse])


class PtyTaidoc(PtyDevice):
    """One cable: the meter answering on a pty (19200 8N1) that a driver opens as its serial port.
    Pulling the cable (or the ``unplug_after_replies`` fault) closes the pty; re-plugging is a new
    ``PtyTaidoc`` on the same :class:`TaidocMeter`."""

    baudrate = 19200

    def __init__(self, meter: TaidocMeter, faults: Faults | None = None, *, link_path: str | None = None) -> None:
        super().__init__(link_path=link_path)
        self.meter = meter
        self.faults = faults or Faults()
        self.replies = 0

    def on_plug_in(self) -> None:
        self.replies = 0

    def start(self) -> PtyTaidoc:
        self.plug_in()
        return self

    def serve(self) -> None:
        pending = bytearray()
        while not self.stopped:
            pending += self.receive(0.05)
            while len(pending) >= 8:
                start = pending.find(START)
                if start < 0:
                    pending.clear()
                    break
                del pending[:start]
                if len(pending) < 8:
                    break
                request = bytes(pending[:8])
                del pending[:8]
                self._answer(request)

    def _answer(self, request: bytes) -> None:
        reply = self.meter.reply(request)
        if reply is None:
            return
        self.replies += 1
        n = self.replies
        if self.faults.unplug_after_replies is not None and n > self.faults.unplug_after_replies:
            self.pull_cable()  # raises CablePulled in this thread: the session ends here
        if n in self.faults.silent_on_reply:
            return
        if n in self.faults.bad_checksum_on_reply:
            reply = reply[:7] + bytes([(reply[7] + 1) % 256])
        self.send(self.faults.garbage_before_reply.get(n, b"") + reply)

    def unplug(self) -> None:
        """Pull the cable: the host's next read fails."""
        self.pull_cable()

    def stop(self) -> None:
        if self.plugged_in:
            self.pull_cable()


def demo_meter(*, two_in_one: bool = False, records: int = 5, clock_offset: timedelta = timedelta(0)) -> TaidocMeter:
    """A meter with a few plausible readings from the last days (for ``rpm-sim serial`` and demos)."""
    meter = TaidocMeter(TWO_IN_ONE if two_in_one else BP_MONITOR,
                        "3261D40000000001" if two_in_one else "3128030000000001", clock_offset=clock_offset)
    now = datetime.now().replace(second=0, microsecond=0)
    for i in range(records, 0, -1):
        when = now - timedelta(hours=12 * i)
        if two_in_one and i % 2:
            meter.store(GlucoseRecord(when, 95 + 7 * i, glucose_type=1 + i % 2))
        else:
            meter.store(BpRecord(when, systolic=118 + 3 * i, diastolic=76 + i, pulse=64 + i))
    return meter
