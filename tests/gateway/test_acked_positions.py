"""The meter's memory is the backup until the cloud acknowledges (issue 15, item 1).

Through the real gateway (outbox, device state, uplink to the real broker, a test acker standing in
for the cloud) and a glucose meter reached through bleak's client with the simulator backend: a new
session asks RACP for the records after the last one the cloud acknowledged, so a reading the outbox
lost before its ack is read from the meter again, acked readings are not asked for again, records that
will never be acked (quarantined here or by the cloud) do not hold the position back, and the acked
position survives a restart and a damaged outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from firmware_sims.ble.air import AIR
from firmware_sims.ble.backend import SimBleakClient
from firmware_sims.ble.peripherals import GlucoseMeter, GlucoseRecord
from firmware_sims.serial.taidoc import BpRecord as TaidocBp
from firmware_sims.serial.taidoc import PtyTaidoc, TaidocMeter
from gateway.codecs.taidoc import Command
from gateway.config import GatewayConfig, parse_config
from gateway.contract import compute_reading_id
from gateway.discovery.ble import run_device_session
from gateway.discovery.ble_config import BleConfig
from gateway.drivers import glucose_meter
from gateway.drivers.base import DeviceInfo, SessionResult
from gateway.drivers.device_state import ACKED_SEQUENCE_KEY, RECORD_ORDINAL_KEY, SEQUENCE_CURSOR_KEY
from gateway.drivers.glucose_meter import LAST_SEQUENCE_KEY
from gateway.drivers.taidoc import TaidocDriver
from gateway.runtime import Gateway
from tests.gateway.ble_support import empty_air  # noqa: F401 (autouse fixture)
from tests.gateway.mqtt_acker import TestAcker
from tests.waiting import eventually

pytestmark = pytest.mark.integration

BLE = BleConfig(backend="sim", op_timeout_s=1.0, idle_timeout_s=0.3, connect_timeout_s=1.0, connect_attempts=1)
UNREACHABLE = "mqtt://127.0.0.1:9"  # the uplink is down: readings stay in the outbox, unacked


def config(tmp_path: Path, url: str, gateway_id: str, **extra: Any) -> GatewayConfig:
    return parse_config({
        "gateway_id": gateway_id, "data_dir": str(tmp_path / "gw"), "status_interval_s": 30,
        "mqtt": {"url": url, "drain_timeout_s": 0.2, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "ble": {"enabled": False}, "usb": {"enabled": False}, **extra,
    })


@contextlib.asynccontextmanager
async def running(cfg: GatewayConfig) -> AsyncIterator[Gateway]:
    gateway = Gateway(cfg, start_devices=False)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def read_meter(gateway: Gateway, address: str) -> SessionResult:
    assert gateway.device_state is not None
    return await run_device_session(address, "ble.glucose", config=BLE, sink=gateway.sink,
                                    state=gateway.device_state, client_backend=SimBleakClient)


def recent(hours: float) -> datetime:
    return (datetime.now() - timedelta(hours=hours)).replace(microsecond=0)


def records(n: int) -> list[GlucoseRecord]:
    return [GlucoseRecord(i, recent(12 - i), 0.00095 + i / 1e6) for i in range(1, n + 1)]


def report_from(sequence: int) -> bytes:
    """RACP "report stored records, sequence number >= n" (GLS 1.0 3.108)."""
    return bytes([1, 3, 1]) + sequence.to_bytes(2, "little")


def reading_id(address: str, sequence: int) -> str:
    return compute_reading_id(f"ble:{address}", "glucose", None, sequence=sequence)


def acked_position(gateway: Gateway, address: str) -> Any:
    assert gateway.device_state is not None
    return gateway.device_state.get(f"ble:{address}", ACKED_SEQUENCE_KEY)


def lose_from_outbox(cfg: GatewayConfig, sequence: int) -> None:
    """Delete a stored, unacked reading behind the gateway's back, as a cap or a torn write would."""
    with contextlib.closing(sqlite3.connect(cfg.data_dir / "outbox.sqlite")) as db:
        deleted = db.execute("DELETE FROM readings WHERE json_extract(payload, '$.sequence') = ?", (sequence,))
        db.commit()
        assert deleted.rowcount == 1


