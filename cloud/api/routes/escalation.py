"""Escalation set-up of a care team (policies, contacts, on-call schedules), an alert's escalations,
and a patient's own contact points for messages (opt-in / opt-out).

A team's set-up is read and replaced by its members (a clinician or care-team token naming the team)
and by administrators; each part is replaced whole, validated (422 problem naming the field or the
reference that does not exist) and audited with what it was before and after. A patient's contacts
are changed by the patient themself or by a care team with the ``alerts`` consent scope.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from cloud.alerts import escalation_config as config
from cloud.alerts import escalation_queries
from cloud.alerts.escalation_config import EMAIL, PHONE, EscalationConfigError
from cloud.alerts.escalation_schedule import OnCallSchedule, Shift
from cloud.api import queries
from cloud.api.deps import CLINICAL_ROLES, AlertsAccess, CurrentPrincipal, DbConn, authorise_patient, note_audit_detail
from cloud.api.models import AlertEscalations, EscalationSetup, PatientContact, PatientContacts
from cloud.api.problems import ApiProblem, forbidden, not_found, problem_responses
from cloud.api.tokens import Principal

router = APIRouter(tags=["escalation"], responses=problem_responses(401, 403, 422, 503, "default"))
TeamId = Annotated[str, Path(min_length=1, max_length=200)]
Channel = Literal["email", "provider"]
_REPLACE = problem_responses(404, 413, when={422: "Not valid, or names a contact, schedule or webhook that does not"
                                                  " exist"})


def team_member(request: Request, principal: CurrentPrincipal, conn: DbConn, team_id: TeamId) -> Principal:
    """Administrators, and members of the team (its id in the token's care teams)."""
    if not (principal.role == "admin" or (principal.role in CLINICAL_ROLES and team_id in principal.care_teams)):
        raise forbidden("only the care team's members or an administrator may see or change its escalation")
    if not queries.care_team_exists(conn, team_id):
        raise not_found("care team")
    return principal


TeamMember = Annotated[Principal, Depends(team_member)]


def _setup(conn: DbConn, team_id: str) -> dict[str, Any]:
    setup = config.get_config(conn, team_id)
    at = datetime.now(UTC)
    for schedule in setup["schedules"]:
        rota = OnCallSchedule(schedule["role"], schedule["timezone"], tuple(schedule["rotation"]),
                              schedule["rotation_start"], schedule["rotation_hours"],
                              tuple(Shift(**s) for s in schedule["shifts"]))
        schedule["on_call_now"] = rota.on_call(at)
    return setup


def _replaced(request: Request, conn: DbConn, team_id: str, change: Any) -> dict[str, Any]:
    try:
        detail = change()
    except EscalationConfigError as err:
        raise ApiProblem(422, str(err), slug="invalid-escalation") from err
    note_audit_detail(request, detail)
    return _setup(conn, team_id)


@router.get("/v1/care-teams/{team_id}/escalation", summary="The team's escalation policies, contacts and on-call",
            response_model=EscalationSetup, responses=problem_responses(404))
def get_setup(principal: TeamMember, conn: DbConn, team_id: TeamId) -> dict[str, Any]:
    return _setup(conn, team_id)


@router.put("/v1/care-teams/{team_id}/escalation/policies", response_model=EscalationSetup, responses=_REPLACE,
            summary="Replace the team's escalation policies (in order: an alert follows the first that matches);"
                    " escalations under way keep the steps they started with")
def replace_policies(request: Request, principal: TeamMember, conn: DbConn, team_id: TeamId,
                     body: config.Policies) -> dict[str, Any]:
    note_audit_detail(request, {"care_team_id": team_id, "changed": "policies"})
    return _replaced(request, conn, team_id, lambda: config.replace_policies(conn, team_id, body, principal.subject))


@router.put("/v1/care-teams/{team_id}/escalation/contacts", response_model=EscalationSetup, responses=_REPLACE,
            summary="Replace the people the team's messages reach (with their duties)")
def replace_contacts(request: Request, principal: TeamMember, conn: DbConn, team_id: TeamId,
                     body: config.Contacts) -> dict[str, Any]:
    note_audit_detail(request, {"care_team_id": team_id, "changed": "contacts"})
    return _replaced(request, conn, team_id, lambda: config.replace_contacts(conn, team_id, body, principal.subject))


@router.put("/v1/care-teams/{team_id}/escalation/on-call", response_model=EscalationSetup, responses=_REPLACE,
            summary="Replace the team's on-call schedules (rotations and shifts, wall-clock in their zone)")
def replace_schedules(request: Request, principal: TeamMember, conn: DbConn, team_id: TeamId,
                      body: config.Schedules) -> dict[str, Any]:
    note_audit_detail(request, {"care_team_id": team_id, "changed": "schedules"})
    return _replaced(request, conn, team_id, lambda: config.replace_schedules(conn, team_id, body, principal.subject))


@router.get("/v1/alerts/{alert_id}/escalations", summary="The alert's escalations: step, next time, why stopped",
            response_model=AlertEscalations, responses=problem_responses(404))
def alert_escalations(request: Request, principal: CurrentPrincipal, conn: DbConn,
                      alert_id: Annotated[int, Path(ge=1, le=2**62)]) -> dict[str, Any]:
    patient_id = queries.alert_patient(conn, alert_id)
    if patient_id is None:
        raise not_found("alert")
    try:
        authorise_patient(conn, request, principal, patient_id, "alerts")
    except ApiProblem:
        raise not_found("alert") from None
    rows = escalation_queries.escalations_of(conn, alert_id)
    if principal.role != "patient":
        # A care team sees its own escalations, not which other teams look after the patient.
        rows = [r for r in rows if r["care_team_id"] in principal.care_teams]
    return {"alert_id": alert_id, "escalations": rows}


class Address(BaseModel):
    address: str = Field(min_length=3, max_length=320,
                         description="an e-mail address (channel email) or an E.164 phone number (channel provider)")


@router.get("/v1/patients/{patient_id}/contacts", summary="Where the patient agreed to receive messages (and when"
            " they stopped)", response_model=PatientContacts, responses=problem_responses(404))
def patient_contacts(access: AlertsAccess, conn: DbConn) -> dict[str, Any]:
    return {"patient_id": access.patient_id, "contacts": escalation_queries.patient_contacts(conn, access.patient_id)}


@router.put("/v1/patients/{patient_id}/contacts/{channel}", response_model=PatientContact,
            responses=problem_responses(404, 413),
            summary="Opt in to messages on a channel at this address (replaces the channel's current address)")
def opt_in(request: Request, access: AlertsAccess, conn: DbConn, channel: Channel, body: Address) -> dict[str, Any]:
    address = body.address.strip()
    note_audit_detail(request, {"patient_id": access.patient_id, "channel": channel, "opted_in": address})
    if not re.match(EMAIL if channel == "email" else PHONE, address):
        raise ApiProblem(422, f"{address!r} is not {'an e-mail address' if channel == 'email' else 'an E.164 number'}",
                         slug="invalid-contact")
    by = access.principal.subject
    now = datetime.now(UTC)
    with conn.transaction():
        current = [c for c in escalation_queries.active_patient_contacts(conn, access.patient_id)
                   if c["channel"] == channel]
        if current and current[0]["address"] == address:
            return current[0]
        if current:
            escalation_queries.opt_out(conn, access.patient_id, channel, by, now)
            note_audit_detail(request, {"patient_id": access.patient_id, "channel": channel, "opted_in": address,
                                        "replaced": current[0]["address"]})
        return escalation_queries.opt_in(conn, access.patient_id, channel, address, by, now)


@router.delete("/v1/patients/{patient_id}/contacts/{channel}", response_model=PatientContact,
               responses=problem_responses(404), summary="Opt out of messages on a channel")
def opt_out(request: Request, access: AlertsAccess, conn: DbConn, channel: Channel) -> dict[str, Any]:
    note_audit_detail(request, {"patient_id": access.patient_id, "channel": channel, "opted_out": True})
    row = escalation_queries.opt_out(conn, access.patient_id, channel, access.principal.subject, datetime.now(UTC))
    if row is None:
        raise not_found("contact")
    return row
