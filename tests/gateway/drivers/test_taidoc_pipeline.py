"""A blood-pressure reading from the simulated TaiDoc cuff through the whole pipeline: driver over a pty,
normalisation, the gateway's SQLite outbox, its MQTT uplink over the real broker, the real ingest worker
into PostgreSQL, the blood-pressure crisis alert opened in ingest's transaction, and the ack emptying
the outbox."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from cloud.ingest.consumer import IngestWorker
from cloud.settings import CloudSettings
from firmware_sims.serial.taidoc import BpRecord, PtyTaidoc, TaidocMeter
from gateway.codecs.common import Measurement
from gateway.config import MqttConfig
from gateway.contract import Reading
from gateway.drivers.base import ClockCheck, DeviceInfo
from gateway.drivers.device_state import DeviceStateStore
from gateway.drivers.taidoc import TaidocDriver
from gateway.readings.normalise import to_reading
from gateway.store.outbox import Outbox
from gateway.store.uplink import Uplink

pytestmark = pytest.mark.integration


def test_bp_crisis_reading_from_the_cuff_is_stored_and_opens_the_crisis_alert(
    fresh_database_url: str, mqtt_broker, unique_id: str, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    serial = "3128" + uuid.uuid4().hex[:12].upper()
    uid = f"usb:10c4:ea80:{serial}"
    patient = f"p-{unique_id}"
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO patients (id, display_name) VALUES (%s, 'TaiDoc patient')", (patient,))
        conn.execute("INSERT INTO devices (uid, transport, profile) VALUES (%s, 'usb', 'serial.taidoc')", (uid,))
        conn.execute("INSERT INTO device_assignments (device_uid, patient_id) VALUES (%s, %s)", (uid, patient))

    # The cuff holds one ordinary reading and, newest, a hypertensive crisis.
    meter = TaidocMeter(serial=serial)
    now = datetime.now().replace(second=0, microsecond=0)
    meter.store(BpRecord(now - timedelta(minutes=30), systolic=128, diastolic=82, pulse=70))
    meter.store(BpRecord(now - timedelta(minutes=5), systolic=192, diastolic=124, pulse=96))

    outbox = Outbox(tmp_path / "outbox.sqlite")
    state = DeviceStateStore(tmp_path / "state.sqlite")
    readings: list[Reading] = []

    async def sink(device: DeviceInfo, measurement: Measurement, clock: ClockCheck | None) -> None:
        reading = to_reading(device, measurement, clock, datetime.now(UTC))
        await asyncio.to_thread(outbox.put, reading)
        readings.append(reading)

    settings = CloudSettings(database_url=fresh_database_url, mqtt_url=mqtt_broker.url, ingest_batch_ms=20)
    worker = IngestWorker(settings, client_id=f"ingest-{unique_id}")
    worker.start()

    async def gateway() -> bool:
        with PtyTaidoc(meter) as sim:
            device = DeviceInfo(uid="usb:10c4:ea80:pending", transport="usb", profile="serial.taidoc")
            await asyncio.wait_for(TaidocDriver(sim.path, device, sink, state).run(), 20)
        uplink = Uplink(MqttConfig(url=mqtt_broker.url, batch_ms=20), f"gw-{unique_id}", outbox)
        sending = asyncio.create_task(uplink.run())
        try:
            assert await uplink.wait_connected(15), uplink.error
            return await uplink.drain(15)
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            await uplink.close()

    try:
        worker.wait_ready()
        drained = asyncio.run(gateway())
    finally:
        worker.stop(drain_timeout_s=1)
        state.close()

    assert [r.values["systolic"].value for r in readings] == [128, 192]
    assert all(r.device.uid == uid for r in readings)
    assert drained and outbox.depth() == 0, "the cloud acked both readings after its commit"
    outbox.close()
    with psycopg.connect(fresh_database_url) as conn:
        stored = conn.execute(
            "SELECT r.patient_id, r.device_uid, o.value FROM readings r JOIN observations o ON o.reading_id = r.id"
            " WHERE r.id = %s AND o.metric = 'systolic'", (readings[1].id,)).fetchone()
        alerts = conn.execute(
            "SELECT rule_id, severity, status, reading_id FROM alerts WHERE patient_id = %s", (patient,)).fetchall()
    assert stored == (patient, uid, 192)
    assert ("bp_crisis", "critical", "open", readings[1].id) in alerts
