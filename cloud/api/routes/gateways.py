"""Gateways (issue 19): claim with the code on the box, release, rotate credentials, the remote config
document, the devices a gateway proposes (confirm / ignore / unpair), and the fleet view.

Who sees a gateway: the care team of the patient it is claimed for (a clinician or care-team member
whose team has the patient's ``readings`` consent, as for the patient's devices), the patient themself
(reads only), and administrators (every gateway, claimed or not: configuration). Anyone else gets 404,
exactly as for a gateway that does not exist; who sees it but may not change it (the patient) gets 403.
Claiming is authorised on the patient first and only then is the code looked up, so a wrong code and a
patient one may not see answer alike; wrong codes are counted per caller (429 past
``RPM_CLAIM_FAILURES_MAX`` in ``RPM_CLAIM_FAILURES_WINDOW_S``). Every write is audited by the app's
middleware with the patient it touches and what it changed.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from cloud.api import queries
from cloud.api.deps import (
    CLINICAL_ROLES,
    AdminPrincipal,
    CurrentPrincipal,
    DbConn,
    authorise_device_change,
    authorise_patient,
    note_audit,
    note_audit_detail,
)
from cloud.api.fleet_models import (
    CandidateList,
    ClaimMade,
    ClaimReleased,
    ConfigState,
    DeviceDecision,
    FleetGateway,
    FleetList,
    IdentityReleased,
    RotationRequested,
)
from cloud.api.fleet_view import fleet, latest_status
from cloud.api.problems import ApiProblem, forbidden, not_found, problem_responses
from cloud.api.tokens import Principal
from cloud.devices import assignment as assignments
from cloud.devices import binding
from cloud.fleet import FleetError, remote_config
from cloud.fleet import provisioning as prov
from cloud.settings import CloudSettings

log = logging.getLogger(__name__)
router = APIRouter(tags=["gateways"], responses=problem_responses(401, 403, 404, 422, 503, "default"))
GatewayId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
DeviceUid = Annotated[str, Path(min_length=1, max_length=128)]
CROCKFORD = frozenset("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def normalise_claim_code(code: str) -> str:
    """As the gateway hashes it (gateway/provisioning/identity.py): upper case, no dashes or spaces, I/L→1, O→0."""
    cleaned = "".join(code.split()).replace("-", "").upper()
    return cleaned.translate(str.maketrans({"I": "1", "L": "1", "O": "0"}))


class ClaimBody(BaseModel):
    code: str = Field(min_length=1, max_length=40, description="the claim code on the gateway's label")
    patient_id: str = Field(min_length=1, max_length=200)


class ConfigBody(BaseModel):
    config: dict[str, Any] = Field(description="the gateway's TOML schema as JSON, less the keys only its own TOML "
                                               "may set (gateway.config.REMOTE_ONLY_LOCAL)")
    reason: str | None = Field(None, max_length=500)


class ConfirmBody(BaseModel):
    user_index: int | None = Field(None, ge=0, le=255, description="the user slot of a multi-user cuff or scale")


def _fleet_problem(err: FleetError) -> ApiProblem:
    return ApiProblem(err.status, err.detail, slug=err.slug)


def _settings(request: Request) -> CloudSettings:
    return request.app.state.settings


def _within(request: Request) -> timedelta:
    return timedelta(seconds=_settings(request).gateway_online_within_s)


def _gateway_known(conn: psycopg.Connection, gateway_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM gateway_identities WHERE gateway_id = %s AND released_at IS NULL UNION ALL"
                       " SELECT 1 FROM gateways WHERE id = %s LIMIT 1", (gateway_id, gateway_id)).fetchone()
    return row is not None


def authorise_gateway(conn: psycopg.Connection, request: Request, principal: Principal, gateway_id: str, *,
                      change: bool) -> prov.Claim | None:
    """The gateway's claim (None: unclaimed, admins only) if the caller may see (``change``: change) it."""
    claim = prov.current_claim(conn, gateway_id)
    if principal.role == "admin":
        if claim is not None:
            note_audit(request, claim.patient_id)
        if claim is None and not _gateway_known(conn, gateway_id):
            raise not_found("gateway")
        return claim
    if claim is None:
        raise not_found("gateway")
    access = authorise_patient(conn, request, principal, claim.patient_id, "readings")
    if change:
        access.require_clinical()
    return claim


