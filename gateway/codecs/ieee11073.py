"""IEEE 11073-20601 number and time formats used by the Bluetooth SIG health profiles.

SFLOAT (16 bit: 4-bit signed exponent, 12-bit signed mantissa, IEEE 11073-20601 section F.8) and
FLOAT (32 bit: 8-bit signed exponent, 24-bit signed mantissa, section F.7), with their special values
(defined at exponent 0 only); the 7-byte Date Time of the GATT Specification Supplement (0x2A08:
year 0, month 0 or day 0 = unknown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from gateway.codecs.common import InvalidFieldError, Reader


class Special(Enum):
    NAN = "NaN"
    NRES = "NRes"
    POSITIVE_INFINITY = "+INFINITY"
    NEGATIVE_INFINITY = "-INFINITY"
    RESERVED = "reserved"


_SFLOAT_SPECIALS = {
    0x07FF: Special.NAN,
    0x0800: Special.NRES,
    0x07FE: Special.POSITIVE_INFINITY,
    0x0802: Special.NEGATIVE_INFINITY,
    0x0801: Special.RESERVED,
}
_FLOAT_SPECIALS = {
    0x007FFFFF: Special.NAN,
    0x00800000: Special.NRES,
    0x007FFFFE: Special.POSITIVE_INFINITY,
    0x00800002: Special.NEGATIVE_INFINITY,
    0x00800001: Special.RESERVED,
}


def _decimal_float(mantissa: int, exponent: int) -> float:
    # Parsing the decimal text gives the double nearest to mantissa x 10^exponent (159e-1 -> 15.9),
    # which multiplying by 10.0**exponent does not always do.
    return float(f"{mantissa}e{exponent}")


@dataclass(frozen=True, slots=True)
class Number:
    """A decoded SFLOAT/FLOAT: either a finite ``value`` (with its raw ``mantissa`` and ``exponent``)
    or a ``special``."""

    value: float | None
    special: Special | None = None
    mantissa: int | None = None
    exponent: int | None = None

    @property
    def is_finite(self) -> bool:
        return self.special is None

    def scaled(self, power_of_ten: int) -> float | None:
        """The value times 10^power_of_ten, computed on the decimal digits (kg -> g without 49.99999)."""
        if self.mantissa is None or self.exponent is None:
            return None
        return _decimal_float(self.mantissa, self.exponent + power_of_ten)


def _signed(raw: int, bits: int) -> int:
    return raw - (1 << bits) if raw & (1 << (bits - 1)) else raw


def sfloat_from_raw(raw: int) -> Number:
    """Decode a 16-bit SFLOAT given as an unsigned integer."""
    mantissa_raw = raw & 0x0FFF
    exponent = _signed((raw >> 12) & 0x0F, 4)
    if exponent == 0 and mantissa_raw in _SFLOAT_SPECIALS:
        return Number(None, _SFLOAT_SPECIALS[mantissa_raw])
    mantissa = _signed(mantissa_raw, 12)
    return Number(_decimal_float(mantissa, exponent), None, mantissa, exponent)


def float_from_raw(raw: int) -> Number:
    """Decode a 32-bit FLOAT given as an unsigned integer."""
    mantissa_raw = raw & 0x00FFFFFF
    exponent = _signed((raw >> 24) & 0xFF, 8)
    if exponent == 0 and mantissa_raw in _FLOAT_SPECIALS:
        return Number(None, _FLOAT_SPECIALS[mantissa_raw])
    mantissa = _signed(mantissa_raw, 24)
    return Number(_decimal_float(mantissa, exponent), None, mantissa, exponent)


def decode_sfloat(data: bytes) -> Number:
    """Decode two little-endian bytes as an SFLOAT."""
    return read_sfloat(Reader(data), "sfloat")


def decode_float(data: bytes) -> Number:
    """Decode four little-endian bytes as a FLOAT."""
    return read_float(Reader(data), "float")


def read_sfloat(reader: Reader, field: str) -> Number:
    return sfloat_from_raw(reader.u16(field))


def read_float(reader: Reader, field: str) -> Number:
    return float_from_raw(reader.u32(field))


@dataclass(frozen=True, slots=True)
class DateTimeFields:
    """The six raw fields of a Date Time, kept even where the date is unknown (year/month/day 0)."""

    year: int
    month: int
    day: int
    hours: int
    minutes: int
    seconds: int

    @property
    def is_known(self) -> bool:
        return self.year != 0 and self.month != 0 and self.day != 0

    def __str__(self) -> str:
        return (
            f"{self.year:04}-{self.month:02}-{self.day:02} {self.hours:02}:{self.minutes:02}:{self.seconds:02}"
        )


def read_date_time_fields(reader: Reader, field: str) -> tuple[DateTimeFields, datetime | None]:
    """Read a 7-byte Date Time: the raw fields, and the datetime where the date is fully known.

    A date with a known month and day but unknown year (year 0) cannot be placed in time, so its
    datetime is None; the raw fields let the caller keep what the device said.
    """
    offset = reader.pos
    raw = reader.take(7, field)
    year = int.from_bytes(raw[:2], "little")
    month, day, hours, minutes, seconds = raw[2:]
    fields = DateTimeFields(year, month, day, hours, minutes, seconds)
    if month > 12 or day > 31 or hours > 23 or minutes > 59 or seconds > 59:
        raise InvalidFieldError(field, offset, f"{fields} is out of range")
    if not fields.is_known:
        return fields, None
    try:
        return fields, datetime(year, month, day, hours, minutes, seconds)
    except ValueError as err:
        raise InvalidFieldError(field, offset, f"{fields}: {err}") from None


def read_date_time(reader: Reader, field: str) -> datetime | None:
    """Read a 7-byte Date Time; None where year, month or day is 0 (unknown)."""
    return read_date_time_fields(reader, field)[1]


def decode_date_time(data: bytes) -> datetime | None:
    """Decode 7 bytes as a Date Time (GATT Specification Supplement, Date Time 0x2A08)."""
    return read_date_time(Reader(data), "date time")


def encode_date_time(dt: datetime | None) -> bytes:
    """The 7-byte Date Time of ``dt``'s wall-clock fields; None is all zero ("unknown").

    The gateway writes times only to a device's Current Time characteristic; nothing else encodes.
    """
    if dt is None:
        return bytes(7)
    if not 1582 <= dt.year <= 9999:
        # The Date Time field allows 1582..9999 (GATT Specification Supplement 3.70).
        raise ValueError(f"year {dt.year} cannot be written as a Date Time (1582..9999)")
    return dt.year.to_bytes(2, "little") + bytes([dt.month, dt.day, dt.hour, dt.minute, dt.second])


def is_finite_number(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
