"""SQL of the bulk export (tables of migration 0630): jobs and their claim, the patients a job may export,
and the rows each file is built from, streamed with server-side cursors.

Always parameterised. Job functions take an autocommit connection unless they say otherwise; the
``stream_*`` functions run inside the export's one read-only transaction (a named cursor needs one).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row

from cloud.alerts.queries import ALERT_COLUMNS
from cloud.api.fhir_queries import _READING as READING  # the FHIR search's reading row: one definition

# The API's own definition of an active consent (not revoked, granted, not expired): one home for it.
from cloud.api.queries import _ACTIVE as ACTIVE_CONSENT
from cloud.fhir_bulk import RESOURCE_TYPES

STREAM_BATCH = 2000
"""Rows a server-side cursor fetches per round trip: memory stays bounded by this, whatever the export's size."""


@dataclass(frozen=True, slots=True)
class Job:
    id: uuid.UUID
    owner_subject: str
    owner_role: str
    level: str
    group_id: str | None
    care_teams: list[str]
    own_patient: str | None
    types: list[str]
    since: datetime | None
    request_url: str
    transaction_time: datetime
    state: str
    attempts: int
    worker: str | None
    progress: str | None
    error: str | None
    directory: str
    created_at: datetime
    completed_at: datetime | None
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ExportFile:
    name: str
    resource_type: str
    count: int
    bytes: int
    patient_ids: list[str]


@dataclass(frozen=True, slots=True)
class ExportPatient:
    patient_id: str
    readings: bool
    alerts: bool


_JOB_COLUMNS = ("id, owner_subject, owner_role, level, group_id, care_teams, own_patient, types, since, request_url,"
                " transaction_time, state, attempts, worker, progress, error, directory, created_at, completed_at,"
                " expires_at")

# Who the caller sees, with which scopes: an active consent of the patient to one of ``teams`` (the token's
# care teams, or the one team of a Group export), or the patient's own record. Patients seen for the twin
# only are left out: nothing of the export is twin data.
_VISIBLE = f"""
SELECT c.patient_id, bool_or('readings' = ANY(c.scopes)) AS readings, bool_or('alerts' = ANY(c.scopes)) AS alerts
  FROM consents c
 WHERE c.care_team_id = ANY(%(teams)s) AND {ACTIVE_CONSENT}
   AND (%(only)s::text[] IS NULL OR c.patient_id = ANY(%(only)s))
 GROUP BY c.patient_id
HAVING bool_or('readings' = ANY(c.scopes)) OR bool_or('alerts' = ANY(c.scopes))
UNION ALL
SELECT p.id, true, true FROM patients p
 WHERE p.id = %(own)s::text AND (%(only)s::text[] IS NULL OR p.id = ANY(%(only)s))
"""


def count_active_jobs(conn: psycopg.Connection, owner_subject: str) -> int:
    row = conn.execute("SELECT count(*) FROM bulk_export_jobs WHERE owner_subject = %s"
                       " AND state IN ('queued', 'running')", (owner_subject,)).fetchone()
    return int(row[0]) if row else 0


