"""Run one claimed export job: one NDJSON file per resource type, streamed from PostgreSQL, then handed out.

The durability contract: every file is written under a temporary name (``Observation.ndjson.part``) and
flushed to disk; only then, in the one transaction that locks the job (still this worker's and running),
lists its files and marks it complete, are the files renamed to their final names. A worker that dies
before that commit leaves a job that is not complete (its lease lapses, the next claim starts it again
from an emptied folder), so a half-written file is never handed out: the file route serves only files
listed for a complete job. Everything is read in one REPEATABLE READ transaction, so the files agree
with each other, and bounded by the job's transaction time, so a restarted job writes the same files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg

from cloud.api import fhir_queries
from cloud.api import queries as api_queries
from cloud.fhir_bulk import ExportStopped, JobLost, queries
from cloud.fhir_bulk.queries import ExportFile, ExportPatient, Job
from cloud.twin import fhir

log = logging.getLogger(__name__)
WRITE_BUFFER = 1 << 20
RENEW_EVERY_ROWS = 5000
"""Resources between checks of the clock for a lease renewal (a check is cheap; a renewal is one UPDATE)."""
PROGRESS_EVERY_S = 2.0
"""The longest a job's progress (and lease) goes without an update while it writes."""
EXPORT_ACTION = "EXPORT fhir bulk job"
"""The audit action of a finished export, naming every patient whose data it wrote."""
WRITE_ORDER = ("Patient", "Observation", "Device", "Flag", "Consent")


@dataclass
class Progress:
    """How far a job got, as ``X-Progress`` says it; renews the worker's lease as it goes."""

    renew: Callable[[str], bool]
    lease_s: float
    stop: threading.Event | None = None
    total_readings: int = 0
    readings_done: int = 0
    phase: str = "starting"
    _next_renewal: float = field(default=0.0)
    _rows_since_check: int = 0

    def text(self) -> str:
        if self.phase == "Observation" and self.total_readings:
            share = min(100, 100 * self.readings_done // self.total_readings)
            return f"Observation {share}% ({self.readings_done} of {self.total_readings} readings)"
        return self.phase

    def tick(self, rows: int = 1, force: bool = False) -> None:
        self._rows_since_check += rows
        if not force and self._rows_since_check < RENEW_EVERY_ROWS:
            return
        self._rows_since_check = 0
        if self.stop is not None and self.stop.is_set():
            raise ExportStopped("the worker is shutting down")
        now = time.monotonic()
        if force or now >= self._next_renewal:
            # Renew at a third of the lease, so two renewals can fail (a slow database) before another worker
            # may take the job, and at least every PROGRESS_EVERY_S, so that X-Progress moves as the job does.
            self._next_renewal = now + min(self.lease_s / 3, PROGRESS_EVERY_S)
            if not self.renew(self.text()):
                raise JobLost("the job was cancelled or taken over")


def _dump(resource: dict[str, Any]) -> str:
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False) + "\n"


class _NdjsonFile:
    """One resource type's file, under its temporary name until :meth:`publish`."""

    def __init__(self, directory: Path, resource_type: str) -> None:
        self.resource_type = resource_type
        self.name = f"{resource_type}.ndjson"
        self.final = directory / self.name
        self.temporary = directory / f"{self.name}.part"
        self.count = 0
        self.bytes = 0
        self.patients: set[str] = set()
        self._out: IO[bytes] = open(self.temporary, "wb", buffering=WRITE_BUFFER)

    def write(self, resource: dict[str, Any], patient_id: str | None) -> None:
        line = _dump(resource).encode()
        self._out.write(line)
        self.count += 1
        self.bytes += len(line)
        if patient_id:
            self.patients.add(patient_id)

    def close(self) -> None:
        if not self._out.closed:
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()

    def listing(self) -> ExportFile:
        return ExportFile(self.name, self.resource_type, self.count, self.bytes, sorted(self.patients))


def _patients(conn: psycopg.Connection, patients: list[ExportPatient], out: _NdjsonFile, progress: Progress) -> None:
    for row in queries.stream_patients(conn, [p.patient_id for p in patients if p.readings]):
        out.write(fhir.patient_resource(row), row["id"])
        progress.tick()


def _devices(conn: psycopg.Connection, patients: list[ExportPatient], out: _NdjsonFile, progress: Progress,
             gateways: dict[str, str]) -> None:
    """Every measuring device ever assigned to an exported patient (once, however many of them it served),
    ``patient`` where it now belongs to that one patient alone (as ``Device?patient=``), then the gateways
    they are bound to and those that relayed the exported readings (``gateways``: gateway -> a patient of
    it), so that each Device's ``parent`` and each Observation's gateway extension resolve in the export."""
    seen: set[str] = set()
    for patient in patients:
        if not patient.readings:
            continue
        for row in api_queries.fhir_patient_devices(conn, patient.patient_id):
            if row["uid"] in seen:
                continue
            seen.add(row["uid"])
            owner = patient.patient_id if row["current_patients"] == [patient.patient_id] else None
            out.write(fhir.device_resource(row, owner), patient.patient_id)
            if row.get("bound_gateway_id"):
                gateways.setdefault(row["bound_gateway_id"], patient.patient_id)
            progress.tick()
    statuses = fhir_queries.gateway_statuses(conn, sorted(gateways))
    for gateway_id in sorted(gateways):
        out.write(fhir.gateway_resource(gateway_id, statuses.get(gateway_id)), gateways[gateway_id])


