"""Heart Rate Measurement (0x2A37).

Public vectors from specs/ble-gatt.md, as Nordic's Android BLE common library tests and
blessed-android's parser tests assert them: ``0055`` = 85 bpm; ``04ff`` = 255 bpm, contact supported
and not detected; ``1e5532002100`` = 85 bpm, 50 kJ, RR 33/1024 s; ``1f0101320101000201ffff`` = 257
bpm (uint16), 306 kJ, RR [1, 258, 65535]/1024 s.
"""

from __future__ import annotations

import pytest

from gateway.codecs.common import TruncatedError
from gateway.codecs.heart_rate import decode_measurement

pytestmark = pytest.mark.unit


def _values(hex_text: str) -> dict[str, tuple[object, str]]:
    return {k: (q.value, q.unit) for k, q in decode_measurement(bytes.fromhex(hex_text)).values.items()}


def test_uint8_heart_rate() -> None:
    assert _values("0055") == {"heart_rate": (85.0, "/min")}
    assert decode_measurement(bytes.fromhex("0055")).details["sensor_contact"] == "not_supported"


def test_contact_supported_but_not_detected_is_flagged_and_keeps_the_value() -> None:
    m = decode_measurement(bytes.fromhex("04ff"))
    assert m.values["heart_rate"].value == 255.0
    assert m.flags == ("sensor_contact_lost",)


def test_energy_and_one_rr_interval() -> None:
    m = decode_measurement(bytes.fromhex("1e5532002100"))
    assert _values("1e5532002100") == {
        "heart_rate": (85.0, "/min"),
        "energy_expended": (50.0, "kJ"),
        "rr_intervals": ((33.0,), "s/1024"),
    }
    assert m.flags == () and m.details["sensor_contact"] == "detected"


def test_uint16_heart_rate_with_all_rr_intervals() -> None:
    assert _values("1f0101320101000201ffff") == {
        "heart_rate": (257.0, "/min"),
        "energy_expended": (306.0, "kJ"),
        "rr_intervals": ((1.0, 258.0, 65535.0), "s/1024"),
    }


def test_contact_detected_without_support_bit_means_not_supported() -> None:
    assert decode_measurement(bytes.fromhex("0248")).flags == ()


def test_rr_flag_with_no_intervals_is_allowed() -> None:
    assert _values("1048") == {"heart_rate": (72.0, "/min")}


def test_zero_heart_rate_is_no_value() -> None:
    m = decode_measurement(bytes.fromhex("0400"))
    assert dict(m.values) == {} and m.flags == ("sensor_contact_lost", "measurement_unsuccessful")
    # RR intervals alone still make a reading.
    assert decode_measurement(bytes.fromhex("10000004")).flags == ()


@pytest.mark.parametrize(
    ("hex_text", "field", "offset"),
    [("", "flags", 0), ("01", "heart rate", 1), ("0155", "heart rate", 1), ("0855", "energy expended", 2),
     ("1055040102", "rr interval", 4)],
)
def test_truncation_names_field_and_byte(hex_text: str, field: str, offset: int) -> None:
    with pytest.raises(TruncatedError) as err:
        decode_measurement(bytes.fromhex(hex_text))
    assert (err.value.field, err.value.offset) == (field, offset)
