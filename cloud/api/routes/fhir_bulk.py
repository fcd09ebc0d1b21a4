"""FHIR Bulk Data export (Bulk Data Access IG v2, https://hl7.org/fhir/uv/bulkdata/export.html).

- ``GET /fhir/Group/{group_id}/$export``: a care team's patients (a clinician or care-team member of
  that team; the team is the Group); ``GET /fhir/Patient/$export``: every patient the caller sees (a
  patient: their own record). Parameters ``_type``, ``_since``, ``_outputFormat``; ``Prefer:
  respond-async`` is required. 202 with ``Content-Location``: the job's status URL.
- ``GET /fhir/$export-status/{job_id}``: 202 with ``X-Progress`` while it runs, 200 with the manifest when
  it is done, 500 (an OperationOutcome) when it failed; ``DELETE`` cancels it and removes its files (202).
- ``GET /fhir/$export-file/{job_id}/{name}``: one NDJSON file of the manifest, streamed from disk.

Only the job's owner (the token's subject and role that kicked it off) sees the job and its files; for
anyone else it does not exist (404). Which patients a job exports, and which of their data, is decided by
their consents at kick-off (:mod:`cloud.fhir_bulk`; readings: Patient, Device, Observation; alerts: Flag; the
patient's own export: Consent too), audited then (one row naming every patient the job
may export), when the job writes its files (one row naming every patient written) and at each download
(the patients in that file). Errors are OperationOutcomes like everywhere under ``/fhir``.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from cloud.api import queries as api_queries
from cloud.api.deps import ClinicalPrincipal, DbConn, PanelPrincipal, note_audit, note_audit_detail
from cloud.api.problems import FHIR_JSON, ApiProblem, not_found, outcome_responses
from cloud.api.tokens import Principal
from cloud.fhir_bulk import RESOURCE_TYPES, export, queries
from cloud.fhir_bulk.worker import export_workers
from cloud.settings import CloudSettings

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = frozenset({NDJSON, "application/ndjson", "ndjson"})
"""``_outputFormat`` values meaning NDJSON (the IG asks servers to accept all three)."""
KNOWN_PARAMETERS = frozenset({"_type", "_since", "_outputFormat"})
# Parameters of the IG this server does not support: refused (400) unless the client asks for leniency.
UNSUPPORTED = ("_typeFilter", "_elements", "patient", "includeAssociatedData", "organizeOutputBy", "_until")
RETRY_AFTER_S = "2"
_NAME = re.compile(r"[A-Za-z]{1,40}\.ndjson")

router = APIRouter(prefix="/fhir", tags=["fhir"], lifespan=export_workers)

_KICK_OFF = {202: {"description": "Accepted: the job's status URL is in Content-Location",
                   "headers": {"Content-Location": {"schema": {"type": "string"},
                                                    "description": "The absolute URL of the job's status"}},
                   "content": {FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}},
             **outcome_responses(400, 401, 403, 404, 422, 429, 503, "default",
                                 when={400: "Prefer: respond-async missing, or an unsupported parameter or value",
                                       429: "Too many of the caller's exports are queued or running"})}
_MANIFEST = {"type": "object", "required": ["transactionTime", "request", "requiresAccessToken", "output", "error"],
             "properties": {"transactionTime": {"type": "string"}, "request": {"type": "string"},
                            "requiresAccessToken": {"type": "boolean"},
                            "output": {"type": "array", "items": {"type": "object", "properties": {
                                "type": {"type": "string"}, "url": {"type": "string"}, "count": {"type": "integer"}}}},
                            "error": {"type": "array"}}}
_STATUS = {200: {"description": "Complete: the manifest", "content": {"application/json": {"schema": _MANIFEST}}},
           202: {"description": "In progress (X-Progress says how far; Retry-After when to ask again)",
                 "content": {FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}},
           **outcome_responses(401, 403, 404, 422, 500, 503, "default",
                               when={500: "The export failed (the OperationOutcome says why)"})}
_FILE = {200: {"description": "The NDJSON file, one resource a line",
               "content": {NDJSON: {"schema": {"type": "string", "description": "one FHIR resource (JSON) a line"}}}},
         **outcome_responses(401, 403, 404, 422, 503, "default")}


def _export_dir(settings: CloudSettings) -> Path:
    return settings.bulk_export_dir or Path(tempfile.gettempdir()) / "rpm-bulk-export"


def _prefer(prefer: str | None) -> set[str]:
    """The preferences of a ``Prefer`` header (RFC 7240): ``respond-async, handling=lenient; wait=10``."""
    return {part.strip().lower().replace(" ", "") for token in (prefer or "").split(",")
            for part in token.split(";") if part.strip()}


def _types(values: list[str] | None) -> list[str]:
    if not values:
        return list(RESOURCE_TYPES)
    asked = [t.strip() for value in values for t in value.split(",") if t.strip()]
    for name in asked:
        if name not in RESOURCE_TYPES:
            raise ApiProblem(400, f"_type {name[:60]!r} is not exported; supported: {', '.join(RESOURCE_TYPES)}",
                             slug="unsupported-type")
    if not asked:
        raise ApiProblem(400, "_type names no resource type", slug="unsupported-type")
    return [t for t in RESOURCE_TYPES if t in asked]


def _since(value: str | None) -> datetime | None:
    """``_since`` is a FHIR instant: a date and time with a time zone."""
    if value is None:
        return None
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if instant.tzinfo is None or "T" not in value:
            raise ApiProblem(400, "_since must be an instant with a time and a time zone (2026-01-31T12:00:00Z)",
                             slug="bad-parameter")
        return instant.astimezone(UTC)  # OverflowError: an offset takes it out of years 1 to 9999
    except (ValueError, OverflowError) as exc:
        raise ApiProblem(400, f"_since must be a FHIR instant (2026-01-31T12:00:00Z), not {value[:60]!r}",
                         slug="bad-parameter") from exc


def _check_request(request: Request, prefer: str | None, output_format: str | None) -> None:
    preferences = _prefer(prefer)
    if "respond-async" not in preferences:
        raise ApiProblem(400, "a bulk export needs the header Prefer: respond-async", slug="respond-async-required")
    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise ApiProblem(400, f"_outputFormat {output_format[:60]!r} is not supported; use {NDJSON}",
                         slug="unsupported-format")
    lenient = "handling=lenient" in preferences
    unknown = sorted(set(request.query_params) - KNOWN_PARAMETERS)
    if unknown and not lenient:
        names = ", ".join(n[:40] for n in unknown[:5])
        raise ApiProblem(400, f"parameters not supported: {names} (send Prefer: handling=lenient to ignore them;"
                              f" not supported at all: {', '.join(UNSUPPORTED)})", slug="unsupported-parameter")


def _kick_off(request: Request, conn: DbConn, principal: Principal, *, level: str, group_id: str | None,
              teams: list[str], types: list[str], since: datetime | None) -> Response:
    settings: CloudSettings = request.app.state.settings
    if queries.count_active_jobs(conn, principal.subject) >= settings.bulk_export_active_per_owner:
        raise ApiProblem(429, f"{settings.bulk_export_active_per_owner} of your exports are queued or running;"
                              " wait for one to finish or cancel one", slug="too-many-exports",
                         headers={"Retry-After": "30"})
    job_id = uuid.uuid4()
    own = principal.patient_id if principal.role == "patient" else None
    patients = queries.create_job(
        conn, job_id=job_id, owner_subject=principal.subject, owner_role=principal.role, level=level,
        group_id=group_id, care_teams=teams, own_patient=own, types=types, since=since, request_url=str(request.url),
        directory=str(_export_dir(settings) / str(job_id)), ttl_s=settings.bulk_export_ttl_s)
    for patient_id in patients:
        note_audit(request, patient_id)  # everyone the job may export, in the kick-off's audit row
    note_audit_detail(request, {"bulk_export_job": str(job_id), "types": types, "patients": len(patients)})
    workers = getattr(request.app.state, "bulk_export_workers", None)
    if workers is not None:
        workers.wake()
    status_url = f"{str(request.base_url).rstrip('/')}/fhir/$export-status/{job_id}"
    return _information(f"export queued for {len(patients)} patients; poll {status_url}",
                        {"Content-Location": status_url})


def _information(text: str, headers: dict[str, str] | None = None) -> Response:
    """A 202's body: an informational OperationOutcome (the IG allows one on kick-off and cancel)."""
    body = {"resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": text}]}
    return JSONResponse(body, status_code=202, media_type=FHIR_JSON, headers=headers)


