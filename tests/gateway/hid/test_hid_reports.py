"""The HID report layers against bytes the public sources show (glucometerutils, contourpp, AN434)."""

from __future__ import annotations

import pytest

from gateway.codecs.common import DecodeError, InvalidFieldError, TruncatedError
from gateway.codecs.hid_reports import (
    UartConfig,
    contour_input_payload,
    contour_output_reports,
    cp2110_data_payload,
    cp2110_data_reports,
    cp2110_uart_config_report,
    decode_cp2110_uart_config,
)

pytestmark = pytest.mark.unit


def test_an_ack_to_a_contour_meter_is_abc_length_byte_and_zero_padding() -> None:
    # contourpp writes {'A','B','C',1,c}; glucometerutils pads the same to the 64-byte report.
    (report,) = contour_output_reports(b"\x06")
    assert report == b"ABC\x01\x06" + bytes(59)


def test_a_long_host_message_is_split_into_sixty_byte_payloads() -> None:
    reports = contour_output_reports(bytes(range(130)))
    assert [r[3] for r in reports] == [60, 60, 10]
    assert all(len(r) == 64 and r[:3] == b"ABC" for r in reports)
    assert b"".join(r[4 : 4 + r[3]] for r in reports) == bytes(range(130))


def test_a_meter_report_gives_the_payload_its_length_byte_announces() -> None:
    frame_start = b"\x021H|\\^&||"
    report = b"\x00\x00\x00" + bytes([len(frame_start)]) + frame_start + b"\xee" * (60 - len(frame_start))
    assert contour_input_payload(report) == frame_start


def test_contour_reports_that_cannot_be_right_are_refused_by_field() -> None:
    with pytest.raises(TruncatedError) as short:
        contour_input_payload(b"ABC")
    assert short.value.field == "length byte"
    with pytest.raises(InvalidFieldError) as long:
        contour_input_payload(b"ABC" + bytes([61]) + bytes(60))
    assert long.value.offset == 3
    with pytest.raises(TruncatedError):
        contour_input_payload(b"ABC\x10" + bytes(4))


def test_cp2110_data_reports_carry_their_byte_count_as_report_id() -> None:
    frame = bytes.fromhex("5124000000 00a31a".replace(" ", ""))
    assert cp2110_data_reports(frame) == [b"\x08" + frame]
    reports = cp2110_data_reports(bytes(100))
    assert [r[0] for r in reports] == [63, 37] and [len(r) for r in reports] == [64, 38]
    assert cp2110_data_payload(b"\x03abcXX") == b"abc"


def test_a_cp2110_report_that_is_not_data_is_refused() -> None:
    with pytest.raises(InvalidFieldError):
        cp2110_data_payload(b"\x41\x01")
    with pytest.raises(TruncatedError):
        cp2110_data_payload(b"\x05ab")
    with pytest.raises(DecodeError):
        cp2110_data_payload(b"")


def test_uart_config_for_taidoc_is_19200_8n1_in_an434_encoding() -> None:
    # Baud rate big-endian (0x00004B00), parity none 0, no flow control 0, 8 bits = 3, one stop bit = 0.
    report = cp2110_uart_config_report(UartConfig(19200))
    assert report == bytes.fromhex("50 00004b00 00 00 03 00".replace(" ", ""))
    assert decode_cp2110_uart_config(report) == UartConfig(19200)
    assert decode_cp2110_uart_config(bytes.fromhex("50 00000960 01 01 02 01".replace(" ", ""))) == UartConfig(
        2400, parity="E", bytesize=7, stopbits=2, flow_control=True
    )


def test_uart_settings_the_bridge_cannot_hold_are_refused() -> None:
    with pytest.raises(InvalidFieldError):
        cp2110_uart_config_report(UartConfig(9600, parity="X"))
    with pytest.raises(InvalidFieldError):
        cp2110_uart_config_report(UartConfig(9600, bytesize=9))
    with pytest.raises(InvalidFieldError):
        decode_cp2110_uart_config(bytes.fromhex("50 00002580 00 00 05 00".replace(" ", "")))
    with pytest.raises(TruncatedError):
        decode_cp2110_uart_config(b"\x50\x00")
