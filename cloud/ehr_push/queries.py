"""SQL of the EHR push (tables of migration 0640): the watermark over ``readings``, the outbox, the batches.

Always parameterised. Functions take an autocommit connection and open their own transaction where they say
so; ``in a transaction`` means the caller holds one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row

from cloud.api.fhir_queries import _READING as READING  # the FHIR search's reading row: one definition
from cloud.api.queries import _ACTIVE as ACTIVE_CONSENT  # the API's consent in force: one definition

UNSEEN_XACT_LAG_S = 60.0
"""Where an open writing transaction's start is hidden from this role (no pg_read_all_stats), readings stored
this recently are left for a later look instead."""

_CONSENTED = f"""EXISTS (SELECT 1 FROM consents c WHERE c.patient_id = {{patient}} AND c.care_team_id = ANY(%(teams)s)
                  AND 'readings' = ANY(c.scopes) AND {ACTIVE_CONSENT})"""


@dataclass(frozen=True, slots=True)
class Claimed:
    examined: int
    queued: int


@dataclass(frozen=True, slots=True)
class Batch:
    id: int
    bundle: dict[str, Any]
    entry_readings: list[str | None]
    readings: int
    entries: int
    attempts: int


@dataclass(frozen=True, slots=True)
class ParkedBatch:
    id: int
    readings: int
    http_status: int | None
    outcome: str | None
    parked_at: datetime


# --- the watermark ---------------------------------------------------------------------------------------


def _horizon(conn: psycopg.Connection, settle_s: float) -> tuple[datetime, bool]:
    """A time no reading still to be committed is stored before, and whether every open writer was visible.

    ``readings.stored_at`` is ``clock_timestamp()`` at the insert (ingest) or the transaction's start (COPY),
    never earlier than the transaction's start. So every reading not yet committed belongs to a transaction
    that holds an xid now and started at or after the oldest such start, or to one that writes later, at a
    later clock. Transactions without an xid (readers, such as a long bulk export) hold nothing back. Read in
    a statement of its own, before the statement that reads the readings takes its snapshot: a writer that
    ends in between is committed before that snapshot, hence seen. Only this database's sessions count: the
    server's other databases hold none of its readings."""
    row = conn.execute(
        """
        SELECT clock_timestamp() - make_interval(secs => %s),
               min(xact_start) FILTER (WHERE backend_xid IS NOT NULL),
               bool_and(xact_start IS NOT NULL) FILTER (WHERE backend_xid IS NOT NULL)
          FROM pg_stat_activity
         WHERE pid <> pg_backend_pid() AND datname = current_database()
        """,
        (settle_s,),
    ).fetchone()
    assert row is not None
    settled, oldest_writer, all_seen = row
    if all_seen is False:
        lagged = conn.execute(
            "SELECT clock_timestamp() - make_interval(secs => %s)", (max(settle_s, UNSEEN_XACT_LAG_S),)
        ).fetchone()
        assert lagged is not None
        return min(x for x in (lagged[0], oldest_writer) if x is not None), False
    return (settled if oldest_writer is None else min(settled, oldest_writer)), True


# One statement, in the transaction that locked the cursor row: the next readings past the watermark (by
# (stored_at, id), through readings_gateway_stored: one index probe per gateway, since every reading comes
# through a gateway that ingest recorded in ``gateways``), those of consenting patients queued, the watermark
# moved past what was looked at (to the horizon when there was less than a full page).
_CLAIM = f"""
WITH cur AS (SELECT stored_at AS at, reading_id AS rid FROM ehr_push_cursor),
cand AS (
    SELECT n.id, n.patient_id, n.stored_at
      FROM cur, gateways g CROSS JOIN LATERAL (
           SELECT r.id, r.patient_id, r.stored_at FROM readings r
            WHERE r.gateway_id = g.id AND r.stored_at >= cur.at AND r.stored_at < %(horizon)s
              AND (r.stored_at, r.id) > (cur.at, cur.rid)
            ORDER BY r.stored_at, r.id LIMIT %(n)s) n
     ORDER BY n.stored_at, n.id LIMIT %(n)s
),
last AS (SELECT stored_at, id FROM cand ORDER BY stored_at DESC, id DESC LIMIT 1),
queued AS (
    INSERT INTO ehr_push_outbox (reading_id, patient_id, stored_at)
    SELECT n.id, n.patient_id, n.stored_at FROM cand n
     WHERE n.patient_id IS NOT NULL AND {_CONSENTED.format(patient="n.patient_id")}
     ORDER BY n.stored_at, n.id
    ON CONFLICT (reading_id) DO NOTHING
    RETURNING 1
),
counted AS (SELECT count(*) AS examined FROM cand)
UPDATE ehr_push_cursor SET
    stored_at = CASE WHEN counted.examined < %(n)s THEN greatest(ehr_push_cursor.stored_at, %(horizon)s)
                     ELSE (SELECT stored_at FROM last) END,
    reading_id = CASE WHEN counted.examined < %(n)s THEN '' ELSE (SELECT id FROM last) END,
    advanced_at = now()
  FROM counted
RETURNING counted.examined, (SELECT count(*) FROM queued)
"""


