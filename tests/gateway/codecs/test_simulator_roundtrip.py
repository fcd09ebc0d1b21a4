"""Round trips against the simulator's encoders (``firmware_sims.ble.encoders``), which helper B wrote
from the Bluetooth SIG specs independently of these codecs: any measurement the simulator can encode
decodes to the values it was given. A disagreement means one of two readings of the spec is wrong."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sims.ble import encoders as sim
from gateway.codecs import battery, blood_pressure, current_time, features, glucose, heart_rate, racp, weight_scale
from gateway.codecs.ieee11073 import decode_date_time, decode_float, decode_sfloat

pytestmark = pytest.mark.unit

ROUNDTRIP = settings(max_examples=100, deadline=None)

# Values a device can send exactly: a mantissa and a decimal exponent in the field's range.
sfloat_values = st.builds(lambda m, e: float(f"{m}e{e}"), st.integers(-2045, 2045), st.integers(-8, 7))
positive_sfloats = st.builds(lambda m, e: float(f"{m}e{e}"), st.integers(1, 2045), st.integers(-5, 2))
# Exponents kept within +-20: the simulator's encode_float raises decimal.InvalidOperation from 1e28 up
# (Decimal's default 28-digit context), reported to its owner.
float_values = st.builds(lambda m, e: float(f"{m}e{e}"), st.integers(-8_388_605, 8_388_605), st.integers(-20, 20))
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda dt: dt.replace(microsecond=0)
)
specials = st.sampled_from([sim.NAN, sim.NRES, sim.POSITIVE_INFINITY, sim.NEGATIVE_INFINITY, sim.RESERVED])


@ROUNDTRIP
@given(sfloat_values)
def test_sfloat(value: float) -> None:
    assert decode_sfloat(sim.encode_sfloat(value)).value == value


@ROUNDTRIP
@given(float_values)
def test_float(value: float) -> None:
    assert decode_float(sim.encode_float(value)).value == value


@given(specials)
def test_specials(name: str) -> None:
    assert decode_sfloat(sim.encode_sfloat(name)).special.value == name
    assert decode_float(sim.encode_float(name)).special.value == name


@ROUNDTRIP
@given(st.one_of(st.none(), times))
def test_date_time(dt: datetime | None) -> None:
    assert decode_date_time(sim.encode_date_time(dt)) == dt


BP_FLAG_NAMES = sorted(sim.BP_STATUS_BITS)


@ROUNDTRIP
@given(
    systolic=positive_sfloats, diastolic=positive_sfloats, mean=st.one_of(positive_sfloats, st.just(sim.NAN)),
    unit=st.sampled_from(["mmHg", "kPa"]), timestamp=st.one_of(st.none(), times),
    pulse=st.one_of(st.none(), positive_sfloats), user_id=st.one_of(st.none(), st.integers(0, 255)),
    status_names=st.one_of(st.none(), st.sets(st.sampled_from(BP_FLAG_NAMES))),
)
def test_blood_pressure(systolic, diastolic, mean, unit, timestamp, pulse, user_id, status_names) -> None:
    if status_names and {"pulse_rate_above_range", "pulse_rate_below_range"} <= status_names:
        status_names = status_names - {"pulse_rate_below_range"}  # both bits set is the reserved 11
    status = None if status_names is None else sim.bp_status(*status_names)
    frame = sim.encode_bp_measurement(
        systolic, diastolic, mean, unit=unit, timestamp=timestamp, pulse=pulse, user_id=user_id, status=status
    )
    m = blood_pressure.decode_measurement(frame)
    ucum = "mm[Hg]" if unit == "mmHg" else "kPa"
    expected = {"systolic": (systolic, ucum), "diastolic": (diastolic, ucum)}
    if mean != sim.NAN:
        expected["mean_arterial"] = (mean, ucum)
    if pulse is not None:
        expected["pulse_rate"] = (pulse, "/min")
    assert {k: (q.value, q.unit) for k, q in m.values.items()} == expected
    assert m.device_time == timestamp
    assert m.user_index == (None if user_id in (None, 0xFF) else user_id)
    assert set(m.flags) == (status_names or set())


@ROUNDTRIP
@given(cuff=positive_sfloats, unit=st.sampled_from(["mmHg", "kPa"]))
def test_intermediate_cuff_pressure(cuff: float, unit: str) -> None:
    m = blood_pressure.decode_intermediate_cuff_pressure(sim.encode_intermediate_cuff_pressure(cuff, unit=unit))
    assert {k: q.value for k, q in m.values.items()} == {"systolic": cuff}


@ROUNDTRIP
@given(
    sequence=st.integers(0, 0xFFFF), base_time=st.one_of(st.none(), times),
    time_offset=st.one_of(st.none(), st.integers(-32768, 32767)),
    concentration=st.one_of(st.none(), positive_sfloats, st.sampled_from([sim.NAN, sim.NRES])),
    unit=st.sampled_from(["kg/L", "mol/L"]), sample_type=st.integers(0, 15), sample_location=st.integers(0, 15),
    status_names=st.one_of(st.none(), st.sets(st.sampled_from(sorted(sim.GLUCOSE_STATUS_BITS)))),
    context_follows=st.booleans(),
)
def test_glucose(
    sequence, base_time, time_offset, concentration, unit, sample_type, sample_location, status_names,
    context_follows,
) -> None:
    status = None if status_names is None else sim.glucose_status(*status_names)
    frame = sim.encode_glucose_measurement(
        sequence, base_time, time_offset=time_offset, concentration=concentration, unit=unit,
        sample_type=sample_type, sample_location=sample_location, status=status, context_follows=context_follows,
    )
    m = glucose.decode_measurement(frame)
    assert m.sequence == sequence
    expected_time = None if base_time is None else base_time + timedelta(minutes=time_offset or 0)
    assert m.device_time == expected_time
    has_value = concentration is not None and not isinstance(concentration, str)
    expected_values = {"glucose": (concentration, unit)} if has_value else {}
    assert {k: (q.value, q.unit) for k, q in m.values.items()} == expected_values
    expected_flags = set(status_names or ())
    if concentration is not None and (
        sample_type == sim.SAMPLE_CONTROL_SOLUTION or sample_location == sim.LOCATION_CONTROL_SOLUTION
    ):
        expected_flags.add("control_solution")
    if not has_value:
        expected_flags.add("measurement_unsuccessful")
    assert set(m.flags) == expected_flags
    assert m.details["context_follows"] is context_follows
    if concentration is not None:
        assert m.details["sample_type"] == glucose.SAMPLE_TYPES.get(sample_type, f"reserved_{sample_type}")
        assert m.details["sample_location"] == glucose.SAMPLE_LOCATIONS.get(
            sample_location, f"reserved_{sample_location}"
        )


@ROUNDTRIP
@given(
    sequence=st.integers(0, 0xFFFF),
    carbohydrate=st.one_of(st.none(), st.tuples(st.integers(1, 7), st.integers(1, 2000))),
    meal=st.one_of(st.none(), st.integers(1, 5)),
    tester=st.one_of(st.none(), st.sampled_from([1, 2, 3, 15])),
    health=st.one_of(st.none(), st.sampled_from([1, 2, 3, 4, 5, 15])),
    exercise=st.one_of(st.none(), st.tuples(st.integers(0, 0xFFFF), st.integers(0, 100))),
    medication=st.one_of(st.none(), st.tuples(st.integers(1, 5), positive_sfloats)),
    medication_unit=st.sampled_from(["kg", "L"]),
    hba1c=st.one_of(st.none(), positive_sfloats),
    extended_flags=st.one_of(st.none(), st.integers(0, 255)),
)
def test_glucose_context(
    sequence, carbohydrate, meal, tester, health, exercise, medication, medication_unit, hba1c, extended_flags
) -> None:
    frame = sim.encode_glucose_context(
        sequence, carbohydrate=carbohydrate, meal=meal, tester=tester, health=health, exercise=exercise,
        medication=medication, medication_unit=medication_unit, hba1c=hba1c, extended_flags=extended_flags,
    )
    c = glucose.decode_context(frame)
    assert c.sequence == sequence and c.extended_flags == extended_flags
    if carbohydrate is None:
        assert c.carbohydrate_id is None and c.carbohydrate_grams is None
    else:
        assert c.carbohydrate_id == glucose.CARBOHYDRATE_IDS[carbohydrate[0]]
        assert c.carbohydrate_grams == carbohydrate[1]
    assert c.meal == (None if meal is None else glucose.MEALS[meal])
    if tester is None and health is None:
        assert c.tester is None and c.health is None
    else:
        # The encoder fills a missing nibble with 0 (reserved); the one given must come back.
        if tester is not None:
            assert c.tester == glucose.TESTERS[tester]
        if health is not None:
            assert c.health == glucose.HEALTH[health]
    assert (c.exercise_duration_s, c.exercise_intensity_percent) == (exercise or (None, None))
    if medication is None:
        assert c.medication_id is None and c.medication_unit is None
    else:
        assert c.medication_id == glucose.MEDICATION_IDS[medication[0]]
        assert (c.medication_amount, c.medication_unit) == (medication[1], medication_unit)
    assert c.hba1c_percent == hba1c


@ROUNDTRIP
@given(
    raw_weight=st.one_of(st.none(), st.integers(0, 0xFFFE)), imperial=st.booleans(),
    timestamp=st.one_of(st.none(), times), user_id=st.one_of(st.none(), st.integers(0, 255)),
    bmi_height=st.one_of(st.none(), st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))),
)
def test_weight_scale(raw_weight, imperial, timestamp, user_id, bmi_height) -> None:
    weight = None if raw_weight is None else float(f"{raw_weight}e-2") if imperial else float(f"{raw_weight * 5}e-3")
    bmi = None if bmi_height is None else float(f"{bmi_height[0]}e-1")
    height = None if bmi_height is None else float(f"{bmi_height[1]}e-1" if imperial else f"{bmi_height[1]}e-3")
    frame = sim.encode_weight_measurement(
        weight, imperial=imperial, timestamp=timestamp, user_id=user_id, bmi=bmi, height=height
    )
    m = weight_scale.decode_measurement(frame)
    expected = {}
    if weight is not None:
        expected["body_weight"] = (weight, "[lb_av]" if imperial else "kg")
    if bmi_height is not None:
        expected["bmi"] = (bmi, "kg/m2")
        expected["height"] = (height, "[in_i]" if imperial else "m")
    assert {k: (q.value, q.unit) for k, q in m.values.items()} == expected
    assert m.flags == (() if weight is not None else ("measurement_unsuccessful",))
    assert m.device_time == timestamp
    assert m.user_index == (None if user_id in (None, 0xFF) else user_id)


@ROUNDTRIP
@given(
    uint16=st.booleans(), bpm8=st.integers(1, 255), bpm16=st.integers(1, 0xFFFF),
    contact=st.one_of(st.none(), st.booleans()), energy=st.one_of(st.none(), st.integers(0, 0xFFFF)),
    rr=st.lists(st.integers(0, 0xFFFF), max_size=9),
)
def test_heart_rate(uint16, bpm8, bpm16, contact, energy, rr) -> None:
    bpm = bpm16 if uint16 else bpm8
    m = heart_rate.decode_measurement(sim.encode_heart_rate(bpm, uint16=uint16, contact=contact, energy=energy, rr=rr))
    expected = {"heart_rate": (float(bpm), "/min")}
    if energy is not None:
        expected["energy_expended"] = (float(energy), "kJ")
    if rr:
        expected["rr_intervals"] = (tuple(float(x) for x in rr), "s/1024")
    assert {k: (q.value, q.unit) for k, q in m.values.items()} == expected
    assert m.flags == (("sensor_contact_lost",) if contact is False else ())


@given(st.integers(0, 0xFFFF), st.integers(1, 4), st.integers(1, 9))
def test_racp(count: int, request_op: int, value: int) -> None:
    assert racp.decode_response(sim.encode_racp_number_of_records(count)) == racp.NumberOfRecords(count)
    response = racp.decode_response(sim.encode_racp_response(request_op, value))
    assert response == racp.ResponseCode(racp.OpCode(request_op), racp.ResponseValue(value))


@given(st.integers(0, 0xFFFF))
def test_racp_request_matches_the_simulators_reading(sequence: int) -> None:
    assert racp.encode_report_greater_or_equal(sequence) == sim.encode_racp_report_greater_or_equal(sequence)


@ROUNDTRIP
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)), st.integers(0, 15))
def test_current_time_both_ways(dt: datetime, adjust_reason: int) -> None:
    # The simulator's encoding decodes here, and ours is what the simulated peripheral accepts.
    decoded = current_time.decode_current_time_record(sim.encode_current_time(dt, adjust_reason=adjust_reason))
    assert decoded.time is not None and decoded.time.replace(microsecond=0) == dt.replace(microsecond=0)
    assert decoded.day_of_week == dt.isoweekday() and decoded.adjust_reason == adjust_reason
    assert sim.encode_current_time(dt, adjust_reason=adjust_reason) == current_time.encode_current_time(
        dt, adjust_reason
    )
    assert sim.parse_current_time(current_time.encode_current_time(dt)) == decoded.time


@given(st.integers(0, 100))
def test_battery(level: int) -> None:
    assert battery.decode_battery_level(sim.encode_battery_level(level)) == level


@given(st.lists(st.booleans(), min_size=6, max_size=6))
def test_bp_feature(bits: list[bool]) -> None:
    names = ["body_movement", "cuff_fit", "irregular_pulse", "pulse_rate_range", "measurement_position",
             "multiple_bond"]
    feature = features.decode_bp_feature(sim.encode_bp_feature(**dict(zip(names, bits, strict=True))))
    assert [
        feature.body_movement_detection, feature.cuff_fit_detection, feature.irregular_pulse_detection,
        feature.pulse_rate_range_detection, feature.measurement_position_detection, feature.multiple_bond,
    ] == bits


GLUCOSE_FEATURE_NAMES = {
    "low_battery_detection": "low_battery_detection",
    "sensor_malfunction_detection": "sensor_malfunction_detection",
    "sensor_sample_size": "sample_size",
    "sensor_strip_insertion_error": "strip_insertion_error_detection",
    "sensor_strip_type_error": "strip_type_error_detection",
    "sensor_result_high_low": "result_high_low_detection",
    "sensor_temperature_high_low": "temperature_high_low_detection",
    "sensor_read_interrupt": "read_interrupt_detection",
    "general_device_fault": "general_device_fault",
    "time_fault": "time_fault",
    "multiple_bond": "multiple_bond",
}


@given(st.sets(st.sampled_from(sorted(GLUCOSE_FEATURE_NAMES))))
def test_glucose_feature(names: set[str]) -> None:
    feature = features.decode_glucose_feature(sim.encode_glucose_feature(*names))
    for sim_name, ours in GLUCOSE_FEATURE_NAMES.items():
        assert getattr(feature, ours) is (sim_name in names)


@given(st.booleans(), st.booleans(), st.booleans(), st.integers(1, 7), st.integers(1, 3))
def test_weight_feature(timestamp: bool, users: bool, bmi: bool, weight_code: int, height_code: int) -> None:
    feature = features.decode_weight_feature(sim.encode_weight_feature(
        timestamp=timestamp, multiple_users=users, bmi=bmi, weight_resolution=weight_code,
        height_resolution=height_code,
    ))
    assert (feature.time_stamp, feature.multiple_users, feature.bmi) == (timestamp, users, bmi)
    assert feature.weight_resolution_kg == {1: 0.5, 2: 0.2, 3: 0.1, 4: 0.05, 5: 0.02, 6: 0.01, 7: 0.005}[weight_code]
    assert feature.height_resolution_in == {1: 1.0, 2: 0.5, 3: 0.1}[height_code]