@router.get("/Group/{group_id}/$export", summary="FHIR Bulk Data export of a care team (the Group)",
            responses=_KICK_OFF, status_code=202, response_class=Response)
def export_group(
    group_id: str, request: Request, principal: ClinicalPrincipal, conn: DbConn,
    prefer: Annotated[str | None, Header(max_length=200)] = None,
    type_: Annotated[list[str] | None, Query(alias="_type", max_length=200)] = None,
    since: Annotated[str | None, Query(alias="_since", max_length=60)] = None,
    output_format: Annotated[str | None, Query(alias="_outputFormat", max_length=100)] = None,
) -> Response:
    # The Group is a care team (its id the team's). A team the caller is not in answers like none.
    if group_id not in principal.care_teams or not api_queries.care_team_exists(conn, group_id):
        raise not_found("group")
    _check_request(request, prefer, output_format)
    return _kick_off(request, conn, principal, level="group", group_id=group_id, teams=[group_id],
                     types=_types(type_), since=_since(since))


@router.get("/Patient/$export", summary="FHIR Bulk Data export of every patient the caller sees",
            responses=_KICK_OFF, status_code=202, response_class=Response)
def export_patients(
    request: Request, principal: PanelPrincipal, conn: DbConn,
    prefer: Annotated[str | None, Header(max_length=200)] = None,
    type_: Annotated[list[str] | None, Query(alias="_type", max_length=200)] = None,
    since: Annotated[str | None, Query(alias="_since", max_length=60)] = None,
    output_format: Annotated[str | None, Query(alias="_outputFormat", max_length=100)] = None,
) -> Response:
    _check_request(request, prefer, output_format)
    teams = list(principal.care_teams) if principal.role != "patient" else []
    return _kick_off(request, conn, principal, level="patient", group_id=None, teams=teams, types=_types(type_),
                     since=_since(since))


