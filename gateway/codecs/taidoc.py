"""TaiDoc (FORA) 8-byte frames: blood-pressure monitors and 2-in-1 glucose/BP meters.

Follows ``specs/serial-protocols.md`` section 4, checked against the public sources it names:
glucometerutils' TD-42xx driver and its tests (frame, packed date, record selection, glucose value
and meal bits, model as BCD) and open-source FORA decoders for the TD-3128 / FORA P30 and the
FORA D40 (TD-3261) (flag bits of the time record, the D40's wide systolic, the serial halves).

Frame: ``51 CMD D0 D1 D2 D3 DIR SUM``; DIR is 0xA3 host → device, 0xA5 device → host; SUM is the sum
of the first seven bytes modulo 256. A device answers each request with one frame carrying the same
command. Record index 0 is the newest record; older records move up as new ones are stored.

Pure: bytes in, values out, stdlib only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, IntEnum
from typing import Any

from gateway.codecs.common import (
    ChecksumError,
    DecodeError,
    InvalidFieldError,
    Measurement,
    NoReadingError,
    Quantity,
    TruncatedError,
)

PROFILE = "serial.taidoc"
FRAME_LENGTH = 8
START = 0x51
HOST_TO_DEVICE = 0xA3
DEVICE_TO_HOST = 0xA5
EMPTY = b"\x00\x00\x00\x00"
# Offsets of the data bytes D0..D3 inside a frame, for error messages.
_D0 = 2


class Command(IntEnum):
    WAKE = 0x22
    READ_CLOCK = 0x23
    READ_MODEL = 0x24
    RECORD_TIME = 0x25
    RECORD_VALUE = 0x26
    SERIAL_LATTER = 0x27
    SERIAL_FORMER = 0x28
    RECORD_COUNT = 0x2B
    WRITE_CLOCK = 0x33
    POWER_OFF = 0x50


# Replies a device may give to the wake request: glucometerutils accepts these three (some models
# answer the wake with their model frame or a "communication mode" frame instead of an echo).
WAKE_REPLIES = frozenset({0x22, 0x24, 0x54})


class UnknownModelError(DecodeError):
    """A model the codec has no record layout for."""


@dataclass(frozen=True, slots=True)
class Frame:
    command: int
    data: bytes
    direction: int

    @property
    def from_device(self) -> bool:
        return self.direction == DEVICE_TO_HOST

    def encode(self) -> bytes:
        return encode_frame(self.command, self.data, self.direction)


def checksum(first_seven: bytes) -> int:
    return sum(first_seven) & 0xFF


def encode_frame(command: int, data: bytes = EMPTY, direction: int = HOST_TO_DEVICE) -> bytes:
    if len(data) != 4:
        raise ValueError(f"a TaiDoc frame carries 4 data bytes, not {len(data)}")
    if not (0 <= command <= 0xFF):
        raise ValueError(f"command {command} is not a byte")
    head = bytes([START, command, *data, direction])
    return head + bytes([checksum(head)])


def decode_frame(data: bytes) -> Frame:
    """One 8-byte frame, checked: start byte, direction byte, checksum."""
    data = bytes(data)
    if len(data) < FRAME_LENGTH:
        raise TruncatedError("frame", len(data), FRAME_LENGTH - len(data), len(data))
    if len(data) > FRAME_LENGTH:
        raise InvalidFieldError("frame", FRAME_LENGTH, f"{len(data)} bytes; a frame is {FRAME_LENGTH}")
    if data[0] != START:
        raise InvalidFieldError("start byte", 0, f"0x{data[0]:02X}, expected 0x{START:02X}")
    if data[6] not in (HOST_TO_DEVICE, DEVICE_TO_HOST):
        raise InvalidFieldError("direction", 6, f"0x{data[6]:02X}, expected 0xA3 or 0xA5")
    expected = checksum(data[:7])
    if data[7] != expected:
        raise ChecksumError(f"0x{expected:02X}", f"0x{data[7]:02X}", offset=7)
    return Frame(command=data[1], data=data[2:6], direction=data[6])


class FrameAssembler:
    """Cuts a byte stream into frames: skips bytes before a start byte (line noise, a half frame
    left from a pulled cable) and reports each skipped run and each bad frame as a DecodeError."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[Frame | DecodeError]:
        self._buffer += chunk
        out: list[Frame | DecodeError] = []
        while self._buffer:
            start = self._buffer.find(START)
            if start < 0:
                out.append(InvalidFieldError("stream", 0, f"{len(self._buffer)} byte(s) without a start byte"))
                self._buffer.clear()
                break
            if start > 0:
                out.append(InvalidFieldError("stream", 0, f"skipped {start} byte(s) before a start byte"))
                del self._buffer[:start]
            if len(self._buffer) < FRAME_LENGTH:
                break
            candidate = bytes(self._buffer[:FRAME_LENGTH])
            try:
                frame = decode_frame(candidate)
            except DecodeError as err:
                # Resynchronise one byte on: a 0x51 inside the data may have been taken for a start.
                out.append(err)
                del self._buffer[:1]
                continue
            out.append(frame)
            del self._buffer[:FRAME_LENGTH]
        return out

    @property
    def pending(self) -> int:
        return len(self._buffer)


