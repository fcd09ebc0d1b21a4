"""Battery Level (0x2A19): one uint8, percent 0-100 (Battery Service 1.0 section 3.1)."""

from __future__ import annotations

from gateway.codecs.common import InvalidFieldError, Reader


def decode_battery_level(data: bytes) -> int:
    """The battery level in percent; values above 100 are reserved by the spec and rejected."""
    reader = Reader(data)
    level = reader.u8("battery level")
    if reader.remaining:
        raise InvalidFieldError("battery level", 1, f"is one byte, frame has {len(reader.data)}")
    if level > 100:
        raise InvalidFieldError("battery level", 0, f"{level} is not a percentage (0..100)")
    return level