def damage_header(path: Path) -> None:
    """A damaged header: nothing in the file can be read."""
    with open(path, "r+b") as handle:
        handle.write(os.urandom(100))


@pytest.fixture
def acker(mqtt_broker, unique_id: str):  # type: ignore[no-untyped-def]
    ack = TestAcker(mqtt_broker.host, mqtt_broker.port, unique_id, v5=mqtt_broker.supports_v5)
    yield ack
    ack.close()


def test_the_drivers_position_keys_are_the_ones_the_acked_positions_keep() -> None:
    assert glucose_meter.ACKED_SEQUENCE_KEY == ACKED_SEQUENCE_KEY
    assert glucose_meter.LAST_SEQUENCE_KEY == SEQUENCE_CURSOR_KEY


def test_a_reading_lost_from_the_outbox_before_its_ack_is_read_from_the_meter_again(
        tmp_path: Path, mqtt_broker, unique_id: str, acker: TestAcker) -> None:  # type: ignore[no-untyped-def]
    address = "AA:15:00:00:00:01"
    meter = GlucoseMeter(address, records(6))
    AIR.add(meter)
    offline, online = config(tmp_path, UNREACHABLE, unique_id), config(tmp_path, mqtt_broker.url, unique_id)
    every = {reading_id(address, n) for n in range(1, 7)}

    async def scenario() -> None:
        async with running(offline) as gateway:
            await read_meter(gateway, address)
            assert gateway.outbox is not None and set(gateway.outbox.ids()) == every
            assert acked_position(gateway, address) is None  # stored here is not held by the cloud
        lose_from_outbox(offline, 3)

        async with running(online) as gateway:
            await eventually(lambda: acker.seen.keys() == every - {reading_id(address, 3)}, 10, "5 readings sent")
            await eventually(lambda: acked_position(gateway, address) == 2, 10, "acked position held before 3")
            await read_meter(gateway, address)
            assert meter.requests[-1] == report_from(3)  # from the lost one, not after the last stored
            await eventually(lambda: acker.seen.keys() == every, 10, "the lost reading reaches the cloud")
            await eventually(lambda: acked_position(gateway, address) == 6, 10, "acked position at 6")
            meter.add_record(GlucoseRecord(7, recent(0.5), 0.00101))

        async with running(online) as gateway:  # a restart keeps the acked position
            assert acked_position(gateway, address) == 6
            await read_meter(gateway, address)
            assert meter.requests[-1] == report_from(7)  # acked readings are not asked for again
            await eventually(lambda: reading_id(address, 7) in acker.seen, 10, "record 7 sent")
            await eventually(lambda: acked_position(gateway, address) == 7, 10, "acked position at 7")

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert set(acker.seen.values()) == {1}  # re-reading 4..6 sent none of them again


def test_records_quarantined_here_or_by_the_cloud_do_not_hold_the_acked_position_back(
        tmp_path: Path, mqtt_broker, unique_id: str) -> None:  # type: ignore[no-untyped-def]
    address = "AA:15:00:00:00:02"
    memory = records(6)
    memory[2] = GlucoseRecord(3, recent(9), 0.02)  # 2000 mg/dL: the contract refuses it, quarantined here
    memory[5] = GlucoseRecord(6, recent(6), 0.03)  # the newest record too: nothing after it is ever acked
    meter = GlucoseMeter(address, memory)
    AIR.add(meter)
    rejected = reading_id(address, 5)
    acker = TestAcker(mqtt_broker.host, mqtt_broker.port, unique_id, v5=mqtt_broker.supports_v5,
                      reject=lambda reading: "refused by the test cloud" if reading["id"] == rejected else None)
    cfg = config(tmp_path, mqtt_broker.url, unique_id)

    async def scenario() -> None:
        async with running(cfg) as gateway:
            await read_meter(gateway, address)
            assert gateway.outbox is not None and len(gateway.outbox.quarantined_records(f"ble:{address}")) == 2
            await eventually(lambda: acked_position(gateway, address) == 6, 10, "acked position past 3, 5 and 6")
            meter.add_record(GlucoseRecord(7, recent(0.5), 0.00101))
            await read_meter(gateway, address)
            assert meter.requests[-1] == report_from(7)
            await eventually(lambda: acked_position(gateway, address) == 7, 10, "acked position at 7")
            assert gateway.device_state is not None and gateway.device_state.held(f"ble:{address}") == []

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
        assert set(acker.seen) == {reading_id(address, n) for n in (1, 2, 4, 5, 7)}
        assert set(acker.seen.values()) == {1}
    finally:
        acker.close()