def _publisher(request: Request) -> remote_config.ConfigPublisher:
    publisher = getattr(request.app.state, "config_publisher", None)
    if publisher is None:
        publisher = request.app.state.config_publisher = remote_config.ConfigPublisher(_settings(request))
    return publisher


async def _publish(request: Request, version: remote_config.ConfigVersion) -> bool:
    """After the commit: the retained config message, and its acknowledgement noted."""
    published = await run_in_threadpool(_publisher(request).publish, version.gateway_id, version.version,
                                        version.document)
    if published:
        def mark() -> None:
            with request.app.state.pool.connection() as conn:
                remote_config.mark_published(conn, version.gateway_id, version.version)
        await run_in_threadpool(mark)
    return published


def _config_answer(conn: psycopg.Connection, gateway_id: str, version: remote_config.ConfigVersion | None,
                   published: bool | None = None) -> dict[str, Any]:
    status = latest_status(conn, gateway_id) or {}
    reported = status.get("config") if isinstance(status.get("config"), dict) else {}
    running = reported.get("version")
    rejected = reported.get("rejected")
    answer: dict[str, Any] = {
        "gateway_id": gateway_id, "version": version.version if version else None,
        "config": version.document if version else None, "set_by": version.set_by if version else None,
        "set_at": version.set_at if version else None, "reason": version.reason if version else None,
        "published_at": version.published_at if version else None,
        "running_version": running, "rejected": rejected,
        "acknowledged": bool(version and running is not None and running >= version.version),
    }
    if published is not None:
        answer["published"] = published
    return answer


# ---------------------------------------------------------------------------------------------- fleet view

@router.get("/v1/gateways", response_model=FleetList,
            summary="The fleet: every gateway the caller may see, with patient, online state and "
                                    "since when, versions, backlog, devices and their problems")
