"""SQL for the digital twin (tables from migration 0310_twins.sql). Always parameterised."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from gateway.metrics import EXCLUDED_FLAGS

_EXCLUDED = sorted(EXCLUDED_FLAGS)


def patient_series(conn: Any, patient_ids: list[str], metrics: list[str], since: datetime,
                   until: datetime) -> list[tuple[str, str, list[float], list[float], list[str]]]:
    """Per (patient, metric): epoch seconds, values and reading ids, in no particular order (the
    caller sorts: the three arrays come from one row stream, so they stay aligned)."""
    # observations.flags carries the reading's flags (ingest copies them): no join with readings, which
    # tripled the cost. Arrays in binary: one row per series, parsed in C, rather than a row per value.
    # No ORDER BY in the aggregates: three sorts of every series cost about a quarter of this read,
    # and numpy sorts them for less (cloud.twin.baselines.load_history).
    with conn.cursor(binary=True) as cur:
        return cur.execute(
            """
            SELECT o.patient_id, o.metric,
                   array_agg(extract(epoch FROM o.measured_at)::float8), array_agg(o.value), array_agg(o.reading_id)
              FROM observations o
             WHERE o.patient_id = ANY(%s) AND o.metric = ANY(%s)
               AND o.measured_at >= %s AND o.measured_at <= %s
               AND o.value IS NOT NULL AND NOT (o.flags && %s::text[])
             GROUP BY o.patient_id, o.metric
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


def append(conn: Any, events: Sequence[tuple[str, int, str, dict]], twins: Sequence[tuple[str, int, dict]],
           at: datetime) -> None:
    """Append ``(patient_id, version, event_type, data)`` events (COPY) and set each twin's new
    ``(patient_id, version, state)`` in one statement."""
    with conn.cursor() as cur:
        with cur.copy("COPY twin_events (patient_id, version, at, event_type, data) FROM STDIN") as copy:
            for patient_id, version, event_type, data in events:
                copy.write_row((patient_id, version, at, event_type, Jsonb(data)))
        # One jsonb document rather than a jsonb[] parameter: psycopg escapes array elements one by one.
        cur.execute(
            """
            UPDATE twins t SET version = u.version, state = u.state, updated_at = %s
              FROM jsonb_to_recordset(%s) AS u (patient_id text, version bigint, state jsonb)
             WHERE t.patient_id = u.patient_id
            """,
            (at, Jsonb([{"patient_id": p, "version": v, "state": s} for p, v, s in twins])),
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
            "SELECT id, patient_id, device_uid, kind, measured_at, flags, body_site FROM readings WHERE id = %s",
            (reading_id,),
        ).fetchone()
        if head is None:
            return None
        rows = cur.execute(
            "SELECT metric, value, unit FROM observations WHERE reading_id = %s AND value IS NOT NULL", (reading_id,)
        ).fetchall()
    return {**head, "values": {r["metric"]: {"value": r["value"], "unit": r["unit"]} for r in rows}}
