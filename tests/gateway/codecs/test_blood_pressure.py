"""Blood Pressure Measurement (0x2A35) and Intermediate Cuff Pressure (0x2A36).

Public vectors from specs/ble-gatt.md, as Nordic's Android BLE common library tests and
blessed-android's parser tests assert them: ``1e8a00580078000000041114293b3c00012700`` (mmHg
138/88/120, year-unknown time stamp 0000-04-17 20:41:59, pulse 60, user 1, status 0x0027) and
``15bdf00b009ff03c001200`` (kPa 18.9/11.0/15.9, pulse 60, status 0x0012). Other frames are built by
hand from BLS 1.1 section 3.1.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.codecs.blood_pressure import (
    INTERMEDIATE_PROFILE,
    decode_intermediate_cuff_pressure,
    decode_measurement,
    status_flags,
)
from gateway.codecs.common import InvalidFieldError, TruncatedError

pytestmark = pytest.mark.unit


def test_published_mmhg_vector_with_unknown_year() -> None:
    m = decode_measurement(bytes.fromhex("1e8a00580078000000041114293b3c00012700"))
    assert {k: (q.value, q.unit) for k, q in m.values.items()} == {
        "systolic": (138.0, "mm[Hg]"),
        "diastolic": (88.0, "mm[Hg]"),
        "mean_arterial": (120.0, "mm[Hg]"),
        "pulse_rate": (60.0, "/min"),
    }
    # Year 0 cannot be placed in time: no device_time, but the fields the cuff sent are kept.
    assert m.device_time is None
    assert m.details["device_time_partial"] == "0000-04-17 20:41:59"
    assert m.user_index == 1
    assert m.details["measurement_status"] == 0x0027
    assert m.flags == ("body_movement", "cuff_too_loose", "irregular_pulse", "improper_position")
    assert m.kind == "blood_pressure" and m.sequence is None
    assert m.raw.hex() == "1e8a00580078000000041114293b3c00012700"


def test_published_kpa_vector() -> None:
    m = decode_measurement(bytes.fromhex("15bdf00b009ff03c001200"))
    assert {k: (q.value, q.unit) for k, q in m.values.items()} == {
        "systolic": (18.9, "kPa"),
        "diastolic": (11.0, "kPa"),
        "mean_arterial": (15.9, "kPa"),
        "pulse_rate": (60.0, "/min"),
    }
    assert m.device_time is None and m.user_index is None
    assert m.flags == ("cuff_too_loose", "pulse_rate_below_range")


def test_time_stamp_and_unknown_user() -> None:
    frame = bytes([0x0A]) + bytes.fromhex("8e00 5a00 6b00") + bytes.fromhex("ea07 03 0e 07 05 09") + b"\xff"
    m = decode_measurement(frame)
    assert m.device_time == datetime(2026, 3, 14, 7, 5, 9)
    assert m.user_index is None
    assert m.values["systolic"].value == 142.0


@pytest.mark.parametrize(
    ("status", "flags"),
    [
        (0x0000, []),
        (0x0008, ["pulse_rate_above_range"]),
        (0x0010, ["pulse_rate_below_range"]),
        (0x0018, []),  # bits 3-4 = 11 is reserved
        (0x0004, ["irregular_pulse"]),
        (0xFFC0, []),  # bits the spec reserves are ignored
    ],
)
def test_measurement_status_bits_become_named_flags(status: int, flags: list[str]) -> None:
    assert status_flags(status) == flags


def test_nan_pressures_are_left_out_and_flag_unsuccessful_only_when_nothing_is_left() -> None:
    nan = "ff07"
    all_nan = decode_measurement(bytes.fromhex("00" + nan * 3))
    assert dict(all_nan.values) == {} and all_nan.flags == ("measurement_unsuccessful",)
    assert all_nan.details["systolic_special"] == "NaN"
    nres_map = decode_measurement(bytes.fromhex("00" + "8000" + "5000" + "0008"))
    assert set(nres_map.values) == {"systolic", "diastolic"}
    assert "measurement_unsuccessful" not in nres_map.flags
    assert nres_map.details["mean_arterial_special"] == "NRes"


def test_newer_flag_bits_are_ignored() -> None:
    m = decode_measurement(bytes.fromhex("e0" + "8a00" + "5800" + "7800"))
    assert m.values["systolic"].value == 138.0


def test_intermediate_cuff_pressure_keeps_only_the_cuff_pressure() -> None:
    m = decode_intermediate_cuff_pressure(bytes.fromhex("00" + "9600" + "ff07" + "ff07"))
    assert m.profile == INTERMEDIATE_PROFILE
    assert {k: q.value for k, q in m.values.items()} == {"systolic": 150.0}


@pytest.mark.parametrize(
    ("hex_text", "field", "offset"),
    [
        ("", "flags", 0),
        ("00 8a00 58", "diastolic", 3),
        ("02 8a00 5800 7800 e407", "time stamp", 7),
        ("04 8a00 5800 7800", "pulse rate", 7),
        ("08 8a00 5800 7800", "user id", 7),
        ("10 8a00 5800 7800 27", "measurement status", 7),
    ],
)
def test_truncated_frames_name_the_field_and_byte(hex_text: str, field: str, offset: int) -> None:
    with pytest.raises(TruncatedError) as err:
        decode_measurement(bytes.fromhex(hex_text))
    assert (err.value.field, err.value.offset) == (field, offset)
    assert field in str(err.value) and f"byte {offset}" in str(err.value)


def test_impossible_time_stamp_is_invalid() -> None:
    with pytest.raises(InvalidFieldError) as err:
        decode_measurement(bytes.fromhex("02 8a00 5800 7800 e407 02 1e 00 00 00"))
    assert err.value.field == "time stamp" and err.value.offset == 7
