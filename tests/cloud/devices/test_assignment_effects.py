"""Readings claimed by an assignment reach the twin and the alerts, in the assignment's transaction
(cloud.devices.assignment + cloud.db.readings + cloud.effects), on a real PostgreSQL with readings
stored by the real ingest batch writer."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from cloud.alerts.delivery import deliver_due
from cloud.api.app import create_app
from cloud.api.tokens import mint_token
from cloud.db.readings import load_stored_readings
from cloud.devices.assignment import AssignmentError, assign_device
from cloud.ingest.validation import ValidatedBatch
from cloud.ingest.writer import BatchWriter
from cloud.settings import CloudSettings
from cloud.twin import service as twin
from gateway.contract import Alert, Reading, alerts_topic, compute_reading_id
from gateway.metrics import METRICS

pytestmark = pytest.mark.integration
LATE_AFTER_S = 6 * 3600


def cuff_reading(uid: str, at: datetime, systolic: float, diastolic: float, *, sequence: int,
                 flags: tuple[str, ...] = (), received_after: timedelta = timedelta(minutes=2)) -> Reading:
    return Reading(
        id=compute_reading_id(uid, "blood_pressure", 1, sequence=sequence),
        device={"uid": uid, "transport": "ble", "profile": "ble.blood_pressure", "model": "UA-651BLE",
                "serial": "5110", "manufacturer": "A&D"},
        user_index=1, kind="blood_pressure", measured_at=at, received_at=at + received_after,
        device_time=at.replace(tzinfo=None) + timedelta(hours=2), clock={"judgement": "corrected", "offset_s": 7200.5},
        sequence=sequence, flags=list(flags), raw="1e7a00",
        values={"systolic": {"value": systolic, "unit": "mm[Hg]", "original_value": systolic / 7.50062,
                             "original_unit": "kPa"},
                "diastolic": {"value": diastolic, "unit": "mm[Hg]"},
                "pulse_rate": {"value": 72, "unit": METRICS["pulse_rate"].unit}},
    )


def store(conn: psycopg.Connection, readings: list[Reading], received_at: datetime, gateway_id: str) -> None:
    """Through ingest's own writer: readings of a device nobody is assigned to are queued (patient NULL)."""
    batch = ValidatedBatch(f"rpm/v1/gw/{gateway_id}/readings", gateway_id, f"b-{readings[0].id[:8]}", readings)
    # The writer commits its own transaction (its staging tables empty on commit): not on autocommit ``conn``.
    with psycopg.connect(conn.info.dsn) as writer_conn:
        BatchWriter(late_after_s=LATE_AFTER_S).write(writer_conn, [batch], received_at)


def alerts_of(conn: psycopg.Connection, patient_id: str) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT id, rule_id, status, late, reading_id, message FROM alerts WHERE patient_id = %s"
                           " ORDER BY id", (patient_id,)).fetchall()


def counts(conn: psycopg.Connection, patient_id: str) -> tuple[int, int, int, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM device_assignments WHERE patient_id = %(p)s),"
        "       (SELECT count(*) FROM twin_events WHERE patient_id = %(p)s),"
        "       (SELECT count(*) FROM alerts WHERE patient_id = %(p)s),"
        "       (SELECT count(*) FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id"
        "         WHERE a.patient_id = %(p)s)", {"p": patient_id}).fetchone()
    assert row is not None
    return row


@pytest.fixture
def conn(fresh_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_database_url, autocommit=True) as connection:
        yield connection


def test_stored_readings_load_back_as_the_readings_ingest_stored(conn: psycopg.Connection, unique_id: str) -> None:
    uid = f"ble:{unique_id}:cuff"
    at = datetime.now(UTC) - timedelta(hours=1)
    sent = [cuff_reading(uid, at, 150, 95, sequence=2, flags=("irregular_pulse",)),
            cuff_reading(uid, at - timedelta(hours=1), 120, 80, sequence=1)]
    store(conn, sent, datetime.now(UTC), unique_id)

    loaded = load_stored_readings(conn, [r.id for r in sent] + ["0" * 32])
    assert loaded.unreadable == []
    assert [s.reading for s in loaded.readings] == [sent[1], sent[0]], "equal in every field, in measured order"
    assert {(s.patient_id, s.gateway_id, s.late) for s in loaded.readings} == {(None, unique_id, False)}


def test_a_row_that_no_longer_makes_a_reading_is_reported_not_fatal(conn: psycopg.Connection, unique_id: str) -> None:
    uid = f"ble:{unique_id}:cuff"
    good, bad = (cuff_reading(uid, datetime.now(UTC) - timedelta(hours=h), 120, 80, sequence=h) for h in (1, 2))
    store(conn, [good, bad], datetime.now(UTC), unique_id)
    conn.execute("UPDATE observations SET unit = 'kPa' WHERE reading_id = %s AND metric = 'systolic'", (bad.id,))

    loaded = load_stored_readings(conn, [good.id, bad.id])
    assert [s.reading.id for s in loaded.readings] == [good.id]
    [error] = loaded.unreadable
    assert error.reading_id == bad.id and "values" in error.reason and "canonical" in error.reason


