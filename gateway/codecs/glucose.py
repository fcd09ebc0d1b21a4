"""Glucose Measurement (0x2A18) and Glucose Measurement Context (0x2A34).

Bluetooth SIG Glucose Service 1.0, section 3.106 (measurement) and 3.107 (measurement context);
field formats from the GATT Specification Supplement. A measurement with flag bit 4 set announces a
context notification with the same sequence number; :func:`attach_context` joins the two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import Any

from gateway.codecs.common import InvalidFieldError, Measurement, Quantity, Reader
from gateway.codecs.ieee11073 import Number, read_date_time_fields, read_sfloat
from gateway.metrics import GLUCOSE_FLAGS

PROFILE = "ble.glucose"

# GLS 1.0 section 3.106.1.3: type in the low nibble, sample location in the high nibble.
SAMPLE_TYPES = {
    1: "capillary_whole_blood",
    2: "capillary_plasma",
    3: "venous_whole_blood",
    4: "venous_plasma",
    5: "arterial_whole_blood",
    6: "arterial_plasma",
    7: "undetermined_whole_blood",
    8: "undetermined_plasma",
    9: "interstitial_fluid",
    10: "control_solution",
}
SAMPLE_LOCATIONS = {
    1: "finger",
    2: "alternate_site_test",
    3: "earlobe",
    4: "control_solution",
    5: "subcutaneous",
    15: "not_available",
}
TYPE_CONTROL_SOLUTION = 10
LOCATION_CONTROL_SOLUTION = 4

# Sensor Status Annunciation bit -> flag name (specs/metrics.md), bit 0 first.
SENSOR_STATUS_FLAGS = GLUCOSE_FLAGS

# GLS 1.0 section 3.107.1: the enumerations of the measurement context.
CARBOHYDRATE_IDS = {1: "breakfast", 2: "lunch", 3: "dinner", 4: "snack", 5: "drink", 6: "supper", 7: "brunch"}
MEALS = {1: "preprandial", 2: "postprandial", 3: "fasting", 4: "casual", 5: "bedtime"}
TESTERS = {1: "self", 2: "health_care_professional", 3: "lab_test", 15: "not_available"}
HEALTH = {
    1: "minor_health_issues",
    2: "major_health_issues",
    3: "during_menses",
    4: "under_stress",
    5: "no_health_issues",
    15: "not_available",
}
MEDICATION_IDS = {
    1: "rapid_acting_insulin",
    2: "short_acting_insulin",
    3: "intermediate_acting_insulin",
    4: "long_acting_insulin",
    5: "pre_mixed_insulin",
}


def _name(table: dict[int, str], code: int) -> str:
    # Reserved codes are a newer device's business, not an error: keep the number visible.
    return table.get(code, f"reserved_{code}")


def sensor_status_flags(status: int) -> list[str]:
    """Flag names of the Sensor Status Annunciation bits that are set (bits 12-15 are reserved)."""
    return [name for bit, name in enumerate(SENSOR_STATUS_FLAGS) if status & (1 << bit)]


def decode_measurement(data: bytes) -> Measurement:
    """Decode a Glucose Measurement (GLS 1.0 section 3.106).

    ``device_time`` is the user-facing time, base time plus time offset (minutes). The concentration
    stays in the unit the flag names (Quantity unit ``kg/L`` or ``mol/L``; normalisation converts to
    mg/dL). Sample type and location go to ``details`` by name; a control-solution sample (type 10 or
    location 4) is flagged ``control_solution`` because it is not a patient reading.
    """
    reader = Reader(data)
    flags = reader.u8("flags")
    sequence = reader.u16("sequence number")
    fields, base_time = read_date_time_fields(reader, "base time")
    details: dict[str, Any] = {"context_follows": bool(flags & 0x10)}
    if base_time is None:
        details["device_time_partial"] = str(fields)
    device_time = base_time
    if flags & 0x01:
        offset_at = reader.pos
        minutes = reader.s16("time offset")
        details["time_offset_min"] = minutes
        if base_time is not None:
            try:
                device_time = base_time + timedelta(minutes=minutes)
            except OverflowError:
                raise InvalidFieldError(
                    "time offset", offset_at, f"{minutes} min moves base time {fields} out of the calendar"
                ) from None

    values: dict[str, Quantity] = {}
    status_flags: list[str] = []
    if flags & 0x02:
        unit = "mol/L" if flags & 0x04 else "kg/L"
        concentration: Number = read_sfloat(reader, "glucose concentration")
        type_location = reader.u8("type and sample location")
        sample_type, location = type_location & 0x0F, type_location >> 4
        details["sample_type"] = _name(SAMPLE_TYPES, sample_type)
        details["sample_location"] = _name(SAMPLE_LOCATIONS, location)
        if concentration.is_finite and concentration.value is not None:
            values["glucose"] = Quantity(concentration.value, unit)
        elif concentration.special is not None:
            details["glucose_special"] = concentration.special.value
        if sample_type == TYPE_CONTROL_SOLUTION or location == LOCATION_CONTROL_SOLUTION:
            status_flags.append("control_solution")
    if flags & 0x08:
        status = reader.u16("sensor status annunciation")
        details["sensor_status"] = status
        status_flags.extend(sensor_status_flags(status))
    if not values:
        status_flags.append("measurement_unsuccessful")
    return Measurement(
        profile=PROFILE,
        kind="glucose",
        values=values,
        device_time=device_time,
        sequence=sequence,
        flags=tuple(status_flags),
        raw=bytes(data),
        details=details,
    )


@dataclass(frozen=True, slots=True)
class GlucoseContext:
    """A Glucose Measurement Context (GLS 1.0 section 3.107); None where the flags leave a field out.

    Carbohydrate arrives as an SFLOAT in kilograms and is kept in grams; the medication amount is
    kept as sent with its unit (``kg`` or ``L``, flag bit 5); HbA1c in percent. Enumerations are
    names (``reserved_N`` for codes the spec reserves).
    """

    sequence: int
    carbohydrate_id: str | None = None
    carbohydrate_grams: float | None = None
    meal: str | None = None
    tester: str | None = None
    health: str | None = None
    exercise_duration_s: int | None = None
    """0xFFFF means "overrun" (longer than the field holds)."""
    exercise_intensity_percent: int | None = None
    medication_id: str | None = None
    medication_amount: float | None = None
    medication_unit: str | None = None
    hba1c_percent: float | None = None
    extended_flags: int | None = None

    def as_details(self) -> dict[str, Any]:
        """The fields that are present, named for a measurement's ``details`` (``context_`` prefix)."""
        return {f"context_{k}": v for k, v in asdict(self).items() if v is not None and k != "sequence"}