def create_job(conn: psycopg.Connection, *, job_id: uuid.UUID, owner_subject: str, owner_role: str, level: str,
               group_id: str | None, care_teams: Sequence[str], own_patient: str | None, types: Sequence[str],
               since: datetime | None, request_url: str, directory: str, ttl_s: int) -> list[str]:
    """Queue a job and record the patients it may export (the caller's consents now); their ids, sorted.
    One transaction: a job never exists without its patients."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO bulk_export_jobs (id, owner_subject, owner_role, level, group_id, care_teams, own_patient,"
            " types, since, request_url, directory, expires_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))",
            (job_id, owner_subject, owner_role, level, group_id, list(care_teams), own_patient, list(types), since,
             request_url, directory, ttl_s))
        rows = conn.execute(
            f"INSERT INTO bulk_export_patients (job_id, patient_id, readings, alerts)"
            f" SELECT %(job)s, v.patient_id, bool_or(v.readings), bool_or(v.alerts) FROM ({_VISIBLE}) v"
            f" GROUP BY v.patient_id RETURNING patient_id",
            {"job": job_id, "teams": list(care_teams), "own": own_patient, "only": None}).fetchall()
    return sorted(r[0] for r in rows)


def get_job(conn: psycopg.Connection, job_id: uuid.UUID) -> Job | None:
    with conn.cursor(row_factory=class_row(Job)) as cur:
        return cur.execute(f"SELECT {_JOB_COLUMNS} FROM bulk_export_jobs WHERE id = %s", (job_id,)).fetchone()


def job_files(conn: psycopg.Connection, job_id: uuid.UUID) -> list[ExportFile]:
    with conn.cursor(row_factory=class_row(ExportFile)) as cur:
        return cur.execute(
            "SELECT name, resource_type, count, bytes, patient_ids FROM bulk_export_files WHERE job_id = %s"
            " ORDER BY array_position(%s::text[], resource_type), name",
            (job_id, list(RESOURCE_TYPES))).fetchall()


def job_file(conn: psycopg.Connection, job_id: uuid.UUID, name: str) -> ExportFile | None:
    with conn.cursor(row_factory=class_row(ExportFile)) as cur:
        return cur.execute("SELECT name, resource_type, count, bytes, patient_ids FROM bulk_export_files"
                           " WHERE job_id = %s AND name = %s", (job_id, name)).fetchone()


def cancel_job(conn: psycopg.Connection, job_id: uuid.UUID, owner_subject: str) -> str | None:
    """Cancel a job of this owner that is queued, running or complete (its files to be removed): the job's
    directory, or None when there is no such job. A running worker sees it at its next lease renewal."""
    row = conn.execute(
        "UPDATE bulk_export_jobs SET state = 'cancelled', lease_until = NULL, completed_at = coalesce(completed_at,"
        " now()) WHERE id = %s AND owner_subject = %s AND state IN ('queued', 'running', 'complete')"
        " RETURNING directory", (job_id, owner_subject)).fetchone()
    return row[0] if row else None


# --- the worker's side -----------------------------------------------------------------------------------

def fail_exhausted(conn: psycopg.Connection, max_attempts: int) -> list[uuid.UUID]:
    """Fail the jobs whose worker died (lease lapsed) ``max_attempts`` times: a restart never loops forever."""
    rows = conn.execute(
        "UPDATE bulk_export_jobs SET state = 'failed', lease_until = NULL, completed_at = now(),"
        " error = format('the export was interrupted %%s times (a worker stopped while running it)', attempts)"
        " WHERE state = 'running' AND lease_until < now() AND attempts >= %s RETURNING id",
        (max_attempts,)).fetchall()
    return [r[0] for r in rows]


def claim_job(conn: psycopg.Connection, worker: str, lease_s: float, max_attempts: int) -> Job | None:
    """The oldest queued job, or a running one whose worker stopped renewing its lease (and that has attempts
    left: :func:`fail_exhausted` fails the others), now this worker's. SKIP LOCKED: workers in several API
    processes never take the same job, nor wait for each other."""
    with conn.cursor(row_factory=class_row(Job)) as cur:
        return cur.execute(
            f"""
            UPDATE bulk_export_jobs j
               SET state = 'running', worker = %(worker)s, attempts = j.attempts + 1, started_at = now(),
                   lease_until = now() + make_interval(secs => %(lease)s), progress = NULL
             WHERE j.id = (SELECT id FROM bulk_export_jobs
                            WHERE state = 'queued'
                               OR (state = 'running' AND lease_until < now() AND attempts < %(max)s)
                            ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING {_JOB_COLUMNS}
            """, {"worker": worker, "lease": lease_s, "max": max_attempts}).fetchone()


def renew_lease(conn: psycopg.Connection, job_id: uuid.UUID, worker: str, lease_s: float, progress: str) -> bool:
    """Extend this worker's claim and say how far it got; False when the job is no longer this worker's."""
    row = conn.execute(
        "UPDATE bulk_export_jobs SET lease_until = now() + make_interval(secs => %s), progress = %s"
        " WHERE id = %s AND worker = %s AND state = 'running' RETURNING 1",
        (lease_s, progress, job_id, worker)).fetchone()
    return row is not None


def release_job(conn: psycopg.Connection, job_id: uuid.UUID, worker: str) -> None:
    """Give a job back on shutdown: queued again, for the next worker to start at once (not after the lease)."""
    conn.execute("UPDATE bulk_export_jobs SET state = 'queued', worker = NULL, lease_until = NULL, progress = NULL,"
                 " attempts = greatest(attempts - 1, 0) WHERE id = %s AND worker = %s AND state = 'running'",
                 (job_id, worker))


def lock_for_completion(conn: psycopg.Connection, job_id: uuid.UUID, worker: str) -> bool:
    """In the completing transaction: lock the job, still running and this worker's (False otherwise)."""
    row = conn.execute("SELECT 1 FROM bulk_export_jobs WHERE id = %s AND worker = %s AND state = 'running'"
                       " FOR UPDATE", (job_id, worker)).fetchone()
    return row is not None


def mark_complete(conn: psycopg.Connection, job_id: uuid.UUID, files: Sequence[ExportFile], ttl_s: int) -> None:
    """In the completing transaction, after the files got their final names: list them, the job complete."""
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO bulk_export_files (job_id, name, resource_type, count, bytes, patient_ids)"
                        " VALUES (%s, %s, %s, %s, %s, %s)",
                        [(job_id, f.name, f.resource_type, f.count, f.bytes, f.patient_ids) for f in files])
    conn.execute("UPDATE bulk_export_jobs SET state = 'complete', completed_at = now(), lease_until = NULL,"
                 " progress = NULL, expires_at = now() + make_interval(secs => %s) WHERE id = %s", (ttl_s, job_id))


