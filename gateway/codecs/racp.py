"""Record Access Control Point (0x2A52) of the Glucose Service.

GLS 1.0 section 3.108 (characteristic) and 4.9/4.10 (procedures): a request is op code, operator,
operand; with operators <=, >= and within-range the operand starts with a filter type (1 = sequence
number). The device answers with a Number of Stored Records Response (op 5, operator null, uint16) or
a Response Code (op 6, operator null, request op code, response value). Example: "report records
with sequence >= 18" is ``01 03 01 12 00``; the end of the transfer is ``06 00 01 01``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from gateway.codecs.common import InvalidFieldError, Reader


class OpCode(IntEnum):
    REPORT_STORED_RECORDS = 1
    DELETE_STORED_RECORDS = 2
    ABORT_OPERATION = 3
    REPORT_NUMBER_OF_STORED_RECORDS = 4
    NUMBER_OF_STORED_RECORDS_RESPONSE = 5
    RESPONSE_CODE = 6


class Operator(IntEnum):
    NULL = 0
    ALL_RECORDS = 1
    LESS_OR_EQUAL = 2
    GREATER_OR_EQUAL = 3
    WITHIN_RANGE = 4
    FIRST_RECORD = 5
    LAST_RECORD = 6


class FilterType(IntEnum):
    SEQUENCE_NUMBER = 1
    USER_FACING_TIME = 2


class ResponseValue(IntEnum):
    SUCCESS = 1
    OP_CODE_NOT_SUPPORTED = 2
    INVALID_OPERATOR = 3
    OPERATOR_NOT_SUPPORTED = 4
    INVALID_OPERAND = 5
    NO_RECORDS_FOUND = 6
    ABORT_UNSUCCESSFUL = 7
    PROCEDURE_NOT_COMPLETED = 8
    OPERAND_NOT_SUPPORTED = 9


@dataclass(frozen=True, slots=True)
class NumberOfRecords:
    count: int


@dataclass(frozen=True, slots=True)
class ResponseCode:
    request_op: OpCode
    value: ResponseValue

    @property
    def ok(self) -> bool:
        """Success, or "no records found", which for an incremental download is the normal end."""
        return self.value in (ResponseValue.SUCCESS, ResponseValue.NO_RECORDS_FOUND)


def _sequence(value: int, name: str) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} {value} is not a uint16 sequence number")
    return value.to_bytes(2, "little")


def _request(op: OpCode, operator: Operator, min_sequence: int | None, max_sequence: int | None) -> bytes:
    head = bytes([op, operator])
    if operator in (Operator.ALL_RECORDS, Operator.FIRST_RECORD, Operator.LAST_RECORD, Operator.NULL):
        if min_sequence is not None or max_sequence is not None:
            raise ValueError(f"operator {operator.name} takes no operand")
        return head
    filter_type = bytes([FilterType.SEQUENCE_NUMBER])
    if operator is Operator.GREATER_OR_EQUAL:
        if min_sequence is None:
            raise ValueError("operator GREATER_OR_EQUAL needs min_sequence")
        return head + filter_type + _sequence(min_sequence, "min_sequence")
    if operator is Operator.LESS_OR_EQUAL:
        if max_sequence is None:
            raise ValueError("operator LESS_OR_EQUAL needs max_sequence")
        return head + filter_type + _sequence(max_sequence, "max_sequence")
    if min_sequence is None or max_sequence is None:
        raise ValueError("operator WITHIN_RANGE needs min_sequence and max_sequence")
    return head + filter_type + _sequence(min_sequence, "min_sequence") + _sequence(max_sequence, "max_sequence")


def encode_report_stored_records(
    operator: Operator | int, *, min_sequence: int | None = None, max_sequence: int | None = None
) -> bytes:
    """Report Stored Records (op 1) with ``operator``; sequence-number filters take their bounds."""
    operator = Operator(operator)
    if operator is Operator.NULL:
        raise ValueError("report stored records needs an operator other than NULL")
    return _request(OpCode.REPORT_STORED_RECORDS, operator, min_sequence, max_sequence)


def encode_report_all() -> bytes:
    """``01 01``: report all stored records (first contact with a meter)."""
    return encode_report_stored_records(Operator.ALL_RECORDS)


def encode_report_greater_or_equal(sequence: int) -> bytes:
    """``01 03 01 <uint16>``: report records with sequence number >= ``sequence`` (what is new)."""
    return encode_report_stored_records(Operator.GREATER_OR_EQUAL, min_sequence=sequence)


def encode_report_number_of_records(
    operator: Operator | int = Operator.ALL_RECORDS, *, min_sequence: int | None = None,
    max_sequence: int | None = None,
) -> bytes:
    """Report Number of Stored Records (op 4); the answer is a :class:`NumberOfRecords`."""
    operator = Operator(operator)
    if operator is Operator.NULL:
        raise ValueError("report number of stored records needs an operator other than NULL")
    return _request(OpCode.REPORT_NUMBER_OF_STORED_RECORDS, operator, min_sequence, max_sequence)


def encode_abort() -> bytes:
    """``03 00``: abort the running procedure (operator null, no operand)."""
    return bytes([OpCode.ABORT_OPERATION, Operator.NULL])


def decode_response(data: bytes) -> NumberOfRecords | ResponseCode:
    """Decode an RACP indication: a number of stored records or a response code."""
    reader = Reader(data)
    op = reader.u8("op code")
    operator = reader.u8("operator")
    if op not in (OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE, OpCode.RESPONSE_CODE):
        raise InvalidFieldError("op code", 0, f"{op} is not a response (5 number of records, 6 response code)")
    if operator != Operator.NULL:
        raise InvalidFieldError("operator", 1, f"a response carries operator null (0), got {operator}")
    if op == OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE:
        result: NumberOfRecords | ResponseCode = NumberOfRecords(reader.u16("number of records"))
    else:
        request_op = reader.u8("request op code")
        value = reader.u8("response value")
        if request_op not in (1, 2, 3, 4):
            raise InvalidFieldError("request op code", 2, f"{request_op} is not a request op code (1..4)")
        if value not in ResponseValue._value2member_map_:
            raise InvalidFieldError("response value", 3, f"{value} is not a response value (1..9)")
        result = ResponseCode(OpCode(request_op), ResponseValue(value))
    if reader.remaining:
        raise InvalidFieldError("operand", reader.pos, f"{reader.remaining} byte(s) after the response")
    return result
