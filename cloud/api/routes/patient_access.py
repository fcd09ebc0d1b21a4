"""Who sees my data, who looked, and my way in and out: the patient's access routes (issue 20).

- ``GET .../access``: every care team with an active consent (its members, scopes in words, until when)
  and the consents that ended. Granting (by a care team's invite code) and revoking are
  ``routes/consents.py``; a revocation or an expiry holds from the next request, because every request
  checks the consent row (``cloud.api.deps``).
- ``POST /v1/care-teams/{team_id}/invites``: a member of the team makes a single-use code the patient
  enters to share with that team. 8 Crockford base32 characters (40 bits), kept as a SHA-256, with wrong
  guesses limited per patient (``routes/consents.py``).
- ``GET .../access-log``: the audit rows naming the patient, in words (who, which part, what happened).
- ``GET/POST .../closure-request``: asking to close the account; what the care team must keep and why.
- ``POST .../first-time-links``: a clinician with the patient's consent makes a single-use sign-in link
  (24 h by default) for a patient without an account yet; ``POST /v1/first-time-links/{token}/redeem``
  (no bearer token: the token in the path is the credential) gives a short patient token once. Where an
  external issuer signs every other token, the API signs these with its own ``RPM_FIRST_TIME_KEY`` (a
  patient's token only, verified by the API alone: ``cloud.api.tokens``); a development API uses its
  development key. With neither, redeeming answers 503 before the link is used.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from cloud.api import overview, patient_queries, queries
from cloud.api.deps import ClinicalPrincipal, DbConn, OwnRecord, ReadingsAccess, note_audit, note_audit_detail
from cloud.api.patient_models import Access, AccessLog, ClosureRequest, FirstTimeLink, FirstTimeToken, Invite
from cloud.api.problems import ApiProblem, forbidden, not_found, problem_responses
from cloud.api.tokens import Principal, can_sign_first_time_tokens, mint_first_time_token
from cloud.settings import CloudSettings

router = APIRouter(tags=["patient"], responses=problem_responses(401, 403, 422, 503, "default"))

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford's base32: no I, L, O or U, so a code read aloud or copied by hand is not misread."""
_CROCKFORD_READ = str.maketrans({"O": "0", "I": "1", "L": "1"})
INVITE_LENGTH = 8


def secret_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_invite_code() -> str:
    return "".join(secrets.choice(CROCKFORD) for _ in range(INVITE_LENGTH))


def normalise_invite_code(text: str) -> str | None:
    """``abcd-efgh`` / ``ABCD EFGH`` / ``ABCDEFGH`` -> ``ABCDEFGH``; O, I and L read as 0, 1, 1 (Crockford's
    decoding); None when it cannot be a code at all."""
    code = text.strip().upper().replace("-", "").replace(" ", "").translate(_CROCKFORD_READ)
    if len(code) != INVITE_LENGTH or any(ch not in CROCKFORD for ch in code):
        return None
    return code


def shown_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


# --- who sees my data --------------------------------------------------------------------------------------

def _grant(row: dict[str, Any], past: bool) -> dict[str, Any]:
    out = {"consent_id": row["consent_id"], "care_team_id": row["care_team_id"],
           "care_team_name": row["care_team_name"], "scopes": sorted(row["scopes"]),
           "scopes_text": overview.scopes_text(row["scopes"]), "granted_at": row["granted_at"],
           "expires_at": row["expires_at"], "members": row["members"]}
    if past:
        out["revoked_at"] = row["revoked_at"]
    return out


@router.get("/v1/patients/{patient_id}/access", response_model=Access, responses=problem_responses(404),
            summary="Who sees my data: care teams with access now (members, what, until when) and past shares")
def my_access(access: OwnRecord, conn: DbConn) -> dict[str, Any]:
    rows = patient_queries.consents_with_teams(conn, access.patient_id)
    return {"patient_id": access.patient_id, "grants": [_grant(r, False) for r in rows if r["active"]],
            "past": [_grant(r, True) for r in rows if not r["active"]]}


class InviteRequest(BaseModel):
    expires_in_days: int = Field(14, ge=1, le=90)


@router.post("/v1/care-teams/{team_id}/invites", status_code=201, response_model=Invite,
             responses=problem_responses(404, 413, when={403: "Not a clinician or care-team member of this team",
                                                        404: "No such care team"}),
             summary="An invite code a patient enters to share their data with this care team (single use)")
def create_invite(request: Request, principal: ClinicalPrincipal, conn: DbConn,
                  team_id: Annotated[str, Path(min_length=1, max_length=200)],
                  body: InviteRequest | None = None) -> dict[str, Any]:
    body = body or InviteRequest()
    note_audit_detail(request, {"care_team_id": team_id, "expires_in_days": body.expires_in_days})
    if team_id not in principal.care_teams:
        raise forbidden("only the care team's clinicians and members may invite patients to it")
    if not queries.care_team_exists(conn, team_id):
        raise not_found("care team")
    expires_at = datetime.now(UTC) + timedelta(days=body.expires_in_days)
    for _ in range(5):  # 2**40 codes: a collision with a live one is rare, five in a row is a broken generator
        code = new_invite_code()
        row = patient_queries.create_invite(conn, team_id, secret_hash(code), principal.subject, expires_at)
        if row is not None:
            # The audit row names the invite, never its code.
            note_audit_detail(request, {"care_team_id": team_id, "invite_id": row["id"],
                                        "expires_at": row["expires_at"].isoformat()})
            return {"code": shown_code(code), "expires_at": row["expires_at"]}
    raise ApiProblem(503, "no free invite code could be drawn; retry", slug="unavailable")


