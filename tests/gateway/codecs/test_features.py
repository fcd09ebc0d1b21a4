"""Feature characteristics, frames built by hand from the specs: Blood Pressure Feature 0x2A49
(BLS 1.1 section 3.3), Glucose Feature 0x2A51 (GLS 1.0 section 3.105), Weight Scale Feature 0x2A9E
(WSS 1.0 section 3.1, resolution codes of its table)."""

from __future__ import annotations

import pytest

from gateway.codecs.common import TruncatedError
from gateway.codecs.features import decode_bp_feature, decode_glucose_feature, decode_weight_feature

pytestmark = pytest.mark.unit


def test_bp_feature_bits() -> None:
    feature = decode_bp_feature(bytes.fromhex("2500"))  # bits 0, 2, 5
    assert feature.body_movement_detection and feature.irregular_pulse_detection and feature.multiple_bond
    assert not (feature.cuff_fit_detection or feature.pulse_rate_range_detection
                or feature.measurement_position_detection)
    # Bits later revisions define (e.g. bit 8) are ignored.
    assert decode_bp_feature(bytes.fromhex("0001")) == decode_bp_feature(bytes.fromhex("0000"))


def test_glucose_feature_bits() -> None:
    feature = decode_glucose_feature(bytes.fromhex("0304"))  # bits 0, 1, 10
    assert feature.low_battery_detection and feature.sensor_malfunction_detection and feature.multiple_bond
    assert not feature.time_fault and not feature.sample_size


@pytest.mark.parametrize(
    ("code", "kg", "lb"), [(0, None, None), (1, 0.5, 1.0), (4, 0.05, 0.1), (7, 0.005, 0.01), (8, None, None)]
)
def test_weight_resolution_codes(code: int, kg: float | None, lb: float | None) -> None:
    feature = decode_weight_feature((0b111 | code << 3).to_bytes(4, "little"))
    assert feature.time_stamp and feature.multiple_users and feature.bmi
    assert (feature.weight_resolution_kg, feature.weight_resolution_lb) == (kg, lb)


@pytest.mark.parametrize(("code", "m", "inch"), [(0, None, None), (1, 0.01, 1.0), (3, 0.001, 0.1), (4, None, None)])
def test_height_resolution_codes(code: int, m: float | None, inch: float | None) -> None:
    feature = decode_weight_feature((code << 7).to_bytes(4, "little"))
    assert (feature.height_resolution_m, feature.height_resolution_in) == (m, inch)
    assert not feature.bmi


@pytest.mark.parametrize(
    ("decoder", "length"), [(decode_bp_feature, 2), (decode_glucose_feature, 2), (decode_weight_feature, 4)]
)
def test_short_feature_frames_are_truncated(decoder, length: int) -> None:
    with pytest.raises(TruncatedError) as err:
        decoder(bytes(length - 1))
    assert err.value.offset == 0 and err.value.needed == length
