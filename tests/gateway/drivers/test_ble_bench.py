"""Benchmarks (``-m bench -s``): how fast the gateway side drains device memory through bleak's
API with the simulator backend. The radio is simulated, so this measures the gateway's own cost
per record (codec, session logic, sink hand-off), not air time."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_sims.ble.air import AIR
from firmware_sims.ble.backend import SimBleakClient
from firmware_sims.ble.peripherals import GlucoseMeter, GlucoseRecord
from gateway.codecs.common import Measurement
from gateway.discovery.ble import BleManager, run_device_session
from gateway.discovery.ble_config import BleConfig
from gateway.discovery.enrolment import EnrolmentStore
from gateway.drivers.base import ClockCheck, DeviceInfo
from gateway.drivers.device_state import DeviceStateStore
from gateway.readings.normalise import to_reading
from tests.gateway.ble_support import empty_air  # noqa: F401 (empty_air is an autouse fixture)

pytestmark = pytest.mark.bench

T = datetime(2026, 1, 1)
CONFIG = BleConfig(backend="sim", op_timeout_s=2.0, idle_timeout_s=0.2, connect_attempts=1, session_cooldown_s=600)




class CountingSink:
    def __init__(self) -> None:
        self.ids: set[str] = set()

    async def __call__(self, device: DeviceInfo, measurement: Measurement, clock: ClockCheck | None) -> None:
        self.ids.add(to_reading(device, measurement, clock, datetime.now(UTC)).id)


def meter(address: str, n: int) -> GlucoseMeter:
    return GlucoseMeter(address, [GlucoseRecord(i, T + timedelta(minutes=i), 0.001, context={"meal": 1} if i % 3 == 0
                                                else None) for i in range(1, n + 1)])


def test_bench_glucose_memory_drain(tmp_path: Path) -> None:
    n = 3000
    AIR.add(meter("AA:0B:00:00:00:01", n))
    sink = CountingSink()
    started = time.perf_counter()
    asyncio.run(run_device_session("AA:0B:00:00:00:01", "ble.glucose", config=CONFIG, sink=sink,
                                   state=DeviceStateStore(tmp_path / "s.sqlite"), client_backend=SimBleakClient))
    elapsed = time.perf_counter() - started
    assert len(sink.ids) == n
    print(f"\nglucose memory drain: {n} records in {elapsed:.2f} s = {n / elapsed:.0f} records/s "
          f"(incl. durable last-sequence write per record)")


def test_bench_twenty_meters_at_once(tmp_path: Path) -> None:
    devices, per_device = 20, 200
    addresses = [f"AA:0B:00:00:01:{i:02X}" for i in range(devices)]
    AIR.add(*(meter(a, per_device) for a in addresses))
    store = EnrolmentStore(tmp_path / "e.sqlite")
    for address in addresses:
        store.enrol(address)
    sink = CountingSink()
    manager = BleManager(CONFIG, sink, DeviceStateStore(tmp_path / "s.sqlite"), store)

    async def run() -> float:
        started = time.perf_counter()
        task = asyncio.create_task(manager.run())
        async with asyncio.timeout(60):
            while len(manager.results) < devices:  # noqa: ASYNC110 - polling simulated devices under a deadline
                await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return elapsed

    elapsed = asyncio.run(run())
    assert len(sink.ids) == devices * per_device
    print(f"\n{devices} meters x {per_device} records through one BleManager: {elapsed:.2f} s "
          f"= {devices * per_device / elapsed:.0f} records/s")
