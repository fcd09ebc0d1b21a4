"""The alert inbox across the caller's patients (what needs a human) and assigning an alert to oneself.

Consent as for ``/v1/alerts``: a clinician or care-team member sees the alerts of patients whose active
consent grants one of their teams the ``alerts`` scope, a patient their own, an administrator none. Every
patient on a page is audited; an assignment is a change of the alert, authorised and audited like an
acknowledgement, and recorded in the alert's history as a ``comment`` event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from cloud.api import queries
from cloud.api.deps import CLINICAL_ROLES, CurrentPrincipal, DbConn, authorise_patient, note_audit, note_audit_detail
from cloud.api.models import Inbox, WorkspaceAlert
from cloud.api.problems import ApiProblem, forbidden, not_found, problem_responses

router = APIRouter(tags=["inbox"], responses=problem_responses(401, 403, 422, 503, "default"))


class Severity(StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


class Category(StrEnum):
    clinical = "clinical"
    technical = "technical"


class Assigned(StrEnum):
    me = "me"
    unassigned = "unassigned"


class Assignment(BaseModel):
    to: Literal["me"] | None = Field(description='"me": assign the alert to the caller; null: nobody')


@router.get("/v1/inbox", summary="What needs a human across the caller's patients (open and unacknowledged, or"
                                 " resolved before review): most severe first, then newest", response_model=Inbox)
def inbox(request: Request, principal: CurrentPrincipal, conn: DbConn,
          severity: Annotated[list[Severity] | None, Query()] = None,
          category: Annotated[list[Category] | None, Query()] = None,
          assigned: Annotated[Assigned | None, Query(description="me: assigned to the caller; unassigned: nobody")]
          = None,
          before: Annotated[int | None, Query(ge=1, le=2**62, description="next_before of the previous page")] = None,
          limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    if principal.role == "admin":
        raise forbidden("alerts are clinical data")
    care_teams = principal.care_teams if principal.role in CLINICAL_ROLES else ()
    own = principal.patient_id if principal.role == "patient" else None
    found = queries.inbox(conn, care_teams=care_teams, own_patient=own, subject=principal.subject,
                          severities=[s.value for s in severity] if severity else None,
                          categories=[c.value for c in category] if category else None,
                          assigned=assigned.value if assigned else None, before_id=before, limit=limit + 1)
    alerts = queries.workspace_alerts(conn, found["ids"][:limit])
    for alert in alerts:
        note_audit(request, alert["patient_id"])
    more = len(found["ids"]) > limit  # one more was asked for: is there a next page?
    return {"alerts": alerts, "total": found["total"], "counts": found["counts"],
            "next_before": alerts[-1]["id"] if more else None}


@router.post("/v1/alerts/{alert_id}/assign", tags=["alerts"],
             summary="Assign the alert to the caller (to: \"me\") or to nobody (to: null)",
             response_model=WorkspaceAlert,
             responses=problem_responses(404, 409, 413, when={409: "The alert needs no human any more"}))
def assign(request: Request, principal: CurrentPrincipal, conn: DbConn,
           alert_id: Annotated[int, Path(ge=1, le=2**62)], body: Assignment) -> dict[str, Any]:
    to = principal.subject if body.to == "me" else None
    note_audit_detail(request, {"alert_id": alert_id, "assigned_to": to})
    patient_id = queries.alert_patient(conn, alert_id)
    if patient_id is None:
        raise not_found("alert")
    try:
        access = authorise_patient(conn, request, principal, patient_id, "alerts")
    except ApiProblem:
        raise not_found("alert") from None
    if access.principal.role not in CLINICAL_ROLES:
        raise forbidden("only a clinician or care team member may assign an alert")
    alert = queries.assign_alert(conn, alert_id, to, principal.subject, datetime.now(UTC))
    if alert is None:
        raise ApiProblem(409, f"alert {alert_id} is resolved and needs no review: there is nothing to assign",
                         slug="conflict")
    return alert