def claim_new(conn: psycopg.Connection, teams: Sequence[str], limit: int, settle_s: float) -> tuple[Claimed, bool]:
    """Queue the next readings past the watermark (at most ``limit`` looked at) and move it, in one
    transaction; whether every open writer's start was visible (else a longer lag was used)."""
    with conn.transaction():
        conn.execute("SELECT 1 FROM ehr_push_cursor FOR UPDATE")  # one claimer at a time moves the watermark
        # The planner's estimate for the per-gateway LIMIT makes PostgreSQL JIT-compile the statement: 200 ms
        # of compiling (measured) for a few ms of work, on every look.
        conn.execute("SET LOCAL jit = off")
        horizon, all_seen = _horizon(conn, settle_s)
        row = conn.execute(_CLAIM, {"horizon": horizon, "n": limit, "teams": list(teams)}).fetchone()
    assert row is not None
    return Claimed(int(row[0]), int(row[1])), all_seen


def backfill(conn: psycopg.Connection, patient_id: str, teams: Sequence[str]) -> int:
    """Queue every stored reading of a consenting patient not queued yet (readings stored before the patient
    consented, or assigned to them after they were stored): how many."""
    cur = conn.execute(
        f"INSERT INTO ehr_push_outbox (reading_id, patient_id, stored_at)"
        f" SELECT r.id, r.patient_id, r.stored_at FROM readings r"
        f"  WHERE r.patient_id = %(patient)s AND {_CONSENTED.format(patient='r.patient_id')}"
        f"  ORDER BY r.stored_at, r.id ON CONFLICT (reading_id) DO NOTHING",
        {"patient": patient_id, "teams": list(teams)},
    )
    return cur.rowcount


# --- batches ---------------------------------------------------------------------------------------------

_BATCH = "id, bundle, entry_readings, readings, entries, attempts"


def claim_due_batch(conn: psycopg.Connection, worker: str, lease_s: float) -> Batch | None:
    """An unsent batch whose next attempt is due and that no live worker holds, now this worker's."""
    with conn.cursor(row_factory=class_row(Batch)) as cur:
        return cur.execute(
            f"""
            UPDATE ehr_push_batches SET worker = %(worker)s, lease_until = now() + make_interval(secs => %(lease)s)
             WHERE id = (SELECT id FROM ehr_push_batches
                          WHERE state = 'sending' AND next_attempt_at <= now()
                            AND (lease_until IS NULL OR lease_until < now())
                          ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING {_BATCH}
            """,
            {"worker": worker, "lease": lease_s},
        ).fetchone()


def seconds_until_retry(conn: psycopg.Connection) -> float | None:
    """How long until the next unsent batch waiting on its backoff is due (None: none waits)."""
    row = conn.execute(
        "SELECT extract(epoch FROM min(next_attempt_at) - now()) FROM ehr_push_batches"
        " WHERE state = 'sending' AND next_attempt_at > now()"
        " AND (lease_until IS NULL OR lease_until < now())"
    ).fetchone()
    return None if row is None or row[0] is None else max(0.0, float(row[0]))