# --- who looked ---------------------------------------------------------------------------------------

@router.get("/v1/patients/{patient_id}/access-log", response_model=AccessLog, responses=problem_responses(404),
            summary="Who looked at my record, in plain words, newest first (my own requests left out)")
def my_access_log(access: OwnRecord, conn: DbConn,
                  before: Annotated[int | None, Query(ge=1, le=2**62, description="next_before of the page before")]
                  = None, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    rows = patient_queries.access_log(conn, access.patient_id, before, limit)
    entries = [{"at": r["at"], "who": overview.who_words(r["role"], r["subject"], r["name"], r["team_names"]),
                "what": overview.what_words(r["action"]),
                "outcome_text": overview.outcome_words(r["outcome"], r["action"].split(" ", 1)[0])} for r in rows]
    return {"patient_id": access.patient_id, "entries": entries,
            "next_before": rows[-1]["id"] if len(rows) == limit else None}


# --- closing my account -------------------------------------------------------------------------------

class ClosureBody(BaseModel):
    reason: str | None = Field(None, max_length=2000)


def _closure(row: dict[str, Any] | None) -> dict[str, Any]:
    return {"status": row["status"] if row else "none", "requested_at": row["requested_at"] if row else None,
            "reason": row["reason"] if row else None, "kept": list(overview.CLOSURE_KEPT),
            "removed": list(overview.CLOSURE_REMOVED)}


@router.get("/v1/patients/{patient_id}/closure-request", response_model=ClosureRequest,
            responses=problem_responses(404),
            summary="My pending request to close my account (status none: not asked), what is kept and removed")
def closure_request(access: OwnRecord, conn: DbConn) -> dict[str, Any]:
    return _closure(patient_queries.pending_closure(conn, access.patient_id))


@router.post("/v1/patients/{patient_id}/closure-request", status_code=202, response_model=ClosureRequest,
             responses=problem_responses(404, 413),
             summary="Ask to close my account: the care team carries it out, keeping what it must (said here)")
def request_closure(request: Request, access: OwnRecord, conn: DbConn,
                    body: ClosureBody | None = None) -> dict[str, Any]:
    reason = ((body.reason or "").strip() or None) if body else None
    if reason is not None and "\x00" in reason:
        raise ApiProblem(422, "the reason cannot hold NUL characters", slug="validation")
    row = patient_queries.request_closure(conn, access.patient_id, access.principal.subject, reason)
    note_audit_detail(request, {"closure_request_id": row["id"], "with_reason": reason is not None})
    return _closure(row)


# --- first-time links --------------------------------------------------------------------------------

class FirstTimeLinkRequest(BaseModel):
    expires_in_hours: int | None = Field(None, ge=1, le=72, description="default RPM_FIRST_TIME_LINK_TTL_S (24 h)")


@router.post("/v1/patients/{patient_id}/first-time-links", status_code=201, response_model=FirstTimeLink,
             responses=problem_responses(404, 413),
             summary="A single-use sign-in link for a patient without an account yet (clinician or care team)")
def create_first_time_link(request: Request, access: ReadingsAccess, conn: DbConn,
                           body: FirstTimeLinkRequest | None = None) -> dict[str, Any]:
    access.require_clinical()
    settings: CloudSettings = request.app.state.settings
    ttl = timedelta(hours=body.expires_in_hours) if body and body.expires_in_hours else timedelta(
        seconds=settings.first_time_link_ttl_s)
    token = secrets.token_urlsafe(32)
    row = patient_queries.create_first_time_link(conn, access.patient_id, secret_hash(token),
                                                 access.principal.subject, datetime.now(UTC) + ttl)
    note_audit_detail(request, {"first_time_link_id": row["id"], "expires_at": row["expires_at"].isoformat()})
    return {"url": f"{settings.public_url.rstrip('/')}/ui/me#first-time={token}", "expires_at": row["expires_at"]}



LinkToken = Annotated[str, Path(min_length=20, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")]


@router.post("/v1/first-time-links/{token}/redeem", response_model=FirstTimeToken,
             responses=problem_responses(404, 410, when={404: "No such link", 410: "The link was used or expired",
                                                        503: "This API cannot sign patient tokens (an external"
                                                             " issuer is configured), or the database is down"}),
             summary="Use a first-time link once (no bearer token): a short patient token")
def redeem_first_time_link(request: Request, conn: DbConn, token: LinkToken) -> dict[str, Any]:
    # No bearer token: the link is the credential. The audit row still needs a caller: it is "the link".
    request.state.principal = Principal(subject="first-time-link", role="link")
    settings: CloudSettings = request.app.state.settings
    if not can_sign_first_time_tokens(settings):
        raise ApiProblem(503, "first-time sign-in is not available here: sign in through your identity provider",
                         slug="first-time-links-unavailable")
    state, row = patient_queries.redeem_first_time_link(conn, secret_hash(token))
    if row is not None:
        note_audit(request, row["patient_id"])
        note_audit_detail(request, {"first_time_link_id": row["id"]})
    if state == "unknown" or row is None:
        raise not_found("first-time link")
    if state == "gone":
        raise ApiProblem(410, "this first-time link was already used or has expired; ask your care team for a new one",
                         slug="link-gone")
    ttl = settings.first_time_token_ttl_s
    access_token = mint_first_time_token(settings, row["patient_id"], ttl)
    return {"access_token": access_token, "token_type": "Bearer", "expires_in": ttl, "patient_id": row["patient_id"]}

