"""The feature characteristics: what a device says it supports.

Blood Pressure Feature 0x2A49 (BLS 1.1 section 3.3, uint16), Glucose Feature 0x2A51 (GLS 1.0 section
3.105, uint16), Weight Scale Feature 0x2A9E (WSS 1.0 section 3.1, uint32 with resolution codes).
Bits newer revisions define are ignored; a frame shorter than the field is a TruncatedError.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.codecs.common import Reader


@dataclass(frozen=True, slots=True)
class BloodPressureFeature:
    body_movement_detection: bool
    cuff_fit_detection: bool
    irregular_pulse_detection: bool
    pulse_rate_range_detection: bool
    measurement_position_detection: bool
    multiple_bond: bool


@dataclass(frozen=True, slots=True)
class GlucoseFeature:
    low_battery_detection: bool
    sensor_malfunction_detection: bool
    sample_size: bool
    strip_insertion_error_detection: bool
    strip_type_error_detection: bool
    result_high_low_detection: bool
    temperature_high_low_detection: bool
    read_interrupt_detection: bool
    general_device_fault: bool
    time_fault: bool
    multiple_bond: bool


@dataclass(frozen=True, slots=True)
class WeightScaleFeature:
    time_stamp: bool
    multiple_users: bool
    bmi: bool
    weight_resolution_kg: float | None
    """None: not specified (code 0) or a reserved code."""
    weight_resolution_lb: float | None
    height_resolution_m: float | None
    height_resolution_in: float | None


def _bits(value: int, count: int) -> list[bool]:
    return [bool(value & (1 << bit)) for bit in range(count)]


def decode_bp_feature(data: bytes) -> BloodPressureFeature:
    """Blood Pressure Feature (0x2A49): bits 0-5."""
    return BloodPressureFeature(*_bits(Reader(data).u16("blood pressure feature"), 6))


def decode_glucose_feature(data: bytes) -> GlucoseFeature:
    """Glucose Feature (0x2A51): bits 0-10."""
    return GlucoseFeature(*_bits(Reader(data).u16("glucose feature"), 11))


# WSS 1.0 table 3.2: resolution code -> (SI, imperial).
_WEIGHT_RESOLUTIONS = {
    1: (0.5, 1.0), 2: (0.2, 0.5), 3: (0.1, 0.2), 4: (0.05, 0.1), 5: (0.02, 0.05), 6: (0.01, 0.02), 7: (0.005, 0.01),
}
_HEIGHT_RESOLUTIONS = {1: (0.01, 1.0), 2: (0.005, 0.5), 3: (0.001, 0.1)}


def decode_weight_feature(data: bytes) -> WeightScaleFeature:
    """Weight Scale Feature (0x2A9E): bit 0 time stamp, 1 multiple users, 2 BMI, bits 3-6 weight
    resolution code, bits 7-9 height resolution code."""
    value = Reader(data).u32("weight scale feature")
    weight = _WEIGHT_RESOLUTIONS.get((value >> 3) & 0x0F, (None, None))
    height = _HEIGHT_RESOLUTIONS.get((value >> 7) & 0x07, (None, None))
    time_stamp, multiple_users, bmi = _bits(value, 3)
    return WeightScaleFeature(time_stamp, multiple_users, bmi, weight[0], weight[1], height[0], height[1])
