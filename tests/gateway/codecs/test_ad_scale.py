"""A&D weighing data lines. Vectors: the format examples of A&D's published output formats as
quoted in specs/serial-protocols.md §2 (``ST,+00123.45  g``, ``ST,GS,+0123.45kg``,
``OL,+9999999E+19``, ``OL,GS,+    .  kg``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.codecs.ad_scale import decode_line_reading, parse_line
from gateway.codecs.common import DecodeError, InvalidFieldError, NoReadingError
from gateway.readings.decode import decode_to_json, run

pytestmark = pytest.mark.unit


def test_balance_form_from_the_format_document() -> None:
    line = parse_line(b"ST,+00123.45  g\r\n")
    assert (line.header, line.weight_kind, line.value, line.unit) == ("ST", None, 123.45, "g")


def test_indicator_form_gross_weight_in_kg() -> None:
    m = decode_line_reading(b"ST,GS,+0070.45kg\r\n")
    assert m.kind == "body_weight"
    assert (m.values["body_weight"].value, m.values["body_weight"].unit) == (70.45, "kg")
    assert m.details["weight_kind"] == "gross"


def test_pounds_convert_to_kilograms_in_the_cli() -> None:
    out = decode_to_json("serial.ad_scale", b"ST,+00154.80 lb\r\n".hex())
    assert out["values"]["body_weight"]["value"] == pytest.approx(154.8 * 0.45359237, abs=1e-6)
    assert out["values"]["body_weight"]["original_unit"] == "[lb_av]"


def test_csv_variant_separates_the_unit_with_a_comma() -> None:
    assert decode_line_reading(b"ST,+00071.20, kg\r\n").values["body_weight"].value == 71.2


@pytest.mark.parametrize("line", [b"OL,+9999999E+19\r\n", b"OL,GS,+    .  kg\r\n"])
def test_overload_lines_carry_no_reading_and_exit_2(line: bytes, capsys) -> None:
    assert parse_line(line).overload and parse_line(line).value is None
    with pytest.raises(NoReadingError, match="overload"):
        decode_line_reading(line)
    assert run("serial.ad_scale", line.hex()) == 2
    assert "overload" in capsys.readouterr().err


def test_unstable_line_keeps_its_value_for_the_driver_but_is_no_reading() -> None:
    assert parse_line(b"US,+00071.20 kg\r\n").value == 71.2
    with pytest.raises(NoReadingError, match="unstable"):
        decode_line_reading(b"US,+00071.20 kg\r\n")


def test_grams_are_not_a_body_weight_unit() -> None:
    with pytest.raises(InvalidFieldError, match="'g'"):
        decode_line_reading(b"ST,+00123.45  g\r\n")


@pytest.mark.parametrize(
    ("line", "field"),
    [(b"XX,+0070.00kg", "header"), (b"ST;+0070.00kg", "separator"), (b"ST,GS,+00A0.00kg", "data"),
     (b"S", "header"), (b"ST,\xff\xfe", "line")],
)
def test_garbage_names_the_field(line: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_line(line)
    assert info.value.field == field


@given(
    value=st.decimals(min_value=0, max_value=9999, places=2, allow_nan=False),
    unit=st.sampled_from(["kg", "lb"]),
    indicator=st.booleans(),
)
def test_formatted_stable_lines_decode_to_their_value(value, unit: str, indicator: bool) -> None:
    number = f"+{value:07.2f}" if indicator else f"+{value:08.2f}"
    line = f"ST,GS,{number}{unit}\r\n" if indicator else f"ST,{number} {unit}\r\n"
    m = decode_line_reading(line.encode())
    assert m.values["body_weight"].value == pytest.approx(float(value))


@given(st.binary(max_size=40))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        decode_line_reading(data)
    except DecodeError:
        pass
