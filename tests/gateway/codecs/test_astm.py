"""ASTM E1381 frames and E1394 records.

Vectors: frames captured from Bayer Contour meters, published in glucodump's
``test/test_contourusb.py`` (Anders Hammarquist, 2011); the frame layout and checksum rule of
ASTM E1381-02 §6.3 as summarised in specs/serial-protocols.md §1.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.codecs.astm import (
    RecordAssembler,
    decode_frame_reading,
    decode_result,
    encode_frame,
    frame_checksum,
    parse_frame,
    parse_header,
    parse_record,
)
from gateway.codecs.common import ChecksumError, DecodeError, InvalidFieldError, NoReadingError
from gateway.readings.decode import decode_to_json, run

pytestmark = pytest.mark.unit

# Captured Contour frames (glucodump test_contourusb.py).
CONTOUR_RESULT = b"\x021R|67|^^^Glucose|7.9|mmol/L^P||B||201011281949\r\x1704\r\n"
CONTOUR_HEADER = b"\x021H|\\^&||-7880|Bayer7150^1.05\\0.00^7150-SAM2193|||||||P|1|200305121635\r\x17AE\r\n"
CONTOUR_HEADER_7390 = (
    b"\x021H|\\^&||uvmjq4|Bayer7390^01.20\\01.04\\04.02.19^7390-1163170^7396-|A=1^C=63^G=1^I=0200^R=0^S=1"
    b"^U=1^V=10600^X=070070070099180135180248^Y=360126090050099050300089^Z=1|209||||||1|201102142249\r\x1765\r\n"
)
# Frames 1..7, 0, 1, 2 from glucodump's test_multiread: frame numbers wrap modulo 8.
MULTIREAD = [b"\x021G\r\x179C\r\n", b"\x022F\r\x179C\r\n", b"\x027A\r\x179C\r\n", b"\x020H\r\x179C\r\n"]


def test_contour_result_frame_decodes_to_glucose_in_mmol_per_litre() -> None:
    m = decode_frame_reading(CONTOUR_RESULT)
    assert m.kind == "glucose"
    assert m.values["glucose"].value == 7.9 and m.values["glucose"].unit == "mmol/L"
    assert m.device_time == datetime(2010, 11, 28, 19, 49)
    assert m.details["meal"] == "before_meal"
    assert m.details["reference"] == "plasma"
    assert m.sequence is None  # record numbers shift as memory rotates: the id uses time and value


def test_decode_cli_shows_canonical_mg_per_dl_with_the_original() -> None:
    out = decode_to_json("serial.astm", CONTOUR_RESULT.hex())
    assert out["values"]["glucose"]["unit"] == "mg/dL"
    assert out["values"]["glucose"]["value"] == pytest.approx(7.9 * 18.0156, abs=1e-3)
    assert out["values"]["glucose"]["original_unit"] == "mmol/L"
    assert out["device_time"] == "2010-11-28T19:49:00"


@pytest.mark.parametrize("frame", [CONTOUR_HEADER, CONTOUR_HEADER_7390, *MULTIREAD])
def test_published_frames_have_valid_checksums(frame: bytes) -> None:
    parsed = parse_frame(frame)
    assert parsed.number == frame[1] - 0x30


def test_contour_header_gives_serial_and_meter_clock() -> None:
    header = parse_header(parse_record(parse_frame(CONTOUR_HEADER_7390).text.rstrip("\r")))
    assert header.sender_name == "Bayer7390"
    assert header.sender_version == "01.20"
    assert header.serial == "7390-1163170"
    assert header.device_time == datetime(2011, 2, 14, 22, 49)


def test_header_frame_is_no_reading_and_the_cli_exits_2(capsys) -> None:
    with pytest.raises(NoReadingError, match="header"):
        decode_frame_reading(CONTOUR_HEADER)
    assert run("serial.astm", CONTOUR_HEADER.hex()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "header" in err


def test_bad_checksum_names_both_values() -> None:
    bad = CONTOUR_RESULT[:-4] + b"05\r\n"
    with pytest.raises(ChecksumError, match="frame says 05, bytes give 04"):
        parse_frame(bad)
    assert run("serial.astm", bad.hex()) == 2


def test_e1394_result_time_in_field_13_and_range_flags() -> None:
    record = parse_record("R|1|^^^Glucose|600|mg/dL||>||||||20261122093000")
    m = decode_result(record)
    assert m.device_time == datetime(2026, 11, 22, 9, 30)
    assert m.flags == ("result_above_range",)
    low = decode_result(parse_record("R|2|^^^Glucose|10|mg/dL^P||</C||202611220800"))
    assert low.flags == ("result_below_range",)
    assert low.details["control_solution"] is True


def test_result_for_another_analyte_is_no_reading() -> None:
    with pytest.raises(NoReadingError, match="Ketone"):
        decode_result(parse_record("R|3|^^^Ketone|0.4|mmol/L||||202611220800"))


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (b"\x031R\r\x03" + b"00\r\n", "stx"),
        (b"\x029R\r\x03" + b"00\r\n", "frame_number"),
        (b"\x021R\r\x0500\r\n", "end"),
        (b"\x021R", "frame"),
        (b"\x021R\x01\r\x03" + frame_checksum(b"1R\x01\r\x03").encode() + b"\r\n", "text"),
    ],
)
def test_malformed_frames_name_the_field(frame: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_frame(frame)
    assert info.value.field == field


def test_unknown_unit_is_invalid_field() -> None:
    with pytest.raises(InvalidFieldError, match="unit"):
        decode_result(parse_record("R|1|^^^Glucose|5|g/L||||201012142048"))


def test_a_record_split_across_etb_frames_is_joined() -> None:
    record = "R|1|^^^Glucose|133|mg/dL^P||B/X||201202052034"
    first = parse_frame(encode_frame(1, record[:20], final=False))
    second = parse_frame(encode_frame(2, record[20] + record[21:] + "\r", final=True))
    assembler = RecordAssembler()
    assert assembler.add(first) == []
    assert assembler.incomplete == record[:20]
    assert assembler.add(second) == [record]
    assert decode_result(parse_record(record)).values["glucose"].value == 133


def test_contour_style_one_record_per_etb_frame() -> None:
    assembler = RecordAssembler()
    assert assembler.add(parse_frame(CONTOUR_HEADER))[0].startswith("H|")
    assert assembler.add(parse_frame(CONTOUR_RESULT))[0].startswith("R|67")
    assert assembler.incomplete == ""


text_chars = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=240)


@given(number=st.integers(0, 7), text=text_chars, final=st.booleans())
def test_encoded_frames_parse_back(number: int, text: str, final: bool) -> None:
    frame = parse_frame(encode_frame(number, text, final=final))
    assert (frame.number, frame.text, frame.final) == (number, text, final)


@given(text=text_chars, position=st.integers(min_value=0), flip=st.integers(1, 255))
def test_any_corrupted_text_byte_is_caught(text: str, position: int, flip: int) -> None:
    frame = bytearray(encode_frame(1, text + "\r"))
    index = 2 + position % (len(text) + 1)
    frame[index] = (frame[index] + flip) % 256
    with pytest.raises(DecodeError):
        parse_frame(bytes(frame))


record_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=600)


@given(records=st.lists(record_text, min_size=1, max_size=5), cuts=st.lists(st.integers(1, 240), max_size=20))
def test_records_survive_any_split_into_etb_frames(records: list[str], cuts: list[int]) -> None:
    message = "".join(r + "\r" for r in records)
    texts, position = [], 0
    for cut in cuts + [240] * (len(message) // 240 + 1):
        if position >= len(message):
            break
        texts.append(message[position : position + cut])
        position += cut
    assembler = RecordAssembler()
    out: list[str] = []
    for number, text in enumerate(texts, start=1):
        out += assembler.add(parse_frame(encode_frame(number, text, final=number == len(texts))))
    assert out == records and assembler.incomplete == ""
