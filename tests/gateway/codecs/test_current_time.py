"""Current Time (0x2A2B), Current Time Service 1.1 section 3.1: Date Time, day of week
(1 = Monday .. 7 = Sunday), Fractions256, Adjust Reason. Frames built by hand from the spec."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.codecs.common import InvalidFieldError, TruncatedError
from gateway.codecs.current_time import decode_current_time, decode_current_time_record, encode_current_time

pytestmark = pytest.mark.unit


def test_encoding_is_the_ten_spec_bytes() -> None:
    # 2020-01-02 was a Thursday (4); 0.5 s is 128/256.
    frame = encode_current_time(datetime(2020, 1, 2, 10, 21, 48, 500_000), adjust_reason=1)
    assert frame == bytes.fromhex("e40701020a1530" "04" "80" "01")


def test_sunday_is_seven() -> None:
    assert encode_current_time(datetime(2026, 3, 15, 0, 0))[7] == 7


def test_decoding_gives_the_time_with_fractions() -> None:
    record = decode_current_time_record(bytes.fromhex("e40701020a1530" "04" "40" "02"))
    assert record.time == datetime(2020, 1, 2, 10, 21, 48, 250_000)
    assert record.day_of_week == 4 and record.adjust_reason == 2


def test_unset_clock_is_none() -> None:
    assert decode_current_time(bytes(10)) is None


@given(st.datetimes(min_value=datetime(1582, 1, 1), max_value=datetime(9999, 12, 31)))
def test_round_trip_to_the_256th_of_a_second(dt: datetime) -> None:
    decoded = decode_current_time(encode_current_time(dt))
    assert decoded is not None
    assert decoded.replace(microsecond=0) == dt.replace(microsecond=0)
    assert 0 <= (dt - decoded).total_seconds() < 1 / 256


def test_bad_frames_are_typed_errors() -> None:
    with pytest.raises(TruncatedError) as err:
        decode_current_time(bytes.fromhex("e40701020a1530"))
    assert err.value.field == "day of week" and err.value.offset == 7
    with pytest.raises(InvalidFieldError) as err2:
        decode_current_time(bytes.fromhex("e40701020a1530" "08" "00" "00"))
    assert err2.value.field == "day of week"
    with pytest.raises(InvalidFieldError):
        decode_current_time(bytes.fromhex("e40701020a1530" "04" "00" "00" "00"))


def test_years_a_date_time_cannot_hold_are_refused() -> None:
    with pytest.raises(ValueError):
        encode_current_time(datetime(1000, 1, 1))
