"""Clinical summaries: glucose (mean, GMI, CV, time in ranges), blood pressure (7/30-day averages,
morning/evening, AHA category), weight (1/7/30-day change, slope), adherence (16-day rule)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from cloud.api import queries
from cloud.api import summaries as maths
from cloud.api.deps import DbConn, ReadingsAccess

router = APIRouter(prefix="/v1/patients/{patient_id}/summaries", tags=["summaries"])
Until = Annotated[datetime | None, Query(description="end of the period (default now)")]


def _end(until: datetime | None) -> datetime:
    if until is None:
        return datetime.now(UTC)
    return until if until.tzinfo else until.replace(tzinfo=UTC)


def _tz(conn: DbConn, patient_id: str) -> str:
    return (queries.patient_row(conn, patient_id) or {}).get("timezone") or "UTC"


@router.get("/glucose", summary="Mean, GMI, CV and time in ranges over the last `days`")
def glucose(access: ReadingsAccess, conn: DbConn, days: Annotated[int, Query(ge=1, le=365)] = 14,
            until: Until = None) -> dict[str, Any]:
    end = _end(until)
    stats = queries.glucose_stats(conn, access.patient_id, end - timedelta(days=days), end,
                                  _tz(conn, access.patient_id))
    return {"patient_id": access.patient_id, "until": end, "unit": "mg/dL", **maths.glucose_summary(stats, days)}


@router.get("/blood-pressure", summary="7- and 30-day averages, morning/evening, ACC/AHA category")
def blood_pressure(access: ReadingsAccess, conn: DbConn, until: Until = None) -> dict[str, Any]:
    end = _end(until)
    rows = queries.bp_pairs(conn, access.patient_id, end - timedelta(days=30), end, _tz(conn, access.patient_id))
    return {"patient_id": access.patient_id, "until": end, "unit": "mm[Hg]", **maths.bp_summary(rows, end)}


@router.get("/weight", summary="Change over 1, 7 and 30 days and the 30-day slope")
def weight(access: ReadingsAccess, conn: DbConn, until: Until = None) -> dict[str, Any]:
    end = _end(until)
    # 31 days back plus the tolerance, so the 30-day reference reading is in the series.
    series = queries.metric_series(conn, access.patient_id, "body_weight", end - timedelta(days=31), end)
    return {"patient_id": access.patient_id, "until": end, "unit": "kg", **maths.weight_summary(series, end)}


@router.get("/adherence", summary="Days with readings per 30-day period and the 16-day rule")
def adherence(access: ReadingsAccess, conn: DbConn, periods: Annotated[int, Query(ge=1, le=12)] = 3,
              until: Until = None) -> dict[str, Any]:
    end = _end(until)
    as_of = end.astimezone(UTC).date()
    first = datetime.combine(as_of - timedelta(days=30 * periods - 1), datetime.min.time(), UTC)
    last = datetime.combine(as_of + timedelta(days=1), datetime.min.time(), UTC)
    days = queries.reading_days(conn, access.patient_id, first, last)
    return {"patient_id": access.patient_id, "as_of": as_of, **maths.adherence_summary(days, as_of, periods)}
