"""The simulator's PLXS and HTS encoders against the spec page's public examples (byte-exact), and
against the gateway's codecs over random records: two independent readings of the spec agree."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sims.ble.oximeter import device_sensor_status, encode_continuous, encode_spot_check, measurement_status
from firmware_sims.ble.thermometer import SITES, encode_temperature
from gateway.codecs import pulse_oximeter, thermometer

pytestmark = pytest.mark.unit


def test_public_examples_are_encoded_byte_exact() -> None:
    assert encode_spot_check(97, 72, timestamp=datetime(2026, 12, 3, 8, 15)).hex() == "0161004800ea070c03080f00"
    assert encode_temperature(36.6, timestamp=datetime(2026, 12, 3, 8, 15), site=SITES["mouth"]).hex() == (
        "066e0100ffea070c03080f0006")
    assert encode_temperature(98.6, fahrenheit=True).hex() == "01da0300ff"


def test_status_bits_are_where_the_spec_puts_them() -> None:
    assert measurement_status("invalid_measurement_detected") == 1 << 15
    assert device_sensor_status("low_perfusion_detected", "sensor_displaced") == (1 << 5) | (1 << 13)


percent = st.integers(0, 1000).map(lambda n: n / 10)


@settings(max_examples=150, deadline=None)
@given(spo2=percent, pr=st.integers(0, 300), status=st.none() | st.integers(0, 0xFFFF),
       sensor=st.none() | st.integers(0, 0xFFFFFF), pai=st.none() | st.integers(0, 200).map(lambda n: n / 10),
       clock_not_set=st.booleans(),
       when=st.none() | st.datetimes(min_value=datetime(2010, 1, 1), max_value=datetime(2090, 1, 1)))
def test_spot_checks_round_trip(spo2, pr, status, sensor, pai, clock_not_set, when) -> None:
    when = when.replace(microsecond=0) if when else None
    m = pulse_oximeter.decode_spot_check(encode_spot_check(spo2, pr, timestamp=when, status=status,
                                                           sensor_status=sensor, pulse_amplitude_index=pai,
                                                           clock_not_set=clock_not_set))
    assert m.values["spo2"].value == spo2 and m.values["spo2_pulse_rate"].value == pr and m.device_time == when
    assert m.details.get("measurement_status") == status and m.details.get("device_sensor_status") == sensor
    assert (m.values["pulse_amplitude_index"].value if pai is not None else None) == pai
    assert ("clock_unset" in m.flags) == clock_not_set


@settings(max_examples=100, deadline=None)
@given(spo2=percent, pr=st.integers(0, 300), fast=st.none() | st.tuples(percent, st.integers(0, 300)),
       status=st.none() | st.integers(0, 0xFFFF))
def test_continuous_round_trip(spo2, pr, fast, status) -> None:
    m = pulse_oximeter.decode_continuous(encode_continuous(spo2, pr, fast=fast, status=status))
    assert (m.values["spo2"].value, m.values["spo2_pulse_rate"].value) == (spo2, pr)
    assert (m.details.get("spo2_fast"), m.details.get("pulse_rate_fast")) == (fast or (None, None))


@settings(max_examples=150, deadline=None)
@given(value=st.integers(-500, 1100).map(lambda n: n / 10), fahrenheit=st.booleans(),
       site=st.none() | st.integers(1, 9))
def test_temperatures_round_trip(value, fahrenheit, site) -> None:
    m = thermometer.decode_measurement(encode_temperature(value, fahrenheit=fahrenheit, site=site))
    assert m.values["body_temperature"].value == value
    assert m.values["body_temperature"].unit == ("[degF]" if fahrenheit else "Cel")
    assert m.details.get("temperature_type_code") == site
