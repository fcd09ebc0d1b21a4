"""Many readings fast, for the bulk export's tests and benchmark: patients of one care team, each with a
glucose meter bound to a gateway, and a continuous-glucose-like series every few minutes, loaded with COPY
into ``readings`` and ``observations`` (the same rows ingest writes, without alerts or the twin, which the
export does not read for Observations)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg


def add_team_patients(conn: psycopg.Connection, team: str, patient_ids: Sequence[str],
                      scopes: Sequence[str] = ("readings", "alerts", "twin")) -> dict[str, str]:
    """Patients consenting to ``team`` with one glucose meter each (bound to a gateway): {patient: device uid}."""
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (team, f"Team {team}"))
    devices = {}
    with conn.cursor() as cur:
        for index, patient_id in enumerate(patient_ids):
            uid = f"ble:{patient_id}:meter"
            devices[patient_id] = uid
            cur.execute("INSERT INTO patients (id, display_name, sex, birth_date) VALUES (%s, %s, %s, '1961-05-04')",
                        (patient_id, f"Patient {index}", "female" if index % 2 else "male"))
            cur.execute("INSERT INTO devices (uid, transport, profile, model, serial, manufacturer, battery,"
                        " bound_gateway_id) VALUES (%s, 'ble', 'ble.glucose', 'Meter 1', %s, 'Acme', 70, %s)",
                        (uid, f"SN{index:06d}", f"gw-{patient_id}"))
            cur.execute("INSERT INTO device_assignments (device_uid, patient_id) VALUES (%s, %s)", (uid, patient_id))
            cur.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                        (patient_id, team, list(scopes), patient_id))
    return devices


def load_glucose(conn: psycopg.Connection, devices: dict[str, str], *, days: float, step_minutes: int = 5,
                 end: datetime | None = None) -> int:
    """``days`` of glucose every ``step_minutes`` for each patient, with COPY; the readings loaded."""
    end = (end or datetime.now(UTC)).replace(microsecond=0)
    per_patient = int(days * 24 * 60 / step_minutes)
    total = 0
    with conn.transaction(), conn.cursor() as cur:
        for patient_id, uid in devices.items():
            with cur.copy("COPY readings (id, patient_id, device_uid, gateway_id, batch_id, kind, measured_at,"
                          " received_at, clock_judgement) FROM STDIN") as readings:
                for i in range(per_patient):
                    at = end - timedelta(minutes=step_minutes * (per_patient - i))
                    readings.write_row((f"{uid}:{i}", patient_id, uid, f"gw-{patient_id}", "bulk", "glucose", at, at,
                                        "device"))
            with cur.copy("COPY observations (reading_id, patient_id, kind, metric, measured_at, value, unit)"
                          " FROM STDIN") as values:
                for i in range(per_patient):
                    at = end - timedelta(minutes=step_minutes * (per_patient - i))
                    mg_dl = round(120 + 40 * math.sin(i / 36) + (i % 7), 1)
                    values.write_row((f"{uid}:{i}", patient_id, "glucose", "glucose", at, mg_dl, "mg/dL"))
            total += per_patient
    conn.execute("ANALYZE readings")
    conn.execute("ANALYZE observations")
    return total


def finished_export(conn: psycopg.Connection, *, subject: str, role: str, team: str, directory: Path) -> str:
    """A complete Group export of ``team`` owned by ``subject``, run here by the real export code (the job
    queued and claimed in one transaction, so no API worker takes it meanwhile): its job id."""
    from cloud.fhir_bulk import export, queries

    job_id = uuid.uuid4()
    worker = f"test-{job_id.hex[:6]}"
    with conn.transaction():
        queries.create_job(conn, job_id=job_id, owner_subject=subject, owner_role=role, level="group", group_id=team,
                           care_teams=[team], own_patient=None, types=["Patient", "Observation"], since=None,
                           request_url=f"http://test/fhir/Group/{team}/$export", directory=str(directory / job_id.hex),
                           ttl_s=3600)
        conn.execute("UPDATE bulk_export_jobs SET state = 'running', worker = %s, attempts = 1,"
                     " lease_until = now() + interval '1 minute' WHERE id = %s", (worker, job_id))
    job = queries.get_job(conn, job_id)
    assert job is not None
    dsn = conn.info.dsn
    export.run_job(lambda: psycopg.connect(dsn, autocommit=True), job, worker, lease_s=60, ttl_s=3600)
    return str(job_id)
