"""The demo's SQL: seeding its story and reading the figures its live view shows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from cloud.api import queries as api_queries
from cloud.demo.story import CARE_TEAM, CLINICIAN, PATIENTS, DemoDevice
from cloud.devices.assignment import assign_device

SCOPES = ("readings", "alerts", "twin")


def seed(conn: psycopg.Connection, demo_devices: Sequence[DemoDevice], since: datetime) -> None:
    """Patients, the care team and its clinician, consents, and device assignments; safe to repeat."""
    with conn.transaction():
        for patient in PATIENTS:
            conn.execute(
                "INSERT INTO patients (id, display_name, sex, birth_date) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name",
                (patient.id, patient.name, patient.sex, patient.birth_date),
            )
        team_id, team_name = CARE_TEAM
        if not api_queries.care_team_exists(conn, team_id):
            api_queries.create_care_team(conn, team_id, team_name)
        api_queries.add_member(conn, team_id, CLINICIAN, "clinician")
        for patient in PATIENTS:
            if not api_queries.consented_scopes(conn, patient.id, [team_id]):
                api_queries.grant_consent(conn, patient.id, team_id, SCOPES, None, by=patient.id)
    assigned = conn.execute(
        "SELECT device_uid, user_index FROM device_assignments WHERE valid_to IS NULL"
    ).fetchall()
    for device in demo_devices:
        if device.patient_id is None or (device.uid, device.user_index) in assigned:
            continue
        assign_device(conn, device.uid, device.patient_id, user_index=device.user_index, valid_from=since,
                      created_by="rpm-demo")


def device_times_stored(conn: psycopg.Connection, devices: Sequence[tuple[str, int | None]],
                        since: datetime) -> dict[tuple[str, int | None], set[datetime]]:
    """Device-clock times of the readings stored for these (device uid, user index) pairs, from ``since``
    (a naive device time). By device time, not by when they were stored: a rerun on the same data whose
    records the cloud already holds (the same ids) has lost nothing."""
    rows = conn.execute(
        "SELECT device_uid, user_index, device_time FROM readings"
        " WHERE device_uid = ANY(%s) AND device_time >= %s",
        (sorted({uid for uid, _ in devices}), since),
    ).fetchall()
    stored: dict[tuple[str, int | None], set[datetime]] = {pair: set() for pair in devices}
    for uid, user_index, device_time in rows:
        if (uid, user_index) in stored:
            stored[(uid, user_index)].add(device_time)
    return stored


def alerts_since(conn: psycopg.Connection, since: datetime) -> list[dict[str, Any]]:
    """Alerts this run touched, oldest first, each saying whether it opened (or re-opened) and resolved
    in this run. By events, not ``opened_at``: on a reused data directory the story's alerts re-open
    within their suppression window and are folded into the earlier run's episodes."""
    rows = conn.execute(
        "SELECT a.id, a.patient_id, p.display_name, a.rule_id, a.severity, a.status, a.message, a.value,"
        " a.trigger_count, a.late, a.opened_at, a.resolved_at,"
        " bool_or(e.event IN ('opened', 'reopened')) AS opened_in_run,"
        " bool_or(e.event = 'resolved') AS resolved_in_run"
        " FROM alerts a JOIN patients p ON p.id = a.patient_id JOIN alert_events e ON e.alert_id = a.id"
        " WHERE e.at >= %s GROUP BY a.id, p.display_name ORDER BY min(e.at), a.id",
        (since,),
    )
    columns = [c.name for c in rows.description or ()]
    return [dict(zip(columns, row, strict=True)) for row in rows.fetchall()]


def dead_letters_since(conn: psycopg.Connection, since: datetime) -> int:
    return conn.execute("SELECT count(*) FROM dead_letters WHERE received_at >= %s", (since,)).fetchone()[0]
