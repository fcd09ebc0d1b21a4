"""BleManager: one scanner, sessions only for enrolled devices, one failing device never stops the
others, per-device backoff, status callbacks; ble_candidates for ``rpm-gateway scan``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from firmware_sims.ble.air import AIR
from firmware_sims.ble.gatt import Faults
from firmware_sims.ble.peripherals import BloodPressureCuff, BpRecord, GlucoseMeter, GlucoseRecord, WeightScale
from gateway.config import parse_config
from gateway.discovery.ble import BleManager, ble_candidates
from gateway.discovery.ble_config import BleConfig, EnrolledBleDevice
from gateway.discovery.enrolment import EnrolmentStore
from gateway.drivers.device_state import DeviceStateStore
from tests.gateway.ble_support import RecordingSink, empty_air  # noqa: F401 (empty_air is an autouse fixture)

pytestmark = pytest.mark.unit

T = datetime(2026, 3, 14, 7, 0)
CONFIG = BleConfig(backend="sim", op_timeout_s=1.0, idle_timeout_s=0.2, connect_timeout_s=1.0, connect_attempts=1,
                   session_cooldown_s=60, retry_backoff_s=0.05, retry_backoff_max_s=0.2)






async def run_until(manager: BleManager, done: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Run the manager until ``done()`` holds (polled), then cancel it as the gateway's shutdown does."""
    task = asyncio.create_task(manager.run())
    try:
        async with asyncio.timeout(limit_s):
            # The conditions are facts about simulated devices with no event of their own: poll them
            # under the deadline.
            while not done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def manager_for(tmp_path: Path, enrolled: list[str], sink: RecordingSink, statuses: list | None = None,
                config: BleConfig = CONFIG) -> BleManager:
    store = EnrolmentStore(tmp_path / "enrolment.sqlite")
    for address in enrolled:
        store.enrol(address)

    def on_status(uid: str, **fields: Any) -> None:
        if statuses is not None:
            statuses.append((uid, fields))

    return BleManager(config, sink, DeviceStateStore(tmp_path / "state.sqlite"), store, on_status=on_status)


def cuff(address: str, n: int = 2, **kwargs) -> BloodPressureCuff:
    now = datetime.now().replace(microsecond=0)
    return BloodPressureCuff(address, [BpRecord(120 + i, 80, 93, now - timedelta(hours=n - i)) for i in range(n)],
                             **kwargs)


def test_un_enrolled_device_is_ignored_and_never_connected(tmp_path: Path) -> None:
    mine, neighbours = cuff("AA:06:00:00:00:01"), WeightScale("AA:06:00:00:00:02")
    AIR.add(mine, neighbours)
    sink = RecordingSink()
    manager = manager_for(tmp_path, ["AA:06:00:00:00:01"], sink)
    asyncio.run(run_until(manager, lambda: "AA:06:00:00:00:01" in manager.results
                          and "AA:06:00:00:00:02" in manager.ignored))
    assert mine.sessions == 1 and neighbours.sessions == 0
    assert {r.device.uid for r in sink.readings} == {"ble:AA:06:00:00:00:01"}


def test_a_failing_device_does_not_stop_the_others_and_backs_off(tmp_path: Path) -> None:
    broken = cuff("AA:06:00:00:01:01", faults=Faults(refuse_connections=1000))
    good = [cuff("AA:06:00:00:01:02"), cuff("AA:06:00:00:01:03")]
    AIR.add(broken, *good)
    sink, statuses = RecordingSink(), []
    manager = manager_for(tmp_path, ["AA:06:00:00:01:01", "AA:06:00:00:01:02", "AA:06:00:00:01:03"], sink,
                          statuses)
    asyncio.run(run_until(manager, lambda: len(manager.results) == 2
                          and manager.sessions_started.get("AA:06:00:00:01:01", 0) >= 3))
    assert len(sink.readings) == 4
    assert "refused" in manager.errors["AA:06:00:00:01:01"]
    errors = [f["error"] for uid, f in statuses if uid == "ble:AA:06:00:00:01:01"]
    assert errors and all("refused" in e for e in errors)
    good_status = [f for uid, f in statuses if uid == "ble:AA:06:00:00:01:02" and f.get("battery") is not None]
    assert good_status and good_status[-1]["error"] is None and good_status[-1]["last_seen"] is not None
    # Cooldown: a cuff that keeps advertising after a good session is not read again straight away.
    assert manager.sessions_started["AA:06:00:00:01:02"] == 1


def test_glucose_link_lost_mid_transfer_is_retried_with_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    records = [GlucoseRecord(i, T + timedelta(hours=i), round((90 + i) / 100_000, 7)) for i in range(1, 11)]
    meter = GlucoseMeter("AA:06:00:00:02:01", records, faults=Faults(drop_after_records=4, drop_times=2))
    AIR.add(meter)
    sink = RecordingSink()
    manager = manager_for(tmp_path, ["AA:06:00:00:02:01"], sink)
    asyncio.run(run_until(manager, lambda: "AA:06:00:00:02:01" in manager.results))
    assert [r.sequence for r in sink.readings] == list(range(1, 11))
    assert meter.sessions == 3


def test_cancelling_the_manager_ends_sessions_and_leaves_no_link(tmp_path: Path) -> None:
    meter = GlucoseMeter("AA:06:00:00:03:01", [GlucoseRecord(1, T, 0.001)], faults=Faults(silent_after_connect=True))
    AIR.add(meter)
    manager = manager_for(tmp_path, ["AA:06:00:00:03:01"], RecordingSink())
    asyncio.run(run_until(manager, lambda: meter.link is not None))
    assert meter.link is None


