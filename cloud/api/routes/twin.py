"""The patient's digital twin: current state and its append-only event history (``cloud.twin.service``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from cloud.api.deps import DbConn, TwinAccess
from cloud.api.models import Twin, TwinEvents
from cloud.api.problems import problem_responses
from cloud.twin import service

router = APIRouter(prefix="/v1/patients/{patient_id}/twin", tags=["twin"],
                   responses=problem_responses(401, 403, 404, 422, 503, "default"))


@router.get("", summary="Current state, version, adherence and thresholds in force", response_model=Twin)
def twin_state(access: TwinAccess, conn: DbConn) -> dict[str, Any]:
    return service.get_twin(conn, access.patient_id)


@router.get("/events", summary="Event history after since_version, oldest first", response_model=TwinEvents)
def twin_events(access: TwinAccess, conn: DbConn, since_version: Annotated[int, Query(ge=0, le=2**62)] = 0,
                limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> dict[str, Any]:
    events = service.twin_events(conn, access.patient_id, since_version, limit)
    return {"patient_id": access.patient_id, "events": events,
            "next_since_version": events[-1]["version"] if len(events) == limit else None}