def _owned_job(conn: DbConn, principal: Principal, job_id: str) -> queries.Job:
    """The caller's own job; anyone else's, or none, is 404 alike."""
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        raise not_found("export") from None
    job = queries.get_job(conn, parsed)
    if job is None or (job.owner_subject, job.owner_role) != (principal.subject, principal.role):
        raise not_found("export")
    if job.state in ("cancelled", "expired"):
        raise not_found("export")
    return job


def _manifest(request: Request, job: queries.Job, files: list[queries.ExportFile]) -> dict[str, Any]:
    base = f"{str(request.base_url).rstrip('/')}/fhir/$export-file/{job.id}/"
    return {"transactionTime": job.transaction_time.isoformat(), "request": job.request_url,
            "requiresAccessToken": True,
            "output": [{"type": f.resource_type, "url": base + f.name, "count": f.count} for f in files],
            "error": []}


@router.get("/$export-status/{job_id}", summary="FHIR Bulk Data export status (the manifest when complete)",
            responses=_STATUS, response_class=Response)
def export_status(job_id: str, request: Request, principal: PanelPrincipal, conn: DbConn) -> Response:
    job = _owned_job(conn, principal, job_id)
    if job.state in ("queued", "running"):
        progress = job.progress or ("queued" if job.state == "queued" else "starting")
        return _information(f"in progress: {progress}", {"X-Progress": progress[:200], "Retry-After": RETRY_AFTER_S})
    if job.state == "failed":
        raise ApiProblem(500, f"the export failed: {job.error or 'unknown error'}", slug="export-failed")
    files = queries.job_files(conn, job.id)
    expires = format_datetime(job.expires_at.astimezone(UTC), usegmt=True)
    return JSONResponse(_manifest(request, job, files), headers={"Expires": expires})


@router.delete("/$export-status/{job_id}", summary="Cancel a FHIR Bulk Data export and delete its files",
               status_code=202, response_class=Response,
               responses={202: {"description": "Cancelled; its files are deleted",
                                "content": {FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}},
                          **outcome_responses(401, 403, 404, 422, 503, "default")})
def cancel_export(job_id: str, request: Request, principal: PanelPrincipal, conn: DbConn) -> Response:
    job = _owned_job(conn, principal, job_id)
    directory = queries.cancel_job(conn, job.id, principal.subject)
    if directory is None:
        raise not_found("export")
    export.remove_directory(directory)
    note_audit_detail(request, {"bulk_export_job": str(job.id), "cancelled": True})
    return _information("export cancelled; its files are deleted")


@router.get("/$export-file/{job_id}/{name}", summary="One NDJSON file of a finished FHIR Bulk Data export",
            responses=_FILE, response_class=Response)
def export_file(job_id: str, name: str, request: Request, principal: PanelPrincipal, conn: DbConn) -> Response:
    job = _owned_job(conn, principal, job_id)
    listed = queries.job_file(conn, job.id, name) if job.state == "complete" and _NAME.fullmatch(name) else None
    path = Path(job.directory) / name
    if listed is None or not path.is_file():
        raise not_found("file")
    for patient_id in listed.patient_ids:
        note_audit(request, patient_id)  # a download discloses the file's patients: each is audited
    return FileResponse(path, media_type=NDJSON, filename=None)
