"""Decode throughput of the BLE measurement codecs (run with ``pytest -m bench -s``); prints figures."""

from __future__ import annotations

import time

import pytest

from gateway.codecs import blood_pressure, glucose, heart_rate, weight_scale

pytestmark = pytest.mark.bench

FRAMES = {
    "blood_pressure": (blood_pressure.decode_measurement, "1e8a00580078000000041114293b3c00012700"),
    "glucose": (glucose.decode_measurement, "1b0100e307021b0b0a1efbff1e00120501"),
    "heart_rate": (heart_rate.decode_measurement, "1f0101320101000201ffff"),
    "weight_scale": (weight_scale.decode_measurement, "0ef537e40701020a153002f000d206"),
}


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_decode_rate(name: str) -> None:
    decode, hex_text = FRAMES[name]
    frame = bytes.fromhex(hex_text)
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        decode(frame)
    elapsed = time.perf_counter() - start
    print(f"\n{name}: {n / elapsed:,.0f} frames/s ({elapsed / n * 1e6:.1f} us/frame)")
    # A gateway sees a few frames a second; even a slow board must keep far ahead of that.
    assert n / elapsed > 1_000
