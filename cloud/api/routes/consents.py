"""The patient's consents: grant a care team access (scopes readings, alerts, twin; optional expiry),
revoke it (effective on the care team's next request), list them. Only the patient may.

A grant names the care team (``care_team_id``) or carries the invite code the care team gave the patient
(``invite_code``, ``POST /v1/care-teams/{team_id}/invites``): the code is used once and names the team, so
the patient never types an id. Wrong codes are limited per patient (``RPM_INVITE_ATTEMPTS_MAX`` within
``RPM_INVITE_ATTEMPTS_WINDOW_S``; then 429 with ``Retry-After``): 40 bits of code against a handful of
guesses a quarter-hour."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field, field_validator, model_validator

from cloud.api import patient_queries, queries
from cloud.api.deps import DbConn, OwnRecord, PatientAccess, note_audit_detail
from cloud.api.models import Consent, Consents
from cloud.api.problems import ApiProblem, not_found, problem_responses
from cloud.api.routes.patient_access import normalise_invite_code, secret_hash
from cloud.settings import CloudSettings

router = APIRouter(prefix="/v1/patients/{patient_id}/consents", tags=["consents"],
                   responses=problem_responses(401, 403, 404, 422, 503, "default",
                                               when={404: "Not the caller's own record, or no such consent"}))


class Scope(StrEnum):
    readings = "readings"
    alerts = "alerts"
    twin = "twin"


class ConsentGrant(BaseModel):
    care_team_id: str | None = Field(None, min_length=1, max_length=200)
    invite_code: str | None = Field(None, min_length=1, max_length=40, description="XXXX-XXXX, from the care team")
    scopes: list[Scope] | None = Field(None, min_length=1, max_length=3,
                                       description="required with care_team_id; with invite_code default all three")
    expires_at: datetime | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ConsentGrant:
        if (self.care_team_id is None) == (self.invite_code is None):
            raise ValueError("give either care_team_id (with scopes) or invite_code")
        if self.care_team_id is not None and self.scopes is None:
            raise ValueError("scopes are required with care_team_id")
        return self

    @field_validator("expires_at")
    @classmethod
    def _future_and_zoned(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return value
        if value.tzinfo is None:
            raise ValueError("expires_at needs a time zone")
        if value <= datetime.now(UTC):
            raise ValueError("expires_at must be in the future")
        return value


@router.get("", summary="My consents, newest first (active and past)", response_model=Consents)
def list_consents(access: OwnRecord, conn: DbConn) -> dict[str, Any]:
    return {"patient_id": access.patient_id, "consents": queries.list_consents(conn, access.patient_id)}


@router.post("", status_code=201, summary="Grant a care team access to my data (by its id or its invite code)",
             response_model=Consent,
             responses=problem_responses(413, 422, 429, when={
                 422: "The request is not valid, no such care team, or the invite code is not valid",
                 429: "Too many wrong invite codes lately: retry after Retry-After seconds"}))
def grant(request: Request, access: OwnRecord, conn: DbConn, body: ConsentGrant) -> dict[str, Any]:
    if body.invite_code is not None:
        return _grant_by_invite(request, access, conn, body, body.invite_code)
    assert body.care_team_id is not None and body.scopes is not None  # the model's validator
    return grant_to_team(request, conn, access.patient_id, body.care_team_id, [s.value for s in body.scopes],
                         body.expires_at, access.principal.subject)


def grant_to_team(request: Request, conn: DbConn, patient_id: str, care_team_id: str, scopes: list[str],
                  expires_at: datetime | None, by: str) -> dict[str, Any]:
    """The patient grants a care team named by id (here and through FHIR ``POST /fhir/Consent``): audited
    with what was asked; an unknown team is 422. ``scopes`` are already checked against :class:`Scope`."""
    scopes = sorted(set(scopes))
    note_audit_detail(request, {"care_team_id": care_team_id, "scopes": scopes})
    if not queries.care_team_exists(conn, care_team_id):
        raise ApiProblem(422, f"no care team {care_team_id!r}", slug="unknown-care-team")
    return queries.grant_consent(conn, patient_id, care_team_id, scopes, expires_at, by)


_WRONG_CODE = "that invite code is not valid (mistyped, already used or expired); ask your care team for a new one"


def _grant_by_invite(request: Request, access: PatientAccess, conn: DbConn, body: ConsentGrant,
                     text: str) -> dict[str, Any]:
    settings: CloudSettings = request.app.state.settings
    scopes = sorted({s.value for s in body.scopes} if body.scopes else queries.SCOPES)
    note_audit_detail(request, {"via": "invite_code", "scopes": scopes})
    code = normalise_invite_code(text)
    if code is None:  # cannot match any code: not a guess, so not counted
        raise ApiProblem(422, "an invite code is 8 letters and digits, like ABCD-EFGH", slug="invalid-invite-code")
    with conn.transaction():
        patient_queries.lock_invite_attempts(conn, access.patient_id)
        wrong, oldest = patient_queries.wrong_attempts(conn, access.patient_id, settings.invite_attempts_window_s)
        if wrong >= settings.invite_attempts_max:
            invite, consent = None, None
        else:
            invite = patient_queries.use_invite(conn, secret_hash(code), access.patient_id)
            patient_queries.record_attempt(conn, access.patient_id, ok=invite is not None)
            consent = None
            if invite is not None:
                consent = queries.grant_consent(conn, access.patient_id, invite["care_team_id"], scopes,
                                                body.expires_at, access.principal.subject)
                patient_queries.link_invite_consent(conn, invite["id"], consent["id"])
    # Raised after the transaction: the wrong attempt it recorded must stay recorded.
    if wrong >= settings.invite_attempts_max:
        waited = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        retry = max(1, math.ceil(settings.invite_attempts_window_s - waited))
        note_audit_detail(request, {"via": "invite_code", "refused": "too many wrong codes"})
        raise ApiProblem(429, f"too many wrong invite codes; try again in {retry} seconds", slug="too-many-attempts",
                         headers={"Retry-After": str(retry)})
    if invite is None or consent is None:
        note_audit_detail(request, {"via": "invite_code", "refused": "wrong code"})
        raise ApiProblem(422, _WRONG_CODE, slug="invalid-invite-code")
    note_audit_detail(request, {"via": "invite_code", "invite_id": invite["id"], "care_team_id": invite["care_team_id"],
                                "consent_id": consent["id"], "scopes": scopes})
    return consent


@router.delete("/{consent_id}", summary="Revoke a consent (takes effect on the next request)",
               response_model=Consent)
def revoke(request: Request, access: OwnRecord, conn: DbConn,
           consent_id: Annotated[int, Path(ge=1, le=2**62)]) -> dict[str, Any]:
    note_audit_detail(request, {"consent_id": consent_id})
    row = queries.revoke_consent(conn, access.patient_id, consent_id, access.principal.subject)
    if row is None:
        raise not_found("consent")
    return row
