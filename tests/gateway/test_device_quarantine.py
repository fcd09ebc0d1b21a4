"""A bad record in the middle of a device memory never blocks the device (issue 14, item 2).

Per family, through the real gateway (outbox, status, uplink to the real broker) and the real
transports (bleak with the simulator backend; the USB manager opening ptys as it opens /dev/ttyUSB0):
every good record before and after the bad one is stored, the bad one is quarantined once with its
bytes and reason (not again on the next session), the device's resume point moves past it, and the
status counts it under the device and in the gateway total.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from firmware_sims.ble.air import AIR
from firmware_sims.ble.backend import SimBleakClient
from firmware_sims.ble.gatt import Faults
from firmware_sims.ble.peripherals import (
    BloodPressureCuff,
    BpRecord,
    GlucoseMeter,
    GlucoseRecord,
    WeightRecord,
    WeightScale,
)
from firmware_sims.serial import taidoc as taidoc_sim
from firmware_sims.serial.astm_meter import GlucoseMeter as AstmMeter
from firmware_sims.serial.astm_meter import GlucoseResult, PtyAstmMeter
from gateway.config import GatewayConfig, parse_config
from gateway.contract import DeviceStatus, Reading
from gateway.discovery.ble import run_device_session
from gateway.discovery.ble_config import BleConfig
from gateway.drivers.device_state import DeviceStateStore
from gateway.drivers.glucose_meter import LAST_SEQUENCE_KEY
from gateway.runtime import Gateway
from tests.gateway.ble_support import empty_air  # noqa: F401 (autouse fixture)
from tests.waiting import eventually

pytestmark = pytest.mark.integration

BLE = BleConfig(backend="sim", op_timeout_s=1.0, idle_timeout_s=0.3, connect_timeout_s=1.0, connect_attempts=1)


def config(tmp_path: Path, url: str, gateway_id: str, **extra: Any) -> GatewayConfig:
    data: dict[str, Any] = {
        "gateway_id": gateway_id, "data_dir": str(tmp_path / "gw"), "status_interval_s": 30,
        "mqtt": {"url": url, "drain_timeout_s": 0.2, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "ble": {"enabled": False}, "usb": {"enabled": False},
    }
    data.update(extra)
    return parse_config(data)


@contextlib.asynccontextmanager
async def running(cfg: GatewayConfig, *, start_devices: bool = False) -> AsyncIterator[Gateway]:
    gateway = Gateway(cfg, start_devices=start_devices)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def stored(cfg: GatewayConfig) -> list[Reading]:
    """The readings in the outbox as another process would find them on disk, oldest first."""
    with contextlib.closing(sqlite3.connect(cfg.data_dir / "outbox.sqlite")) as db:
        rows = db.execute("SELECT payload FROM readings ORDER BY seq").fetchall()
    return [Reading.model_validate(json.loads(payload)) for (payload,) in rows]


def quarantined_count(gateway: Gateway, uid: str) -> int | None:
    """What the status shows for the device (None while it is not in the status)."""
    device: DeviceStatus | None = next((d for d in gateway.status().devices if d.uid == uid), None)
    return None if device is None else device.quarantined


def ble_session(gateway: Gateway, address: str, profile: str, state: DeviceStateStore):  # type: ignore[no-untyped-def]
    return run_device_session(address, profile, config=BLE, sink=gateway.sink, state=state,
                              client_backend=SimBleakClient)


def recent(hours: float) -> datetime:
    return (datetime.now() - timedelta(hours=hours)).replace(microsecond=0)


def test_glucose_meter_quarantines_bad_records_mid_memory_and_the_sequence_moves_past_them(
        tmp_path: Path, mqtt_broker, unique_id: str) -> None:  # type: ignore[no-untyped-def]
    address = "AA:0E:00:00:00:01"
    records = [GlucoseRecord(i, recent(10 - i), 0.00095 + i / 1e6) for i in range(1, 7)]
    records[2] = GlucoseRecord(3, recent(7), 0.02)  # 2000 mg/dL: decodes, the contract refuses it
    meter = GlucoseMeter(address, records, faults=Faults(garbage_at_record=4))  # record 5: does not decode
    AIR.add(meter)
    cfg = config(tmp_path, mqtt_broker.url, unique_id)
    state = DeviceStateStore(tmp_path / "state.sqlite")

    async def scenario() -> None:
        async with running(cfg) as gateway:
            await ble_session(gateway, address, "ble.glucose", state)
            assert [r.sequence for r in stored(cfg)] == [1, 2, 4, 6]
            assert state.get(f"ble:{address}", LAST_SEQUENCE_KEY) == 6
            quarantined = gateway.outbox.quarantined_records(f"ble:{address}")
            assert [q.position for q in quarantined] == ["3", None]
            assert "values.glucose: 2000.0 mg/dL is outside 0..1000" in quarantined[0].reason
            assert quarantined[0].raw == records[2].encode().hex()
            assert quarantined[1].raw == Faults().garbage_frame.hex() and "does not decode" in quarantined[1].reason

            meter.add_record(GlucoseRecord(7, recent(0.5), 0.00101))
            await ble_session(gateway, address, "ble.glucose", state)
            assert [r.sequence for r in stored(cfg)] == [1, 2, 4, 6, 7]
            assert meter.requests[-1] == bytes.fromhex("0103010700")  # resumed after 6, past both bad ones
            assert len(gateway.outbox.quarantined_records()) == 2
            assert quarantined_count(gateway, f"ble:{address}") == 2
            assert gateway.status().quarantined == 2

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_cuff_and_clockless_scale_resending_their_memory_quarantine_each_bad_record_once(
        tmp_path: Path, mqtt_broker, unique_id: str) -> None:  # type: ignore[no-untyped-def]
    cuff_address, scale_address = "AA:0E:00:00:00:02", "AA:0E:00:00:00:03"
    cuff_records = [BpRecord(120 + i, 80, 93, recent(6 - i)) for i in range(5)]
    cuff_records[1] = BpRecord(500, 80, 93, recent(5))  # 500 mmHg: outside the contract's 0..400
    # Record 3 arrives as garbage every session; the cuff re-sends its whole memory each time.
    AIR.add(BloodPressureCuff(cuff_address, cuff_records, faults=Faults(garbage_at_record=3, garbage_frame=b"\x1e")))
    # A scale with no clock: an unsuccessful weighing has neither a time nor a value to identify it.
    AIR.add(WeightScale(scale_address, [WeightRecord(81.2), WeightRecord(None), WeightRecord(81.6)],
                        has_current_time=False))
    cfg = config(tmp_path, mqtt_broker.url, unique_id)
    state = DeviceStateStore(tmp_path / "state.sqlite")

    async def scenario() -> None:
        async with running(cfg) as gateway:
            for _ in range(2):
                await ble_session(gateway, cuff_address, "ble.blood_pressure", state)
                await ble_session(gateway, scale_address, "ble.weight_scale", state)
            readings = stored(cfg)
            assert [r.values["systolic"].value for r in readings if r.kind == "blood_pressure"] == [120, 122, 124]
            assert [r.values["body_weight"].value for r in readings if r.kind == "body_weight"] == [81.2, 81.6]
            cuff_bad = gateway.outbox.quarantined_records(f"ble:{cuff_address}")
            # A cuff's records carry no number; an undecodable frame is placed by its place in the session.
            assert [(q.position, q.raw) for q in cuff_bad] == [(None, cuff_records[1].encode("mmHg").hex()),
                                                               ("3", "1e")]
            (scale_bad,) = gateway.outbox.quarantined_records(f"ble:{scale_address}")
            assert scale_bad.raw == WeightRecord(None).encode(False).hex()
            assert "a reading id needs" in scale_bad.reason
            await eventually(lambda: quarantined_count(gateway, f"ble:{cuff_address}") == 2, 5, "count")
            assert quarantined_count(gateway, f"ble:{scale_address}") == 1
            assert gateway.status().quarantined == 3

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_astm_meter_over_a_pty_stores_the_records_around_bad_ones_and_acks_the_whole_transfer(
        tmp_path: Path, mqtt_broker, unique_id: str) -> None:  # type: ignore[no-untyped-def]
    link = str(tmp_path / "ttyMeter")
    base = datetime.now().replace(second=0, microsecond=0) - timedelta(days=2)
    results = [
        GlucoseResult(base, 96),
        GlucoseResult(base + timedelta(hours=4), 5000),  # decodes; outside the contract's 0..1000 mg/dL
        GlucoseResult(base + timedelta(hours=8), 104),
        GlucoseResult(base + timedelta(hours=12), 99, unit="furlongs"),  # does not decode
        GlucoseResult(base + timedelta(hours=16), float("nan")),  # decodes to NaN; the contract refuses it
        GlucoseResult(base + timedelta(hours=20), 111),
    ]
    meter = AstmMeter(results=results)
    cfg = config(tmp_path, mqtt_broker.url, unique_id,
                 usb={"poll_interval_s": 0.05, "devices": [{"port": link, "profile": "serial.astm"}]})
    uid = f"usb:0000:0000:{meter.serial}"

    async def scenario() -> None:
        async with running(cfg, start_devices=True) as gateway:
            for transfer in (1, 2):  # the meter uploads its whole memory on every plug-in
                sim = PtyAstmMeter(meter, link_path=link)
                sim.plug_in()
                try:
                    await eventually(lambda s=sim: s.finished, 15, f"transfer {transfer} completed (every frame ACKed)")
                    await eventually(lambda: quarantined_count(gateway, uid) == 3, 5, "quarantine count")
                finally:
                    sim.pull_cable()
                assert sim.naks == 0 and sim.transfers == 1
                assert [r.values["glucose"].value for r in stored(cfg)] == [96, 104, 111]
            quarantined = gateway.outbox.quarantined_records(uid)
            assert [q.position for q in quarantined] == ["2", "4", "5"]  # the meter's record numbers
            assert "5000.0 mg/dL is outside" in quarantined[0].reason
            assert "unknown glucose unit 'furlongs'" in quarantined[1].reason
            assert bytes.fromhex(quarantined[1].raw).decode("latin-1").startswith("R|4|^^^Glucose|99|furlongs")
            assert gateway.status().quarantined == 3

    asyncio.run(asyncio.wait_for(scenario(), 45))


def test_taidoc_meter_over_a_pty_quarantines_bad_records_and_its_anchor_moves_past_them(
        tmp_path: Path, mqtt_broker, unique_id: str) -> None:  # type: ignore[no-untyped-def]
    link = str(tmp_path / "ttyTaidoc")
    now = datetime.now().replace(second=0, microsecond=0)
    meter = taidoc_sim.TaidocMeter(taidoc_sim.TWO_IN_ONE, "3261D4000000AB01")
    for record in (  # oldest first, as measured
        taidoc_sim.BpRecord(now - timedelta(hours=50), systolic=131, diastolic=84, pulse=71),
        taidoc_sim.GlucoseRecord(now - timedelta(hours=40), mg_dl=1500),  # outside the contract's 0..1000
        taidoc_sim.BpRecord(now - timedelta(hours=30), systolic=127, diastolic=82, pulse=69),
        taidoc_sim.BpRecord(now - timedelta(hours=20), systolic=0, diastolic=0, pulse=0),  # an error record
        taidoc_sim.BpRecord(now - timedelta(hours=10), systolic=125, diastolic=80, pulse=66),
    ):
        meter.store(record)
    cfg = config(tmp_path, mqtt_broker.url, unique_id,
                 usb={"poll_interval_s": 0.05, "devices": [{"port": link, "profile": "serial.taidoc"}]})
    uid = f"usb:0000:0000:{meter.serial}"

    async def plug_in_and_download(gateway: Gateway, expected_readings: int) -> None:
        meter.powered_off.clear()
        sim = taidoc_sim.PtyTaidoc(meter, link_path=link).start()
        try:
            await eventually(lambda: len(stored(cfg)) == expected_readings and meter.powered_off.is_set(), 15,
                             f"{expected_readings} readings and the meter switched off")
        finally:
            sim.stop()

    async def scenario() -> None:
        async with running(cfg, start_devices=True) as gateway:
            await plug_in_and_download(gateway, 3)
            assert [r.values["systolic"].value for r in stored(cfg)] == [131, 127, 125]
            quarantined = gateway.outbox.quarantined_records(uid)
            assert [q.position for q in quarantined] == ["3", "1"]  # record indexes, oldest first
            assert "1500.0 mg/dL is outside" in quarantined[0].reason and "systolic" in quarantined[1].reason
            await eventually(lambda: quarantined_count(gateway, uid) == 2, 5, "quarantine count")

            meter.store(taidoc_sim.BpRecord(now - timedelta(hours=1), systolic=122, diastolic=79, pulse=64))
            await plug_in_and_download(gateway, 4)
            assert [r.values["systolic"].value for r in stored(cfg)] == [131, 127, 125, 122]
            assert len(gateway.outbox.quarantined_records()) == 2
            assert gateway.status().quarantined == 2

    asyncio.run(asyncio.wait_for(scenario(), 45))
