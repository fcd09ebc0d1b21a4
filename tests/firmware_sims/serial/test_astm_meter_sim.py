"""The ASTM meter simulator speaks E1381 byte for byte: checked against frames captured from real
Contour meters (glucodump test_contourusb.py), not against the gateway's own codec."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta

import pytest
import serial

from firmware_sims.serial.astm_meter import AstmFaults, GlucoseMeter, GlucoseResult, PtyAstmMeter, frame

pytestmark = pytest.mark.unit

CAPTURED = b"\x021R|67|^^^Glucose|7.9|mmol/L^P||B||201011281949\r\x1704\r\n"
CAPTURED_WRAPPED = b"\x020H\r\x179C\r\n"


def test_frames_match_captures_from_real_meters() -> None:
    assert frame(1, "R|67|^^^Glucose|7.9|mmol/L^P||B||201011281949\r", final=False) == CAPTURED
    assert frame(8, "H\r", final=False) == CAPTURED_WRAPPED  # frame 8 is sent as "0"


def test_contour_layout_records() -> None:
    meter = GlucoseMeter(results=[GlucoseResult(datetime(2026, 11, 1, 7, 5), 7.9, "mmol/L", ("B",))])
    records = meter.records()
    assert records[0].startswith("H|\\^&||") and records[0].split("|")[4].split("^")[2] == "7390-1163170"
    assert records[1:] == ["P|1", "R|1|^^^Glucose|7.9|mmol/L^P||B||202611010705", "L|1||N"]


def test_header_field_14_is_the_meter_clock_with_its_offset() -> None:
    meter = GlucoseMeter(clock_offset=timedelta(hours=-2))
    stamp = datetime.strptime(meter.records()[0].split("|")[13], "%Y%m%d%H%M")
    assert abs(stamp - (datetime.now() - timedelta(hours=2))) < timedelta(minutes=2)
    assert GlucoseMeter(clock_unset=True).records()[0].endswith("|200001010005")


def test_e1394_layout_splits_long_records_at_240_characters() -> None:
    frames = GlucoseMeter(layout="e1394", model="M" * 300).frames()
    assert [len(t) for t, _ in frames[:2]] == [240, len(frames[1][0])]
    assert [final for _, final in frames[:2]] == [False, True]


def read_for(port: serial.Serial, seconds: float) -> bytes:
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data += port.read(256)
    return data


def test_meter_offers_enq_until_acked_then_repeats_a_naked_frame() -> None:
    with PtyAstmMeter(GlucoseMeter(results=[]), enq_interval=0.02) as sim:
        with serial.Serial(sim.path, 9600, timeout=0.05) as host:
            assert read_for(host, 0.2).count(b"\x05") >= 3  # ENQ again and again, nobody answers
            host.write(b"\x06")
            first = host.read_until(b"\n")
            assert first.startswith(b"\x021H|")
            host.write(b"\x15")  # NAK: the same frame again, byte for byte
            assert host.read_until(b"\n") == first
            host.write(b"\x06")
            assert host.read_until(b"\n").startswith(b"\x022P|1")


def test_pulled_cable_closes_the_pty() -> None:
    sim = PtyAstmMeter(GlucoseMeter(results=[]), AstmFaults(pull_after_frames=1))
    sim.plug_in()
    with serial.Serial(sim.path, 9600, timeout=0.05) as host:
        host.reset_input_buffer()
        host.write(b"\x06")
        host.read_until(b"\n")
        host.write(b"\x06")
        with pytest.raises(serial.SerialException):
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                host.read(1)
    sim.pull_cable()
    assert not sim.plugged_in


def test_master_fd_is_really_closed_on_pull() -> None:
    sim = PtyAstmMeter(GlucoseMeter(results=[]))
    sim.plug_in()
    master = sim._master
    sim.pull_cable()
    with pytest.raises(OSError):
        os.fstat(master)
