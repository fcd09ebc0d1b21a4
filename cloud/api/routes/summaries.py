"""Clinical summaries: glucose (mean, GMI, CV, time in ranges), blood pressure (7/30-day averages,
morning/evening, AHA category), weight (1/7/30-day change, slope), pulse oximetry (time below 90 and
88 %, nightly minimum), body temperature (daily maximum, fever days), adherence (16-day rule)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from cloud.api import queries
from cloud.api import summaries as maths
from cloud.api.deps import DbConn, ReadingsAccess
from cloud.api.models import (
    AdherenceSummary,
    BloodPressureSummary,
    GlucoseSummary,
    OximetrySummary,
    TemperatureSummary,
    WeightSummary,
)
from cloud.api.problems import problem_responses

router = APIRouter(prefix="/v1/patients/{patient_id}/summaries", tags=["summaries"],
                   responses=problem_responses(401, 403, 404, 422, 503, "default"))
Until = Annotated[datetime | None, Query(description="end of the period (default now)")]


def _end(until: datetime | None) -> datetime:
    if until is None:
        return datetime.now(UTC)
    return until if until.tzinfo else until.replace(tzinfo=UTC)


def _tz(conn: DbConn, patient_id: str) -> str:
    return (queries.patient_row(conn, patient_id) or {}).get("timezone") or "UTC"


@router.get("/glucose", summary="Mean, GMI, CV and time in ranges over the last `days`",
            response_model=GlucoseSummary)
def glucose(access: ReadingsAccess, conn: DbConn, days: Annotated[int, Query(ge=1, le=365)] = 14,
            until: Until = None) -> dict[str, Any]:
    end = _end(until)
    stats = queries.glucose_stats(conn, access.patient_id, end - timedelta(days=days), end,
                                  _tz(conn, access.patient_id))
    return {"patient_id": access.patient_id, "until": end, "unit": "mg/dL", **maths.glucose_summary(stats, days)}


@router.get("/blood-pressure", summary="7- and 30-day averages, morning/evening, ACC/AHA category",
            response_model=BloodPressureSummary)
def blood_pressure(access: ReadingsAccess, conn: DbConn, until: Until = None) -> dict[str, Any]:
    end = _end(until)
    rows = queries.bp_pairs(conn, access.patient_id, end - timedelta(days=30), end, _tz(conn, access.patient_id))
    return {"patient_id": access.patient_id, "until": end, "unit": "mm[Hg]", **maths.bp_summary(rows, end)}


@router.get("/weight", summary="Change over 1, 7 and 30 days and the 30-day slope", response_model=WeightSummary)
def weight(access: ReadingsAccess, conn: DbConn, until: Until = None) -> dict[str, Any]:
    end = _end(until)
    # 31 days back plus the tolerance, so the 30-day reference reading is in the series.
    series = queries.metric_series(conn, access.patient_id, "body_weight", end - timedelta(days=31), end)
    return {"patient_id": access.patient_id, "until": end, "unit": "kg", **maths.weight_summary(series, end)}


@router.get("/oximetry", summary="SpO2 over the last `days`: time below 90 and 88 %, each night's minimum",
            response_model=OximetrySummary)
def oximetry(access: ReadingsAccess, conn: DbConn, days: Annotated[int, Query(ge=1, le=90)] = 7,
             until: Until = None) -> dict[str, Any]:
    end = _end(until)
    series = queries.metric_series(conn, access.patient_id, "spo2", end - timedelta(days=days), end)
    return {"patient_id": access.patient_id, "until": end, "unit": "%",
            **maths.oximetry_summary(series, days, _tz(conn, access.patient_id))}


@router.get("/temperature", summary="Body temperature over the last `days`: each day's maximum, fever days",
            response_model=TemperatureSummary)
def temperature(access: ReadingsAccess, conn: DbConn, days: Annotated[int, Query(ge=1, le=90)] = 7,
                until: Until = None) -> dict[str, Any]:
    end = _end(until)
    series = queries.metric_series(conn, access.patient_id, "body_temperature", end - timedelta(days=days), end)
    return {"patient_id": access.patient_id, "until": end, "unit": "Cel",
            **maths.temperature_summary(series, days, _tz(conn, access.patient_id))}


@router.get("/adherence", summary="Days with readings per 30-day period and the 16-day rule",
            response_model=AdherenceSummary)
def adherence(access: ReadingsAccess, conn: DbConn, periods: Annotated[int, Query(ge=1, le=12)] = 3,
              until: Until = None) -> dict[str, Any]:
    end = _end(until)
    as_of = end.astimezone(UTC).date()
    first = datetime.combine(as_of - timedelta(days=30 * periods - 1), datetime.min.time(), UTC)
    last = datetime.combine(as_of + timedelta(days=1), datetime.min.time(), UTC)
    days = queries.reading_days(conn, access.patient_id, first, last)
    return {"patient_id": access.patient_id, "as_of": as_of, **maths.adherence_summary(days, as_of, periods)}