def list_gateways(request: Request, principal: CurrentPrincipal, conn: DbConn,
                  offline_over_s: Annotated[float | None, Query(
                      ge=0, le=10**9, description="only gateways not online for longer than this (86400: a day)")
                  ] = None,
                  backlog_over_s: Annotated[float | None, Query(
                      ge=0, le=10**9, description="only gateways whose oldest waiting reading is older (3600: an hour)")
                  ] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> dict[str, Any]:
    if principal.role not in ("admin", *CLINICAL_ROLES):
        raise forbidden("the fleet view is for care teams and administrators")
    items = fleet(conn, admin=principal.role == "admin", care_teams=principal.care_teams, within=_within(request),
                  offline_over_s=offline_over_s, backlog_over_s=backlog_over_s, limit=limit, offset=offset)
    for item in items:
        note_audit(request, item["patient_id"])
    return {"gateways": items, "limit": limit, "offset": offset,
            "next_offset": offset + limit if len(items) == limit else None,
            "online_within_s": _within(request).total_seconds()}


@router.get("/v1/gateways/{gateway_id}", response_model=FleetGateway,
            summary="One gateway as in the fleet view, with its claim and config state")
def get_gateway(request: Request, principal: CurrentPrincipal, conn: DbConn, gateway_id: GatewayId) -> dict[str, Any]:
    authorise_gateway(conn, request, principal, gateway_id, change=False)
    items = fleet(conn, admin=True, care_teams=(), within=_within(request), gateway_id=gateway_id, limit=1)
    if not items:
        raise not_found("gateway")
    return items[0]


# ---------------------------------------------------------------------------------------------- claim

@router.post("/v1/gateways/claim", status_code=201, response_model=ClaimMade,
             responses=problem_responses(409, 413, 429),
             summary="Claim the gateway whose label shows this code for a patient (care team with the patient's "
                     "consent); it is provisioned at its next poll")
def claim(request: Request, principal: CurrentPrincipal, conn: DbConn, body: ClaimBody) -> dict[str, Any]:
    settings = _settings(request)
    if prov.claim_failures(conn, principal.subject, settings.claim_failures_window_s) >= settings.claim_failures_max:
        raise ApiProblem(429, "too many wrong claim codes; try again later", slug="too-many-claims",
                         headers={"Retry-After": str(int(settings.claim_failures_window_s))})
    access = authorise_patient(conn, request, principal, body.patient_id, "readings")
    access.require_clinical()
    team = next((t for t in principal.care_teams if "readings" in queries.consented_scopes(conn, body.patient_id, [t])),
                None)
    typed = normalise_claim_code(body.code)
    note_audit_detail(request, {"patient_id": body.patient_id, "care_team_id": team})
    gateway_id = None
    if len(typed) == 12 and set(typed) <= CROCKFORD:
        try:
            gateway_id = prov.claim_gateway(conn, hashlib.sha256(typed.encode()).hexdigest(), body.patient_id, team,
                                            principal.subject)
        except FleetError as err:
            raise _fleet_problem(err) from None
    if gateway_id is None:
        prov.record_claim_failure(conn, principal.subject)
        raise ApiProblem(404, "no gateway waits to be claimed with this code (check the label; the gateway must be "
                         "switched on and online)", slug="not-found")
    note_audit_detail(request, {"gateway_id": gateway_id, "patient_id": body.patient_id, "care_team_id": team})
    return {"gateway_id": gateway_id, "patient_id": body.patient_id, "care_team_id": team, "claimed": True}


@router.delete("/v1/gateways/{gateway_id}/claim", response_model=ClaimReleased, responses=problem_responses(409),
               summary="Release the gateway from its patient (history kept); its broker login ends")
def release_claim(request: Request, principal: CurrentPrincipal, conn: DbConn, gateway_id: GatewayId) -> dict[str, Any]:
    claim = authorise_gateway(conn, request, principal, gateway_id, change=True)
    if claim is None:
        raise not_found("claim")
    try:
        with conn.transaction():
            released = prov.release_claim(conn, _settings(request), gateway_id, principal.subject)
            version, closed = _forget_devices(conn, request, principal, released)
    except FleetError as err:
        raise _fleet_problem(err) from None
    published = _publish_now(request, conn, version)
    note_audit_detail(request, {"gateway_id": gateway_id, "released_patient_id": released.patient_id,
                                "devices_unpaired": closed, "version": version.version if version else None})
    return {"gateway_id": gateway_id, "patient_id": released.patient_id, "released": True,
            "devices_unpaired": closed, "config_version": version.version if version else None,
            "published": published}


def _forget_devices(conn: psycopg.Connection, request: Request, principal: Principal,
                    claim: prov.Claim) -> tuple[remote_config.ConfigVersion | None, list[str]]:
    """A released gateway reads none of the patient's devices any more: each confirmed one is unpaired in a new
    config version and its assignment to the patient ends (readings kept), so a box handed to the next patient
    never files its readings under the last one (inside the caller's transaction)."""
    current = remote_config.latest(conn, claim.gateway_id)
    confirmed = [str(c.get("uid")) for c in ((current.document.get("devices") or {}).get("confirmed") or [])
                 if isinstance(c, dict) and c.get("uid")] if current else []
    if not confirmed:
        return None, []
    document = current.document if current else {}
    for uid in confirmed:
        document = remote_config.decide_device(document, uid, "unpair")
    version = remote_config.store_version(conn, claim.gateway_id, document, principal.subject,
                                          f"claim released: {len(confirmed)} device(s) unpaired")
    for uid in confirmed:
        _unassign(conn, request, principal, claim, uid)
    return version, confirmed


def _publish_now(request: Request, conn: psycopg.Connection,
                 version: remote_config.ConfigVersion | None) -> bool | None:
    """From a route already on a worker thread: publish after the commit, note the acknowledgement."""
    if version is None:
        return None
    published = _publisher(request).publish(version.gateway_id, version.version, version.document)
    if published:
        remote_config.mark_published(conn, version.gateway_id, version.version)
    return published


@router.delete("/v1/gateways/{gateway_id}/identity", response_model=IdentityReleased,
               summary="Forget the gateway's pinned key (administrators): the next poll for this id pins a new one; "
                       "its claim and credentials end")
def release_identity(request: Request, principal: AdminPrincipal, conn: DbConn,
                     gateway_id: GatewayId) -> dict[str, Any]:
    claim = prov.current_claim(conn, gateway_id)
    try:
        with conn.transaction():
            result = prov.release_identity(conn, _settings(request), gateway_id, principal.subject)
            version, _ = _forget_devices(conn, request, principal, claim) if claim else (None, [])
    except FleetError as err:
        raise _fleet_problem(err) from None
    _publish_now(request, conn, version)
    note_audit(request, result["patient_id"])
    note_audit_detail(request, result)
    return result


@router.post("/v1/gateways/{gateway_id}/credentials/rotate", response_model=RotationRequested,
             responses=problem_responses(409),
             summary="New broker credentials: delivered at the gateway's next poll; the old ones are revoked once "
                     "its status shows it back")
def rotate(request: Request, principal: CurrentPrincipal, conn: DbConn, gateway_id: GatewayId) -> dict[str, Any]:
    authorise_gateway(conn, request, principal, gateway_id, change=True)
    try:
        result = prov.request_rotation(conn, _settings(request), gateway_id, principal.subject)
    except FleetError as err:
        raise _fleet_problem(err) from None
    note_audit_detail(request, result)
    return result


# ---------------------------------------------------------------------------------------------- remote config

@router.get("/v1/gateways/{gateway_id}/config", response_model=ConfigState,
            summary="The newest config document and whether the gateway "
                                                         "runs it (or refused it, and why)")
def get_config(request: Request, principal: CurrentPrincipal, conn: DbConn, gateway_id: GatewayId) -> dict[str, Any]:
    authorise_gateway(conn, request, principal, gateway_id, change=False)
    return _config_answer(conn, gateway_id, remote_config.latest(conn, gateway_id))


@router.put("/v1/gateways/{gateway_id}/config", response_model=ConfigState, responses=problem_responses(413),
            summary="A new config document (validated with the gateway's own schema; 422 names the key): a new "
                    "version, published retained on rpm/v1/gw/{id}/config")
async def put_config(request: Request, principal: CurrentPrincipal, gateway_id: GatewayId,
                     body: ConfigBody) -> dict[str, Any]:
    def store() -> remote_config.ConfigVersion:
        with request.app.state.pool.connection() as conn:
            authorise_gateway(conn, request, principal, gateway_id, change=True)
            try:
                with conn.transaction():
                    prov.lock_gateway(conn, gateway_id)
                    version = remote_config.store_version(conn, gateway_id, body.config, principal.subject, body.reason)
            except FleetError as err:
                raise _fleet_problem(err) from None
            note_audit_detail(request, {"gateway_id": gateway_id, "version": version.version, "reason": body.reason})
            return version

    version = await run_in_threadpool(store)
    published = await _publish(request, version)

    def answer() -> dict[str, Any]:
        with request.app.state.pool.connection() as conn:
            return _config_answer(conn, gateway_id, remote_config.latest(conn, gateway_id), published)
    return await run_in_threadpool(answer)


# ---------------------------------------------------------------------------------------------- candidates

@router.get("/v1/gateways/{gateway_id}/candidates", response_model=CandidateList,
            summary="Health devices the gateway heard that nobody confirmed or ignored yet (from its newest status)")
def candidates(request: Request, principal: CurrentPrincipal, conn: DbConn, gateway_id: GatewayId) -> dict[str, Any]:
    authorise_gateway(conn, request, principal, gateway_id, change=False)
    status = latest_status(conn, gateway_id) or {}
    latest = remote_config.latest(conn, gateway_id)
    devices = (latest.document.get("devices") if latest else None) or {}
    confirmed = {str(c.get("uid", "")).casefold() for c in devices.get("confirmed", []) if isinstance(c, dict)}
    ignored = {str(u).casefold() for u in devices.get("ignored", [])}
    items = []
    for candidate in status.get("candidates") or []:
        if not isinstance(candidate, dict):
            continue
        uid = str(candidate.get("uid", "")).casefold()
        decision = "confirm" if uid in confirmed else "ignore" if uid in ignored else None
        items.append({**candidate, "pending_decision": decision})
    return {"gateway_id": gateway_id, "as_of": status.get("at"), "candidates": items}


Decision = Literal["confirm", "ignore", "unpair"]


def _decide(request: Request, principal: Principal, gateway_id: str, uid: str, decision: Decision,
            user_index: int | None) -> tuple[remote_config.ConfigVersion, dict[str, Any]]:
    with request.app.state.pool.connection() as conn:
        claim = authorise_gateway(conn, request, principal, gateway_id, change=True)
        effect: dict[str, Any] = {}
        try:
            with conn.transaction():
                prov.lock_gateway(conn, gateway_id)
                current = remote_config.latest(conn, gateway_id)
                document = remote_config.decide_device(current.document if current else {}, uid, decision, user_index)
                version = remote_config.store_version(conn, gateway_id, document, principal.subject,
                                                      f"{decision} {uid}")
                if claim is not None and decision == "confirm":
                    effect = _assign(conn, request, principal, claim, uid, user_index)
                elif claim is not None and decision == "unpair":
                    effect = _unassign(conn, request, principal, claim, uid)
        except FleetError as err:
            raise _fleet_problem(err) from None
        except (binding.BindingError, assignments.AssignmentError) as err:
            raise ApiProblem(422, str(err), slug="invalid-device") from None
        note_audit_detail(request, {"gateway_id": gateway_id, "device_uid": uid, "decision": decision,
                                    "user_index": user_index, "version": version.version, **effect})
        return version, effect


def _assign(conn: psycopg.Connection, request: Request, principal: Principal, claim: prov.Claim, uid: str,
            user_index: int | None) -> dict[str, Any]:
    """Bind the confirmed device to the gateway and assign it to the gateway's patient. A device nobody ever had
    is the patient's from the start (its memory's earlier readings are theirs); one that had another owner, from now."""
    route = "POST /v1/gateways/{gateway_id}/devices/{uid}/confirm"
    bound = binding.rebind_device(conn, uid, claim.gateway_id, principal.subject,
                                  f"confirmed on gateway {claim.gateway_id}", role=principal.role, action=route,
                                  request_id=f"{request.state.request_id}:binding")
    before = conn.execute("SELECT 1 FROM device_assignments WHERE device_uid = %s LIMIT 1", (uid,)).fetchone()
    result = assignments.assign_device(
        conn, uid, claim.patient_id, user_index=user_index, valid_from=datetime.now(UTC) if before else EPOCH,
        created_by=principal.subject,
        authorise=lambda change: authorise_device_change(conn, request, principal, change))
    return {"patient_id": claim.patient_id, "bound_from": bound.previous_gateway_id,
            "assignment_id": result.assignment_id, "readings_claimed": result.readings_backfilled}


def _unassign(conn: psycopg.Connection, request: Request, principal: Principal, claim: prov.Claim,
              uid: str) -> dict[str, Any]:
    """End the device's assignments to the gateway's patient now (its readings stay in the record)."""
    slots = [r[0] for r in conn.execute(
        "SELECT DISTINCT user_index FROM device_assignments WHERE device_uid = %s AND patient_id = %s"
        " AND (valid_to IS NULL OR valid_to > now())", (uid, claim.patient_id))]
    closed = 0
    for slot in slots:
        closed += assignments.unassign_device(
            conn, uid, user_index=slot,
            authorise=lambda change: authorise_device_change(conn, request, principal, change))
    return {"patient_id": claim.patient_id, "closed_assignments": closed}


async def _decision_route(request: Request, principal: Principal, gateway_id: str, uid: str,
                          decision: Decision, user_index: int | None) -> dict[str, Any]:
    version, effect = await run_in_threadpool(_decide, request, principal, gateway_id, uid, decision, user_index)
    published = await _publish(request, version)
    return {"gateway_id": gateway_id, "uid": uid, "decision": decision, "user_index": user_index,
            "version": version.version, "published": published, **effect}


@router.post("/v1/gateways/{gateway_id}/devices/{uid:path}/confirm", response_model=DeviceDecision,
             responses=problem_responses(413),
             summary="Confirm a proposed device: read from now on, bound to this gateway and assigned to its patient")
async def confirm_device(request: Request, principal: CurrentPrincipal, gateway_id: GatewayId, uid: DeviceUid,
                         body: ConfirmBody | None = None) -> dict[str, Any]:
    return await _decision_route(request, principal, gateway_id, uid, "confirm", body.user_index if body else None)


@router.post("/v1/gateways/{gateway_id}/devices/{uid:path}/ignore", response_model=DeviceDecision,
             summary="Ignore a proposed device (a neighbour's): never read, not proposed again")
async def ignore_device(request: Request, principal: CurrentPrincipal, gateway_id: GatewayId,
                        uid: DeviceUid) -> dict[str, Any]:
    return await _decision_route(request, principal, gateway_id, uid, "ignore", None)


@router.post("/v1/gateways/{gateway_id}/devices/{uid:path}/unpair", response_model=DeviceDecision,
             summary="Unpair a device: the gateway forgets it and its assignment to the patient ends (history kept)")
async def unpair_device(request: Request, principal: CurrentPrincipal, gateway_id: GatewayId,
                        uid: DeviceUid) -> dict[str, Any]:
    return await _decision_route(request, principal, gateway_id, uid, "unpair", None)