def test_assigning_a_cuff_brings_its_queued_crisis_reading_to_the_twin_and_the_alerts(
        conn: psycopg.Connection, unique_id: str) -> None:
    uid, patient = f"ble:{unique_id}:cuff", f"pat-{unique_id}"
    now = datetime.now(UTC)
    crisis = cuff_reading(uid, now - timedelta(minutes=30), 192, 118, sequence=7)
    store(conn, [crisis], now - timedelta(minutes=28), unique_id)
    assert conn.execute("SELECT patient_id FROM readings WHERE id = %s", (crisis.id,)).fetchone() == (None,)

    result = assign_device(conn, uid, patient, user_index=1, valid_from=now - timedelta(days=1), create_patient=True,
                           created_by="nurse-1")
    assert (result.created, result.readings_backfilled, result.observations_backfilled) == (True, 1, 3)

    state = twin.get_twin(conn, patient)["state"]
    assert state["latest"]["systolic"]["reading_id"] == crisis.id and state["latest"]["systolic"]["value"] == 192
    assert state["categories"]["blood_pressure"]["category"] == "hypertensive_crisis"
    assert state["devices"][uid]["user_index"] == 1 and state["devices"][uid]["profile"] == "ble.blood_pressure"
    assert state["counts"] == {"readings": 1, "excluded_readings": 0, "late_readings": 0}
    [alert] = alerts_of(conn, patient)
    assert (alert["rule_id"], alert["status"], alert["late"], alert["reading_id"]) == \
        ("bp_crisis", "open", False, crisis.id)
    assert str(alert["id"]) in state["open_alerts"]

    # The alert message waits in the delivery outbox; the scheduler's sender publishes it.
    assert result.alerts_queued == 1
    published: list[tuple[str, bytes]] = []
    with httpx.Client() as http:
        deliver_due(conn, http=http, publish=lambda topic, body: published.append((topic, body)) is None)
    [(topic, payload)] = published
    message = Alert.model_validate_json(payload)
    assert (topic, message.rule, message.reading_id, message.late) == (alerts_topic(patient), "bp_crisis", crisis.id,
                                                                       False)

    history = twin.twin_events(conn, patient)
    types = [e["event_type"] for e in history]
    assert types[:2] == ["device_assigned", "reading_added"] and "alert_opened" in types
    assert history[0]["data"]["by"] == "nurse-1"
    assert twin.replay_twin(conn, patient) == state


def test_a_second_run_of_the_same_assignment_changes_nothing(conn: psycopg.Connection, unique_id: str) -> None:
    uid, patient = f"ble:{unique_id}:cuff", f"pat-{unique_id}"
    now = datetime.now(UTC)
    store(conn, [cuff_reading(uid, now - timedelta(minutes=30), 195, 100, sequence=1)], now, unique_id)
    first = assign_device(conn, uid, patient, valid_from=now - timedelta(days=1), create_patient=True)
    before = counts(conn, patient), twin.get_twin(conn, patient)["version"]

    again = assign_device(conn, uid, patient, valid_from=now - timedelta(days=1))
    later = assign_device(conn, uid, patient, valid_from=now - timedelta(hours=1))  # inside the same assignment
    for result in (again, later):
        assert (result.assignment_id, result.created, result.readings_backfilled, result.closed) == \
            (first.assignment_id, False, 0, 0)
    assert (counts(conn, patient), twin.get_twin(conn, patient)["version"]) == before
    assert counts(conn, patient)[2] == 1, "still exactly one crisis alert"

    conn.execute("INSERT INTO patients (id) VALUES (%s)", (f"{patient}-b",))
    with pytest.raises(AssignmentError, match="already has an assignment"):
        assign_device(conn, uid, f"{patient}-b", valid_from=now - timedelta(days=1))


