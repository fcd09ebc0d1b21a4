"""Who accessed a record: the patient's own access trail, and the whole log for administrators."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from cloud.api import queries
from cloud.api.deps import AdminPrincipal, DbConn, OwnRecord
from cloud.api.models import AccessTrail, AuditLog
from cloud.api.problems import problem_responses

router = APIRouter(tags=["audit"], responses=problem_responses(401, 403, 422, 503, "default"))
BeforeId = Annotated[int | None, Query(ge=1, le=2**62)]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get("/v1/patients/{patient_id}/audit", summary="Who accessed my record, newest first",
            response_model=AccessTrail, responses=problem_responses(404))
def my_access_trail(access: OwnRecord, conn: DbConn, before_id: BeforeId = None, limit: Limit = 100) -> dict[str, Any]:
    rows = queries.audit_trail(conn, patient_id=access.patient_id, before_id=before_id, limit=limit)
    return {"patient_id": access.patient_id, "entries": rows,
            "next_before_id": rows[-1]["id"] if len(rows) == limit else None}


@router.get("/v1/audit", summary="The audit log (administrators)", response_model=AuditLog)
def audit_log(principal: AdminPrincipal, conn: DbConn, before_id: BeforeId = None, limit: Limit = 100,
              patient_id: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
    rows = queries.audit_trail(conn, patient_id=patient_id, before_id=before_id, limit=limit, with_detail=True)
    return {"entries": rows, "next_before_id": rows[-1]["id"] if len(rows) == limit else None}