def test_ble_candidates_lists_health_devices_and_which_are_enrolled(tmp_path: Path) -> None:
    AIR.add(cuff("AA:06:00:00:04:01", rssi=-40), GlucoseMeter("AA:06:00:00:04:02", rssi=-70))
    config = parse_config({"data_dir": str(tmp_path), "ble": {"backend": "sim",
                                                              "enrolled": [{"address": "aa:06:00:00:04:02"}]}})
    rows = asyncio.run(ble_candidates(config, 0.2))
    assert [(r["address"], r["profile"], r["enrolled"]) for r in rows] == [
        ("AA:06:00:00:04:01", "ble.blood_pressure", False), ("AA:06:00:00:04:02", "ble.glucose", True)]


def test_a_config_enrolled_device_that_advertises_no_service_is_matched_by_address(tmp_path: Path) -> None:
    class QuietMeter(GlucoseMeter):
        def advertised_services(self) -> list[str]:
            return []

    meter = QuietMeter("AA:06:00:00:05:01", [GlucoseRecord(1, T, 0.001)])
    stranger = QuietMeter("AA:06:00:00:05:02", [GlucoseRecord(1, T, 0.001)])
    AIR.add(meter, stranger)
    config = CONFIG.model_copy(update={"enrolled": [EnrolledBleDevice(address="aa:06:00:00:05:01",
                                                                      profile="ble.glucose")]})
    store = EnrolmentStore(tmp_path / "e.sqlite", config.enrolled)
    sink = RecordingSink()
    manager = BleManager(config, sink, DeviceStateStore(tmp_path / "s.sqlite"), store)
    asyncio.run(run_until(manager, lambda: "AA:06:00:00:05:01" in manager.results))
    assert [r.sequence for r in sink.readings] == [1]
    assert stranger.sessions == 0


def test_a_scan_that_does_not_resume_after_a_connect_is_tried_again(tmp_path: Path) -> None:
    """Scanning pauses while a connection is set up; if the adapter refuses to scan again (BlueZ answering
    InProgress or NotReady), the manager keeps trying rather than never hearing a device again."""
    from bleak.exc import BleakError

    class Scanner:  # the adapter's side of scanning only: start refused once, then taken
        def __init__(self) -> None:
            self.starts, self.stops = 0, 0

        async def start(self) -> None:
            self.starts += 1
            if self.starts == 1:
                raise BleakError("org.bluez.Error.InProgress")

        async def stop(self) -> None:
            self.stops += 1

    manager = manager_for(tmp_path, [], RecordingSink())
    scanner = Scanner()
    manager._scanner = scanner  # type: ignore[assignment]

    async def connect_twice() -> None:
        async with manager._scan_paused():
            assert manager._scanning is False and scanner.stops == 1
        assert manager._scanning is False  # refused: still stopped ...
        await manager._resume_scan()  # ... until the next try (the scan loop's, every SCAN_RESUME_CHECK_S)
        assert manager._scanning is True and scanner.starts == 2

    asyncio.run(connect_twice())


def test_a_scan_that_hears_nothing_for_long_is_restarted(tmp_path: Path) -> None:
    """BlueZ ends a discovery session by itself when the adapter is powered off (tests/kernel) and bleak's
    scanner is not told: a scan quiet for SCAN_QUIET_RESTART_S is stopped and started again; one refused
    (adapter still off) is left stopped for the resume path to retry."""
    from bleak.exc import BleakError

    from gateway.discovery import ble

    class Scanner:
        def __init__(self) -> None:
            self.starts, self.stops, self.refuse = 0, 0, False

        async def start(self) -> None:
            self.starts += 1
            if self.refuse:
                raise BleakError("org.bluez.Error.NotReady")

        async def stop(self) -> None:
            self.stops += 1
            raise BleakError("org.bluez.Error.Failed: No discovery started")  # what BlueZ answers then

    manager = manager_for(tmp_path, [], RecordingSink())
    scanner = Scanner()
    manager._scanner = scanner  # type: ignore[assignment]

    async def quiet_then_heard() -> None:
        now = asyncio.get_running_loop().time()
        manager._last_heard = now - ble.SCAN_QUIET_RESTART_S + 1
        await manager._restart_quiet_scan()
        assert (scanner.stops, scanner.starts) == (0, 0)  # heard something recently: left alone
        manager._last_heard = now - ble.SCAN_QUIET_RESTART_S
        manager._connecting = 1
        await manager._restart_quiet_scan()
        assert (scanner.stops, scanner.starts) == (0, 0)  # a connection is being set up: not now
        manager._connecting = 0
        await manager._restart_quiet_scan()
        assert (scanner.stops, scanner.starts) == (1, 1) and manager._scanning is True
        await manager._restart_quiet_scan()
        assert scanner.starts == 1  # the restart counts as heard: the next one waits a quiet period
        manager._last_heard -= ble.SCAN_QUIET_RESTART_S
        scanner.refuse = True
        await manager._restart_quiet_scan()
        assert scanner.starts == 2 and manager._scanning is False  # the loop's resume takes it from here
        scanner.refuse = False
        await manager._resume_scan()
        assert scanner.starts == 3 and manager._scanning is True

    asyncio.run(quiet_then_heard())
