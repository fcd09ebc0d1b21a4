"""Pulse oximeter sessions through bleak's BleakClient with the simulator backend: stored spot-checks
downloaded through RACP and identified without a sequence number, a second download that doubles
nothing (real outbox), a clockless memory, a broken record quarantined, a continuous stream windowed."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from firmware_sims.ble.air import AIR
from firmware_sims.ble.backend import SimBleakClient
from firmware_sims.ble.gatt import Faults
from firmware_sims.ble.oximeter import (
    ContinuousSample,
    PulseOximeter,
    SpotCheckRecord,
    device_sensor_status,
    measurement_status,
)
from gateway.contract import Reading
from gateway.discovery.ble import run_device_session
from gateway.discovery.ble_config import BleConfig
from gateway.drivers.base import DeviceDisconnectedError
from gateway.drivers.device_state import DeviceStateStore
from gateway.readings.intake import RecordIntake, RecordOutcome
from gateway.store.outbox import Outbox
from tests.gateway.ble_support import RecordingSink, empty_air  # noqa: F401 (empty_air is an autouse fixture)

pytestmark = pytest.mark.unit

CONFIG = BleConfig(backend="sim", op_timeout_s=1.0, idle_timeout_s=0.3, connect_timeout_s=1.0, connect_attempts=1)
NIGHT = (datetime.now() - timedelta(hours=6)).replace(microsecond=0)


def spot_checks(n: int = 4) -> list[SpotCheckRecord]:
    return [SpotCheckRecord(95 - i, 70 + i, NIGHT + timedelta(minutes=10 * i)) for i in range(n)]


def session(address: str, sink, tmp_path: Path, config: BleConfig = CONFIG):
    return run_device_session(address, "ble.pulse_oximeter", config=config, sink=sink,
                              state=DeviceStateStore(tmp_path / f"state-{address[-2:]}.sqlite"),
                              client_backend=SimBleakClient)


def test_stored_spot_checks_come_through_racp_with_device_info(tmp_path: Path) -> None:
    device = PulseOximeter("AA:0F:00:00:00:01", spot_checks(), battery=64)
    AIR.add(device)
    sink = RecordingSink()
    result = asyncio.run(session(device.address, sink, tmp_path))
    assert device.requests == [bytes.fromhex("0101")]  # report stored records: all (PLXS has no filter)
    assert [r.values["spo2"].value for r in sink.readings] == [95, 94, 93, 92]
    assert [r.values["spo2_pulse_rate"].value for r in sink.readings] == [70, 71, 72, 73]
    assert {r.kind for r in sink.readings} == {"pulse_oximetry"}
    assert {r.device.profile for r in sink.readings} == {"ble.pulse_oximeter"}
    assert {r.device.model for r in sink.readings} == {"SIM-PLX"}
    assert sink.readings[0].device_time == NIGHT and sink.readings[0].clock.judgement.value == "device"
    assert result.measurements == 4 and result.battery == 64


def test_a_second_download_of_the_same_memory_stores_nothing_twice(tmp_path: Path) -> None:
    device = PulseOximeter("AA:0F:00:00:00:02", spot_checks(3))
    AIR.add(device)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outcomes: list[RecordOutcome] = []
    intake = RecordIntake(outbox)

    async def sink(dev, record, clock):  # the real intake, with its outcome kept for the assertion
        outcomes.append(await intake(dev, record, clock))

    try:
        asyncio.run(session(device.address, sink, tmp_path))
        device.records.append(SpotCheckRecord(89, 77, NIGHT + timedelta(hours=1)))
        asyncio.run(session(device.address, sink, tmp_path))
        assert outcomes == [RecordOutcome.STORED] * 3 + [RecordOutcome.KNOWN] * 3 + [RecordOutcome.STORED]
        batch = outbox.take_batch("b1", 50, 30)
        assert batch is not None and len(batch) == 4
    finally:
        outbox.close()
    readings = [Reading.model_validate_json(p) for p in batch.payloads]
    assert sorted(r.values["spo2"].value for r in readings) == [89, 93, 94, 95]


def test_clockless_records_are_told_apart_by_occurrence_and_keep_their_ids(tmp_path: Path) -> None:
    same = SpotCheckRecord(96, 64)  # no time stamp: two identical records in one memory
    device = PulseOximeter("AA:0F:00:00:00:03", [same, SpotCheckRecord(96, 64), SpotCheckRecord(91, 80)])
    AIR.add(device)
    first, second = RecordingSink(), RecordingSink()
    asyncio.run(session(device.address, first, tmp_path))
    asyncio.run(session(device.address, second, tmp_path))
    ids = [r.id for r in first.readings]
    assert len(set(ids)) == 3 and ids == [r.id for r in second.readings]
    assert all("clock_unset" in r.flags and r.clock.judgement.value == "gateway" for r in first.readings)


def test_clock_not_set_flag_times_the_reading_by_the_gateway_but_keeps_the_identity(tmp_path: Path) -> None:
    record = SpotCheckRecord(93, 70, datetime(2000, 1, 1, 0, 42), clock_not_set=True)
    device = PulseOximeter("AA:0F:00:00:00:04", [record])
    AIR.add(device)
    sink = RecordingSink()
    asyncio.run(session(device.address, sink, tmp_path))
    (reading,) = sink.readings
    assert reading.device_time == datetime(2000, 1, 1, 0, 42) and "clock_unset" in reading.flags
    assert reading.measured_at > datetime.now().astimezone() - timedelta(minutes=1)


def test_flagged_records_travel_with_their_flags(tmp_path: Path) -> None:
    records = [
        SpotCheckRecord(78, 70, NIGHT, status=measurement_status("invalid_measurement_detected")),
        SpotCheckRecord(85, 70, NIGHT + timedelta(minutes=1), status=measurement_status(
            "questionable_measurement_detected"), sensor_status=device_sensor_status("low_perfusion_detected"),
            pulse_amplitude_index=0.2),
        SpotCheckRecord(97, 70, NIGHT + timedelta(minutes=2), status=measurement_status("data_for_demonstration")),
    ]
    AIR.add(PulseOximeter("AA:0F:00:00:00:05", records))
    sink = RecordingSink()
    asyncio.run(session("AA:0F:00:00:00:05", sink, tmp_path))
    assert [r.flags for r in sink.readings] == [
        ["invalid_measurement"], ["questionable_measurement", "low_perfusion"], ["demonstration_data"],
    ]
    assert sink.readings[1].values["pulse_amplitude_index"].value == 0.2


def test_a_bad_record_in_memory_is_quarantined_and_the_rest_still_come(tmp_path: Path) -> None:
    records = spot_checks(4)
    records[1] = SpotCheckRecord(0, 0, raw="0065004800")  # SpO2 101 %: contradictory
    device = PulseOximeter("AA:0F:00:00:00:06", records, faults=Faults(garbage_at_record=2, garbage_frame=b"\x01\x61"))
    AIR.add(device)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        result = asyncio.run(session(device.address, RecordIntake(outbox), tmp_path))
        quarantined = outbox.quarantined_records(f"ble:{device.address}")
        batch = outbox.take_batch("b1", 50, 30)
    finally:
        outbox.close()
    assert result.measurements == 2 and batch is not None and len(batch) == 2
    assert sorted((q.position, q.raw) for q in quarantined) == [("1", "0065004800"), ("2", "0161")]
    assert any("spo2 at byte 1" in q.reason for q in quarantined)


def test_link_lost_mid_download_fails_the_session_and_the_retry_reads_everything_once(tmp_path: Path) -> None:
    device = PulseOximeter("AA:0F:00:00:00:07", spot_checks(5), faults=Faults(drop_after_records=2))
    AIR.add(device)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        with pytest.raises(DeviceDisconnectedError):
            asyncio.run(session(device.address, RecordIntake(outbox), tmp_path))
        asyncio.run(session(device.address, RecordIntake(outbox), tmp_path))
        batch = outbox.take_batch("b1", 50, 30)
    finally:
        outbox.close()
    assert batch is not None and len(batch) == 5


def test_no_stored_records_is_a_normal_end(tmp_path: Path) -> None:
    AIR.add(PulseOximeter("AA:0F:00:00:00:08", []))
    result = asyncio.run(session("AA:0F:00:00:00:08", RecordingSink(), tmp_path))
    assert result.measurements == 0 and "no stored spot-checks" in result.notes


def test_a_continuous_stream_becomes_one_reading_per_window_with_the_held_minimum(tmp_path: Path) -> None:
    # 1 s windows at 20 Hz: a sustained dip to 84 % is kept, a one-sample spike to 70 % and the
    # samples the oximeter flagged invalid or low-perfusion are not.
    invalid = measurement_status("invalid_measurement_detected")
    pattern = ([ContinuousSample(95, 60)] * 5 + [ContinuousSample(70, 60)] + [ContinuousSample(95, 62)] * 4
               + [ContinuousSample(84, 66)] * 4 + [ContinuousSample(60, 90, status=invalid)] * 3
               + [ContinuousSample(50, 60, sensor_status=device_sensor_status("low_perfusion_detected"))] * 3)
    device = PulseOximeter("AA:0F:00:00:00:09", stream=pattern, hz=20, frames=60)
    AIR.add(device)
    sink = RecordingSink()
    config = CONFIG.model_copy(update={"heart_rate_cadence_s": 1.0})
    result = asyncio.run(session(device.address, sink, tmp_path, config))
    assert 2 <= len(sink.readings) <= 5 and result.measurements == len(sink.readings)
    assert all("averaged" in r.flags for r in sink.readings)
    # A window can close holding only flagged samples (where the epoch-aligned boundary falls): it is
    # stored with their flags, which keep it from being judged; a window with good samples never
    # takes a flagged one into its value.
    flagged = {"invalid_measurement", "low_perfusion"}
    lows = [r.values["spo2"].value for r in sink.readings if "spo2" in r.values and not flagged & set(r.flags)]
    assert min(lows) == 84 and 70 not in lows and 60 not in lows and 50 not in lows
    assert all(flagged & set(r.flags) for r in sink.readings if "spo2" in r.values and r.values["spo2"].value < 84)
    assert len({r.id for r in sink.readings}) == len(sink.readings)
    assert all(r.clock.judgement.value == "gateway" and "clock_unset" not in r.flags for r in sink.readings)