def test_a_damaged_outbox_falls_back_to_the_acked_position_not_to_the_start(
        tmp_path: Path, mqtt_broker, unique_id: str, acker: TestAcker) -> None:  # type: ignore[no-untyped-def]
    address = "AA:15:00:00:00:03"
    meter = GlucoseMeter(address, records(4))
    AIR.add(meter)
    offline, online = config(tmp_path, UNREACHABLE, unique_id), config(tmp_path, mqtt_broker.url, unique_id)

    async def scenario() -> str | None:
        async with running(online) as gateway:
            await read_meter(gateway, address)
            await eventually(lambda: acked_position(gateway, address) == 4, 10, "acked position at 4")
        meter.add_record(GlucoseRecord(5, recent(0.5), 0.00101))
        async with running(offline) as gateway:
            await read_meter(gateway, address)  # 5 is stored here only
        damage_header(online.data_dir / "outbox.sqlite")
        async with running(online) as gateway:
            assert gateway.device_state is not None
            assert gateway.device_state.get(f"ble:{address}", LAST_SEQUENCE_KEY) is None  # the cursor went
            await read_meter(gateway, address)
            assert meter.requests[-1] == report_from(5)  # not "report all records"
            await eventually(lambda: reading_id(address, 5) in acker.seen, 10, "record 5 reaches the cloud")
            await eventually(lambda: acked_position(gateway, address) == 5, 10, "acked position at 5")
            return gateway.status().storage_message

    message = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert message is not None and "1 device with memory will be read again from the last record the cloud " \
                                   "acknowledged" in message
    assert set(acker.seen) == {reading_id(address, n) for n in range(1, 6)}


# --- TaiDoc meters: no sequence numbers, the gateway counts their records -----------------------------

TAIDOC_SERIAL = "3128A0B1C2D3E4F5"
TAIDOC_UID = f"usb:10c4:ea80:{TAIDOC_SERIAL}"
TAIDOC_RECORD_VALUE = Command.RECORD_VALUE


async def read_taidoc(gateway: Gateway, meter: TaidocMeter) -> int:
    """One session through the gateway's sink; returns how many records it read from the meter."""
    assert gateway.device_state is not None
    before = meter.requests.count(TAIDOC_RECORD_VALUE)
    with PtyTaidoc(meter) as sim:
        device = DeviceInfo(uid="usb:10c4:ea80:pending", transport="usb", profile="serial.taidoc")
        await asyncio.wait_for(TaidocDriver(sim.path, device, gateway.sink, gateway.device_state).run(), 20)
    return meter.requests.count(TAIDOC_RECORD_VALUE) - before


def taidoc_ids(gateway: Gateway) -> dict[int, str]:
    """Reading id by systolic value (each test record has its own)."""
    assert gateway.outbox is not None
    with contextlib.closing(sqlite3.connect(gateway.outbox.path)) as db:
        return {int(s): rid for rid, s in db.execute(
            "SELECT id, json_extract(payload, '$.values.systolic.value') FROM readings")}


