"""A patient's equipment through the API over what ingest stores: the devices' battery, last reading, clock
offset and quarantined records from the gateway's status, and the gateway's online state judged on the
cloud's clock against the configured threshold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

from cloud.api.routes.equipment import gateway_state
from cloud.ingest.validation import StatusUpdate
from cloud.ingest.writer import BatchWriter
from gateway.contract import DeviceStatus, GatewayStatus
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest
from tests.cloud.api.conftest import grant

WITHIN = timedelta(seconds=300)  # the default RPM_GATEWAY_ONLINE_WITHIN_S the test client runs with


def report(conn: psycopg.Connection, status: GatewayStatus, received_at: datetime) -> None:
    """The gateway's status as ingest's writer stores it (gateways.status, devices' quarantine counts)."""
    with psycopg.connect(conn.info.dsn) as tx:
        BatchWriter(6 * 3600).write(tx, [], received_at, [StatusUpdate(status.gateway_id, status)])


@pytest.mark.unit
def test_a_gateway_is_online_until_the_threshold_passes_without_a_message() -> None:
    seen = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    status = {"online": True, "at": seen.isoformat()}
    assert gateway_state(status, seen, seen + timedelta(seconds=299), WITHIN) == "online"
    assert gateway_state(status, seen, seen + timedelta(seconds=301), WITHIN) == "not_reporting"
    assert gateway_state({**status, "online": False}, seen, seen + timedelta(seconds=1), WITHIN) == "offline"
    assert gateway_state(None, seen, seen + timedelta(seconds=1), WITHIN) == "unknown"  # readings, never a status


@pytest.mark.integration
def test_equipment_shows_devices_and_a_gateway_going_from_online_to_not_reporting_to_offline(
        client: TestClient, conn: psycopg.Connection, auth, unique_id: str) -> None:
    devices = add_patient(conn, unique_id, kinds=("blood_pressure", "body_weight"))
    cuff, scale = devices["blood_pressure"], devices["body_weight"]
    gateway = f"gw-{unique_id}"
    conn.execute("UPDATE devices SET bound_gateway_id = %s, model = 'UA-651BLE' WHERE uid = ANY(%s)",
                 (gateway, [cuff, scale]))
    measured = datetime.now(UTC) - timedelta(hours=2)
    ingest(conn, [bp(cuff, measured - timedelta(days=1), 121, 79), bp(cuff, measured, 124, 80)], unique_id)
    now = datetime.now(UTC)
    report(conn, GatewayStatus(
        gateway_id=gateway, online=True, at=now, version="1.4.0", outbox_depth=17, outbox_oldest_age_s=42.0,
        devices=[DeviceStatus(uid=cuff, profile="ble.blood_pressure", battery=15, clock_offset_s=-412.5,
                              last_seen=measured, quarantined=2, error="record 41: cuff pressure out of range"),
                 # A neighbour's device on the same gateway: never shown to this patient.
                 DeviceStatus(uid=f"ble:{unique_id}:neighbour", profile="ble.weight_scale", battery=90)]), now)

    headers = auth("patient", patient=unique_id)
    response = client.get(f"/v1/patients/{unique_id}/equipment", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["online_within_s"] == 300 and [d["uid"] for d in body["devices"]] == sorted([cuff, scale])
    by_uid = {d["uid"]: d for d in body["devices"]}
    cuff_out = by_uid[cuff]
    assert (cuff_out["battery_percent"], cuff_out["battery_source"]) == (15, "gateway_status")
    assert (cuff_out["clock_offset_s"], cuff_out["clock_offset_source"]) == (-412.5, "gateway_status")
    assert cuff_out["quarantined_records"] == 2 and cuff_out["error"].startswith("record 41")
    assert cuff_out["last_reading"]["kind"] == "blood_pressure"
    assert datetime.fromisoformat(cuff_out["last_reading"]["measured_at"]) == measured
    assert sorted(cuff_out["problems"]) == ["battery_low", "clock_off", "device_error", "quarantined_records"]
    # The scale: not in the gateway's status, never measured: the battery the device record holds, no reading.
    assert (by_uid[scale]["battery_percent"], by_uid[scale]["battery_source"]) == (80, "device_record")
    assert by_uid[scale]["last_reading"] is None and by_uid[scale]["problems"] == []
    assert "neighbour" not in response.text
    [gw] = body["gateways"]
    assert (gw["gateway_id"], gw["state"], gw["online"]) == (gateway, "online", True)
    assert (gw["outbox_depth"], gw["outbox_oldest_age_s"], gw["version"]) == (17, 42.0, "1.4.0")
    assert gw["storage_full"] is False and gw["problems"] == []

    # Nothing for longer than the threshold (the cloud last heard it 301 s ago): not reporting.
    conn.execute("UPDATE gateways SET last_seen = now() - interval '301 seconds' WHERE id = %s", (gateway,))
    [gw] = client.get(f"/v1/patients/{unique_id}/equipment", headers=headers).json()["gateways"]
    assert (gw["state"], gw["online"], gw["problems"]) == ("not_reporting", False, ["not_online"])

    # Back with a full outbox, then its goodbye: offline, whatever the time.
    later = datetime.now(UTC)
    report(conn, GatewayStatus(gateway_id=gateway, online=True, at=later, outbox_depth=8245, outbox_full=True,
                               storage_state="full"), later)
    [gw] = client.get(f"/v1/patients/{unique_id}/equipment", headers=headers).json()["gateways"]
    assert (gw["state"], gw["storage_full"], gw["outbox_depth"]) == ("online", True, 8245)
    assert gw["problems"] == ["storage_full"]
    report(conn, GatewayStatus(gateway_id=gateway, online=False, at=later + timedelta(seconds=1)), later)
    [gw] = client.get(f"/v1/patients/{unique_id}/equipment", headers=headers).json()["gateways"]
    assert (gw["state"], gw["online"], gw["reported_online"]) == ("offline", False, False)


@pytest.mark.integration
def test_equipment_needs_the_readings_scope_and_is_audited(client: TestClient, conn: psycopg.Connection, auth,
                                                          unique_id: str) -> None:
    add_patient(conn, unique_id, kinds=("blood_pressure",))
    team, alerts_team = f"{unique_id}-team", f"{unique_id}-alerts-team"
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Cardiology'), (%s, 'Alerts only')",
                 (team, alerts_team))
    grant(conn, unique_id, team, ["readings"])
    grant(conn, unique_id, alerts_team, ["alerts"])
    nurse = auth("care_team", sub=f"{unique_id}-nurse", care_teams=(team,))
    ok = client.get(f"/v1/patients/{unique_id}/equipment", headers=nurse)
    assert ok.status_code == 200 and len(ok.json()["devices"]) == 1
    refused = client.get(f"/v1/patients/{unique_id}/equipment",
                         headers=auth("clinician", sub=f"{unique_id}-dr", care_teams=(alerts_team,)))
    assert refused.status_code == 404  # as a patient that does not exist
    rows = conn.execute("SELECT subject, outcome FROM audit_log WHERE patient_ids @> ARRAY[%s]"
                        " AND action = 'GET /v1/patients/{patient_id}/equipment' ORDER BY id", (unique_id,)).fetchall()
    assert rows == [(f"{unique_id}-nurse", "allowed"), (f"{unique_id}-dr", "not_found")]
    assert client.get(f"/v1/patients/{unique_id}/equipment").status_code == 401
