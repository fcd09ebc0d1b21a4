"""Current Time (0x2A2B) of the Current Time Service 1.1, section 3.1.

Ten bytes: Exact Time 256 = Day Date Time (Date Time 0x2A08 + Day of Week, 1 = Monday .. 7 = Sunday,
0 = unknown) + Fractions256, then Adjust Reason bits (0 manual time update, 1 external reference,
2 time zone change, 3 DST change). The gateway reads it to judge the device clock and writes it to set
the clock. Times are the device's naive wall-clock time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.codecs.common import InvalidFieldError, Reader
from gateway.codecs.ieee11073 import encode_date_time, read_date_time_fields

LENGTH = 10
ADJUST_MANUAL = 0x01
ADJUST_EXTERNAL_REFERENCE = 0x02
ADJUST_TIME_ZONE = 0x04
ADJUST_DST = 0x08


@dataclass(frozen=True, slots=True)
class CurrentTime:
    time: datetime | None
    day_of_week: int
    adjust_reason: int


def encode_current_time(dt: datetime, adjust_reason: int = 0) -> bytes:
    """The 10-byte Current Time for ``dt``'s wall-clock fields (its tzinfo, if any, is not applied)."""
    if not 0 <= adjust_reason <= 0xFF:
        raise ValueError(f"adjust reason {adjust_reason} is not a uint8")
    fractions256 = dt.microsecond * 256 // 1_000_000
    return encode_date_time(dt) + bytes([dt.isoweekday(), fractions256, adjust_reason])


def decode_current_time_record(data: bytes) -> CurrentTime:
    """All of a Current Time value; ``time`` is None where the device's date is unknown (unset clock)."""
    reader = Reader(data)
    _, time = read_date_time_fields(reader, "date time")
    day_of_week = reader.u8("day of week")
    if day_of_week > 7:
        raise InvalidFieldError("day of week", 7, f"{day_of_week} is not 0 (unknown) or 1..7")
    fractions = reader.u8("fractions256")
    adjust_reason = reader.u8("adjust reason")
    if reader.remaining:
        raise InvalidFieldError("current time", LENGTH, f"is {LENGTH} bytes, frame has {len(reader.data)}")
    if time is not None:
        time = time.replace(microsecond=fractions * 1_000_000 // 256)
    return CurrentTime(time, day_of_week, adjust_reason)


def decode_current_time(data: bytes) -> datetime | None:
    """The device's current time, None where its date is unknown."""
    return decode_current_time_record(data).time
