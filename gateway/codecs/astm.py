"""ASTM E1381 low-level framing and ASTM E1394 records, as glucose meters (Contour family) send them.

Follows ``specs/serial-protocols.md`` section 1, which summarises ASTM E1381-02 §6 (frames: ``STX FN
text ETB|ETX C1 C2 CR LF``, FN modulo 8, checksum = sum of FN..ETB/ETX modulo 256 as two uppercase hex
digits) and ASTM E1394-97 §7-§10 (records; header field 14 = message date/time; result field 7 =
abnormal flags, field 13 = date/time test completed). Contour-family meters put the test time in
result field 9 and their markers in field 7, separated by ``/`` (Ascensia's published programming
guide; the captured frames in glucodump's ``test_contourusb.py``).

Pure: bytes in, frames/records/measurements out, :class:`~gateway.codecs.common.DecodeError` on bad bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from gateway.codecs.common import (
    ChecksumError,
    DecodeError,
    InvalidFieldError,
    Measurement,
    NoReadingError,
    Quantity,
    TruncatedError,
)

PROFILE = "serial.astm"

ENQ = 0x05
ACK = 0x06
NAK = 0x15
EOT = 0x04
STX = 0x02
ETX = 0x03
ETB = 0x17
CR = 0x0D
LF = 0x0A

# E1381 §6.3.1.2: at most 240 characters of text per frame (247 bytes with the framing).
MAX_TEXT = 240

DEFAULT_DELIMITERS = "|\\^&"
"""Field, repeat, component, escape: what nearly every sender declares in its header."""

# E1394 units as meters report them → UCUM codes of the metric catalogue.
_GLUCOSE_UNITS = {"mg/dl": "mg/dL", "mmol/l": "mmol/L"}
# Second component of the units field (Contour): what the reading is referenced to.
_SAMPLE_REFERENCE = {"P": "plasma", "B": "whole_blood", "C": "capillary", "D": "deproteinized_whole_blood"}
# Contour markers in result field 7 (Ascensia programming guide; glucodump's resultflagmap).
_MEAL_MARKERS = {"B": "before_meal", "A": "after_meal", "F": "fasting"}
_OTHER_MARKERS = {"D": "dont_feel_right", "I": "sick", "S": "stress", "X": "activity", "T": "test_time_changed"}

_TIMESTAMP = re.compile(r"^\d{12}(\d{2})?$")


@dataclass(frozen=True, slots=True)
class AstmFrame:
    number: int
    """Frame number 0-7 (the first frame of a transfer is 1)."""
    text: str
    final: bool
    """ETX ended the frame (the record, or message, is complete); ETB says the text continues."""
    raw: bytes


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    repeat: str = "\\"
    component: str = "^"
    escape: str = "&"

    @classmethod
    def from_header(cls, text: str) -> Delimiters:
        """E1394 §7.1.2: the four characters after the ``H`` declare the delimiters."""
        if len(text) < 5 or text[0] != "H":
            raise InvalidFieldError("header.delimiters", 1, "a header record starts with H and four delimiters")
        return cls(text[1], text[2], text[3], text[4])


@dataclass(frozen=True, slots=True)
class AstmRecord:
    kind: str
    """Record type: H header, P patient, O order, R result, C comment, L terminator, M manufacturer."""
    fields: tuple[str, ...]
    """Field n of the standard (1-based, field 1 being the record type) is ``fields[n - 1]``."""
    text: str

    def field(self, number: int) -> str:
        return self.fields[number - 1] if number <= len(self.fields) else ""


@dataclass(frozen=True, slots=True)
class AstmHeader:
    delimiters: Delimiters
    sender_name: str | None
    sender_version: str | None
    serial: str | None
    device_time: datetime | None
    """Field 14: the sender's clock when it built the message (naive local time)."""


def frame_checksum(body: bytes) -> str:
    """E1381 §6.3.1.5: the sum of FN through ETB/ETX inclusive, modulo 256, as two uppercase hex digits."""
    return f"{sum(body) % 256:02X}"


