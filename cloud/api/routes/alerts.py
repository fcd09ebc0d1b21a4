"""Alerts: list and filter, one alert with its history, acknowledge, resolve, comment (through
``cloud.alerts.service``, which records each change in the twin and queues its delivery)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from cloud.alerts import channels, service
from cloud.api import queries
from cloud.api.deps import (
    CLINICAL_ROLES,
    CurrentPrincipal,
    DbConn,
    PatientAccess,
    authorise_patient,
    note_audit,
    note_audit_detail,
)
from cloud.api.models import Alert, AlertDetail, AlertEvent, AlertPage
from cloud.api.problems import ApiProblem, forbidden, not_found, problem_responses

router = APIRouter(prefix="/v1/alerts", tags=["alerts"], responses=problem_responses(401, 403, 422, 503, "default"))
_CHANGE_PROBLEMS = problem_responses(404, 409, 413, when={
    409: "The alert is resolved and needs no (more) review (or the comment is empty)"})
AlertId = Annotated[int, Path(ge=1, le=2**62)]


class Status(StrEnum):
    open = "open"
    acknowledged = "acknowledged"
    resolved = "resolved"


class ReviewState(StrEnum):
    not_required = "not_required"
    pending = "pending"
    reviewed = "reviewed"


class Severity(StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


class Note(BaseModel):
    note: str | None = Field(None, max_length=2000)


class Comment(BaseModel):
    text: str = Field(min_length=1, max_length=4000)


@router.get("", summary="Alerts newest first, filtered; page with before_id", response_model=AlertPage,
            responses=problem_responses(404))
def list_alerts(
    request: Request, principal: CurrentPrincipal, conn: DbConn,
    patient_id: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[list[Status] | None, Query()] = None,
    severity: Annotated[list[Severity] | None, Query()] = None,
    review_state: Annotated[list[ReviewState] | None, Query(
        description="pending: a person must still look at it (with status=resolved: resolved before review)")] = None,
    since: Annotated[datetime | None, Query(description="opened at or after")] = None,
    before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    statuses = [s.value for s in status] if status else None
    severities = [s.value for s in severity] if severity else None
    reviews = [s.value for s in review_state] if review_state else None
    if principal.role == "patient" and patient_id is None:
        patient_id = principal.patient_id
    if patient_id is None and principal.role == "admin":
        raise forbidden("alerts are clinical data")
    if patient_id is not None:
        access = authorise_patient(conn, request, principal, patient_id, "alerts")
        rows = service.list_alerts(conn, patient_id=access.patient_id, status=statuses, severity=severities,
                                   since=since, before_id=before_id, limit=limit, review_state=reviews)
    else:
        rows = queries.alerts_for_care_teams(conn, principal.care_teams, statuses=statuses, severities=severities,
                                             since=since, before_id=before_id, limit=limit, review_states=reviews)
        for row in rows:
            note_audit(request, row["patient_id"])
    next_before = rows[-1]["id"] if len(rows) == limit else None
    return {"alerts": rows, "next_before_id": next_before}


def _alert_access(request: Request, principal: CurrentPrincipal, conn: DbConn, alert_id: AlertId) -> PatientAccess:
    patient_id = queries.alert_patient(conn, alert_id)
    if patient_id is None:
        raise not_found("alert")
    try:
        return authorise_patient(conn, request, principal, patient_id, "alerts")
    except ApiProblem:
        raise not_found("alert") from None


def _change(request: Request, principal: CurrentPrincipal, conn: DbConn, alert_id: AlertId) -> PatientAccess:
    """A change of one alert: its patient's ``alerts`` consent (else 404, as a missing alert), then the role."""
    note_audit_detail(request, {"alert_id": alert_id})
    access = _alert_access(request, principal, conn, alert_id)
    if access.principal.role not in CLINICAL_ROLES:
        raise forbidden("only a clinician or care team member may change an alert")
    return access



@router.get("/{alert_id}", summary="One alert, its history and its deliveries", response_model=AlertDetail,
            responses=problem_responses(404))
def get_alert(request: Request, principal: CurrentPrincipal, conn: DbConn, alert_id: AlertId) -> dict[str, Any]:
    _alert_access(request, principal, conn, alert_id)
    return {**service.get_alert(conn, alert_id), "history": service.alert_history(conn, alert_id),
            "deliveries": channels.deliveries_of(conn, alert_id)}


@router.post("/{alert_id}/acknowledge",
             summary="Mark the alert seen: an open one stays open until it resolves; one that resolved before"
                     " anyone looked and needs review is reviewed. Either stops its escalation",
             response_model=Alert, responses=_CHANGE_PROBLEMS)
def acknowledge(request: Request, principal: CurrentPrincipal, conn: DbConn, alert_id: AlertId,
                body: Note | None = None) -> dict[str, Any]:
    _change(request, principal, conn, alert_id)
    return service.acknowledge(conn, alert_id, principal.subject, body.note if body else None)


@router.post("/{alert_id}/resolve", summary="Close the alert by hand", response_model=Alert,
             responses=_CHANGE_PROBLEMS)
def resolve(request: Request, principal: CurrentPrincipal, conn: DbConn, alert_id: AlertId,
            body: Note | None = None) -> dict[str, Any]:
    _change(request, principal, conn, alert_id)
    return service.resolve(conn, alert_id, principal.subject, body.note if body else None)


@router.post("/{alert_id}/comments", status_code=201, summary="Add a note to the alert's history",
             response_model=AlertEvent, responses=_CHANGE_PROBLEMS)
def comment(request: Request, principal: CurrentPrincipal, conn: DbConn, alert_id: AlertId,
            body: Comment) -> dict[str, Any]:
    _change(request, principal, conn, alert_id)
    return service.comment(conn, alert_id, principal.subject, body.text)