# --- requests (host → device) -------------------------------------------------------------------


def _index_data(index: int) -> bytes:
    if not (0 <= index <= 0xFFFF):
        raise ValueError(f"record index {index} is not a uint16")
    return index.to_bytes(2, "little") + b"\x00\x00"


def wake_request() -> bytes:
    return encode_frame(Command.WAKE)


def read_clock_request() -> bytes:
    return encode_frame(Command.READ_CLOCK)


def read_model_request() -> bytes:
    return encode_frame(Command.READ_MODEL)


def record_time_request(index: int) -> bytes:
    return encode_frame(Command.RECORD_TIME, _index_data(index))


def record_value_request(index: int) -> bytes:
    return encode_frame(Command.RECORD_VALUE, _index_data(index))


def serial_former_request() -> bytes:
    return encode_frame(Command.SERIAL_FORMER)


def serial_latter_request() -> bytes:
    return encode_frame(Command.SERIAL_LATTER)


def record_count_request() -> bytes:
    return encode_frame(Command.RECORD_COUNT)


def write_clock_request(when: datetime) -> bytes:
    return encode_frame(Command.WRITE_CLOCK, encode_packed_time(when))


def power_off_request() -> bytes:
    return encode_frame(Command.POWER_OFF)


# --- packed date ----------------------------------------------------------------------------------


def encode_packed_time(when: datetime) -> bytes:
    """D0-D1 LE uint16: year - 2000 in bits 9-15, month bits 5-8, day bits 0-4; D2 minute; D3 hour."""
    if not (2000 <= when.year <= 2127):
        raise ValueError(f"year {when.year} does not fit the packed date (2000-2127)")
    word = ((when.year - 2000) << 9) | (when.month << 5) | when.day
    return word.to_bytes(2, "little") + bytes([when.minute, when.hour])


@dataclass(frozen=True, slots=True)
class PackedTime:
    when: datetime
    minute_high_bits: int
    """D2 bits 6-7: on BP models bit 6 marks an arrhythmia, bit 7 a BP record on 2-in-1 meters."""
    hour_high_bits: int
    """D3 bits 5-7: on BP models bits 5-6 hold the IHB type and bit 7 marks an averaged reading."""


def decode_packed_time(data: bytes, base_offset: int = _D0) -> PackedTime:
    """The four data bytes of a clock or record-time frame. Flag bits above the minute (bits 6-7)
    and the hour (bits 5-7) are returned apart; ``base_offset`` places errors within the frame."""
    if len(data) != 4:
        raise TruncatedError("packed date", base_offset, 4, len(data))
    word = int.from_bytes(data[0:2], "little")
    year = 2000 + (word >> 9)
    month = (word >> 5) & 0x0F
    day = word & 0x1F
    minute = data[2] & 0x3F
    hour = data[3] & 0x1F
    if not 1 <= month <= 12:
        raise InvalidFieldError("month", base_offset, f"{month} (packed date word 0x{word:04X})")
    if minute > 59:
        raise InvalidFieldError("minute", base_offset + 2, f"{minute}")
    if hour > 23:
        raise InvalidFieldError("hour", base_offset + 3, f"{hour}")
    try:
        when = datetime(year, month, day, hour, minute)
    except ValueError as err:
        raise InvalidFieldError("day", base_offset, f"{year}-{month:02d}-{day:02d}: {err}") from None
    return PackedTime(when=when, minute_high_bits=data[2] >> 6, hour_high_bits=data[3] >> 5)


