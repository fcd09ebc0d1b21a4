"""Benchmarks for the USB serial path (run with -m bench): codec rates and a full ASTM meter memory
download over a real pty."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

import pytest

from firmware_sims.serial.astm_meter import GlucoseMeter, GlucoseResult, PtyAstmMeter
from gateway.codecs.ad_scale import decode_line_reading
from gateway.codecs.ant import MSG_BROADCAST, decode_message_reading, encode_message
from gateway.codecs.astm import decode_frame_reading, encode_frame
from gateway.drivers.astm_meter import AstmMeterDriver
from gateway.drivers.base import DeviceInfo
from gateway.drivers.device_state import DeviceStateStore

pytestmark = pytest.mark.bench


def rate(function, data, n: int = 20_000) -> float:
    start = time.perf_counter()
    for _ in range(n):
        function(data)
    return n / (time.perf_counter() - start)


def test_codec_rates() -> None:
    astm = encode_frame(3, "R|67|^^^Glucose|7.9|mmol/L^P||B||201011281949\r", final=False)
    ant = encode_message(MSG_BROADCAST, b"\x00" + bytes([0x84, 0xFF, 0, 4, 0, 8, 17, 60]))
    figures = {
        "serial.astm frames/s": rate(decode_frame_reading, astm),
        "serial.ad_scale lines/s": rate(decode_line_reading, b"ST,GS,+0070.45kg\r\n"),
        "serial.ant_hrm messages/s": rate(decode_message_reading, ant),
    }
    for name, value in figures.items():
        print(f"{name}: {value:,.0f}")
    assert all(v > 10_000 for v in figures.values())


def test_full_memory_download_of_500_results(tmp_path) -> None:
    base = datetime(2026, 1, 1, 7, 0)
    meter = GlucoseMeter(results=[GlucoseResult(base + timedelta(hours=4 * i), 80 + i % 150) for i in range(500)])
    state = DeviceStateStore(tmp_path / "state.db")
    count = 0

    async def sink(device, measurement, clock) -> None:
        nonlocal count
        count += 1

    with PtyAstmMeter(meter) as sim:
        driver = AstmMeterDriver(sim.path, DeviceInfo("usb:0000:0000:x", "usb", "serial.astm"), sink, state)
        start = time.perf_counter()
        asyncio.run(asyncio.wait_for(driver.run(), 60))
        elapsed = time.perf_counter() - start
    state.close()
    print(f"ASTM download over a pty: 500 results (503 frames, each ACKed) in {elapsed:.2f} s, "
          f"{500 / elapsed:,.0f} results/s")
    assert count == 500