def test_a_taidoc_reading_lost_before_its_ack_is_read_from_the_meter_again(
        tmp_path: Path, mqtt_broker, unique_id: str, acker: TestAcker) -> None:  # type: ignore[no-untyped-def]
    meter = TaidocMeter(serial=TAIDOC_SERIAL)
    start = datetime.now().replace(second=0, microsecond=0) - timedelta(hours=6)
    for n in range(5):  # oldest first: systolic 121..125
        meter.store(TaidocBp(start + timedelta(minutes=30 * n), systolic=121 + n, diastolic=80, pulse=70))
    offline, online = config(tmp_path, UNREACHABLE, unique_id), config(tmp_path, mqtt_broker.url, unique_id)

    async def scenario() -> None:
        async with running(offline) as gateway:
            assert await read_taidoc(gateway, meter) == 5
            ids = taidoc_ids(gateway)
            assert len(ids) == 5
        with contextlib.closing(sqlite3.connect(offline.data_dir / "outbox.sqlite")) as db:
            db.execute("DELETE FROM readings WHERE id = ?", (ids[123],))  # lost before its ack
            db.commit()

        async with running(online) as gateway:
            state = gateway.device_state
            assert state is not None
            await eventually(lambda: acker.seen.keys() == set(ids.values()) - {ids[123]}, 10, "4 readings sent")
            await eventually(lambda: state.get(TAIDOC_UID, ACKED_SEQUENCE_KEY) == 2, 10, "held before the lost one")
            # Resumes from the acked record (the 2nd), so the 3rd, lost here, is read again.
            assert await read_taidoc(gateway, meter) == 2 + 3  # the anchor's two records, then 3..5
            await eventually(lambda: acker.seen.keys() == set(ids.values()), 10, "the lost reading reaches the cloud")
            top = state.get(TAIDOC_UID, RECORD_ORDINAL_KEY)
            await eventually(lambda: state.get(TAIDOC_UID, ACKED_SEQUENCE_KEY) == top, 10, "acked at the last record")
            assert state.held(TAIDOC_UID) == []
            meter.store(TaidocBp(start + timedelta(hours=5), systolic=126, diastolic=80, pulse=70))

        async with running(online) as gateway:  # a restart keeps the acked position
            assert await read_taidoc(gateway, meter) == 2 + 1  # acked records are not read again
            await eventually(lambda: len(acker.seen) == 6, 10, "the new reading sent")

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert set(acker.seen.values()) == {1}  # re-reading 4 and 5 sent neither again


@pytest.mark.parametrize("when_full", ["drop_oldest", "refuse_new"])
def test_a_taidoc_memory_larger_than_the_outbox_cap_reaches_the_cloud_whole_under_either_policy(
        tmp_path: Path, mqtt_broker, unique_id: str, acker: TestAcker, when_full: str) -> None:  # type: ignore[no-untyped-def]
    meter = TaidocMeter(serial=TAIDOC_SERIAL)
    start = datetime.now().replace(second=0, microsecond=0) - timedelta(hours=6)
    for n in range(6):
        meter.store(TaidocBp(start + timedelta(minutes=30 * n), systolic=121 + n, diastolic=80, pulse=70))
    capped = {"max_readings": 3, "when_full": when_full}
    offline = config(tmp_path, UNREACHABLE, unique_id, outbox=capped)
    online = config(tmp_path, mqtt_broker.url, unique_id, outbox=capped)

    async def scenario() -> None:
        async with running(offline) as gateway:  # an outage: the outbox holds 3 of the meter's 6
            with contextlib.suppress(Exception):  # refuse_new ends the session at the first refusal
                await read_taidoc(gateway, meter)
            assert gateway.outbox is not None and gateway.outbox.depth() == 3
        async with running(online) as gateway:
            for _ in range(4):  # sessions as the meter is plugged in again, until all six are in the cloud
                await eventually(lambda: gateway.outbox is not None and gateway.outbox.depth() == 0, 10, "sent")
                if len(acker.seen) == 6:
                    break
                with contextlib.suppress(Exception):
                    await read_taidoc(gateway, meter)
            await eventually(lambda: len(acker.seen) == 6, 10, "all six readings in the cloud")

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert set(acker.seen.values()) == {1}
