"""IEEE 11073-20601 SFLOAT / FLOAT and the GATT Date Time.

Public vectors (tabulated in specs/ble-gatt.md): SFLOAT ``0102`` = 513, ``01fe`` = -51.1,
``ff02`` = 767, FLOAT ``01fe03fc`` = 26.1633 and Date Time ``e40701020a1530`` = 2020-01-02 10:21:48,
as asserted by Nordic's Android BLE common library tests and blessed-android's parser tests.
Property tests pack mantissa and exponent by hand from the IEEE 11073-20601 F.7/F.8 bit layout.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.codecs.common import InvalidFieldError, Reader, TruncatedError
from gateway.codecs.ieee11073 import (
    Special,
    decode_date_time,
    decode_float,
    decode_sfloat,
    encode_date_time,
    read_date_time_fields,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("hex_text", "value"), [("0102", 513.0), ("01fe", -51.1), ("ff02", 767.0)])
def test_published_sfloat_vectors(hex_text: str, value: float) -> None:
    assert decode_sfloat(bytes.fromhex(hex_text)).value == value


def test_published_float_vector() -> None:
    assert decode_float(bytes.fromhex("01fe03fc")).value == 26.1633


@pytest.mark.parametrize(
    ("raw", "special"),
    [
        (0x07FF, Special.NAN),
        (0x0800, Special.NRES),
        (0x07FE, Special.POSITIVE_INFINITY),
        (0x0802, Special.NEGATIVE_INFINITY),
        (0x0801, Special.RESERVED),
    ],
)
def test_sfloat_special_values_have_no_number(raw: int, special: Special) -> None:
    number = decode_sfloat(raw.to_bytes(2, "little"))
    assert number.special is special and number.value is None and not number.is_finite


@pytest.mark.parametrize(
    ("raw", "special"),
    [
        (0x007FFFFF, Special.NAN),
        (0x00800000, Special.NRES),
        (0x007FFFFE, Special.POSITIVE_INFINITY),
        (0x00800002, Special.NEGATIVE_INFINITY),
        (0x00800001, Special.RESERVED),
    ],
)
def test_float_special_values_have_no_number(raw: int, special: Special) -> None:
    number = decode_float(raw.to_bytes(4, "little"))
    assert number.special is special and number.value is None


def test_special_mantissas_at_other_exponents_are_numbers() -> None:
    # Specials are defined at exponent 0 only; 0x17FF is 2047 x 10^1.
    assert decode_sfloat((0x17FF).to_bytes(2, "little")).value == 20470.0
    assert decode_sfloat((0xF800).to_bytes(2, "little")).value == -204.8


def test_sfloat_needs_two_bytes() -> None:
    with pytest.raises(TruncatedError) as err:
        decode_sfloat(b"\x01")
    assert err.value.offset == 0 and err.value.field == "sfloat"


def _pack_sfloat(mantissa: int, exponent: int) -> bytes:
    # Bit layout written out here, independent of the codec: exponent in the high nibble (two's
    # complement), mantissa in the low 12 bits (two's complement), little-endian on the wire.
    raw = ((exponent & 0xF) << 12) | (mantissa & 0xFFF)
    return bytes([raw & 0xFF, raw >> 8])


def _pack_float(mantissa: int, exponent: int) -> bytes:
    raw = ((exponent & 0xFF) << 24) | (mantissa & 0xFFFFFF)
    return bytes([raw & 0xFF, (raw >> 8) & 0xFF, (raw >> 16) & 0xFF, raw >> 24])


_SFLOAT_SPECIAL_MANTISSAS = {0x7FF, -0x800, 0x7FE, -0x7FE, -0x7FF}
_FLOAT_SPECIAL_MANTISSAS = {0x7FFFFF, -0x800000, 0x7FFFFE, -0x7FFFFE, -0x7FFFFF}


@given(st.integers(-2048, 2047), st.integers(-8, 7))
def test_sfloat_decodes_mantissa_times_ten_to_the_exponent(mantissa: int, exponent: int) -> None:
    number = decode_sfloat(_pack_sfloat(mantissa, exponent))
    if exponent == 0 and mantissa in _SFLOAT_SPECIAL_MANTISSAS:
        assert number.special is not None
    else:
        assert (number.mantissa, number.exponent) == (mantissa, exponent)
        assert number.value == float(f"{mantissa}e{exponent}")


@given(st.integers(-(1 << 23), (1 << 23) - 1), st.integers(-128, 127))
def test_float_decodes_mantissa_times_ten_to_the_exponent(mantissa: int, exponent: int) -> None:
    number = decode_float(_pack_float(mantissa, exponent))
    if exponent == 0 and mantissa in _FLOAT_SPECIAL_MANTISSAS:
        assert number.special is not None
    else:
        assert (number.mantissa, number.exponent) == (mantissa, exponent)
        assert number.value == float(f"{mantissa}e{exponent}")


def test_decimal_fractions_decode_without_binary_noise() -> None:
    # 159 x 10^-1 must read 15.9 (not 15.899999999999999): values are shown to clinicians.
    assert decode_sfloat(_pack_sfloat(159, -1)).value == 15.9
    assert decode_sfloat(_pack_sfloat(95, -5)).value == 0.00095
    assert decode_sfloat(_pack_sfloat(5, -2)).scaled(3) == 50.0


def test_published_date_time_vector() -> None:
    assert decode_date_time(bytes.fromhex("e40701020a1530")) == datetime(2020, 1, 2, 10, 21, 48)


@pytest.mark.parametrize("hex_text", ["00000417142939", "e4070002000000", "e4070100000000", "00000000000000"])
def test_date_time_with_an_unknown_part_is_none(hex_text: str) -> None:
    assert decode_date_time(bytes.fromhex(hex_text)) is None


def test_unknown_year_keeps_the_fields_the_device_sent() -> None:
    fields, dt = read_date_time_fields(Reader(bytes.fromhex("000004111429" "3b")), "time stamp")
    assert dt is None and str(fields) == "0000-04-17 20:41:59"


@pytest.mark.parametrize(
    "hex_text",
    ["e4070d01000000", "e4070120000000", "e4070101180000", "e40701010a3c00", "e40701010a003c", "e407021e000000"],
)
def test_impossible_date_time_is_invalid_with_offset(hex_text: str) -> None:
    reader = Reader(b"\x00" + bytes.fromhex(hex_text), pos=1)
    with pytest.raises(InvalidFieldError) as err:
        read_date_time_fields(reader, "time stamp")
    assert err.value.field == "time stamp" and err.value.offset == 1


@given(st.datetimes(min_value=datetime(1582, 1, 1), max_value=datetime(9999, 12, 31)))
def test_date_time_round_trips(dt: datetime) -> None:
    encoded = encode_date_time(dt)
    assert encoded[:2] == dt.year.to_bytes(2, "little") and len(encoded) == 7
    assert decode_date_time(encoded) == dt.replace(microsecond=0)


def test_unknown_date_time_encodes_as_zeros() -> None:
    assert encode_date_time(None) == bytes(7)