def encode_frame(number: int, text: str, *, final: bool = True) -> bytes:
    """Build one frame (what a meter sends, or what the gateway would send for a command)."""
    body = bytes([0x30 + number % 8]) + text.encode("latin-1") + bytes([ETX if final else ETB])
    return bytes([STX]) + body + frame_checksum(body).encode() + bytes([CR, LF])


def parse_frame(data: bytes) -> AstmFrame:
    """One complete frame, from STX through CR LF, checked."""
    data = bytes(data)
    if not data:
        raise TruncatedError("stx", 0, 1, 0)
    if data[0] != STX:
        raise InvalidFieldError("stx", 0, f"a frame starts with STX (0x02), got 0x{data[0]:02x}")
    if len(data) < 7:
        raise TruncatedError("frame", len(data), 7 - len(data), len(data))
    if not (0x30 <= data[1] <= 0x37):
        raise InvalidFieldError("frame_number", 1, f"expected an ASCII digit 0-7, got 0x{data[1]:02x}")
    if data[-2:] != bytes([CR, LF]):
        raise InvalidFieldError("trailer", len(data) - 2, "a frame ends in CR LF")
    end = len(data) - 5
    if data[end] not in (ETX, ETB):
        raise InvalidFieldError("end", end, f"expected ETX (0x03) or ETB (0x17), got 0x{data[end]:02x}")
    body = data[1 : end + 1]
    stated = data[end + 1 : end + 3].decode("latin-1")
    expected = frame_checksum(body)
    if stated.upper() != expected:
        raise ChecksumError(expected, stated, offset=end + 1)
    text_bytes = data[2:end]
    for index, byte in enumerate(text_bytes):
        # E1381 §6.3.1.3: control characters other than CR may not appear in the text.
        if byte < 0x20 and byte != CR:
            raise InvalidFieldError("text", 2 + index, f"control character 0x{byte:02x} inside frame text")
    return AstmFrame(data[1] - 0x30, text_bytes.decode("latin-1"), data[end] == ETX, data)


class RecordAssembler:
    """Joins frame texts into CR-terminated records.

    E1381 splits a long record over frames ending in ETB. Contour meters end *every* frame in ETB, each
    holding one whole record ending in CR, and only the last in ETX; both come out right when records
    are cut at CR rather than at frame ends.
    """

    def __init__(self) -> None:
        self._pending = ""

    def add(self, frame: AstmFrame) -> list[str]:
        text = self._pending + frame.text
        *complete, rest = text.split("\r")
        if frame.final and rest:
            complete.append(rest)
            rest = ""
        self._pending = rest
        return [record for record in complete if record]

    @property
    def incomplete(self) -> str:
        """Text of a record still waiting for its continuation frame."""
        return self._pending


def parse_record(text: str, delimiters: Delimiters | None = None) -> AstmRecord:
    if not text:
        raise InvalidFieldError("record", 0, "empty record")
    delimiters = delimiters or Delimiters()
    kind = text[0].upper()
    if kind == "H":
        delimiters = Delimiters.from_header(text)
        # The delimiter field itself contains the repeat/component/escape characters: keep it whole.
        fields = ("H", text[2:5], *text[6:].split(delimiters.field)) if len(text) > 5 else ("H", text[2:5])
        return AstmRecord("H", tuple(fields), text)
    return AstmRecord(kind, tuple(text.split(delimiters.field)), text)


def parse_timestamp(value: str, field: str) -> datetime | None:
    """``YYYYMMDDHHMM[SS]`` → naive datetime; empty → None."""
    value = value.strip()
    if not value:
        return None
    if not _TIMESTAMP.match(value):
        raise InvalidFieldError(field, None, f"expected YYYYMMDDHHMM[SS], got {value!r}")
    try:
        return datetime(
            int(value[0:4]), int(value[4:6]), int(value[6:8]), int(value[8:10]), int(value[10:12]),
            int(value[12:14]) if len(value) == 14 else 0,
        )
    except ValueError as err:
        raise InvalidFieldError(field, None, f"{value!r} is not a date: {err}") from None