# --- models and record layouts --------------------------------------------------------------------


class Layout(Enum):
    BLOOD_PRESSURE = "blood_pressure"
    """TD-3128 / FORA P30: D0 systolic, D1 mean arterial pressure, D2 diastolic, D3 pulse."""
    BLOOD_PRESSURE_WIDE_SYSTOLIC = "blood_pressure_wide_systolic"
    """FORA D40 (TD-3261): D0-D1 LE systolic, D2 diastolic, D3 pulse; no mean arterial pressure."""
    GLUCOSE = "glucose"
    """D0-D1 LE mg/dL; D2 and D3 bits 0-1 the strip code; D3 bits 6-7 the type (meal, control)."""


@dataclass(frozen=True, slots=True)
class ModelProfile:
    model: str
    """``TD-`` and the four BCD digits of the model reply."""
    name: str
    blood_pressure: Layout | None
    """The BP value layout, or None on a glucose-only meter."""
    glucose: bool
    power_off: bool
    """Whether the session ends with the 0x50 power-off request (BP models switch off on it)."""

    @property
    def two_in_one(self) -> bool:
        return self.blood_pressure is not None and self.glucose


MODELS: dict[str, ModelProfile] = {
    p.model: p
    for p in (
        ModelProfile("TD-3128", "FORA P30 / TD-3128 blood pressure monitor", Layout.BLOOD_PRESSURE, False, True),
        ModelProfile("TD-3261", "FORA D40 / TD-3261 2-in-1 glucose and BP meter",
                     Layout.BLOOD_PRESSURE_WIDE_SYSTOLIC, True, True),
        ModelProfile("TD-4277", "TaiDoc TD-4277 glucose meter", None, True, False),
    )
}
_GLUCOSE_FAMILY = re.compile(r"^TD-42\d\d$")  # glucometerutils' TD-42xx driver: glucose only
_ALIASES = {"P30": "TD-3128", "FORA-P30": "TD-3128", "D40": "TD-3261", "FORA-D40": "TD-3261"}
_LAYOUT_NAMES = {layout.value: layout for layout in Layout}


def model_profile(model: str) -> ModelProfile:
    """The profile for a model name as the device reports it (``TD-3128``); also takes ``3128``."""
    name = re.sub(r"[\s_]", "-", model.strip().upper())
    name = _ALIASES.get(name, name)
    if re.fullmatch(r"[0-9A-F]{4}", name):
        name = f"TD-{name}"
    elif re.fullmatch(r"TD[0-9A-F]{4}", name):
        name = f"TD-{name[2:]}"
    if name in MODELS:
        return MODELS[name]
    if _GLUCOSE_FAMILY.match(name):
        return ModelProfile(name, f"TaiDoc {name} glucose meter", None, True, False)
    raise UnknownModelError(
        f"unknown TaiDoc model {model!r}; known: {', '.join(MODELS)} and the TD-42xx glucose family",
        field="model",
    )


def decode_model(frame: Frame) -> str:
    """The 0x24 reply: D1 D0 are the model number in BCD (``77 42`` → ``TD-4277``)."""
    _expect(frame, Command.READ_MODEL)
    number = int.from_bytes(frame.data[0:2], "little")
    return f"TD-{number:04X}"


def decode_serial_half(frame: Frame) -> str:
    """A 0x27/0x28 reply as 8 hex digits, D3 first; the serial is the 0x28 half then the 0x27 half."""
    if frame.command not in (Command.SERIAL_FORMER, Command.SERIAL_LATTER):
        raise InvalidFieldError("command", 1, f"0x{frame.command:02X} is not a serial-number reply")
    return frame.data[::-1].hex().upper()


def decode_record_count(frame: Frame) -> int:
    _expect(frame, Command.RECORD_COUNT)
    return int.from_bytes(frame.data[0:2], "little")


def decode_clock(frame: Frame) -> datetime:
    """The 0x23 (or 0x33 echo) reply: the device's naive local time."""
    if frame.command not in (Command.READ_CLOCK, Command.WRITE_CLOCK):
        raise InvalidFieldError("command", 1, f"0x{frame.command:02X} is not a clock reply")
    return decode_packed_time(frame.data).when


