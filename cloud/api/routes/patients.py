"""The clinician's panel (sorted for triage) and one patient's detail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from cloud.api import queries
from cloud.api.deps import DbConn, PanelPrincipal, ReadingsAccess
from cloud.api.models import Panel, PatientDetail
from cloud.api.problems import problem_responses
from cloud.twin.state import adherence

router = APIRouter(prefix="/v1/patients", tags=["patients"], responses=problem_responses(401, 403, 422, 503, "default"))


# The panel is rendered by PostgreSQL and answered as it comes (Panel documents it; nothing validates it twice).
@router.get("", summary="The caller's panel: latest vitals, open alerts by severity, adherence; triage order",
            response_model=Panel)
def panel(request: Request, principal: PanelPrincipal, conn: DbConn,
          limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
          offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> Response:
    first_day = (datetime.now(UTC).date() - timedelta(days=29)).isoformat()
    audit = {"subject": principal.subject, "role": principal.role, "action": "GET /v1/patients",
             "request_id": request.state.request_id}
    _, objects = queries.panel_json(conn, care_teams=principal.care_teams, own_patient=principal.patient_id,
                                    first_day=first_day, limit=limit, offset=offset, audit=audit)
    # Audited by the query itself (in the same statement as the read), so the middleware has nothing to add.
    # PostgreSQL already wrote each patient's JSON: joining texts keeps a 10 000-patient panel fast.
    body = f'{{"patients":[{objects}],"limit":{limit},"offset":{offset}}}'
    return Response(body, media_type="application/json")


@router.get("/{patient_id}", summary="One patient: demographics, latest vitals, open alerts, adherence",
            response_model=PatientDetail, responses=problem_responses(404))
def patient_detail(access: ReadingsAccess, conn: DbConn) -> dict[str, Any]:
    row = queries.patient_row(conn, access.patient_id)
    assert row is not None  # authorise_patient checked it exists
    state = queries.twin_state(conn, access.patient_id) or {}
    detail: dict[str, Any] = {
        **row,
        "latest": state.get("latest", {}),
        "categories": state.get("categories", {}),
        "devices": state.get("devices", {}),
        "adherence": adherence(state, datetime.now(UTC).date()),
        "scopes": sorted(access.scopes),
    }
    if "alerts" in access.scopes:
        detail["open_alerts"] = queries.open_alert_counts(conn, access.patient_id)
    return detail
