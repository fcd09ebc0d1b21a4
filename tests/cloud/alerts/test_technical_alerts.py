"""Technical alerts from gateway statuses, through ingest's writer on a real PostgreSQL: a device whose
records the gateway quarantined, and a gateway whose storage is full, reach the patient's care team
as alerts of category ``technical``; only the gateway a device is bound to can raise them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cloud.alerts import service
from cloud.ingest.validation import StatusUpdate
from cloud.ingest.writer import BatchWriter
from gateway.contract import DeviceStatus, GatewayStatus
from tests.cloud.alerts.scripted_patient import add_patient

pytestmark = pytest.mark.integration

_clock = [datetime.now(UTC)]


def report(conn: psycopg.Connection, gateway_id: str, devices: dict[str, int], *, full: bool = False,
           depth: int = 0, message: str | None = None) -> list:
    """The gateway's status as ingest writes it; returns the alert messages ingest would publish."""
    _clock[0] += timedelta(seconds=1)
    status = GatewayStatus(gateway_id=gateway_id, online=True, at=_clock[0], outbox_depth=depth, outbox_full=full,
                           storage_state="full" if full else "ok", storage_message=message,
                           devices=[DeviceStatus(uid=uid, profile="ble.blood_pressure", quarantined=n)
                                    for uid, n in devices.items()])
    with psycopg.connect(conn.info.dsn) as tx:
        return BatchWriter(6 * 3600).write(tx, [], _clock[0], [StatusUpdate(gateway_id, status)]).notifications


def bind(conn: psycopg.Connection, uid: str, gateway_id: str) -> None:
    conn.execute("UPDATE devices SET bound_gateway_id = %s, model = 'UA-651BLE' WHERE uid = %s", (gateway_id, uid))


def technical(conn: psycopg.Connection, patient_id: str, rule: str) -> list[dict]:
    return [a for a in service.list_alerts(conn, patient_id=patient_id) if a["rule_id"] == rule]


def test_a_device_with_unreadable_records_raises_one_technical_alert_for_its_patient(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    gateway = f"gw-{unique_id}"
    bind(conn, cuff, gateway)

    assert report(conn, gateway, {cuff: 0}) == []
    published = report(conn, gateway, {cuff: 3})
    [alert] = technical(conn, unique_id, "device_unreadable_records")
    assert (alert["category"], alert["severity"], alert["status"]) == ("technical", "warning", "open")
    assert "UA-651BLE" in alert["message"] and "sent 3 records the gateway could not read" in alert["message"]
    assert len(published) == 1 and b"device_unreadable_records" in published[0].payload

    # The same count again is no news; a higher one updates the same alert.
    assert report(conn, gateway, {cuff: 3}) == []
    report(conn, gateway, {cuff: 5})
    [alert] = technical(conn, unique_id, "device_unreadable_records")
    assert alert["trigger_count"] == 2 and "sent 2 records" in alert["message"] and "(5 in total)" in alert["message"]
    clinical = [a for a in service.list_alerts(conn, patient_id=unique_id) if a["category"] == "clinical"]
    assert clinical == [], "a technical problem is never a clinical alert"


def test_a_gateway_cannot_raise_alerts_on_a_device_bound_elsewhere(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    bind(conn, cuff, f"gw-{unique_id}")
    assert report(conn, f"gw-impostor-{unique_id}", {cuff: 40}, full=True, depth=9) == []
    assert service.list_alerts(conn, patient_id=unique_id) == []
    stored = conn.execute("SELECT quarantined_records FROM devices WHERE uid = %s", (cuff,)).fetchone()
    assert stored == (0,)


def test_full_storage_opens_a_technical_alert_that_resolves_when_space_returns(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    gateway = f"gw-{unique_id}"
    bind(conn, cuff, gateway)

    report(conn, gateway, {cuff: 0}, full=True, depth=8245,
           message="Storage full: 8 245 readings waiting to upload; new readings cannot be saved")
    [alert] = technical(conn, unique_id, "gateway_storage_full")
    assert alert["status"] == "open" and alert["category"] == "technical"
    assert alert["message"] == (f"Home gateway {gateway}: Storage full: 8 245 readings waiting to upload;"
                                " new readings cannot be saved")
    report(conn, gateway, {cuff: 0}, full=True, depth=8300)
    assert [a["status"] for a in technical(conn, unique_id, "gateway_storage_full")] == ["open"]

    report(conn, gateway, {cuff: 0}, depth=10)
    [alert] = technical(conn, unique_id, "gateway_storage_full")
    assert alert["status"] == "resolved" and alert["resolved_by"] == "system"


def test_an_older_status_arriving_late_changes_nothing(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    gateway = f"gw-{unique_id}"
    bind(conn, cuff, gateway)
    report(conn, gateway, {cuff: 0})
    newest = _clock[0]
    _clock[0] -= timedelta(minutes=5)  # the next report is older than the stored one
    report(conn, gateway, {cuff: 7}, full=True)
    _clock[0] = newest + timedelta(seconds=1)
    assert service.list_alerts(conn, patient_id=unique_id) == []


def test_a_status_quoting_device_garbage_is_kept_not_lost(conn, unique_id):
    # An error message may quote what a device sent (a NUL, control characters): jsonb refuses a NUL,
    # and a refused status would hide the storage state and the counts the alerts come from.
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    gateway = f"gw-{unique_id}"
    bind(conn, cuff, gateway)
    _clock[0] += timedelta(seconds=1)
    status = GatewayStatus.model_validate({
        "gateway_id": gateway, "online": True, "at": _clock[0].isoformat(), "uplink_error": "bad\x00frame\x1b[2J",
        "component_errors": {"ble-manager": "model 'UA\x00651'"},
        "devices": [{"uid": cuff, "profile": "ble.blood_pressure", "error": "read\x00failed", "quarantined": 2}]})
    with psycopg.connect(conn.info.dsn) as tx:
        BatchWriter(6 * 3600).write(tx, [], _clock[0], [StatusUpdate(gateway, status)])
    stored = conn.execute("SELECT status FROM gateways WHERE id = %s", (gateway,)).fetchone()[0]
    assert stored["uplink_error"] == "bad frame [2J" and stored["devices"][0]["error"] == "read failed"
    assert len(technical(conn, unique_id, "device_unreadable_records")) == 1
