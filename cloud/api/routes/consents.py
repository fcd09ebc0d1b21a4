"""The patient's consents: grant a care team access (scopes readings, alerts, twin; optional expiry),
revoke it (effective on the care team's next request), list them. Only the patient may."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field, field_validator

from cloud.api import queries
from cloud.api.deps import DbConn, OwnRecord, note_audit_detail
from cloud.api.models import Consent, Consents
from cloud.api.problems import ApiProblem, not_found, problem_responses

router = APIRouter(prefix="/v1/patients/{patient_id}/consents", tags=["consents"],
                   responses=problem_responses(401, 403, 404, 422, 503, "default",
                                               when={404: "Not the caller's own record, or no such consent"}))


class Scope(StrEnum):
    readings = "readings"
    alerts = "alerts"
    twin = "twin"


class ConsentGrant(BaseModel):
    care_team_id: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(min_length=1, max_length=3)
    expires_at: datetime | None = None

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


@router.post("", status_code=201, summary="Grant a care team access to my data", response_model=Consent,
             responses=problem_responses(413, 422, when={422: "The request is not valid, or no such care team"}))
def grant(request: Request, access: OwnRecord, conn: DbConn, body: ConsentGrant) -> dict[str, Any]:
    note_audit_detail(request, {"care_team_id": body.care_team_id, "scopes": sorted(s.value for s in body.scopes)})
    if not queries.care_team_exists(conn, body.care_team_id):
        raise ApiProblem(422, f"no care team {body.care_team_id!r}", slug="unknown-care-team")
    scopes = sorted({s.value for s in body.scopes})
    return queries.grant_consent(conn, access.patient_id, body.care_team_id, scopes, body.expires_at,
                                 access.principal.subject)


@router.delete("/{consent_id}", summary="Revoke a consent (takes effect on the next request)",
               response_model=Consent)
def revoke(request: Request, access: OwnRecord, conn: DbConn,
           consent_id: Annotated[int, Path(ge=1, le=2**62)]) -> dict[str, Any]:
    note_audit_detail(request, {"consent_id": consent_id})
    row = queries.revoke_consent(conn, access.patient_id, consent_id, access.principal.subject)
    if row is None:
        raise not_found("consent")
    return row
