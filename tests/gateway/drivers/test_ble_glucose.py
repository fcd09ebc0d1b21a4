"""Glucose meter sessions through bleak's BleakClient with the simulator backend: RACP incremental
reads, a link lost mid-transfer, contexts joined by sequence number, garbage and hung meters."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from firmware_sims.ble.air import AIR
from firmware_sims.ble.backend import SimBleakClient
from firmware_sims.ble.gatt import Faults
from firmware_sims.ble.peripherals import GlucoseMeter, GlucoseRecord
from gateway.codecs.glucose import MEALS as MEAL_NAMES
from gateway.discovery.ble import run_device_session
from gateway.discovery.ble_config import BleConfig
from gateway.drivers.base import DeviceDisconnectedError, DeviceTimeoutError
from gateway.drivers.device_state import DeviceStateStore
from gateway.drivers.glucose_meter import LAST_SEQUENCE_KEY, SequenceRestartedError
from tests.gateway.ble_support import RecordingSink, empty_air  # noqa: F401 (empty_air is an autouse fixture)

pytestmark = pytest.mark.unit

T = datetime(2026, 3, 14, 7, 0, 0)
CONFIG = BleConfig(backend="sim", op_timeout_s=1.0, idle_timeout_s=0.3, connect_timeout_s=1.0, connect_attempts=1)






def meter(address: str, n: int = 6, **kwargs) -> GlucoseMeter:
    records = [GlucoseRecord(i, T + timedelta(hours=i), round((90 + i) / 100_000, 7), time_offset=-5)
               for i in range(1, n + 1)]
    return GlucoseMeter(address, records, **kwargs)


def session(address: str, sink: RecordingSink, state: DeviceStateStore, config: BleConfig = CONFIG):
    return run_device_session(address, "ble.glucose", config=config, sink=sink, state=state,
                              client_backend=SimBleakClient)


def store(tmp_path: Path, name: str = "state.sqlite") -> DeviceStateStore:
    return DeviceStateStore(tmp_path / name)


def test_full_memory_read_twice_gives_the_same_reading_ids(tmp_path: Path) -> None:
    AIR.add(meter("AA:01:00:00:00:01"))
    first, second = RecordingSink(), RecordingSink()
    asyncio.run(session("AA:01:00:00:00:01", first, store(tmp_path, "a.sqlite")))
    asyncio.run(session("AA:01:00:00:00:01", second, store(tmp_path, "b.sqlite")))
    assert [r.sequence for r in first.readings] == [1, 2, 3, 4, 5, 6]
    assert [r.id for r in first.readings] == [r.id for r in second.readings]
    assert first.readings[0].values["glucose"].value == pytest.approx(91.0)
    assert first.readings[0].device_time == T + timedelta(hours=1, minutes=-5)


def test_second_session_reads_only_new_records_and_no_records_is_a_normal_end(tmp_path: Path) -> None:
    device = meter("AA:01:00:00:00:02", n=3)
    AIR.add(device)
    state, sink = store(tmp_path), RecordingSink()
    asyncio.run(session("AA:01:00:00:00:02", sink, state))
    result = asyncio.run(session("AA:01:00:00:00:02", sink, state))
    assert result.measurements == 0 and "no new records" in result.notes
    device.add_record(GlucoseRecord(4, T + timedelta(hours=4), 0.00120))
    asyncio.run(session("AA:01:00:00:00:02", sink, state))
    assert [r.sequence for r in sink.readings] == [1, 2, 3, 4]
    assert device.requests[-1] == bytes.fromhex("0103010400")  # "report records with sequence >= 4"


def test_link_dropped_mid_transfer_resumes_with_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    device = meter("AA:01:00:00:00:03", n=8, faults=Faults(drop_after_records=3))
    AIR.add(device)
    state, sink = store(tmp_path), RecordingSink()
    with pytest.raises(DeviceDisconnectedError):
        asyncio.run(session("AA:01:00:00:00:03", sink, state))
    assert [r.sequence for r in sink.readings] == [1, 2, 3]
    assert state.get("ble:AA:01:00:00:00:03", LAST_SEQUENCE_KEY) == 3
    asyncio.run(session("AA:01:00:00:00:03", sink, state))
    assert [r.sequence for r in sink.readings] == list(range(1, 9))
    assert len({r.id for r in sink.readings}) == 8


def test_sequence_is_not_advanced_when_the_sink_fails(tmp_path: Path) -> None:
    AIR.add(meter("AA:01:00:00:00:04", n=4))
    state = store(tmp_path)

    class FullOutbox(RecordingSink):
        async def __call__(self, device, measurement, clock) -> None:
            if measurement.sequence == 3:
                raise OSError("disk full")
            await super().__call__(device, measurement, clock)

    with pytest.raises(OSError):
        asyncio.run(session("AA:01:00:00:00:04", FullOutbox(), state))
    assert state.get("ble:AA:01:00:00:00:04", LAST_SEQUENCE_KEY) == 2
    sink = RecordingSink()
    asyncio.run(session("AA:01:00:00:00:04", sink, state))
    assert [r.sequence for r in sink.readings] == [3, 4]


def test_context_is_joined_to_its_measurement_by_sequence(tmp_path: Path) -> None:
    records = [
        GlucoseRecord(1, T, 0.00095, context={"meal": 1, "carbohydrate": (1, 50)}),
        GlucoseRecord(2, T + timedelta(hours=1), 0.0053, unit="mol/L"),
        GlucoseRecord(3, T + timedelta(hours=2), 0.00140, context={"meal": 2}),
    ]
    AIR.add(GlucoseMeter("AA:01:00:00:00:05", records))
    sink = RecordingSink()
    asyncio.run(session("AA:01:00:00:00:05", sink, store(tmp_path)))
    assert [m.sequence for m in sink.measurements] == [1, 2, 3]
    first, plain, third = sink.measurements
    assert first.details["context_carbohydrate_grams"] == 50
    assert first.details["context_meal"] == MEAL_NAMES[1] and third.details["context_meal"] == MEAL_NAMES[2]
    assert not any(key.startswith("context_") and key != "context_follows" for key in plain.details)
    assert sink.readings[1].values["glucose"].value == pytest.approx(0.0053 * 18015.6, rel=1e-6)


def test_garbage_record_goes_to_the_sink_as_unreadable_and_the_rest_arrive(tmp_path: Path) -> None:
    AIR.add(meter("AA:01:00:00:00:06", n=4, faults=Faults(garbage_at_record=1)))
    sink = RecordingSink()
    result = asyncio.run(session("AA:01:00:00:00:06", sink, store(tmp_path)))
    assert [r.sequence for r in sink.readings] == [1, 3, 4]
    assert any("undecodable record" in note for note in result.notes)
    assert [u.raw for u in sink.unreadable] == [Faults().garbage_frame]


def test_a_hung_meter_times_out_instead_of_hanging(tmp_path: Path) -> None:
    AIR.add(meter("AA:01:00:00:00:07", faults=Faults(silent_after_connect=True)))
    config = CONFIG.model_copy(update={"op_timeout_s": 0.3})
    loop_time = []

    async def run() -> None:
        loop_time.append(asyncio.get_running_loop().time())
        try:
            await session("AA:01:00:00:00:07", RecordingSink(), store(tmp_path), config)
        finally:
            loop_time.append(asyncio.get_running_loop().time())

    with pytest.raises(DeviceTimeoutError):
        asyncio.run(run())
    assert loop_time[1] - loop_time[0] < 2.0


def test_control_solution_is_not_a_patient_reading(tmp_path: Path) -> None:
    records = [GlucoseRecord(1, T, 0.00095), GlucoseRecord(2, T, 0.00110, sample_type=10, sample_location=4)]
    AIR.add(GlucoseMeter("AA:01:00:00:00:08", records))
    state, sink = store(tmp_path), RecordingSink()
    asyncio.run(session("AA:01:00:00:00:08", sink, state))
    assert [r.sequence for r in sink.readings] == [1]
    assert state.get("ble:AA:01:00:00:00:08", LAST_SEQUENCE_KEY) == 2


def test_a_meter_whose_numbering_restarted_is_reported_not_silently_skipped(tmp_path: Path) -> None:
    device = meter("AA:01:00:00:00:09", n=5)
    AIR.add(device)
    state = store(tmp_path)
    asyncio.run(session("AA:01:00:00:00:09", RecordingSink(), state))
    # A battery change wiped the memory and numbering starts again at 1.
    device.records = [GlucoseRecord(1, T + timedelta(days=1), 0.00100), GlucoseRecord(2, T + timedelta(days=1), 0.0011)]
    with pytest.raises(SequenceRestartedError, match="newest record 2, last read 5"):
        asyncio.run(session("AA:01:00:00:00:09", RecordingSink(), state))
    assert state.get("ble:AA:01:00:00:00:09", LAST_SEQUENCE_KEY) == 5


def test_no_new_records_on_a_meter_with_steady_numbering_is_quiet(tmp_path: Path) -> None:
    device = meter("AA:01:00:00:00:0A", n=2)
    AIR.add(device)
    state, sink = store(tmp_path), RecordingSink()
    asyncio.run(session("AA:01:00:00:00:0A", sink, state))
    result = asyncio.run(session("AA:01:00:00:00:0A", sink, state))
    assert result.measurements == 0 and len(sink.readings) == 2
    assert device.requests[-1] == bytes([1, 6])  # the "last record" probe, answered without complaint