def parse_header(record: AstmRecord) -> AstmHeader:
    """E1394 §7: sender id in field 5 (name^version^serial), message date/time in field 14."""
    if record.kind != "H":
        raise InvalidFieldError("record_type", 0, f"expected a header (H) record, got {record.kind!r}")
    delimiters = Delimiters.from_header(record.text)
    sender = record.field(5).split(delimiters.component)
    name = sender[0] or None
    version = sender[1].split(delimiters.repeat)[0] if len(sender) > 1 and sender[1] else None
    serial = sender[2] if len(sender) > 2 and sender[2] else None
    device_time = parse_timestamp(record.field(14), "header.datetime") if len(record.fields) >= 14 else None
    return AstmHeader(delimiters, name, version, serial, device_time)


def decode_result(record: AstmRecord, delimiters: Delimiters | None = None, *, raw: bytes = b"") -> Measurement:
    """E1394 §10 result record → glucose Measurement, in the units the meter reported."""
    delimiters = delimiters or Delimiters()
    if record.kind != "R":
        names = {"H": "a header", "P": "a patient", "O": "an order", "L": "a terminator", "C": "a comment"}
        raise NoReadingError(f"no reading: {names.get(record.kind, 'a ' + record.kind)} record carries no result")
    test = record.field(3).split(delimiters.component)
    analyte = test[3] if len(test) > 3 else test[-1]
    if analyte.strip().lower() != "glucose":
        raise NoReadingError(f"no reading: result for {analyte or 'an unnamed test'!r}, not glucose")
    value_text = record.field(4).strip()
    try:
        value = float(value_text)
    except ValueError:
        raise InvalidFieldError("result.value", None, f"not a number: {value_text!r}") from None
    unit_parts = record.field(5).split(delimiters.component)
    unit = _GLUCOSE_UNITS.get(unit_parts[0].strip().lower())
    if unit is None:
        raise InvalidFieldError("result.units", None, f"unknown glucose unit {unit_parts[0]!r}")
    markers = [m for m in re.split(r"[/" + re.escape(delimiters.repeat) + "]", record.field(7)) if m]
    flags: list[str] = []
    details: dict[str, object] = {"record_number": _int_or_none(record.field(2))}
    if len(unit_parts) > 1 and unit_parts[1] in _SAMPLE_REFERENCE:
        details["reference"] = _SAMPLE_REFERENCE[unit_parts[1]]
    for marker in markers:
        if marker == ">":
            flags.append("result_above_range")
        elif marker == "<":
            flags.append("result_below_range")
        elif marker == "C":
            details["control_solution"] = True
        elif marker in _MEAL_MARKERS:
            details["meal"] = _MEAL_MARKERS[marker]
        elif marker.startswith("Z"):
            details["after_meal_marker"] = marker
        elif marker in _OTHER_MARKERS:
            details.setdefault("markers", []).append(_OTHER_MARKERS[marker])  # type: ignore[union-attr]
        else:
            details.setdefault("unknown_markers", []).append(marker)  # type: ignore[union-attr]
    # E1394 field 13 (date/time test completed); Contour meters use field 9 instead.
    completed = record.field(13)
    contour = record.field(9)
    if completed.strip():
        device_time = parse_timestamp(completed, "result.datetime_completed")
    elif _TIMESTAMP.match(contour.strip()):
        device_time = parse_timestamp(contour, "result.datetime")
    else:
        device_time = None
    return Measurement(
        profile=PROFILE,
        kind="glucose",
        values={"glucose": Quantity(value, unit)},
        device_time=device_time,
        flags=tuple(flags),
        raw=raw or record.text.encode("latin-1"),
        details=details,
    )


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def decode_frame_reading(data: bytes) -> Measurement:
    """``rpm-gateway decode --profile serial.astm``: one framed frame holding a result record."""
    frame = parse_frame(data)
    records = [r for r in frame.text.split("\r") if r]
    if not records:
        raise NoReadingError("no reading: the frame carries no record text")
    record = parse_record(records[0])
    try:
        return decode_result(record, raw=bytes(data))
    except NoReadingError:
        raise
    except DecodeError as err:
        if not frame.final and record.kind == "R":
            raise DecodeError(f"{err} (the record continues in the next frame)", field=err.field) from None
        raise
