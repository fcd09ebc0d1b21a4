"""Temperature Measurement (0x2A1C), Intermediate Temperature (0x2A1E), Temperature Type (0x2A1D).

Public examples of specs/ble-gatt.md: ``066e0100ffea070c03080f0006`` (36.6 Cel, 2026-12-03 08:15:00,
mouth) and ``01da0300ff`` (98.6 degF = 37.0 Cel, no time stamp); other frames built here with
``struct`` from HTS 1.0 section 3.1, over every flag combination.
"""

from __future__ import annotations

import struct
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.common import InvalidFieldError, TruncatedError
from gateway.codecs.thermometer import (
    TEMPERATURE_TYPES,
    decode_intermediate_temperature,
    decode_measurement,
    decode_temperature_type,
    with_temperature_type,
)
from gateway.readings.decode import decode_to_json
from gateway.readings.normalise import canonical_values

pytestmark = pytest.mark.unit


def float32(mantissa: int, exponent: int) -> bytes:
    return (((exponent & 0xFF) << 24) | (mantissa & 0xFFFFFF)).to_bytes(4, "little")


def test_published_celsius_example_with_time_and_site() -> None:
    m = decode_measurement(bytes.fromhex("066e0100ffea070c03080f0006"))
    assert m.values["body_temperature"].value == 36.6 and m.values["body_temperature"].unit == "Cel"
    assert m.device_time == datetime(2026, 12, 3, 8, 15, 0)
    assert m.details["temperature_type"] == "mouth" and m.kind == "body_temperature" and m.flags == ()


def test_published_fahrenheit_example_is_converted_and_keeps_the_original() -> None:
    out = decode_to_json("ble.thermometer", "01da0300ff")
    assert out["values"] == {"body_temperature": {"value": 37.0, "unit": "Cel", "original_value": 98.6,
                                                  "original_unit": "[degF]"}}
    assert out["device_time"] is None and out["flags"] == [] and out["kind"] == "body_temperature"


@pytest.mark.parametrize(("degf", "cel"), [(32.0, 0.0), (212.0, 100.0), (100.4, 38.0), (95.0, 35.0), (-40.0, -40.0)])
def test_fahrenheit_conversion_has_an_offset_not_only_a_factor(degf: float, cel: float) -> None:
    mantissa, exponent = round(degf * 10), -1
    m = decode_measurement(bytes([0x01]) + float32(mantissa, exponent))
    assert canonical_values(m)["body_temperature"].value == pytest.approx(cel, abs=1e-6)


@pytest.mark.parametrize(("raw", "special"), [(0x007FFFFF, "NaN"), (0x00800000, "NRes"), (0x007FFFFE, "+INFINITY"),
                                              (0x00800002, "-INFINITY"), (0x00800001, "reserved")])
def test_float_specials_give_no_value_and_say_unsuccessful(raw: int, special: str) -> None:
    m = decode_measurement(bytes([0]) + raw.to_bytes(4, "little"))
    assert m.values == {} and m.flags == ("measurement_unsuccessful",)
    assert m.details["body_temperature_special"] == special


def test_intermediate_temperature_is_flagged_and_never_a_plain_measurement() -> None:
    m = decode_intermediate_temperature(bytes([0]) + float32(372, -1))
    assert m.flags == ("intermediate",) and m.profile == "ble.intermediate_temperature"


def test_temperature_type_characteristic_and_reserved_codes() -> None:
    assert [decode_temperature_type(bytes([c])) for c in range(1, 10)] == list(TEMPERATURE_TYPES.values())
    assert decode_temperature_type(b"\x0c") == "reserved_12"
    with pytest.raises(TruncatedError):
        decode_temperature_type(b"")
    with pytest.raises(InvalidFieldError):
        decode_temperature_type(b"\x01\x02")
    fixed = with_temperature_type(decode_measurement(bytes([0]) + float32(366, -1)), "armpit")
    assert fixed.details["temperature_type"] == "armpit"
    # A frame that names its own site keeps it.
    own = decode_measurement(bytes.fromhex("066e0100ffea070c03080f0006"))
    assert with_temperature_type(own, "armpit").details["temperature_type"] == "mouth"


def test_below_absolute_zero_is_contradictory() -> None:
    with pytest.raises(InvalidFieldError, match="temperature at byte 1"):
        decode_measurement(bytes([0]) + float32(-3000, -1))


@settings(max_examples=300, deadline=None)
@given(flags=st.integers(0, 255), mantissa=st.integers(300, 420), site=st.integers(1, 9),
       when=st.datetimes(min_value=datetime(2010, 1, 1), max_value=datetime(2099, 1, 1)))
def test_every_flag_combination(flags: int, mantissa: int, site: int, when: datetime) -> None:
    when = when.replace(microsecond=0)
    frame = bytes([flags]) + float32(mantissa, -1)
    fields = [("flags", 0), ("temperature", 1)]
    if flags & 0x02:
        fields.append(("time stamp", len(frame)))
        frame += struct.pack("<HBBBBB", when.year, when.month, when.day, when.hour, when.minute, when.second)
    if flags & 0x04:
        fields.append(("temperature type", len(frame)))
        frame += bytes([site])
    m = decode_measurement(frame)
    assert m.values["body_temperature"].value == float(f"{mantissa}e-1")
    assert m.values["body_temperature"].unit == ("[degF]" if flags & 1 else "Cel")
    assert m.device_time == (when if flags & 0x02 else None)
    assert m.details.get("temperature_type") == (TEMPERATURE_TYPES[site] if flags & 0x04 else None)
    for cut in range(len(frame)):
        name, start = [f for f in fields if f[1] <= cut][-1]
        with pytest.raises(TruncatedError) as caught:
            decode_measurement(frame[:cut])
        assert caught.value.field == name and caught.value.offset == start
