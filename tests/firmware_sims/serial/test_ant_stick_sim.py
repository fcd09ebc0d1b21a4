"""The ANT stick simulator: message framing from the ANT message protocol document (reset
``A4 01 4A 00 EF``), channel responses, and HRM pages laid out as the ANT+ HRM profile says."""

from __future__ import annotations

import pytest
import serial

from firmware_sims.serial.ant_stick import HeartRateStrap, PtyAntStick, message

pytestmark = pytest.mark.unit

KEY = bytes.fromhex("0011223344556677")  # a test network's key; the ANT+ key is never in the code


def test_message_framing_matches_the_protocol_document() -> None:
    assert message(0x4A, b"\x00") == bytes.fromhex("a4014a00ef")
    assert message(0x4B, b"\x00") == bytes.fromhex("a4014b00ee")


def test_strap_pages_toggle_every_four_messages_and_carry_beats() -> None:
    strap = HeartRateStrap(heart_rate=lambda t: 60.0)
    pages = [strap.next_page() for _ in range(70)]
    toggles = [p[0] >> 7 for p in pages[:12]]
    assert toggles == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    assert all(p[0] & 0x7F == 4 and p[7] == 60 for p in pages[:61])
    assert {p[0] & 0x7F for p in pages[61:65]} == {2}  # a background page (manufacturer), four times
    counts = [p[6] for p in pages[:20]]
    assert counts == sorted(counts) and counts[-1] - counts[0] == 4  # 20 messages of 0.246 s: 4-5 beats at 60 bpm


def read_message(host: serial.Serial) -> bytes:
    head = host.read(2)
    assert head[:1] == b"\xa4", head
    return head + host.read(head[1] + 2)


def test_stick_answers_set_up_and_relays_broadcasts() -> None:
    with PtyAntStick(HeartRateStrap(device_number=777, network_key=KEY)) as sim:
        with serial.Serial(sim.path, 115200, timeout=2) as host:
            host.write(message(0x4A, b"\x00"))
            assert read_message(host) == message(0x6F, b"\x20")
            for message_id, payload in [(0x46, b"\x00" + KEY), (0x42, b"\x00\x00\x00"), (0x51, b"\x00\x00\x00\x78\x00"),
                                        (0x43, b"\x00\x86\x1f"), (0x45, b"\x00\x39"), (0x4B, b"\x00")]:
                host.write(message(message_id, payload))
                assert read_message(host) == message(0x40, bytes([0, message_id, 0]))
            broadcast = read_message(host)
            assert broadcast[2] == 0x4E and broadcast[3] == 0 and broadcast[11] == 72
            host.write(message(0x4D, b"\x00\x51"))
            while (reply := read_message(host))[2] != 0x51:
                pass
            assert reply == message(0x51, b"\x00" + (777).to_bytes(2, "little") + b"\x78\x01")