@dataclass(frozen=True, slots=True)
class RecordTime:
    when: datetime
    minute_high_bits: int
    hour_high_bits: int

    @property
    def marks_blood_pressure(self) -> bool:
        """D2 bit 7: on a 2-in-1 meter the record is a BP record (else glucose)."""
        return bool(self.minute_high_bits & 0b10)

    @property
    def arrhythmia(self) -> bool:
        return bool(self.minute_high_bits & 0b01)

    @property
    def ihb_type(self) -> int:
        return self.hour_high_bits & 0b011

    @property
    def averaged(self) -> bool:
        return bool(self.hour_high_bits & 0b100)


def decode_record_time(frame: Frame) -> RecordTime:
    _expect(frame, Command.RECORD_TIME)
    packed = decode_packed_time(frame.data)
    return RecordTime(packed.when, packed.minute_high_bits, packed.hour_high_bits)


IHB_TYPES = ("normal", "tachycardia_or_bradycardia", "varied_heart_rate", "atrial_fibrillation")
GLUCOSE_TYPES = ("general", "before_meal", "after_meal", "control_solution")


def _expect(frame: Frame, command: Command) -> None:
    if frame.command != command:
        raise InvalidFieldError("command", 1, f"0x{frame.command:02X}, expected 0x{command:02X}")
    if not frame.from_device:
        raise InvalidFieldError("direction", 6, "a host → device request, not a device reply")


def record_kind(profile: ModelProfile, time: RecordTime | None) -> Layout:
    """Which value layout a record uses on this model (a 2-in-1 says it in the time record)."""
    if profile.two_in_one:
        if time is None or time.marks_blood_pressure:
            assert profile.blood_pressure is not None
            return profile.blood_pressure
        return Layout.GLUCOSE
    if profile.blood_pressure is not None:
        return profile.blood_pressure
    return Layout.GLUCOSE


def decode_record(
    value_frame: Frame,
    layout: Layout,
    time: RecordTime | None = None,
    *,
    raw: bytes = b"",
    details: dict[str, Any] | None = None,
) -> Measurement:
    """A stored record (0x26 reply, with its 0x25 time where known) as a Measurement."""
    _expect(value_frame, Command.RECORD_VALUE)
    d = value_frame.data
    extra: dict[str, Any] = {"layout": layout.value, **(details or {})}
    flags: list[str] = []
    if layout is Layout.GLUCOSE:
        value = int.from_bytes(d[0:2], "little")
        if value == 0:
            raise InvalidFieldError("glucose", _D0, "0 mg/dL is not a result")
        glucose_type = GLUCOSE_TYPES[d[3] >> 6]
        extra["glucose_type"] = glucose_type
        extra["strip_code"] = ((d[3] & 0x03) << 8) | d[2]
        if d[3] & 0x3C:
            extra["unknown_type_bits"] = d[3] & 0x3C
        if glucose_type == "control_solution":
            flags.append("control_solution")
        elif glucose_type in ("before_meal", "after_meal"):
            extra["meal"] = glucose_type
        values = {"glucose": Quantity(float(value), "mg/dL")}
        kind = "glucose"
    else:
        if layout is Layout.BLOOD_PRESSURE:
            systolic, mean_arterial, diastolic, pulse = d[0], d[1], d[2], d[3]
        else:
            systolic, mean_arterial, diastolic, pulse = int.from_bytes(d[0:2], "little"), None, d[2], d[3]
        if systolic == 0:
            raise InvalidFieldError("systolic", _D0, "0 mmHg is not a measurement (an error record)")
        if diastolic == 0:
            raise InvalidFieldError("diastolic", _D0 + 2, "0 mmHg is not a measurement (an error record)")
        values = {"systolic": Quantity(float(systolic), "mm[Hg]"), "diastolic": Quantity(float(diastolic), "mm[Hg]")}
        if mean_arterial:
            values["mean_arterial"] = Quantity(float(mean_arterial), "mm[Hg]")
        if pulse:
            values["pulse_rate"] = Quantity(float(pulse), "/min")
        if time is not None:
            extra["ihb"] = IHB_TYPES[time.ihb_type]
            if time.arrhythmia or time.ihb_type:
                flags.append("irregular_pulse")
            if time.averaged:
                flags.append("averaged")
        kind = "blood_pressure"
    if time is not None:
        extra["time_flag_bits"] = {"minute_byte": time.minute_high_bits, "hour_byte": time.hour_high_bits}
    return Measurement(
        profile=PROFILE,
        kind=kind,
        values=values,
        device_time=time.when if time is not None else None,
        flags=tuple(flags),
        raw=raw or value_frame.encode(),
        details=extra,
    )


