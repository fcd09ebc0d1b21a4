"""Any bytes into any BLE decoder: a result or a DecodeError subclass, never IndexError, OverflowError
or another crash; and every error message is one line that names a byte."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codecs import (
    battery,
    blood_pressure,
    current_time,
    features,
    glucose,
    heart_rate,
    pulse_oximeter,
    racp,
    thermometer,
    weight_scale,
)
from gateway.codecs.common import DecodeError
from gateway.codecs.ieee11073 import decode_date_time, decode_float, decode_sfloat
from gateway.readings.decode import decode_to_json

pytestmark = pytest.mark.unit

DECODERS: dict[str, Callable[[bytes], Any]] = {
    "blood_pressure": blood_pressure.decode_measurement,
    "intermediate_cuff_pressure": blood_pressure.decode_intermediate_cuff_pressure,
    "glucose": glucose.decode_measurement,
    "glucose_context": glucose.decode_context,
    "weight_scale": weight_scale.decode_measurement,
    "heart_rate": heart_rate.decode_measurement,
    "plx_spot_check": pulse_oximeter.decode_spot_check,
    "plx_continuous": pulse_oximeter.decode_continuous,
    "plx_features": pulse_oximeter.decode_features,
    "thermometer": thermometer.decode_measurement,
    "intermediate_temperature": thermometer.decode_intermediate_temperature,
    "temperature_type": thermometer.decode_temperature_type,
    "racp": racp.decode_response,
    "battery": battery.decode_battery_level,
    "current_time": current_time.decode_current_time,
    "bp_feature": features.decode_bp_feature,
    "glucose_feature": features.decode_glucose_feature,
    "weight_feature": features.decode_weight_feature,
    "sfloat": decode_sfloat,
    "float": decode_float,
    "date_time": decode_date_time,
}

# Flags-first frames: bias the first byte over every flag combination so deep branches are reached.
frames = st.one_of(
    st.binary(max_size=40),
    st.tuples(st.integers(0, 255), st.binary(max_size=30)).map(lambda t: bytes([t[0]]) + t[1]),
    # Plausible dates make the time-offset arithmetic run instead of stopping at an invalid date.
    st.tuples(st.integers(0, 255), st.integers(0, 0xFFFF), st.sampled_from([b"\x0f\x27\x0c\x1f\x17\x3b\x3b",
              b"\x01\x00\x01\x01\x00\x00\x00", b"\xe4\x07\x01\x02\x0a\x15\x30"]), st.binary(max_size=12)).map(
        lambda t: bytes([t[0]]) + t[1].to_bytes(2, "little") + t[2] + t[3]
    ),
)


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=frames)
def test_random_bytes_only_raise_decode_errors(name: str, data: bytes) -> None:
    try:
        DECODERS[name](data)
    except DecodeError as err:
        message = str(err)
        assert "\n" not in message and message
        assert err.field is not None


@pytest.mark.parametrize("profile", ["ble.blood_pressure", "ble.glucose", "ble.weight_scale", "ble.heart_rate",
                                     "ble.plx_spot_check", "ble.plx_continuous", "ble.thermometer"])
@settings(max_examples=200, deadline=None)
@given(data=frames)
def test_random_frames_render_as_json_or_raise_decode_error(profile: str, data: bytes) -> None:
    try:
        rendered = decode_to_json(profile, data.hex())
    except DecodeError:
        return
    json.dumps(rendered, allow_nan=False)
    assert rendered["profile"] == profile
