"""Devices: the list (administrators), a patient's devices, the unassigned queue (readings stored
with no patient yet), assigning a device and user index to a patient, and unassigning.

Who may assign or unassign is :func:`cloud.api.deps.authorise_device_change`: the new patient's and
every displaced patient's consent for the caller's team, the role, and administrators for moves
between care teams; decided under the device's lock, audited with every patient the change touches."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from cloud.api import queries
from cloud.api.deps import (
    CLINICAL_ROLES,
    AdminPrincipal,
    CurrentPrincipal,
    DbConn,
    ReadingsAccess,
    authorise_device_change,
)
from cloud.api.models import (
    AssignmentEnded,
    AssignmentMade,
    DeviceList,
    GatewayBinding,
    PatientDevices,
    UnassignedQueue,
)
from cloud.api.problems import ApiProblem, forbidden, not_found, problem_responses
from cloud.devices import assignment as assignments
from cloud.devices import binding

router = APIRouter(tags=["devices"], responses=problem_responses(401, 403, 422, 503, "default"))
DeviceUid = Annotated[str, Path(min_length=1, max_length=300)]
UserIndex = Annotated[int | None, Query(ge=0, le=255, description="user of a multi-user device; none: all")]


class Binding(BaseModel):
    gateway_id: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=1, max_length=500, description="why the device moved (kept in the audit log)")


class Assignment(BaseModel):
    patient_id: str = Field(min_length=1, max_length=200)
    user_index: int | None = Field(None, ge=0, le=255)
    valid_from: datetime | None = Field(None, description="readings measured since then belong to the patient")


@router.get("/v1/devices", summary="All devices with their current assignments (administrators)",
            response_model=DeviceList)
def list_devices(principal: AdminPrincipal, conn: DbConn, limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
                 offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> dict[str, Any]:
    return {"devices": queries.list_devices(conn, limit=limit, offset=offset)}


@router.get("/v1/devices/unassigned", summary="Devices and user indexes whose readings wait for a patient",
            response_model=UnassignedQueue)
def unassigned(principal: CurrentPrincipal, conn: DbConn,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 500) -> dict[str, Any]:
    if principal.role not in ("admin", *CLINICAL_ROLES):
        raise forbidden("the unassigned queue is for administrators and care teams")
    return {"unassigned": queries.unassigned_queue(conn, limit=limit)}


@router.get("/v1/patients/{patient_id}/devices", summary="Devices assigned to this patient",
            response_model=PatientDevices, responses=problem_responses(404))
def patient_devices(access: ReadingsAccess, conn: DbConn) -> dict[str, Any]:
    return {"patient_id": access.patient_id, "devices": queries.patient_devices(conn, access.patient_id)}


@router.post("/v1/devices/{device_uid}/assignments", status_code=201,
             summary="Assign the device (and user index) to a patient from valid_from (default now); "
                     "readings queued since then follow",
             response_model=AssignmentMade,
             responses=problem_responses(404, 413, 422, when={422: "The request or the assignment is not valid"}))
def assign(request: Request, principal: CurrentPrincipal, conn: DbConn, device_uid: DeviceUid,
           body: Assignment) -> dict[str, Any]:
    if body.valid_from is not None and body.valid_from.tzinfo is None:
        raise ApiProblem(422, "valid_from needs a time zone", slug="validation")
    valid_from = body.valid_from or datetime.now(UTC)
    try:
        # cloud.db.assign owns the rule in one transaction: under the device's lock it asks the policy
        # (deps.authorise_device_change) about the patients the change touches, then closes the open
        # assignment, backfills queued readings, tells the twin, runs the twin and alert hooks.
        result = assignments.assign_device(
            conn, device_uid, body.patient_id, user_index=body.user_index, valid_from=valid_from,
            created_by=principal.subject,
            authorise=lambda change: authorise_device_change(conn, request, principal, change))
    except assignments.AssignmentError as exc:
        raise ApiProblem(422, str(exc), slug="invalid-assignment") from exc
    return {"assignment_id": result.assignment_id, "device_uid": device_uid, "user_index": body.user_index,
            "patient_id": body.patient_id, "valid_from": valid_from, "readings_claimed": result.readings_backfilled,
            "closed_assignments": result.closed}


@router.delete("/v1/devices/{device_uid}/assignments", summary="End the device's (user index's) assignment now",
               response_model=AssignmentEnded, responses=problem_responses(404))
def unassign(request: Request, principal: CurrentPrincipal, conn: DbConn, device_uid: DeviceUid,
             user_index: UserIndex = None) -> dict[str, Any]:
    try:
        closed = assignments.unassign_device(
            conn, device_uid, user_index=user_index,
            authorise=lambda change: authorise_device_change(conn, request, principal, change))
    except assignments.AssignmentError as exc:
        raise not_found("assignment") from exc
    return {"device_uid": device_uid, "user_index": user_index, "closed_assignments": closed}


@router.put("/v1/devices/{device_uid}/gateway",
            summary="Re-enrol the device on another gateway (administrators; audited). Readings of the device "
                    "from any other gateway are refused from then on",
            response_model=GatewayBinding,
            responses=problem_responses(413, 422, when={422: "The request or the binding is not valid"}))
def rebind(principal: AdminPrincipal, conn: DbConn, device_uid: DeviceUid,
           body: Binding) -> dict[str, Any]:
    try:
        # The binding writes its own audit row (device, both gateways, reason) beside the request's.
        result = binding.rebind_device(conn, device_uid, body.gateway_id, principal.subject, body.reason)
    except binding.BindingError as exc:
        raise ApiProblem(422, str(exc), slug="invalid-binding") from exc
    return {"device_uid": result.device_uid, "gateway_id": result.gateway_id,
            "previous_gateway_id": result.previous_gateway_id, "changed": result.changed,
            "gateway_known": result.gateway_known}
