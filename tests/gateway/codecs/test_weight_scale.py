"""Weight Measurement (0x2A9D), frames built by hand from WSS 1.0 section 3.2: weight uint16 at
0.005 kg (SI) or 0.01 lb (imperial), 0xFFFF unsuccessful; one flag bit (3) for BMI *and* height
(specs/ble-gatt.md warns that a popular PyPI library treats them as two flags: wrong)."""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.codecs.common import TruncatedError
from gateway.codecs.weight_scale import decode_measurement

pytestmark = pytest.mark.unit


def _u16(value: int) -> str:
    return value.to_bytes(2, "little").hex()


def test_si_weight_with_time_user_bmi_and_height() -> None:
    frame = bytes.fromhex("0e" + _u16(14300) + "e40701020a1530" + "02" + _u16(240) + _u16(1746))
    m = decode_measurement(frame)
    assert {k: (q.value, q.unit) for k, q in m.values.items()} == {
        "body_weight": (71.5, "kg"),
        "bmi": (24.0, "kg/m2"),
        "height": (1.746, "m"),
    }
    assert m.device_time == datetime(2020, 1, 2, 10, 21, 48)
    assert m.user_index == 2 and m.kind == "body_weight" and m.flags == ()


def test_imperial_weight_and_height() -> None:
    m = decode_measurement(bytes.fromhex("09" + _u16(15763) + _u16(235) + _u16(687)))
    assert {k: (q.value, q.unit) for k, q in m.values.items()} == {
        "body_weight": (157.63, "[lb_av]"),
        "bmi": (23.5, "kg/m2"),
        "height": (68.7, "[in_i]"),
    }


def test_weight_resolution_is_exact_at_every_step() -> None:
    for raw in (0, 1, 3, 199, 14301, 65534):
        assert decode_measurement(bytes.fromhex("00" + _u16(raw))).values["body_weight"].value == float(
            f"{raw * 5}e-3"
        )


def test_unsuccessful_weight_has_no_value_and_a_flag() -> None:
    m = decode_measurement(bytes.fromhex("04ffff01"))
    assert "body_weight" not in m.values and m.flags == ("measurement_unsuccessful",)
    assert m.user_index == 1


def test_unknown_user_is_none() -> None:
    assert decode_measurement(bytes.fromhex("04" + _u16(14000) + "ff")).user_index is None


def test_unknown_time_stamp_keeps_fields() -> None:
    m = decode_measurement(bytes.fromhex("02" + _u16(14000) + "00000000000000"))
    assert m.device_time is None and m.details["device_time_partial"] == "0000-00-00 00:00:00"


@pytest.mark.parametrize(
    ("hex_text", "field", "offset"),
    [("00", "weight", 1), ("02 1027 e407", "time stamp", 3), ("04 1027", "user id", 3),
     ("08 1027 f000", "height", 5), ("08 1027", "bmi", 3)],
)
def test_truncation_names_field_and_byte(hex_text: str, field: str, offset: int) -> None:
    with pytest.raises(TruncatedError) as err:
        decode_measurement(bytes.fromhex(hex_text))
    assert (err.value.field, err.value.offset) == (field, offset)