def test_an_old_claimed_reading_counts_but_keeps_the_newer_latest_and_its_alert_is_late(
        conn: psycopg.Connection, unique_id: str) -> None:
    shared, own, patient = f"ble:{unique_id}:shared", f"ble:{unique_id}:own", f"pat-{unique_id}"
    now = datetime.now(UTC)
    conn.execute("INSERT INTO patients (id) VALUES (%s)", (patient,))
    assign_device(conn, own, patient, valid_from=now - timedelta(days=30))
    newer = cuff_reading(own, now - timedelta(hours=1), 124, 78, sequence=1)
    store(conn, [newer], now - timedelta(minutes=50), unique_id)
    # Measured three days ago and sent in time, but nobody was assigned: it reaches the patient only now.
    old = cuff_reading(shared, now - timedelta(days=3), 185, 110, sequence=9)
    before = cuff_reading(shared, now - timedelta(days=8), 186, 111, sequence=8)
    store(conn, [old], now - timedelta(days=3) + timedelta(minutes=5), unique_id)
    store(conn, [before], now - timedelta(days=8) + timedelta(minutes=5), unique_id)
    assert conn.execute("SELECT bool_or(late) FROM readings WHERE device_uid = %s", (shared,)).fetchone() == (False,)

    result = assign_device(conn, shared, patient, valid_from=now - timedelta(days=5))
    assert result.readings_backfilled == 1, "the reading before valid_from stays queued"

    state = twin.get_twin(conn, patient)
    assert state["state"]["latest"]["systolic"]["reading_id"] == newer.id, "a late reading never replaces a newer one"
    assert state["state"]["counts"] == {"readings": 2, "excluded_readings": 0, "late_readings": 1}
    assert (now - timedelta(days=3)).date().isoformat() in state["state"]["reading_days"]
    assert state["adherence"]["days_with_readings"] == len({(now - timedelta(days=3)).date(),
                                                             (now - timedelta(hours=1)).date()})
    assert set(state["state"]["devices"]) == {own, shared}
    crisis = [a for a in alerts_of(conn, patient) if a["rule_id"] == "bp_crisis"]
    assert [(a["reading_id"], a["late"]) for a in crisis] == [(old.id, True)]
    assert "[late: measured" in crisis[0]["message"]
    assert twin.replay_twin(conn, patient) == state["state"]
    assert conn.execute("SELECT patient_id FROM readings WHERE id = %s", (before.id,)).fetchone() == (None,)


def test_arrived_late_readings_stay_late_and_unreadable_rows_are_assigned_but_skipped(
        conn: psycopg.Connection, unique_id: str) -> None:
    uid, patient = f"ble:{unique_id}:cuff", f"pat-{unique_id}"
    now = datetime.now(UTC)
    arrived_late = cuff_reading(uid, now - timedelta(hours=2), 130, 85, sequence=3)
    store(conn, [arrived_late], now - timedelta(hours=2) + timedelta(seconds=LATE_AFTER_S + 60), unique_id)
    conn.execute("INSERT INTO patients (id) VALUES (%s)", (patient,))
    # A stored row the effects cannot take (an unknown metric unit) is assigned, reported, and skipped.
    conn.execute("UPDATE observations SET unit = 'bar' WHERE reading_id = %s AND metric = 'pulse_rate'",
                 (arrived_late.id,))
    result = assign_device(conn, uid, patient, valid_from=now - timedelta(days=1), late_after=timedelta(days=1))
    assert result.unreadable == (arrived_late.id,) and result.readings_backfilled == 1
    assert twin.get_twin(conn, patient)["state"]["counts"]["readings"] == 0

    other = f"ble:{unique_id}:cuff2"
    fine = cuff_reading(other, now - timedelta(hours=2), 130, 85, sequence=4)
    store(conn, [fine], now - timedelta(hours=2) + timedelta(seconds=LATE_AFTER_S + 60), unique_id)
    assign_device(conn, other, patient, valid_from=now - timedelta(days=1), late_after=timedelta(days=1))
    counted = twin.get_twin(conn, patient)["state"]["counts"]
    assert (counted["readings"], counted["late_readings"]) == (1, 1), "late from the row, though young by late_after"


def test_the_api_assignment_goes_through_the_same_transaction(fresh_database_url: str, conn: psycopg.Connection,
                                                               unique_id: str) -> None:
    uid, patient = f"ble:{unique_id}:cuff", f"pat-{unique_id}"
    now = datetime.now(UTC)
    crisis = cuff_reading(uid, now - timedelta(minutes=20), 200, 125, sequence=1)
    store(conn, [crisis], now - timedelta(minutes=19), unique_id)
    conn.execute("INSERT INTO patients (id) VALUES (%s)", (patient,))
    settings = CloudSettings(database_url=fresh_database_url, jwt_dev_key="test-dev-key-not-secret-0123456789abcdef",
                             api_pool_max=2)
    admin = {"Authorization": f"Bearer {mint_token(settings, role='admin', sub='admin-1')}"}
    body = {"patient_id": patient, "user_index": 1, "valid_from": (now - timedelta(hours=1)).isoformat()}

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        first = client.post(f"/v1/devices/{uid}/assignments", headers=admin, json=body)
        again = client.post(f"/v1/devices/{uid}/assignments", headers=admin, json=body)
    assert first.status_code == 201 and again.status_code == 201, (first.text, again.text)
    assert (first.json()["readings_claimed"], again.json()["readings_claimed"]) == (1, 0)
    assert first.json()["assignment_id"] == again.json()["assignment_id"]
    types = [e["event_type"] for e in twin.twin_events(conn, patient)]
    assert types.count("device_assigned") == 1 and types.count("reading_added") == 1
    assert [(a["rule_id"], a["reading_id"]) for a in alerts_of(conn, patient)] == [("bp_crisis", crisis.id)]