def _observations(conn: psycopg.Connection, job: Job, patients: list[ExportPatient], out: _NdjsonFile,
                  progress: Progress, gateways: dict[str, str]) -> None:
    """What an Observation search finds for each reading: its measurements and its status-bits Observation
    (``cloud.api.routes.fhir``; a coincident timestamp's subject is the device, so it is read by id only)."""
    ids = [p.patient_id for p in patients if p.readings]
    progress.total_readings = queries.count_readings(conn, ids, job.since, job.transaction_time)
    progress.tick(force=True)
    for patient_id in ids:
        for row in queries.stream_readings(conn, patient_id, job.since, job.transaction_time):
            for resource in fhir.patient_observations(row):
                out.write(resource, patient_id)
            if row["gateway_id"]:
                gateways.setdefault(row["gateway_id"], patient_id)
            progress.readings_done += 1
            progress.tick()


def _flags(conn: psycopg.Connection, job: Job, patients: list[ExportPatient], out: _NdjsonFile,
           progress: Progress) -> None:
    for row in queries.stream_alerts(conn, [p.patient_id for p in patients if p.alerts], job.since,
                                     job.transaction_time):
        out.write(fhir.flag_from_alert(row), row["patient_id"])
        progress.tick()


def _consents(conn: psycopg.Connection, job: Job, patients: list[ExportPatient], out: _NdjsonFile,
              progress: Progress) -> None:
    """A patient's own grants, as ``/fhir/Consent`` shows them to the patient alone: a care team's export has
    none."""
    if job.own_patient is None:
        return
    for patient in patients:
        if patient.patient_id == job.own_patient:
            for row in fhir_queries.consents(conn, patient.patient_id):
                out.write(fhir.consent_resource(row, job.transaction_time), patient.patient_id)
                progress.tick()


def prepare_directory(job: Job) -> Path:
    """The job's folder, emptied: what an interrupted earlier attempt left there is never reused."""
    directory = Path(job.directory)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    return directory


def remove_directory(directory: str | Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def _close_all(files: Iterable[_NdjsonFile]) -> None:
    for f in files:
        f.close()


def run_job(connect: Callable[[], psycopg.Connection], job: Job, worker: str, *, lease_s: float,
            ttl_s: int, stop: threading.Event | None = None) -> list[ExportFile]:
    """Export ``job`` (claimed by ``worker``): the files listed when it completed (those with resources).
    Raises :class:`JobLost` when the job was cancelled or taken over, :class:`ExportStopped` when ``stop``
    was set (the worker shutting down)."""
    with connect() as control, connect() as reader:
        progress = Progress(lambda text: queries.renew_lease(control, job.id, worker, lease_s, text), lease_s, stop)
        directory = prepare_directory(job)
        files: list[_NdjsonFile] = []
        try:
            with reader.transaction():
                # One snapshot for every file: the Observations and their Devices and Patients agree.
                reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                patients = queries.export_patients(reader, job)
                gateways: dict[str, str] = {}  # gateway -> a patient it served, found while writing
                # Observations before Devices: the readings name the gateways that relayed them.
                for resource_type in (t for t in WRITE_ORDER if t in job.types):
                    progress.phase = resource_type
                    progress.tick(force=True)
                    out = _NdjsonFile(directory, resource_type)
                    files.append(out)
                    _write_type(reader, job, patients, out, progress, gateways)
                    out.close()
            return _complete(control, job, worker, directory, files, patients, ttl_s)
        except BaseException:
            _close_all(files)
            raise


def _write_type(conn: psycopg.Connection, job: Job, patients: list[ExportPatient], out: _NdjsonFile,
                progress: Progress, gateways: dict[str, str]) -> None:
    if out.resource_type == "Patient":
        _patients(conn, patients, out, progress)
    elif out.resource_type == "Device":
        _devices(conn, patients, out, progress, gateways)
    elif out.resource_type == "Observation":
        _observations(conn, job, patients, out, progress, gateways)
    elif out.resource_type == "Flag":
        _flags(conn, job, patients, out, progress)
    else:
        _consents(conn, job, patients, out, progress)


def _complete(conn: psycopg.Connection, job: Job, worker: str, directory: Path, files: list[_NdjsonFile],
              patients: list[ExportPatient], ttl_s: int) -> list[ExportFile]:
    # Files with no resource are left out of the manifest, as the IG asks ("SHOULD NOT" list empty files).
    kept = [f for f in files if f.count]
    with conn.transaction():
        if not queries.lock_for_completion(conn, job.id, worker):
            raise JobLost("the job was cancelled or taken over before it completed")
        for f in files:
            if f.count:
                f.temporary.replace(f.final)
            else:
                f.temporary.unlink(missing_ok=True)
        _fsync_directory(directory)
        listing = [f.listing() for f in kept]
        queries.mark_complete(conn, job.id, listing, ttl_s)
        exported = sorted({p for f in kept for p in f.patients})
        api_queries.write_audit(conn, job.owner_subject, job.owner_role, job.care_teams, EXPORT_ACTION, exported,
                                "allowed", 200, str(job.id),
                                {"job": str(job.id), "files": {f.name: f.count for f in listing},
                                 "patients_decided": len(patients)})
    return listing


def _fsync_directory(directory: Path) -> None:
    # The renames themselves must reach the disk before the commit says the files exist.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

