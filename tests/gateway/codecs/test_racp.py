"""Record Access Control Point (0x2A52), GLS 1.0 section 3.108.

Public vectors from specs/ble-gatt.md (Nordic's Android BLE common library RACP tests,
blessed-android): ``06000101`` success, ``06000106`` no records found, ``05000201`` 258 records; the
spec's own example request "report records with sequence >= 18" is ``01 03 01 12 00``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.codecs.common import InvalidFieldError, TruncatedError
from gateway.codecs.racp import (
    NumberOfRecords,
    OpCode,
    Operator,
    ResponseCode,
    ResponseValue,
    decode_response,
    encode_abort,
    encode_report_all,
    encode_report_greater_or_equal,
    encode_report_number_of_records,
    encode_report_stored_records,
)

pytestmark = pytest.mark.unit


def test_published_responses() -> None:
    success = decode_response(bytes.fromhex("06000101"))
    assert success == ResponseCode(OpCode.REPORT_STORED_RECORDS, ResponseValue.SUCCESS)
    no_records = decode_response(bytes.fromhex("06000106"))
    assert no_records == ResponseCode(OpCode.REPORT_STORED_RECORDS, ResponseValue.NO_RECORDS_FOUND)
    assert isinstance(no_records, ResponseCode) and no_records.ok
    assert decode_response(bytes.fromhex("05000201")) == NumberOfRecords(258)


def test_spec_example_request() -> None:
    assert encode_report_greater_or_equal(18) == bytes.fromhex("0103011200")


def test_request_encodings() -> None:
    assert encode_report_all() == bytes.fromhex("0101")
    assert encode_abort() == bytes.fromhex("0300")
    assert encode_report_number_of_records() == bytes.fromhex("0401")
    counted = encode_report_number_of_records(Operator.GREATER_OR_EQUAL, min_sequence=0x1234)
    assert counted == bytes.fromhex("0403013412")
    assert encode_report_stored_records(Operator.LAST_RECORD) == bytes.fromhex("0106")
    assert encode_report_stored_records(Operator.LESS_OR_EQUAL, max_sequence=5) == bytes.fromhex("0102010500")
    assert encode_report_stored_records(Operator.WITHIN_RANGE, min_sequence=1, max_sequence=0x0102) == bytes.fromhex(
        "010401 0100 0201"
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_report_greater_or_equal(0x10000),
        lambda: encode_report_greater_or_equal(-1),
        lambda: encode_report_stored_records(Operator.GREATER_OR_EQUAL),
        lambda: encode_report_stored_records(Operator.ALL_RECORDS, min_sequence=3),
        lambda: encode_report_stored_records(Operator.NULL),
        lambda: encode_report_stored_records(Operator.WITHIN_RANGE, min_sequence=1),
        lambda: encode_report_stored_records(9),
    ],
)
def test_impossible_requests_are_refused(call) -> None:
    with pytest.raises(ValueError):
        call()


@given(st.integers(0, 0xFFFF))
def test_greater_or_equal_carries_the_sequence_little_endian(sequence: int) -> None:
    frame = encode_report_greater_or_equal(sequence)
    assert frame[:3] == bytes([1, 3, 1]) and frame[3] | frame[4] << 8 == sequence


def test_every_response_value_decodes() -> None:
    for value in range(1, 10):
        response = decode_response(bytes([6, 0, 1, value]))
        assert isinstance(response, ResponseCode) and response.value == value
        assert response.ok is (value in (1, 6))


@pytest.mark.parametrize(
    ("hex_text", "error", "field", "offset"),
    [
        ("", TruncatedError, "op code", 0),
        ("06", TruncatedError, "operator", 1),
        ("0600", TruncatedError, "request op code", 2),
        ("060001", TruncatedError, "response value", 3),
        ("0500", TruncatedError, "number of records", 2),
        ("01010000", InvalidFieldError, "op code", 0),
        ("06010101", InvalidFieldError, "operator", 1),
        ("06000501", InvalidFieldError, "request op code", 2),
        ("06000100", InvalidFieldError, "response value", 3),
        ("0600010a", InvalidFieldError, "response value", 3),
        ("0500020100", InvalidFieldError, "operand", 4),
    ],
)
def test_bad_responses_are_typed_errors(hex_text: str, error: type, field: str, offset: int) -> None:
    with pytest.raises(error) as err:
        decode_response(bytes.fromhex(hex_text))
    assert (err.value.field, err.value.offset) == (field, offset)
