"""The scale simulator's lines are the A&D formats of specs/serial-protocols.md §2, character for
character, and its 7E1 framing shows up as a parity bit to an 8-bit host."""

from __future__ import annotations

import pytest
import serial

from firmware_sims.serial.ad_scale import PtyScale, Weighing, format_line

pytestmark = pytest.mark.unit


def test_lines_match_the_documented_examples() -> None:
    assert format_line("ST", 123.45, "g") == "ST,+00123.45  g\r\n"
    assert format_line("ST", 123.45, "kg", "indicator") == "ST,GS,+0123.45kg\r\n"
    assert format_line("OL", None, "g") == "OL,+9999999E+19\r\n"
    assert format_line("OL", None, "kg", "indicator") == "OL,GS,+    .  kg\r\n"
    assert format_line("US", 71.2, "lb", "csv") == "US,+00071.20,lb\r\n"


def test_a_weighing_climbs_unstable_then_repeats_stable_then_returns_to_zero() -> None:
    with PtyScale([Weighing(71.2, stable_lines=3)], baudrate=9600, bytesize=8, parity="N", idle_lines=1) as sim:
        with serial.Serial(sim.path, 9600, timeout=2) as host:
            lines = [host.read_until(b"\n").decode() for _ in range(11)]
    assert lines[0] == "ST,+00000.00 kg\r\n"
    assert [line[:2] for line in lines[1:11]] == ["US"] * 4 + ["ST"] * 3 + ["US"] * 2 + ["ST"]
    assert lines[5] == "ST,+00071.20 kg\r\n"


def test_7e1_framing_reaches_an_8n1_host_with_parity_in_bit_7() -> None:
    with PtyScale([Weighing(71.2)], baudrate=2400, idle_lines=1) as sim:
        with serial.Serial(sim.path, 2400, timeout=2) as host:
            raw = host.read_until(b"\n")
    # "ST,+00000.00 kg": 'S' 0x53 has four 1-bits (even parity 0); 'T' 0x54 has three (parity 1).
    assert raw[0] == 0x53 and raw[1] == 0xD4
    assert bytes(b & 0x7F for b in raw) == b"ST,+00000.00 kg\r\n"
