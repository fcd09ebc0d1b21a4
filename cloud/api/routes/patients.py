"""The clinician's panel (triage order by default; search, filters, sort, pages with counts) and one patient's
detail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from cloud.api import queries
from cloud.api.deps import DbConn, PanelPrincipal, ReadingsAccess
from cloud.api.models import Panel, PatientDetail
from cloud.api.problems import problem_responses
from cloud.twin.state import adherence

router = APIRouter(prefix="/v1/patients", tags=["patients"], responses=problem_responses(401, 403, 422, 503, "default"))


class PanelFilter(StrEnum):
    critical = "critical"
    unacknowledged = "unacknowledged"
    needs_review = "needs_review"
    missing_data = "missing_data"
    below_16_days = "below_16_days"
    device_problem = "device_problem"


class PanelSort(StrEnum):
    triage = "triage"
    name = "name"
    last_reading = "last_reading"
    days_with_data = "days_with_data"


class SortOrder(StrEnum):
    asc = "asc"
    desc = "desc"


# The panel is rendered by PostgreSQL and answered as it comes (Panel documents it; nothing validates it twice).
@router.get("", summary="The caller's panel: search, filters, sort and pages over every patient they may see;"
                        " triage order by default", response_model=Panel)
def panel(request: Request, principal: PanelPrincipal, conn: DbConn,
          q: Annotated[str | None, Query(max_length=200, description="Name or id contains this (any case)")] = None,
          filters: Annotated[list[PanelFilter] | None, Query(
              alias="filter", description="Repeatable; all must hold. critical: an open critical alert;"
              " unacknowledged: an open alert nobody acknowledged; needs_review: resolved before anyone reviewed it;"
              " missing_data: an open missing-data alert; below_16_days: fewer than 16 days with readings in the"
              " 30 days; device_problem: an open technical alert")] = None,
          sort: PanelSort = PanelSort.triage,
          order: Annotated[SortOrder | None, Query(
              description="Default: desc for triage (most urgent first) and last_reading (newest first),"
                          " asc for name and days_with_data (fewest first)")] = None,
          limit: Annotated[int, Query(ge=1, le=500)] = 50,
          offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> Response:
    first_day = (datetime.now(UTC).date() - timedelta(days=29)).isoformat()
    audit = {"subject": principal.subject, "role": principal.role, "action": "GET /v1/patients",
             "request_id": request.state.request_id}
    total, counts, _, objects = queries.panel_json(
        conn, care_teams=principal.care_teams, own_patient=principal.patient_id, first_day=first_day, limit=limit,
        offset=offset, audit=audit, q=(q or "").strip() or None,
        filters=[f.value for f in filters or ()], sort=sort.value, order=order.value if order else None)
    # Audited by the query itself (in the same statement as the read), so the middleware has nothing to add.
    # PostgreSQL already wrote each patient's JSON: joining texts keeps a big page fast.
    body = f'{{"patients":[{objects}],"total":{total},"counts":{counts},"limit":{limit},"offset":{offset}}}'
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
