"""The demo's SQL: seeding its story and reading the figures its live view shows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from cloud.api import queries as api_queries
from cloud.db.assign import assign_device
from cloud.demo.story import CARE_TEAM, CLINICIAN, PATIENTS, DemoDevice

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


def stored_per_device(conn: psycopg.Connection, since: datetime) -> dict[tuple[str, int | None], int]:
    """Readings stored in this run, by (device uid, user index)."""
    rows = conn.execute(
        "SELECT device_uid, user_index, count(*) FROM readings WHERE stored_at >= %s GROUP BY 1, 2", (since,)
    ).fetchall()
    return {(uid, user_index): count for uid, user_index, count in rows}


def alerts_since(conn: psycopg.Connection, since: datetime) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT a.id, a.patient_id, p.display_name, a.rule_id, a.severity, a.status, a.message, a.value,"
        " a.trigger_count, a.late, a.opened_at, a.resolved_at"
        " FROM alerts a JOIN patients p ON p.id = a.patient_id WHERE a.opened_at >= %s ORDER BY a.opened_at",
        (since,),
    )
    columns = [c.name for c in rows.description or ()]
    return [dict(zip(columns, row, strict=True)) for row in rows.fetchall()]


def dead_letters_since(conn: psycopg.Connection, since: datetime) -> int:
    return conn.execute("SELECT count(*) FROM dead_letters WHERE received_at >= %s", (since,)).fetchone()[0]
