"""Glucose Measurement (0x2A18) and Glucose Measurement Context (0x2A34).

Public vector from specs/ble-gatt.md, as Nordic's Android BLE common library tests and
blessed-android's parser tests assert it: ``1b0100e307021b0b0a1efbff1e00120501`` = sequence 1,
base time 2019-02-27 11:10:30, offset -5 min, 30.0 as a kg/L SFLOAT, capillary plasma from a finger,
sensor status 0x0105, context follows. Other frames are built by hand from GLS 1.0 sections
3.106-3.107.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.codecs.common import InvalidFieldError, TruncatedError
from gateway.codecs.glucose import (
    GlucoseContext,
    attach_context,
    decode_context,
    decode_feature,
    decode_measurement,
    sensor_status_flags,
)

pytestmark = pytest.mark.unit


def _frame(flags: int, sequence: int, base: str, rest: str = "") -> bytes:
    return bytes([flags]) + sequence.to_bytes(2, "little") + bytes.fromhex(base + rest)


BASE_2026 = "ea07 03 0e 07 05 09"  # 2026-03-14 07:05:09


def test_published_vector() -> None:
    m = decode_measurement(bytes.fromhex("1b0100e307021b0b0a1efbff1e00120501"))
    assert m.kind == "glucose" and m.profile == "ble.glucose"
    assert m.sequence == 1
    # User-facing time is base time plus the offset.
    assert m.device_time == datetime(2019, 2, 27, 11, 5, 30)
    assert m.details["time_offset_min"] == -5
    assert (m.values["glucose"].value, m.values["glucose"].unit) == (30.0, "kg/L")
    assert m.details["sample_type"] == "capillary_plasma"
    assert m.details["sample_location"] == "finger"
    assert m.details["sensor_status"] == 0x0105
    assert m.flags == ("device_battery_low", "sample_size_insufficient", "temperature_too_low")
    assert m.details["context_follows"] is True


def test_mg_per_dl_as_kg_per_litre_and_no_offset() -> None:
    # 95 mg/dL = 0.00095 kg/L = SFLOAT mantissa 95, exponent -5 (0xB05F).
    m = decode_measurement(_frame(0x02, 7, BASE_2026, "5fb0 11"))
    assert m.values["glucose"].value == 0.00095 and m.values["glucose"].unit == "kg/L"
    assert m.device_time == datetime(2026, 3, 14, 7, 5, 9)
    assert m.flags == () and m.details["context_follows"] is False


def test_mol_per_litre_unit() -> None:
    # 5.3 mmol/L = 0.0053 mol/L = mantissa 53, exponent -4 (0xC035).
    m = decode_measurement(_frame(0x06, 8, BASE_2026, "35c0 11"))
    assert (m.values["glucose"].value, m.values["glucose"].unit) == (0.0053, "mol/L")


@pytest.mark.parametrize(("type_location", "control"), [(0x1A, True), (0x41, True), (0x11, False), (0xF9, False)])
def test_control_solution_is_flagged(type_location: int, control: bool) -> None:
    m = decode_measurement(_frame(0x02, 3, BASE_2026, f"5fb0 {type_location:02x}"))
    assert ("control_solution" in m.flags) is control


def test_reserved_sample_codes_are_named_not_errors() -> None:
    m = decode_measurement(_frame(0x02, 3, BASE_2026, "5fb0 0b"))
    assert m.details["sample_type"] == "reserved_11" and m.details["sample_location"] == "reserved_0"
    assert decode_measurement(_frame(0x02, 3, BASE_2026, "5fb0 f9")).details["sample_location"] == "not_available"


def test_every_sensor_status_bit_has_its_flag_name() -> None:
    names = sensor_status_flags(0x0FFF)
    assert names == [
        "device_battery_low", "sensor_malfunction", "sample_size_insufficient", "strip_insertion_error",
        "strip_type_incorrect", "result_above_range", "result_below_range", "temperature_too_high",
        "temperature_too_low", "strip_pulled_too_soon", "device_fault", "time_fault",
    ]
    assert sensor_status_flags(0xF000) == []


def test_record_without_concentration_is_unsuccessful() -> None:
    m = decode_measurement(_frame(0x08, 9, BASE_2026, "2000"))
    assert dict(m.values) == {} and m.flags == ("result_above_range", "measurement_unsuccessful")


def test_nan_concentration_is_left_out() -> None:
    m = decode_measurement(_frame(0x02, 9, BASE_2026, "ff07 11"))
    assert dict(m.values) == {} and "measurement_unsuccessful" in m.flags
    assert m.details["glucose_special"] == "NaN"


def test_unknown_base_time_gives_no_device_time_even_with_offset() -> None:
    m = decode_measurement(_frame(0x03, 2, "00000000000000", "0a00 5fb0 11"))
    assert m.device_time is None and m.sequence == 2


def test_offset_past_the_calendar_is_invalid() -> None:
    with pytest.raises(InvalidFieldError) as err:
        decode_measurement(_frame(0x01, 2, "0f27 0c 1f 17 3b 3b", "ff7f"))
    assert err.value.field == "time offset" and err.value.offset == 10


@pytest.mark.parametrize(
    ("flags", "rest", "field", "offset"),
    [
        (0x01, "", "time offset", 10),
        (0x02, "5f", "glucose concentration", 10),
        (0x02, "5fb0", "type and sample location", 12),
        (0x0B, "0000 5fb0 11 01", "sensor status annunciation", 15),
    ],
)
def test_truncation_names_field_and_byte(flags: int, rest: str, field: str, offset: int) -> None:
    with pytest.raises(TruncatedError) as err:
        decode_measurement(_frame(flags, 1, BASE_2026, rest))
    assert (err.value.field, err.value.offset) == (field, offset)


def test_truncated_base_time() -> None:
    with pytest.raises(TruncatedError) as err:
        decode_measurement(bytes.fromhex("000100e307"))
    assert err.value.field == "base time" and err.value.offset == 3


def test_context_with_every_field() -> None:
    # flags 0x7F: carbohydrate, meal, tester/health, exercise, medication (in litres), HbA1c.
    frame = bytes.fromhex(
        "7f" "0500"      # flags, sequence 5
        "01" "05e0"      # breakfast, 5e-2 kg = 50 g
        "01"             # preprandial
        "51"             # tester self (low nibble), health "no health issues" (high nibble)
        "1007" "50"      # exercise 1808 s at 80 %
        "01" "0ad0"      # rapid-acting insulin, 10e-3 L
        "3ef0"           # HbA1c 62 x 10^-1 = 6.2 %
    )
    c = decode_context(frame)
    assert c == GlucoseContext(
        sequence=5,
        carbohydrate_id="breakfast",
        carbohydrate_grams=50.0,
        meal="preprandial",
        tester="self",
        health="no_health_issues",
        exercise_duration_s=1808,
        exercise_intensity_percent=80,
        medication_id="rapid_acting_insulin",
        medication_amount=0.01,
        medication_unit="L",
        hba1c_percent=6.2,
    )


def test_context_extended_flags_come_before_the_fields() -> None:
    c = decode_context(bytes.fromhex("82" "0900" "00" "03"))
    assert c.extended_flags == 0 and c.meal == "fasting" and c.sequence == 9
    assert c.carbohydrate_id is None and c.medication_unit is None


def test_context_medication_in_kilograms_by_default() -> None:
    c = decode_context(bytes.fromhex("10" "0100" "04" "64a0"))  # long-acting, 100e-6 kg
    assert c.medication_unit == "kg" and c.medication_amount == 0.0001 and c.medication_id == "long_acting_insulin"


def test_truncated_context_names_the_field() -> None:
    with pytest.raises(TruncatedError) as err:
        decode_context(bytes.fromhex("08" "0100" "1007"))
    assert err.value.field == "exercise intensity" and err.value.offset == 5


def test_context_is_joined_to_its_measurement_by_sequence() -> None:
    m = decode_measurement(bytes.fromhex("1b0100e307021b0b0a1efbff1e00120501"))
    joined = attach_context(m, decode_context(bytes.fromhex("02" "0100" "02")))
    assert joined.details["context_meal"] == "postprandial"
    assert joined.details["sample_type"] == "capillary_plasma"
    with pytest.raises(InvalidFieldError):
        attach_context(m, decode_context(bytes.fromhex("02" "0200" "02")))


def test_glucose_feature_is_decoded_here_too() -> None:
    assert decode_feature(bytes.fromhex("0104")).multiple_bond is True