def lock_pending(conn: psycopg.Connection, limit: int) -> list[tuple[str, str]]:
    """In a transaction: the oldest pending readings (id, patient), locked; SKIP LOCKED so that workers split
    them."""
    rows = conn.execute(
        "SELECT reading_id, patient_id FROM ehr_push_outbox WHERE state = 'pending'"
        " ORDER BY stored_at, reading_id LIMIT %s FOR UPDATE SKIP LOCKED",
        (limit,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def consenting(conn: psycopg.Connection, patient_ids: Sequence[str], teams: Sequence[str]) -> set[str]:
    rows = conn.execute(
        f"SELECT p FROM unnest(%(patients)s::text[]) p WHERE {_CONSENTED.format(patient='p')}",
        {"patients": list(patient_ids), "teams": list(teams)},
    ).fetchall()
    return {r[0] for r in rows}


def withhold(conn: psycopg.Connection, reading_ids: Sequence[str]) -> None:
    conn.execute(
        "UPDATE ehr_push_outbox SET state = 'withheld' WHERE reading_id = ANY(%s) AND state = 'pending'",
        (list(reading_ids),),
    )


def create_batch(
    conn: psycopg.Connection,
    bundle: dict[str, Any],
    entry_readings: Sequence[str | None],
    reading_ids: Sequence[str],
    worker: str,
    lease_s: float,
) -> int:
    """In the transaction that locked ``reading_ids``: the batch (held by ``worker``) and its readings batched."""
    row = conn.execute(
        "INSERT INTO ehr_push_batches (bundle, entry_readings, readings, entries, worker, lease_until)"
        " VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s)) RETURNING id",
        (json.dumps(bundle), list(entry_readings), len(reading_ids), len(entry_readings), worker, lease_s),
    ).fetchone()
    assert row is not None
    conn.execute(
        "UPDATE ehr_push_outbox SET state = 'batched', batch_id = %s WHERE reading_id = ANY(%s)",
        (row[0], list(reading_ids)),
    )
    return int(row[0])


def record_sent(
    conn: psycopg.Connection,
    batch_id: int,
    http_status: int,
    created: int,
    matched: int,
    locations: dict[str, list[str]],
) -> bool:
    """The server's answer and the readings sent, in one transaction; False when the batch was already
    recorded (another worker's resend after this one's lease lapsed)."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE ehr_push_batches SET state = 'sent', bundle = NULL, sent_at = now(), http_status = %s,"
            " created = %s, matched = %s, lease_until = NULL, last_error = NULL, attempts = attempts + 1"
            " WHERE id = %s AND state = 'sending' RETURNING 1",
            (http_status, created, matched, batch_id),
        ).fetchone()
        if row is None:
            return False
        conn.execute(
            "UPDATE ehr_push_outbox o SET state = 'sent', sent_at = now(), locations = l.locations"
            "  FROM (SELECT key AS reading_id, array(SELECT jsonb_array_elements_text(value)) AS locations"
            "          FROM jsonb_each(%s::jsonb)) l"
            " WHERE o.batch_id = %s AND o.reading_id = l.reading_id",
            (json.dumps(locations), batch_id),
        )
        conn.execute(
            "UPDATE ehr_push_outbox SET state = 'sent', sent_at = now() WHERE batch_id = %s AND state = 'batched'",
            (batch_id,),
        )
    return True


def record_retry(
    conn: psycopg.Connection, batch_id: int, worker: str, error: str, delay_s: float, http_status: int | None
) -> None:
    conn.execute(
        "UPDATE ehr_push_batches SET attempts = attempts + 1, last_error = %s, http_status = %s,"
        " next_attempt_at = now() + make_interval(secs => %s), lease_until = NULL, worker = NULL"
        " WHERE id = %s AND state = 'sending' AND worker = %s",
        (error[:2000], http_status, delay_s, batch_id, worker),
    )


def record_parked(conn: psycopg.Connection, batch_id: int, http_status: int, outcome: str) -> None:
    """The server refused the batch for what it holds: kept, with the server's words, for a person."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE ehr_push_batches SET state = 'parked', parked_at = now(), http_status = %s, outcome = %s,"
            " attempts = attempts + 1, lease_until = NULL WHERE id = %s AND state = 'sending' RETURNING 1",
            (http_status, outcome[:4000], batch_id),
        ).fetchone()
        if row is not None:
            conn.execute("UPDATE ehr_push_outbox SET state = 'parked' WHERE batch_id = %s", (batch_id,))


def requeue_parked(conn: psycopg.Connection, batch_id: int) -> int:
    """A parked batch's readings back to pending (after the cause was fixed at the EHR); how many. The
    batch stays parked, as the record of what the server said; the readings go out in a new Bundle."""
    with conn.transaction():
        cur = conn.execute(
            "UPDATE ehr_push_outbox SET state = 'pending', batch_id = NULL WHERE batch_id = %s AND state = 'parked'",
            (batch_id,),
        )
        return cur.rowcount


# --- what a Bundle is built from -------------------------------------------------------------------------


def reading_rows(conn: psycopg.Connection, reading_ids: Sequence[str]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"{READING} WHERE r.id = ANY(%s) ORDER BY r.stored_at, r.id", (list(reading_ids),)
        ).fetchall()


def patient_rows(conn: psycopg.Connection, patient_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT id, display_name, birth_date, sex FROM patients WHERE id = ANY(%s)", (list(patient_ids),)
        ).fetchall()
    return {r["id"]: r for r in rows}


# --- what a person sees ----------------------------------------------------------------------------------


def outbox_counts(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT state, count(*) FROM ehr_push_outbox GROUP BY state").fetchall()
    return {state: int(count) for state, count in rows}


def unsent_batches(conn: psycopg.Connection) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT id, readings, attempts, next_attempt_at, last_error, http_status, worker,"
            " lease_until FROM ehr_push_batches WHERE state = 'sending' ORDER BY id"
        ).fetchall()


def parked_batches(conn: psycopg.Connection, limit: int = 50) -> list[ParkedBatch]:
    with conn.cursor(row_factory=class_row(ParkedBatch)) as cur:
        return cur.execute(
            "SELECT id, readings, http_status, outcome, parked_at FROM ehr_push_batches"
            " WHERE state = 'parked' ORDER BY parked_at DESC, id DESC LIMIT %s",
            (limit,),
        ).fetchall()
