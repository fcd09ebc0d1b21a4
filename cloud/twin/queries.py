"""SQL for the digital twin (tables from migration 0310_twins.sql). Always parameterised."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cloud.twin.state import EXCLUDED_FLAGS

_EXCLUDED = sorted(EXCLUDED_FLAGS)


def patient_values(conn: Any, patient_ids: list[str], metrics: list[str], since: datetime,
                   until: datetime) -> list[tuple[str, str, datetime, float, str]]:
    return conn.execute(
        """
        SELECT o.patient_id, o.metric, o.measured_at, o.value, o.reading_id
          FROM observations o JOIN readings r ON r.id = o.reading_id
         WHERE o.patient_id = ANY(%s) AND o.metric = ANY(%s)
           AND o.measured_at >= %s AND o.measured_at <= %s
           AND o.value IS NOT NULL AND NOT (r.flags && %s::text[])
         ORDER BY o.patient_id, o.metric, o.measured_at
        """,
        (patient_ids, metrics, since, until, _EXCLUDED),
    ).fetchall()


def lock_twins(conn: Any, patient_ids: Sequence[str]) -> dict[str, tuple[int, dict]]:
    """Create missing twin rows and lock all of them, in patient order (so two workers never deadlock)."""
    ordered = sorted(set(patient_ids))
    conn.execute(
        "INSERT INTO twins (patient_id) SELECT p FROM unnest(%s::text[]) AS p ORDER BY p ON CONFLICT DO NOTHING",
        (ordered,),
    )
    rows = conn.execute(
        "SELECT patient_id, version, state FROM twins WHERE patient_id = ANY(%s) ORDER BY patient_id FOR UPDATE",
        (ordered,),
    ).fetchall()
    return {patient_id: (version, state) for patient_id, version, state in rows}


def append(conn: Any, patient_id: str, first_version: int, events: Sequence[tuple[str, dict, datetime]],
           state: dict, at: datetime) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO twin_events (patient_id, version, at, event_type, data) VALUES (%s, %s, %s, %s, %s)",
            [(patient_id, first_version + i, event_at, event_type, Jsonb(data))
             for i, (event_type, data, event_at) in enumerate(events)],
        )
    conn.execute(
        "UPDATE twins SET version = %s, state = %s, updated_at = %s WHERE patient_id = %s",
        (first_version + len(events) - 1, Jsonb(state), at, patient_id),
    )


def twin_row(conn: Any, patient_id: str) -> dict | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT patient_id, version, state, updated_at FROM twins WHERE patient_id = %s", (patient_id,)
        ).fetchone()


def events(conn: Any, patient_id: str, since_version: int = 0, limit: int | None = None) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT version, at, event_type, data FROM twin_events WHERE patient_id = %s AND version > %s"
            " ORDER BY version LIMIT %s",
            (patient_id, since_version, limit),
        ).fetchall()


def device_details(conn: Any, uids: list[str]) -> dict[str, tuple[str | None, int | None]]:
    rows = conn.execute("SELECT uid, profile, battery FROM devices WHERE uid = ANY(%s)", (uids,)).fetchall()
    return {uid: (profile, battery) for uid, profile, battery in rows}


def patient_exists(conn: Any, patient_id: str) -> bool:
    return conn.execute("SELECT 1 FROM patients WHERE id = %s", (patient_id,)).fetchone() is not None


def reading_with_values(conn: Any, reading_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        head = cur.execute(
            "SELECT id, patient_id, device_uid, kind, measured_at, flags FROM readings WHERE id = %s", (reading_id,)
        ).fetchone()
        if head is None:
            return None
        rows = cur.execute(
            "SELECT metric, value, unit FROM observations WHERE reading_id = %s AND value IS NOT NULL", (reading_id,)
        ).fetchall()
    return {**head, "values": {r["metric"]: {"value": r["value"], "unit": r["unit"]} for r in rows}}
