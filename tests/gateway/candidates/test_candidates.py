"""Issue 19: health devices heard are candidates, never read until confirmed; decisions from the config
document apply as changes; a neighbour's scale stays a candidate and is never connected."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from firmware_sims.ble.air import AIR
from firmware_sims.ble.peripherals import BloodPressureCuff, BpRecord, WeightScale
from gateway.discovery.ble import BleManager
from gateway.discovery.ble_config import BleConfig
from gateway.discovery.enrolment import DEVICE_TYPES, EnrolmentStore, HeardDevice, UnknownDeviceError
from gateway.drivers.device_state import DeviceStateStore
from gateway.profiles import PROFILES
from tests.gateway.ble_support import RecordingSink, empty_air  # noqa: F401 (empty_air is an autouse fixture)

pytestmark = pytest.mark.unit

CONFIG = BleConfig(backend="sim", op_timeout_s=1.0, idle_timeout_s=0.2, connect_timeout_s=1.0, connect_attempts=1)


def heard(uid: str, profile: str = "ble.weight_scale", rssi: int = -60) -> HeardDevice:
    return HeardDevice(uid=uid, transport=uid.partition(":")[0], profile=profile, name="Scale", rssi=rssi)


def test_every_profile_has_words_for_the_page() -> None:
    assert {p.name for p in PROFILES} <= DEVICE_TYPES.keys()


def test_a_candidate_is_kept_until_decided_and_an_ignored_one_is_not_proposed_again(tmp_path: Path) -> None:
    store = EnrolmentStore(tmp_path / "e.sqlite")
    assert store.heard(heard("ble:aa:00:00:00:00:01"))
    assert not store.heard(heard("ble:AA:00:00:00:00:01"))  # the same device again: not new
    assert [c.uid for c in store.candidates()] == ["ble:AA:00:00:00:00:01"]
    assert not store.is_enrolled("ble:AA:00:00:00:00:01")
    store.ignore("ble:AA:00:00:00:00:01", source="local")
    store.close()
    again = EnrolmentStore(tmp_path / "e.sqlite")
    again._heard_written.clear()
    assert not again.heard(heard("ble:AA:00:00:00:00:01")) and again.candidates() == []
    with pytest.raises(UnknownDeviceError):
        again.confirm("ble:AA:00:00:00:00:99", source="local")


def test_config_decisions_apply_as_changes_and_a_later_local_decision_stands(tmp_path: Path) -> None:
    store = EnrolmentStore(tmp_path / "e.sqlite")
    store.heard(heard("usb:0fcf:1009:S1", "serial.ant_hrm"))
    store.heard(heard("ble:AA:00:00:00:00:02"))
    changes = store.apply_decisions(["usb:0fcf:1009:S1"], ["ble:aa:00:00:00:00:02"])
    assert changes.confirmed == ["usb:0fcf:1009:S1"] and changes.ignored == ["ble:AA:00:00:00:00:02"]
    store.remove("usb:0fcf:1009:S1", source="local")  # unpaired on the page afterwards
    assert not store.apply_decisions(["usb:0fcf:1009:S1"], ["ble:AA:00:00:00:00:02"])  # same document: no change
    assert not store.is_enrolled("usb:0fcf:1009:S1")
    store.enrol("ble:AA:00:00:00:00:03", source="config")
    store.apply_decisions(["ble:AA:00:00:00:00:03"], [])
    dropped = store.apply_decisions([], [])  # the workspace unpaired it: dropped from the document
    assert "ble:AA:00:00:00:00:03" in dropped.forgotten and not store.is_enrolled("ble:AA:00:00:00:00:03")
    assert [d for _, _, d, _ in store.history("ble:AA:00:00:00:00:03")][-1] == "forgotten"


def test_the_neighbours_scale_stays_a_candidate_and_only_the_confirmed_cuff_is_read(tmp_path: Path) -> None:
    now = datetime.now().replace(microsecond=0)
    mine = BloodPressureCuff("AA:07:00:00:00:01", [BpRecord(131, 84, 99, now - timedelta(hours=1))], rssi=-50)
    neighbours = WeightScale("AA:07:00:00:00:02", rssi=-90)
    AIR.add(mine, neighbours)
    store = EnrolmentStore(tmp_path / "e.sqlite")
    sink = RecordingSink()
    manager = BleManager(CONFIG, sink, DeviceStateStore(tmp_path / "s.sqlite"), store)

    async def scenario() -> None:
        task = asyncio.create_task(manager.run())
        try:
            await asyncio.sleep(0.2)
            assert store.candidates() == []  # no window open: nothing collected
            store.open_window(30)
            async with asyncio.timeout(5):
                while len(store.candidates()) < 2:  # noqa: ASYNC110 - the radio has no event of its own
                    await asyncio.sleep(0.02)
            assert mine.sessions == 0 and neighbours.sessions == 0 and sink.readings == []
            store.confirm("ble:AA:07:00:00:00:01", source="local")
            async with asyncio.timeout(5):
                while not sink.readings:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert {r.device.uid for r in sink.readings} == {"ble:AA:07:00:00:00:01"}
    assert neighbours.sessions == 0
    assert [c.uid for c in store.candidates()] == ["ble:AA:07:00:00:00:02"]
    candidate = store.candidates()[0]
    assert (candidate.type, candidate.rssi, candidate.transport) == ("Weighing scale", -90, "ble")
