"""Download speed of the TaiDoc driver over a pty (no baud-rate limit: this measures the driver, the
simulator and the per-request round trip; on a real 19200-baud bridge each request/reply pair adds
about 8.3 ms of wire time, 16 bytes at 10 bits each)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from firmware_sims.serial.taidoc import BpRecord, PtyTaidoc, TaidocMeter
from gateway.drivers.base import DeviceInfo
from gateway.drivers.device_state import DeviceStateStore
from gateway.drivers.taidoc import TaidocDriver

pytestmark = pytest.mark.bench


def test_full_memory_download_and_incremental_session_times(tmp_path: Path) -> None:
    meter = TaidocMeter(capacity=450)
    start = datetime.now().replace(second=0, microsecond=0) - timedelta(days=200)
    for i in range(450):
        meter.store(BpRecord(start + timedelta(hours=10 * i), systolic=110 + i % 60, diastolic=70 + i % 30,
                             pulse=60 + i % 40))
    state = DeviceStateStore(tmp_path / "state.sqlite")
    committed: list[object] = []

    async def sink(device, measurement, clock) -> None:  # type: ignore[no-untyped-def]
        committed.append(measurement)

    def session() -> float:
        with PtyTaidoc(meter) as sim:
            driver = TaidocDriver(sim.path, DeviceInfo("usb:10c4:ea80:x", "usb", "serial.taidoc"), sink, state)
            began = time.perf_counter()
            asyncio.run(driver.run())
            return time.perf_counter() - began

    full = session()
    assert len(committed) == 450
    meter.store(BpRecord(datetime.now().replace(second=0, microsecond=0), systolic=120, diastolic=80, pulse=70))
    incremental = session()
    assert len(committed) == 451
    requests = len(meter.requests)
    state.close()
    wire_s = 2 * 450 * 16 * 10 / 19200
    print(f"\nTaiDoc full download: 450 records in {full:.2f} s ({450 / full:.0f} records/s over a pty; "
          f"at 19200 baud the wire alone adds ~{wire_s:.1f} s)")
    print(f"TaiDoc incremental session (1 new record): {incremental * 1000:.0f} ms; {requests} requests in all")