def _finite(number: Number) -> float | None:
    return number.value if number.is_finite else None


def decode_context(data: bytes) -> GlucoseContext:
    """Decode a Glucose Measurement Context (GLS 1.0 section 3.107).

    Field order: flags, sequence number, extended flags (bit 7), carbohydrate id + SFLOAT kg (bit 0),
    meal (bit 1), tester/health nibbles (bit 2), exercise duration s uint16 + intensity % (bit 3),
    medication id + SFLOAT (bit 4; bit 5: 0 kg, 1 litre), HbA1c SFLOAT % (bit 6).
    """
    reader = Reader(data)
    flags = reader.u8("flags")
    fields: dict[str, Any] = {"sequence": reader.u16("sequence number")}
    if flags & 0x80:
        fields["extended_flags"] = reader.u8("extended flags")
    if flags & 0x01:
        fields["carbohydrate_id"] = _name(CARBOHYDRATE_IDS, reader.u8("carbohydrate id"))
        fields["carbohydrate_grams"] = read_sfloat(reader, "carbohydrate").scaled(3)
    if flags & 0x02:
        fields["meal"] = _name(MEALS, reader.u8("meal"))
    if flags & 0x04:
        tester_health = reader.u8("tester and health")
        fields["tester"] = _name(TESTERS, tester_health & 0x0F)
        fields["health"] = _name(HEALTH, tester_health >> 4)
    if flags & 0x08:
        fields["exercise_duration_s"] = reader.u16("exercise duration")
        fields["exercise_intensity_percent"] = reader.u8("exercise intensity")
    if flags & 0x10:
        fields["medication_id"] = _name(MEDICATION_IDS, reader.u8("medication id"))
        fields["medication_amount"] = _finite(read_sfloat(reader, "medication"))
        fields["medication_unit"] = "L" if flags & 0x20 else "kg"
    if flags & 0x40:
        fields["hba1c_percent"] = _finite(read_sfloat(reader, "hba1c"))
    return GlucoseContext(**fields)


def attach_context(measurement: Measurement, context: GlucoseContext) -> Measurement:
    """The measurement with its context's fields added to ``details``; the sequence numbers must match."""
    if measurement.sequence != context.sequence:
        raise InvalidFieldError(
            "sequence number",
            None,
            f"context {context.sequence} does not belong to measurement {measurement.sequence}",
        )
    return replace(measurement, details={**measurement.details, **context.as_details()})


def decode_feature(data: bytes) -> Any:
    """Glucose Feature (0x2A51); see :func:`gateway.codecs.features.decode_glucose_feature`."""
    from gateway.codecs.features import decode_glucose_feature

    return decode_glucose_feature(data)