def mark_failed(conn: psycopg.Connection, job_id: uuid.UUID, worker: str, error: str) -> bool:
    """Fail a job still this worker's (False: it was cancelled or taken over meanwhile)."""
    row = conn.execute("UPDATE bulk_export_jobs SET state = 'failed', completed_at = now(), lease_until = NULL,"
                       " error = %s WHERE id = %s AND worker = %s AND state = 'running' RETURNING 1",
                       (error[:2000], job_id, worker)).fetchone()
    return row is not None


def expire_jobs(conn: psycopg.Connection) -> list[str]:
    """Jobs past their expiry (or failed or cancelled, whose files are of no use) become 'expired': the
    directories to delete."""
    rows = conn.execute(
        "UPDATE bulk_export_jobs SET state = 'expired' WHERE (state = 'complete' AND expires_at < now())"
        " OR (state IN ('failed', 'cancelled') AND completed_at < now() - interval '1 minute')"
        " RETURNING directory").fetchall()
    return [r[0] for r in rows]


# --- what a job exports --------------------------------------------------------------------------------

def export_patients(conn: psycopg.Connection, job: Job) -> list[ExportPatient]:
    """The job's patients, with what its owner may still see of them now (a consent revoked since kick-off
    takes the patient, or that scope, out): kick-off's decision intersected with today's."""
    rows = conn.execute("SELECT patient_id, readings, alerts FROM bulk_export_patients WHERE job_id = %s",
                        (job.id,)).fetchall()
    if not rows:
        return []
    teams = [job.group_id] if job.level == "group" and job.group_id else job.care_teams
    with conn.cursor(row_factory=dict_row) as cur:
        now = {r["patient_id"]: r for r in cur.execute(
            _VISIBLE, {"teams": list(teams), "own": job.own_patient, "only": [r[0] for r in rows]}).fetchall()}
    out = []
    for patient_id, readings, alerts in sorted(rows):
        current = now.get(patient_id)
        if current is None:
            continue
        patient = ExportPatient(patient_id, readings and current["readings"], alerts and current["alerts"])
        if patient.readings or patient.alerts:
            out.append(patient)
    return out


def count_readings(conn: psycopg.Connection, patient_ids: Sequence[str], since: datetime | None,
                   until: datetime) -> int:
    """How many readings the Observation file will be built from (for the job's progress)."""
    row = conn.execute("SELECT count(*) FROM readings WHERE patient_id = ANY(%s) AND stored_at <= %s"
                       " AND (%s::timestamptz IS NULL OR stored_at > %s)",
                       (list(patient_ids), until, since, since)).fetchone()
    return int(row[0]) if row else 0


def _stream(conn: psycopg.Connection, name: str, sql: str, params: Sequence[Any] | dict[str, Any]
            ) -> Iterator[dict[str, Any]]:
    # A named cursor is a server-side cursor: PostgreSQL keeps the result, psycopg fetches STREAM_BATCH rows
    # at a time, so the process holds one batch, never the whole export.
    with conn.cursor(name=name, row_factory=dict_row) as cur:
        cur.itersize = STREAM_BATCH
        cur.execute(sql, params)
        yield from cur


def stream_patients(conn: psycopg.Connection, patient_ids: Sequence[str]) -> Iterator[dict[str, Any]]:
    return _stream(conn, "bulk_patients", "SELECT id, display_name, birth_date, sex FROM patients"
                                          " WHERE id = ANY(%s) ORDER BY id", (list(patient_ids),))


def stream_readings(conn: psycopg.Connection, patient_id: str, since: datetime | None,
                    until: datetime) -> Iterator[dict[str, Any]]:
    """One patient's readings in the shape ``cloud.twin.fhir.observations_from_row`` takes with the PHD
    columns (as ``cloud.api.fhir_queries``' readings), oldest first. ``stored_at`` is when this server got the
    reading: ``_since`` and the job's transaction time bound it, so a restarted job writes the same file."""
    return _stream(
        conn, "bulk_readings",
        f"""{READING}
         WHERE r.patient_id = %(patient)s AND r.stored_at <= %(until)s
           AND (%(since)s::timestamptz IS NULL OR r.stored_at > %(since)s)
         ORDER BY r.measured_at, r.id
        """, {"patient": patient_id, "since": since, "until": until})


def stream_alerts(conn: psycopg.Connection, patient_ids: Sequence[str], since: datetime | None,
                  until: datetime) -> Iterator[dict[str, Any]]:
    """Alerts of these patients opened by the transaction time (``_since``: changed after it), by id."""
    return _stream(
        conn, "bulk_alerts",
        f"SELECT {ALERT_COLUMNS} FROM alerts WHERE patient_id = ANY(%(patients)s) AND opened_at <= %(until)s"
        f" AND (%(since)s::timestamptz IS NULL OR updated_at > %(since)s) ORDER BY id",
        {"patients": list(patient_ids), "since": since, "until": until})
