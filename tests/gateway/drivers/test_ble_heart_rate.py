"""Heart-rate strap sessions: live notifications become one reading per cadence carrying the median."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_sims.ble.air import AIR
from firmware_sims.ble.backend import SimBleakClient
from firmware_sims.ble.gatt import Faults
from firmware_sims.ble.peripherals import HeartRateStrap
from gateway.discovery.ble import run_device_session
from gateway.discovery.ble_config import BleConfig
from gateway.drivers.device_state import DeviceStateStore
from tests.gateway.ble_support import RecordingSink, empty_air  # noqa: F401 (empty_air is an autouse fixture)

pytestmark = pytest.mark.unit

MINUTE = datetime(2026, 3, 14, 7, 0, tzinfo=UTC)






class QuarterSecondClock:
    """The gateway clock as the driver sees it: each call is a quarter second after the last, so
    frames sent as fast as the loop allows are windowed as if they came at 4 Hz."""

    def __init__(self, start: datetime) -> None:
        self._ticks = itertools.count()
        self.start = start

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=next(self._ticks) * 0.25)


def run(address: str, sink: RecordingSink, tmp_path: Path, now, **config) -> object:
    settings = BleConfig(backend="sim", op_timeout_s=1.0, connect_attempts=1, **config)
    return asyncio.run(run_device_session(address, "ble.heart_rate", config=settings, sink=sink,
                                          state=DeviceStateStore(tmp_path / "s.sqlite"),
                                          client_backend=SimBleakClient, now=now))


def test_three_minutes_at_4_hz_give_three_readings_with_the_window_medians(tmp_path: Path) -> None:
    # Per minute 240 frames: rates base..base+4 cycled, so each window's median is base+2.
    rates = [base + (i % 5) for base in (60, 70, 80) for i in range(240)]
    AIR.add(HeartRateStrap("AA:03:00:00:00:01", rates, hz=2000, frames=len(rates)))
    sink = RecordingSink()
    # The strap has no Current Time Service: the clock check takes one tick, so frame k lands at
    # MINUTE + k/4 s.
    result = run("AA:03:00:00:00:01", sink, tmp_path, QuarterSecondClock(MINUTE - timedelta(seconds=0.25)))
    assert [m.values["heart_rate"].value for m in sink.measurements] == [62, 72, 82]
    assert [m.details["samples"] for m in sink.measurements] == [240, 240, 240]
    assert [m.details["window_start"] for m in sink.measurements] == [
        (MINUTE + timedelta(minutes=i)).isoformat() for i in range(3)]
    assert len({r.id for r in sink.readings}) == 3
    assert result.measurements == 3
    rr = sink.measurements[0].values["rr_intervals"]
    assert len(rr.value) == 240


def test_cadence_is_configurable(tmp_path: Path) -> None:
    AIR.add(HeartRateStrap("AA:03:00:00:00:02", [70], hz=2000, frames=40))
    sink = RecordingSink()
    run("AA:03:00:00:00:02", sink, tmp_path, QuarterSecondClock(MINUTE - timedelta(seconds=0.25)),
        heart_rate_cadence_s=5.0)
    assert [m.details["samples"] for m in sink.measurements] == [20, 20]


def test_garbage_heart_rate_frame_is_skipped(tmp_path: Path) -> None:
    AIR.add(HeartRateStrap("AA:03:00:00:00:03", [70, 72, 74], hz=2000, frames=12,
                           faults=Faults(garbage_at_record=4)))
    sink = RecordingSink()
    result = run("AA:03:00:00:00:03", sink, tmp_path, QuarterSecondClock(MINUTE))
    assert [m.details["samples"] for m in sink.measurements] == [11]
    assert any("undecodable frame" in note for note in result.notes)


def test_no_contact_frames_do_not_set_the_median_but_flag_the_reading(tmp_path: Path) -> None:
    AIR.add(HeartRateStrap("AA:03:00:00:00:04", [0], hz=2000, frames=8, contact=False))
    sink = RecordingSink()
    run("AA:03:00:00:00:04", sink, tmp_path, QuarterSecondClock(MINUTE))
    (only,) = sink.measurements
    assert "sensor_contact_lost" in only.flags


def test_max_session_length_ends_a_strap_that_never_stops(tmp_path: Path) -> None:
    AIR.add(HeartRateStrap("AA:03:00:00:00:05", [65], hz=50))
    sink = RecordingSink()
    run("AA:03:00:00:00:05", sink, tmp_path, QuarterSecondClock(MINUTE), heart_rate_max_session_s=0.3)
    assert len(sink.measurements) >= 1
    assert AIR.get("AA:03:00:00:00:05").link is None


def test_shutdown_mid_window_keeps_the_partial_window(tmp_path: Path) -> None:
    strap = HeartRateStrap("AA:03:00:00:00:06", [70, 71, 72], hz=200)
    AIR.add(strap)
    sink = RecordingSink()
    settings = BleConfig(backend="sim", op_timeout_s=1.0, connect_attempts=1)

    async def run() -> None:
        task = asyncio.create_task(run_device_session(
            "AA:03:00:00:00:06", "ble.heart_rate", config=settings, sink=sink,
            state=DeviceStateStore(tmp_path / "s.sqlite"), client_backend=SimBleakClient,
            now=QuarterSecondClock(MINUTE)))
        async with asyncio.timeout(5):
            while len(strap.sent_frames) < 10:  # noqa: ASYNC110 - polling a simulated device under a deadline
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    (partial,) = sink.measurements
    # Cancellation may land before the driver handled the last frames sent: the window keeps what it had.
    assert 1 <= partial.details["samples"] <= len(strap.sent_frames)
    assert partial.values["heart_rate"].value in (70, 70.5, 71, 71.5, 72)
    assert strap.link is None
