"""Devices through the API: the unassigned queue, assigning a device's user index to a patient (queued
readings follow, the twin hears of it, through cloud.db.assign), and unassigning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.cloud.alerts.scripted_patient import bp, insert_readings
from tests.cloud.api.conftest import World

pytestmark = pytest.mark.integration


def test_queued_readings_follow_an_assignment(client: TestClient, world: World, conn: psycopg.Connection,
                                              unique_id: str) -> None:
    uid = f"ble:{unique_id}:shared-cuff"
    conn.execute("INSERT INTO devices (uid, transport, profile, model) VALUES (%s, 'ble', 'ble.blood_pressure',"
                 " 'UA-651BLE')", (uid,))
    measured = datetime.now(UTC) - timedelta(hours=3)
    with conn.transaction():
        insert_readings(conn, [bp(uid, measured, 141, 91), bp(uid, measured + timedelta(minutes=1), 139, 88)], None)
    admin, doctor = world.headers["admin"], world.headers["clinician"]

    queue = client.get("/v1/devices/unassigned", headers=doctor).json()["unassigned"]
    assert [(q["device_uid"], q["readings"], q["model"]) for q in queue if q["device_uid"] == uid] == \
        [(uid, 2, "UA-651BLE")]

    patient = world.patients["consented"]
    response = client.post(f"/v1/devices/{uid}/assignments", headers=doctor,
                           json={"patient_id": patient, "valid_from": (measured - timedelta(hours=1)).isoformat()})
    assert response.status_code == 201, response.text
    assert response.json()["readings_claimed"] == 2
    queue = client.get("/v1/devices/unassigned", headers=admin).json()["unassigned"]
    assert uid not in {q["device_uid"] for q in queue}
    readings = client.get(f"/v1/patients/{patient}/readings", params={"since": (measured - timedelta(minutes=1))
                                                                        .isoformat()}, headers=doctor).json()
    assert {r["values"]["systolic"]["value"] for r in readings["readings"] if r["device"]["uid"] == uid} == {141, 139}
    twin = client.get(f"/v1/patients/{patient}/twin", headers=doctor).json()
    assert uid in twin["state"]["devices"]
    devices = client.get(f"/v1/patients/{patient}/devices", headers=doctor).json()["devices"]
    assert uid in {d["uid"] for d in devices}

    assert client.delete(f"/v1/devices/{uid}/assignments", headers=doctor).status_code == 200
    assert uid not in {d["uid"] for d in client.get(f"/v1/patients/{patient}/devices", headers=doctor)
                       .json()["devices"]}
    assert client.delete(f"/v1/devices/{uid}/assignments", headers=admin).status_code == 404  # nothing open


def test_clinician_cannot_assign_to_a_patient_outside_their_consents(client: TestClient, world: World,
                                                                     conn: psycopg.Connection, unique_id: str) -> None:
    uid = f"ble:{unique_id}:cuff"
    conn.execute("INSERT INTO devices (uid, transport, profile) VALUES (%s, 'ble', 'ble.blood_pressure')", (uid,))
    response = client.post(f"/v1/devices/{uid}/assignments", headers=world.headers["clinician"],
                           json={"patient_id": world.patients["other"]})
    assert response.status_code == 404
    assert conn.execute("SELECT count(*) FROM device_assignments WHERE device_uid = %s", (uid,)).fetchone() == (0,)