def _describe(frame: Frame) -> str:
    """One line for a frame that carries no reading (the decode CLI's answer for it)."""
    name = Command(frame.command).name.lower() if frame.command in Command._value2member_map_ else None
    label = name or f"command 0x{frame.command:02X}"
    if not frame.from_device:
        return f"a host → device {label} request carries no reading"
    try:
        if frame.command in (Command.READ_CLOCK, Command.WRITE_CLOCK):
            return f"device clock reply: {decode_clock(frame).isoformat(sep=' ')}; no reading"
        if frame.command == Command.RECORD_TIME:
            return (f"record time reply: {decode_record_time(frame).when.isoformat(sep=' ')}; "
                    "pass it with its value frame (16 bytes) for a reading")
        if frame.command == Command.READ_MODEL:
            return f"model reply: {decode_model(frame)}; no reading"
        if frame.command == Command.RECORD_COUNT:
            return f"record count reply: {decode_record_count(frame)}; no reading"
        if frame.command in (Command.SERIAL_FORMER, Command.SERIAL_LATTER):
            return f"serial number half: {decode_serial_half(frame)}; no reading"
    except DecodeError as err:
        return f"{label} reply that does not decode ({err}); no reading"
    return f"{label} reply carries no reading"


def _layout_for_decode(model: str | None, time: RecordTime | None) -> tuple[Layout, dict[str, Any]]:
    if model is None:
        return Layout.BLOOD_PRESSURE, {"model": None, "layout_assumed": True,
                                       "note": "no --model given: TD-3128 blood-pressure layout assumed"}
    if model.strip().lower() in _LAYOUT_NAMES:
        return _LAYOUT_NAMES[model.strip().lower()], {"model": None, "layout_assumed": False}
    profile = model_profile(model)
    layout = record_kind(profile, time)
    assumed = profile.two_in_one and time is None
    details: dict[str, Any] = {"model": profile.model, "layout_assumed": assumed}
    if assumed:
        details["note"] = f"{profile.model} stores BP and glucose; without the time frame BP was assumed"
    return layout, details


def decode_frame_reading(data: bytes, model: str | None = None) -> Measurement:
    """``rpm-gateway decode --profile serial.taidoc``: one value frame (8 bytes), or a record's time
    frame followed by its value frame (16 bytes). ``model`` (``TD-3128``, ``3261``, or a layout name
    ``blood_pressure``/``glucose``) selects the value layout; without it the TD-3128 BP layout is
    assumed and ``details`` says so. Frames that carry no reading raise NoReadingError saying what
    they are."""
    data = bytes(data)
    if len(data) == 2 * FRAME_LENGTH:
        time_frame = decode_frame(data[:FRAME_LENGTH])
        try:
            value_frame = decode_frame(data[FRAME_LENGTH:])
        except DecodeError as err:
            raise _in_second_frame(err) from None
        if time_frame.command != Command.RECORD_TIME:
            raise InvalidFieldError("command", 1, f"0x{time_frame.command:02X}; a 16-byte input is a 0x25 time "
                                    "frame then a 0x26 value frame")
        time = decode_record_time(time_frame)
        layout, details = _layout_for_decode(model, time)
        if value_frame.command != Command.RECORD_VALUE:
            raise InvalidFieldError("command", FRAME_LENGTH + 1,
                                    f"0x{value_frame.command:02X}; the second frame must be a 0x26 value frame")
        return decode_record(value_frame, layout, time, raw=data, details=details)
    frame = decode_frame(data)
    if frame.command != Command.RECORD_VALUE or not frame.from_device:
        raise NoReadingError(_describe(frame))
    layout, details = _layout_for_decode(model, None)
    return decode_record(frame, layout, None, raw=data, details=details)


def _in_second_frame(err: DecodeError) -> DecodeError:
    """The error with its offset moved to where the value frame sits in a 16-byte input."""
    offset = None if err.offset is None else err.offset + FRAME_LENGTH
    return DecodeError(f"value frame (bytes 8-15): {err}", field=err.field, offset=offset)
