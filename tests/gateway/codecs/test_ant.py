"""ANT serial messages and ANT+ HRM pages.

Vectors: the reset and open-channel messages from "ANT Message Protocol and Usage" rev 5.1 §7.1
examples (``A4 01 4A 00 EF`` reset, ``A4 01 4B 00 EE`` open channel 0); HRM page layout from the
ANT+ Heart Rate device profile §5 (bytes 4-5 event time, 6 count, 7 computed heart rate).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.codecs.ant import (
    MSG_BROADCAST,
    MSG_OPEN_CHANNEL,
    MSG_RESET,
    broadcast_channel_id,
    decode_message_reading,
    encode_message,
    parse_channel_event,
    parse_channel_id,
    parse_heart_rate_page,
    parse_message,
)
from gateway.codecs.common import ChecksumError, DecodeError, NoReadingError, TruncatedError
from gateway.readings.decode import decode_to_json, run

pytestmark = pytest.mark.unit


def test_reset_and_open_messages_match_the_protocol_document() -> None:
    assert encode_message(MSG_RESET, b"\x00") == bytes.fromhex("a4014a00ef")
    assert encode_message(MSG_OPEN_CHANNEL, b"\x00") == bytes.fromhex("a4014b00ee")


def test_page_4_gives_heart_rate_and_an_rr_interval() -> None:
    # page 4 with toggle, manufacturer byte, previous event 0x0400, event 0x0800 (1024 ticks = 1 s),
    # count 17, heart rate 60.
    data = bytes([0x84, 0xFF, 0x00, 0x04, 0x00, 0x08, 17, 60])
    message = encode_message(MSG_BROADCAST, b"\x00" + data)
    m = decode_message_reading(message)
    assert m.values["heart_rate"].value == 60
    assert m.values["rr_intervals"].value == (1024.0,) and m.values["rr_intervals"].unit == "s/1024"
    out = decode_to_json("serial.ant_hrm", message.hex())
    assert out["values"]["rr_intervals"]["value"] == [1.0]
    assert out["values"]["heart_rate"] == {"value": 60.0, "unit": "/min"}


def test_rr_interval_wraps_at_65536() -> None:
    page = parse_heart_rate_page(bytes([0x04, 0, 0x00, 0xFE, 0x00, 0x02, 3, 72]))
    assert (page.event_time - page.previous_event_time) % 65536 == 0x0400


def test_battery_page_reports_level() -> None:
    page = parse_heart_rate_page(bytes([0x07, 80, 0, 0, 0, 0, 0, 70]))
    assert page.battery_level == 80 and page.heart_rate == 70


def test_heart_rate_zero_is_invalid(capsys) -> None:
    message = encode_message(MSG_BROADCAST, b"\x00" + bytes([0, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]))
    with pytest.raises(NoReadingError, match="invalid"):
        decode_message_reading(message)
    assert run("serial.ant_hrm", message.hex()) == 2


def test_channel_response_is_no_reading() -> None:
    response = encode_message(0x40, bytes([0, 0x4B, 0]))
    event = parse_channel_event(parse_message(response))
    assert event.ok and event.is_response and event.message_id == 0x4B
    with pytest.raises(NoReadingError, match="reply to 0x4b"):
        decode_message_reading(response)


def test_channel_id_reply_and_extended_broadcast_name_the_strap() -> None:
    reply = parse_message(encode_message(0x51, bytes([0, 0x39, 0x30, 120, 1])))
    assert parse_channel_id(reply).uid == "ant:12345:1"
    extended = parse_message(
        encode_message(MSG_BROADCAST, b"\x00" + bytes([0, 0, 0, 0, 0, 0, 1, 70]) + bytes([0x80, 0x39, 0x30, 120, 1]))
    )
    assert broadcast_channel_id(extended).uid == "ant:12345:1"


def test_bad_checksum_and_truncation() -> None:
    good = encode_message(MSG_BROADCAST, b"\x00" + bytes(8))
    with pytest.raises(ChecksumError):
        parse_message(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(TruncatedError):
        parse_message(good[:6])


@given(message_id=st.integers(0, 255), payload=st.binary(max_size=40))
def test_encoded_messages_parse_back(message_id: int, payload: bytes) -> None:
    parsed = parse_message(encode_message(message_id, payload))
    assert (parsed.message_id, parsed.payload) == (message_id, payload)


@given(payload=st.binary(min_size=1, max_size=20), index=st.integers(min_value=0), flip=st.integers(1, 255))
def test_any_single_corrupted_byte_is_caught(payload: bytes, index: int, flip: int) -> None:
    message = bytearray(encode_message(MSG_BROADCAST, payload))
    position = 3 + index % (len(message) - 3)
    message[position] ^= flip
    with pytest.raises(DecodeError):
        parse_message(bytes(message))
