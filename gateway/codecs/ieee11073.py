"""IEEE 11073-20601 number and time formats used by the Bluetooth SIG health profiles.

SFLOAT (16 bit: 4-bit signed exponent, 12-bit signed mantissa) and FLOAT (32 bit: 8-bit exponent,
24-bit mantissa), with their special values; the 7-byte Date Time of the GATT Specification
Supplement (year 0, month 0 or day 0 = unknown).
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


@dataclass(frozen=True, slots=True)
class Number:
    """A decoded SFLOAT/FLOAT: either a finite ``value`` or a ``special``."""

    value: float | None
    special: Special | None = None

    @property
    def is_finite(self) -> bool:
        return self.special is None


def _signed(raw: int, bits: int) -> int:
    return raw - (1 << bits) if raw & (1 << (bits - 1)) else raw


def _scaled(mantissa: int, exponent: int) -> float:
    # round() keeps 10**-n scaling from printing 15.899999999999999 for 159e-1.
    return round(mantissa * 10.0**exponent, max(0, -exponent))


def sfloat_from_raw(raw: int) -> Number:
    """Decode a 16-bit SFLOAT given as an unsigned integer."""
    mantissa_raw = raw & 0x0FFF
    exponent = _signed(raw >> 12, 4)
    if exponent == 0 and mantissa_raw in _SFLOAT_SPECIALS:
        return Number(None, _SFLOAT_SPECIALS[mantissa_raw])
    return Number(_scaled(_signed(mantissa_raw, 12), exponent))


def float_from_raw(raw: int) -> Number:
    """Decode a 32-bit FLOAT given as an unsigned integer."""
    mantissa_raw = raw & 0x00FFFFFF
    exponent = _signed(raw >> 24, 8)
    if exponent == 0 and mantissa_raw in _FLOAT_SPECIALS:
        return Number(None, _FLOAT_SPECIALS[mantissa_raw])
    return Number(_scaled(_signed(mantissa_raw, 24), exponent))


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


def read_date_time(reader: Reader, field: str) -> datetime | None:
    """Read a 7-byte Date Time; None where year, month or day is 0 (unknown).

    A date with a known month and day but unknown year (year 0) cannot be placed in time, so it is
    None too; the raw bytes stay in the measurement's ``raw`` for audit.
    """
    offset = reader.pos
    year = reader.u16(field)
    month, day, hours, minutes, seconds = reader.take(5, field)
    if year == 0 or month == 0 or day == 0:
        if hours > 23 or minutes > 59 or seconds > 59:
            raise InvalidFieldError(field, offset, f"time {hours:02}:{minutes:02}:{seconds:02} is out of range")
        return None
    try:
        return datetime(year, month, day, hours, minutes, seconds)
    except ValueError as err:
        raise InvalidFieldError(
            field, offset, f"{year:04}-{month:02}-{day:02} {hours:02}:{minutes:02}:{seconds:02}: {err}"
        ) from None


def is_finite_number(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
