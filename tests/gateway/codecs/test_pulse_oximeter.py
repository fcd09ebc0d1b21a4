"""PLX Spot-Check (0x2A5E), PLX Continuous (0x2A5F) and PLX Features (0x2A60).

The public example of specs/ble-gatt.md (``0161004800ea070c03080f00``: spot-check, SpO2 97 %, PR
72/min, 2026-12-03 08:15:00) and frames built here by hand from PLXS 1.0 sections 3.1-3.3 with
``struct`` (not with the simulator or the codec), over every flag combination.
"""

from __future__ import annotations

import struct
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.common import InvalidFieldError, TruncatedError
from gateway.codecs.pulse_oximeter import (
    DEVICE_SENSOR_STATUS_BITS,
    MEASUREMENT_STATUS_BITS,
    PROVENANCE_BITS,
    decode_continuous,
    decode_features,
    decode_spot_check,
    status_flags,
)
from gateway.metrics import FLAGS, PULSE_OXIMETRY_FLAGS
from gateway.readings.decode import decode_to_json

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=300, deadline=None)


def sfloat(mantissa: int, exponent: int = 0) -> bytes:
    return (((exponent & 0xF) << 12) | (mantissa & 0xFFF)).to_bytes(2, "little")


def date_time(dt: datetime) -> bytes:
    return struct.pack("<HBBBBB", dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second)


def test_published_spot_check_example() -> None:
    m = decode_spot_check(bytes.fromhex("0161004800ea070c03080f00"))
    assert {k: (q.value, q.unit) for k, q in m.values.items()} == {
        "spo2": (97.0, "%"), "spo2_pulse_rate": (72.0, "/min"),
    }
    assert m.device_time == datetime(2026, 12, 3, 8, 15, 0)
    assert m.kind == "pulse_oximetry" and m.profile == "ble.plx_spot_check"
    assert m.flags == () and m.sequence is None


def test_published_example_through_the_decode_json() -> None:
    out = decode_to_json("ble.plx_spot_check", "0161004800ea070c03080f00")
    assert out["values"] == {"spo2": {"value": 97.0, "unit": "%"}, "spo2_pulse_rate": {"value": 72.0, "unit": "/min"}}
    assert out["device_time"] == "2026-12-03T08:15:00" and out["flags"] == []
    assert out["kind"] == "pulse_oximetry" and out["sequence"] is None and out["user_index"] is None


def test_every_status_bit_has_a_name_and_quality_bits_are_catalogue_flags() -> None:
    assert sorted(MEASUREMENT_STATUS_BITS) == list(range(5, 16))
    assert sorted(DEVICE_SENSOR_STATUS_BITS) == list(range(16))
    assert set(PULSE_OXIMETRY_FLAGS) <= FLAGS
    assert status_flags(1 << 15, 1 << 5) == ["invalid_measurement", "low_perfusion"]
    # Provenance bits are facts about the value, not problems with it: never flags.
    assert status_flags((1 << 7) | (1 << 8) | (1 << 9), 1) == []
    assert status_flags(0x001F, 0xFF0000) == []  # reserved bits are ignored


def test_all_fields_with_statuses_clock_not_set_and_pai() -> None:
    status = (1 << 14) | (1 << 9)  # questionable, from storage
    sensor = (1 << 5) | (1 << 13) | (1 << 20)  # low perfusion, sensor displaced, a reserved bit
    frame = (bytes([0x1F]) + sfloat(885, -1) + sfloat(61) + date_time(datetime(2026, 12, 3, 2, 0, 5))
             + struct.pack("<H", status) + sensor.to_bytes(3, "little") + sfloat(34, -2))
    m = decode_spot_check(frame)
    assert m.values["spo2"].value == 88.5 and m.values["spo2_pulse_rate"].value == 61.0
    assert m.values["pulse_amplitude_index"].value == 0.34
    assert m.flags == ("questionable_measurement", "low_perfusion", "sensor_displaced", "clock_unset")
    assert m.details["measurement_status"] == status and m.details["device_sensor_status"] == sensor
    assert "data_from_measurement_storage" in m.details["measurement_status_bits"]
    assert m.details["device_clock_not_set"] is True
    # The time stamp of a clock that was never set is still the record's identity: kept as sent.
    assert m.device_time == datetime(2026, 12, 3, 2, 0, 5)


@pytest.mark.parametrize("special", [0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801])
def test_special_values_leave_the_metric_out(special: int) -> None:
    m = decode_spot_check(bytes([0]) + special.to_bytes(2, "little") + sfloat(70))
    assert "spo2" not in m.values and m.values["spo2_pulse_rate"].value == 70
    assert "measurement_unsuccessful" not in m.flags and "spo2_special" in m.details
    nothing = decode_spot_check(bytes([0]) + special.to_bytes(2, "little") * 2)
    assert nothing.values == {} and nothing.flags == ("measurement_unsuccessful",)


@pytest.mark.parametrize(
    ("frame", "field", "offset"),
    [
        (bytes([0]) + sfloat(101) + sfloat(70), "spo2", 1),
        (bytes([0]) + sfloat(-1) + sfloat(70), "spo2", 1),
        (bytes([0]) + sfloat(97) + sfloat(-5), "pulse rate", 3),
        (bytes([0x08]) + sfloat(97) + sfloat(70) + sfloat(101), "pulse amplitude index", 5),
    ],
)
def test_contradictory_values_name_field_and_byte(frame: bytes, field: str, offset: int) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        decode_spot_check(frame)
    assert caught.value.field == field and caught.value.offset == offset
    assert f"byte {offset}" in str(caught.value)


