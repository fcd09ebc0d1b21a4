"""Battery Level (0x2A19): one uint8, 0-100 % (Battery Service 1.0 section 3.1)."""

from __future__ import annotations

import pytest

from gateway.codecs.battery import decode_battery_level
from gateway.codecs.common import InvalidFieldError, TruncatedError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("level", [0, 1, 57, 100])
def test_levels_in_range(level: int) -> None:
    assert decode_battery_level(bytes([level])) == level


@pytest.mark.parametrize("level", [101, 200, 255])
def test_levels_above_100_are_invalid(level: int) -> None:
    with pytest.raises(InvalidFieldError) as err:
        decode_battery_level(bytes([level]))
    assert err.value.field == "battery level" and err.value.offset == 0


def test_empty_and_long_frames_are_errors() -> None:
    with pytest.raises(TruncatedError):
        decode_battery_level(b"")
    with pytest.raises(InvalidFieldError) as err:
        decode_battery_level(b"\x32\x00")
    assert err.value.offset == 1
