"""Blood-pressure cuff and weight-scale sessions (stored records by indication) through bleak's
BleakClient with the simulator backend: multi-user, kPa, imperial, clocks, garbage frames."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_sims.ble.air import AIR
from firmware_sims.ble.backend import SimBleakClient
from firmware_sims.ble.gatt import Faults
from firmware_sims.ble.peripherals import BloodPressureCuff, BpRecord, WeightRecord, WeightScale
from gateway.contract import ClockJudgement
from gateway.discovery.ble import run_device_session
from gateway.discovery.ble_config import BleConfig
from gateway.drivers.device_state import DeviceStateStore
from gateway.metrics import KG_PER_LB, MMHG_PER_KPA
from tests.gateway.ble_support import RecordingSink, empty_air  # noqa: F401 (empty_air is an autouse fixture)

pytestmark = pytest.mark.unit

CONFIG = BleConfig(backend="sim", op_timeout_s=1.0, idle_timeout_s=0.3, connect_timeout_s=1.0, connect_attempts=1)






def run(address: str, profile: str, sink: RecordingSink, tmp_path: Path, config: BleConfig = CONFIG):
    return asyncio.run(run_device_session(address, profile, config=config, sink=sink,
                                          state=DeviceStateStore(tmp_path / "state.sqlite"),
                                          client_backend=SimBleakClient))


def recent(hours: int) -> datetime:
    return (datetime.now() - timedelta(hours=hours)).replace(microsecond=0)


def test_cuff_memory_of_two_users_read_twice_gives_the_same_ids(tmp_path: Path) -> None:
    records = [BpRecord(128 + i, 82, 97, recent(10 - i), pulse=66, user_id=1 + i % 2) for i in range(4)]
    AIR.add(BloodPressureCuff("AA:02:00:00:00:01", records, serial="CUFF-7"))
    first, second = RecordingSink(), RecordingSink()
    result = run("AA:02:00:00:00:01", "ble.blood_pressure", first, tmp_path)
    run("AA:02:00:00:00:01", "ble.blood_pressure", second, tmp_path)
    assert result.measurements == 4 and result.battery == 87
    assert [r.user_index for r in first.readings] == [1, 2, 1, 2]
    assert [r.values["systolic"].value for r in first.readings] == [128, 129, 130, 131]
    assert [r.id for r in first.readings] == [r.id for r in second.readings]
    assert first.readings[0].device.serial == "CUFF-7" and first.readings[0].device.uid == "ble:AA:02:00:00:00:01"


def test_kpa_cuff_values_arrive_in_mmhg_with_the_original_kept(tmp_path: Path) -> None:
    AIR.add(BloodPressureCuff("AA:02:00:00:00:02", [BpRecord(18.9, 11.0, 15.9, recent(1), pulse=60)], unit="kPa"))
    sink = RecordingSink()
    run("AA:02:00:00:00:02", "ble.blood_pressure", sink, tmp_path)
    systolic = sink.readings[0].values["systolic"]
    assert systolic.value == pytest.approx(18.9 * MMHG_PER_KPA, abs=1e-6)
    assert (systolic.original_value, systolic.original_unit) == (18.9, "kPa")


def test_nan_systolic_is_left_out_and_flagged_only_when_nothing_remains(tmp_path: Path) -> None:
    AIR.add(BloodPressureCuff("AA:02:00:00:00:03", [BpRecord("NaN", "NaN", "NaN", recent(1))]))
    sink = RecordingSink()
    run("AA:02:00:00:00:03", "ble.blood_pressure", sink, tmp_path)
    assert sink.readings[0].values == {} and "measurement_unsuccessful" in sink.readings[0].flags


def test_a_cuff_clock_an_hour_fast_is_read_corrected_and_set(tmp_path: Path) -> None:
    cuff = BloodPressureCuff("AA:02:00:00:00:04", [BpRecord(120, 80, 93, recent(2) + timedelta(hours=1))],
                             clock_offset=timedelta(hours=1))
    AIR.add(cuff)
    sink = RecordingSink()
    run("AA:02:00:00:00:04", "ble.blood_pressure", sink, tmp_path)
    clock = sink.clocks[0]
    assert clock is not None and clock.was_set and not clock.unset
    assert clock.offset is not None and abs(clock.offset - timedelta(hours=1)) < timedelta(seconds=5)
    reading = sink.readings[0]
    assert reading.clock.judgement is ClockJudgement.CORRECTED
    expected = recent(2).astimezone(UTC)
    assert abs(reading.measured_at - expected) < timedelta(seconds=5)
    assert len(cuff.clock_writes) == 1 and abs(cuff.device_now() - datetime.now()) < timedelta(seconds=5)


def test_an_unset_clock_is_flagged_and_the_gateway_time_used(tmp_path: Path) -> None:
    cuff = BloodPressureCuff("AA:02:00:00:00:05", [BpRecord(120, 80, 93, datetime(2000, 1, 1, 0, 3))],
                             clock_unset=True)
    AIR.add(cuff)
    sink = RecordingSink()
    run("AA:02:00:00:00:05", "ble.blood_pressure", sink, tmp_path)
    assert sink.clocks[0] is not None and sink.clocks[0].unset
    reading = sink.readings[0]
    assert "clock_unset" in reading.flags and reading.clock.judgement is ClockJudgement.GATEWAY
    assert reading.device_time == datetime(2000, 1, 1, 0, 3)


def test_garbage_frame_goes_to_the_sink_as_unreadable_and_the_session_ends_cleanly(tmp_path: Path) -> None:
    records = [BpRecord(120 + i, 80, 93, recent(5 - i)) for i in range(3)]
    # Flags announce a time stamp, pulse, user and status; the frame ends after the flags byte.
    AIR.add(BloodPressureCuff("AA:02:00:00:00:06", records, faults=Faults(garbage_at_record=1,
                                                                          garbage_frame=b"\x1e")))
    sink = RecordingSink()
    result = run("AA:02:00:00:00:06", "ble.blood_pressure", sink, tmp_path)
    assert [r.values["systolic"].value for r in sink.readings] == [120, 122]
    assert result.measurements == 2 and any("undecodable frame" in n for n in result.notes)
    (unreadable,) = sink.unreadable
    assert unreadable.raw == b"\x1e" and unreadable.position == 1 and unreadable.profile == "ble.blood_pressure"
    assert "truncated: systolic" in unreadable.reason


def test_a_cuff_that_keeps_the_link_open_ends_by_idle_timeout(tmp_path: Path) -> None:
    AIR.add(BloodPressureCuff("AA:02:00:00:00:07", [BpRecord(120, 80, 93, recent(1))], disconnect_when_done=False))
    sink = RecordingSink()
    result = run("AA:02:00:00:00:07", "ble.blood_pressure", sink, tmp_path)
    assert result.measurements == 1
    assert AIR.get("AA:02:00:00:00:07").link is None  # the gateway disconnected cleanly


def test_imperial_scale_with_bmi_and_height_and_an_unsuccessful_weighing(tmp_path: Path) -> None:
    records = [WeightRecord(176.4, recent(3), user_id=2, bmi=24.6, height=70.0), WeightRecord(None, recent(2))]
    AIR.add(WeightScale("AA:02:00:00:00:08", records, imperial=True))
    sink = RecordingSink()
    run("AA:02:00:00:00:08", "ble.weight_scale", sink, tmp_path)
    first, failed = sink.readings
    assert first.values["body_weight"].value == pytest.approx(176.4 * KG_PER_LB, abs=1e-6)
    assert first.values["height"].value == pytest.approx(70.0 * 0.0254, abs=1e-6)
    assert first.values["bmi"].value == pytest.approx(24.6)
    assert first.user_index == 2
    assert failed.values == {} and "measurement_unsuccessful" in failed.flags


def test_si_scale_read_twice_gives_the_same_ids(tmp_path: Path) -> None:
    AIR.add(WeightScale("AA:02:00:00:00:09", [WeightRecord(80.0 - i / 2, recent(30 - i), user_id=1) for i in range(3)]))
    first, second = RecordingSink(), RecordingSink()
    run("AA:02:00:00:00:09", "ble.weight_scale", first, tmp_path)
    run("AA:02:00:00:00:09", "ble.weight_scale", second, tmp_path)
    assert [r.values["body_weight"].value for r in first.readings] == [80.0, 79.5, 79.0]
    assert [r.id for r in first.readings] == [r.id for r in second.readings]