def test_impossible_date_is_an_invalid_field() -> None:
    with pytest.raises(InvalidFieldError, match="timestamp at byte 5"):
        decode_spot_check(bytes([1]) + sfloat(97) + sfloat(70) + struct.pack("<HBBBBB", 2026, 13, 1, 0, 0, 0))


def _spot_fields(flags: int, status: int, sensor: int) -> tuple[bytes, list[tuple[str, int]]]:
    """Frame for ``flags`` and the (field, offset) of each field, in wire order."""
    parts = [("flags", bytes([flags])), ("spo2", sfloat(95)), ("pulse rate", sfloat(64))]
    if flags & 0x01:
        parts.append(("timestamp", date_time(datetime(2026, 1, 2, 3, 4, 5))))
    if flags & 0x02:
        parts.append(("measurement status", struct.pack("<H", status)))
    if flags & 0x04:
        parts.append(("device and sensor status", sensor.to_bytes(3, "little")))
    if flags & 0x08:
        parts.append(("pulse amplitude index", sfloat(52, -1)))
    offsets, frame = [], b""
    for name, chunk in parts:
        offsets.append((name, len(frame)))
        frame += chunk
    return frame, offsets


@SETTINGS
@given(flags=st.integers(0, 255), status=st.integers(0, 0xFFFF), sensor=st.integers(0, 0xFFFFFF))
def test_spot_check_every_flag_combination(flags: int, status: int, sensor: int) -> None:
    frame, fields = _spot_fields(flags, status, sensor)
    m = decode_spot_check(frame)
    assert m.values["spo2"].value == 95 and m.values["spo2_pulse_rate"].value == 64
    assert ("pulse_amplitude_index" in m.values) == bool(flags & 0x08)
    assert (m.device_time is not None) == bool(flags & 0x01)
    expected = status_flags(status if flags & 0x02 else None, sensor if flags & 0x04 else None)
    expected += ["clock_unset"] if flags & 0x10 else []
    assert list(m.flags) == list(dict.fromkeys(expected))
    assert set(m.flags) <= FLAGS
    # Every cut inside a field announced by the flags names that field and where it starts.
    for cut in range(len(frame)):
        name, start = [f for f in fields if f[1] <= cut][-1]
        with pytest.raises(TruncatedError) as caught:
            decode_spot_check(frame[:cut])
        assert caught.value.field == name and caught.value.offset == start


@SETTINGS
@given(flags=st.integers(0, 255), status=st.integers(0, 0xFFFF), sensor=st.integers(0, 0xFFFFFF))
def test_continuous_every_flag_combination(flags: int, status: int, sensor: int) -> None:
    frame = bytes([flags]) + sfloat(96) + sfloat(58)
    if flags & 0x01:
        frame += sfloat(94) + sfloat(60)
    if flags & 0x02:
        frame += sfloat(97) + sfloat(57)
    if flags & 0x04:
        frame += struct.pack("<H", status)
    if flags & 0x08:
        frame += sensor.to_bytes(3, "little")
    if flags & 0x10:
        frame += sfloat(21, -1)
    m = decode_continuous(frame)
    assert m.profile == "ble.plx_continuous" and m.device_time is None
    assert m.values["spo2"].value == 96 and m.values["spo2_pulse_rate"].value == 58
    assert (m.details.get("spo2_fast"), m.details.get("pulse_rate_fast")) == ((94, 60) if flags & 1 else (None, None))
    assert (m.details.get("spo2_slow"), m.details.get("pulse_rate_slow")) == ((97, 57) if flags & 2 else (None, None))
    assert ("pulse_amplitude_index" in m.values) == bool(flags & 0x10)
    assert list(m.flags) == status_flags(status if flags & 0x04 else None, sensor if flags & 0x08 else None)
    for cut in range(1, len(frame)):
        with pytest.raises(TruncatedError):
            decode_continuous(frame[:cut])


def test_continuous_fast_value_out_of_range_is_contradictory() -> None:
    with pytest.raises(InvalidFieldError, match="spo2 fast at byte 5"):
        decode_continuous(bytes([0x01]) + sfloat(96) + sfloat(58) + sfloat(140) + sfloat(60))


def test_features_with_both_support_masks() -> None:
    data = struct.pack("<HH", 0b1100_0111, 0xE000) + (0x00A020).to_bytes(3, "little")
    f = decode_features(data)
    assert f.measurement_status_support and f.device_sensor_status_support and f.spot_check_storage
    assert not f.spot_check_timestamp and f.pulse_amplitude_index and f.multiple_bonds
    assert f.supported_measurement_status == 0xE000 and f.supported_device_sensor_status == 0x00A020
    assert decode_features(struct.pack("<H", 0x0C)).supported_measurement_status is None
    with pytest.raises(TruncatedError, match="device and sensor status support"):
        decode_features(struct.pack("<HH", 0x03, 0) + b"\x00")


def test_provenance_names_are_status_bits() -> None:
    names = set(MEASUREMENT_STATUS_BITS.values()) | set(DEVICE_SENSOR_STATUS_BITS.values())
    assert PROVENANCE_BITS <= names
