"""The simulator's encoders produce the published example frames byte for byte.

Vectors: ``specs/ble-gatt.md`` "Public vectors", taken from Nordic Semiconductor's Android BLE
common library tests (BloodPressureMeasurementDataCallbackTest, GlucoseMeasurementDataCallbackTest,
HeartRateMeasurementDataCallbackTest, SFloat/Float tests) and blessed-android's parser tests.
The encoders are checked against bytes, never against the gateway's decoders.
"""

from __future__ import annotations

import math
from datetime import datetime

import pytest

from firmware_sims.ble import encoders as enc

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "hex_"),
    [(513, "0102"), (-51.1, "01fe"), (767, "ff02"), (0, "0000"), (120, "7800")],
)
def test_sfloat_matches_published_vectors(value: float, hex_: str) -> None:
    assert enc.encode_sfloat(value).hex() == hex_


@pytest.mark.parametrize(
    ("special", "raw"),
    [(enc.NAN, 0x07FF), (enc.NRES, 0x0800), (enc.POSITIVE_INFINITY, 0x07FE),
     (enc.NEGATIVE_INFINITY, 0x0802), (enc.RESERVED, 0x0801)],
)
def test_sfloat_specials_sit_at_exponent_zero(special: str, raw: int) -> None:
    assert enc.encode_sfloat(special) == raw.to_bytes(2, "little")


def test_float_nan_and_infinities_map_to_specials() -> None:
    assert enc.encode_sfloat(math.nan) == (0x07FF).to_bytes(2, "little")
    assert enc.encode_sfloat(-math.inf) == (0x0802).to_bytes(2, "little")
    assert enc.encode_float(math.nan) == (0x007FFFFF).to_bytes(4, "little")


def test_float_matches_published_vector() -> None:
    assert enc.encode_float(26.1633).hex() == "01fe03fc"


def test_sfloat_never_emits_a_special_for_a_finite_number() -> None:
    # 2047 at exponent 0 would be NaN; the encoder must move to exponent 1 (2050) instead.
    raw = int.from_bytes(enc.encode_sfloat(2047), "little")
    assert raw >> 12 == 1 and raw & 0x0FFF == 205


def test_sfloat_too_large_is_an_encode_error() -> None:
    with pytest.raises(enc.EncodeError):
        enc.encode_sfloat(3e10)


def test_date_time_matches_published_vector_and_unknown_is_zero() -> None:
    assert enc.encode_date_time(datetime(2020, 1, 2, 10, 21, 48)).hex() == "e40701020a1530"
    assert enc.encode_date_time(None) == bytes(7)


def test_blood_pressure_mmhg_vector_with_unknown_year() -> None:
    frame = enc.encode_bp_measurement(
        138, 88, 120, timestamp=enc.encode_date_time_fields(0, 4, 17, 20, 41, 59), pulse=60, user_id=1,
        status=0x0027,
    )
    assert frame.hex() == "1e8a00580078000000041114293b3c00012700"


def test_blood_pressure_kpa_vector() -> None:
    frame = enc.encode_bp_measurement(18.9, 11.0, 15.9, unit="kPa", pulse=60, status=0x0012)
    assert frame.hex() == "15bdf00b009ff03c001200"


def test_bp_status_names_follow_the_spec_bits() -> None:
    assert enc.bp_status("irregular_pulse", "pulse_rate_below_range") == 0x0014


def test_glucose_vector_with_offset_and_context_follows() -> None:
    frame = enc.encode_glucose_measurement(
        1, datetime(2019, 2, 27, 11, 10, 30), time_offset=-5, concentration=30.0, sample_type=2,
        sample_location=1, status=0x0105, context_follows=True,
    )
    assert frame.hex() == "1b0100e307021b0b0a1efbff1e00120501"


def test_glucose_mol_per_litre_sets_unit_bit() -> None:
    frame = enc.encode_glucose_measurement(7, None, concentration=0.0053, unit="mol/L")
    assert frame[0] == 0x06
    assert frame[1:3] == (7).to_bytes(2, "little")
    assert frame[3:10] == bytes(7)


def test_glucose_context_orders_fields_as_the_spec() -> None:
    frame = enc.encode_glucose_context(5, carbohydrate=(1, 50), meal=1, tester=1, health=2, hba1c=6.5)
    # flags 0x47, seq 5, carb id 1, 0.05 kg = 5e-2 (0xE005), meal 1, tester/health 0x21, HbA1c 65e-1.
    assert frame.hex() == "4705000105e00121" + enc.encode_sfloat(6.5).hex()


@pytest.mark.parametrize(
    ("kwargs", "hex_"),
    [
        ({"bpm": 85}, "0055"),
        ({"bpm": 255, "contact": False}, "04ff"),
        ({"bpm": 85, "contact": True, "energy": 50, "rr": [33]}, "1e5532002100"),
        ({"bpm": 257, "uint16": True, "contact": True, "energy": 306, "rr": [1, 258, 65535]},
         "1f0101320101000201ffff"),
    ],
)
def test_heart_rate_vectors(kwargs: dict, hex_: str) -> None:
    assert enc.encode_heart_rate(**kwargs).hex() == hex_


def test_heart_rate_over_255_needs_uint16() -> None:
    with pytest.raises(enc.EncodeError):
        enc.encode_heart_rate(300)


def test_racp_vectors() -> None:
    assert enc.encode_racp_response(enc.RACP_REPORT_STORED_RECORDS, enc.RESPONSE_SUCCESS).hex() == "06000101"
    assert enc.encode_racp_response(1, enc.RESPONSE_NO_RECORDS_FOUND).hex() == "06000106"
    assert enc.encode_racp_number_of_records(258).hex() == "05000201"
    assert enc.encode_racp_report_greater_or_equal(18).hex() == "0103011200"


def test_weight_si_with_bmi_and_height() -> None:
    frame = enc.encode_weight_measurement(70.0, user_id=2, bmi=22.9, height=1.75)
    assert frame.hex() == "0c" + (14000).to_bytes(2, "little").hex() + "02" + "e500" + "d606"


def test_weight_imperial_and_unsuccessful() -> None:
    assert enc.encode_weight_measurement(154.32, imperial=True).hex() == "01" + (15432).to_bytes(2, "little").hex()
    assert enc.encode_weight_measurement(None).hex() == "00ffff"
    with pytest.raises(enc.EncodeError):
        enc.encode_weight_measurement(70.0, bmi=22.9)


def test_current_time_round_trips_through_the_peripheral_parser() -> None:
    when = datetime(2026, 3, 14, 7, 5, 9)
    frame = enc.encode_current_time(when, adjust_reason=1)
    assert len(frame) == 10 and frame[7] == 6  # a Saturday
    assert enc.parse_current_time(frame) == when
