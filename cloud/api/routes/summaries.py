"""Clinical summaries: glucose (mean, GMI, CV, time in ranges; the AGP modal day), blood pressure (the
ACC/AHA category of the average the bp_stage2_average rule judges, 7/30-day averages, morning/evening),
weight (1/7/30-day change as the weight-gain rules measure it, slope), pulse oximetry (time below 90 and
88 %, nightly minimum), body temperature (daily maximum, fever days), adherence (16-day rule).

Every summary names its window (``window``) and the time zone its day buckets and local hours use
(``timezone``: the patient's, UTC when the patient has none or an unknown one, ``timezone_source`` says
which). Readings whose flags exclude them (control solution, failed measurement) count nowhere."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
from fastapi import APIRouter, Query

from cloud.alerts.evaluate import ReadingFacts
from cloud.api import queries
from cloud.api import summaries as maths
from cloud.api.deps import DbConn, ReadingsAccess
from cloud.api.models import (
    AdherenceSummary,
    AgpSummary,
    BloodPressureSummary,
    GlucoseSummary,
    OximetrySummary,
    TemperatureSummary,
    WeightSummary,
)
from cloud.api.problems import ApiProblem, problem_responses
from cloud.db.alert_rules import effective_rules
from cloud.twin.baselines import load_history

router = APIRouter(prefix="/v1/patients/{patient_id}/summaries", tags=["summaries"],
                   responses=problem_responses(401, 403, 404, 422, 503, "default"))
Until = Annotated[datetime | None, Query(description="end of the period (default now)")]

# The newest judged reading of one metric before ``until`` and all its values: what the alert rules last
# judged (ties in time broken as the history orders them, by reading id).
_LATEST = """
SELECT o.reading_id, o.measured_at, jsonb_object_agg(o.metric, o.value) AS values
  FROM observations o
 WHERE o.reading_id = (SELECT reading_id FROM observations
                        WHERE patient_id = %(patient)s AND metric = %(metric)s AND measured_at < %(until)s
                          AND value IS NOT NULL AND NOT (flags && %(excluded)s::text[])
                        ORDER BY measured_at DESC, reading_id DESC LIMIT 1)
   AND o.patient_id = %(patient)s AND o.value IS NOT NULL
 GROUP BY o.reading_id, o.measured_at
"""

# Days with any judged reading, as dates in the patient's zone.
_LOCAL_DAYS = """
SELECT DISTINCT (measured_at AT TIME ZONE %(tz)s)::date FROM readings
 WHERE patient_id = %(patient)s AND measured_at >= %(since)s AND measured_at < %(until)s
   AND NOT (flags && %(excluded)s::text[])
 ORDER BY 1
"""

# One row: the period's glucose values, their times and their local minute of the day (the arrays in one
# aggregate see the rows in the same order, so they line up; no sort: the maths sorts what it needs), and
# the number of local days with a value. Arrays in binary, parsed in C (as the alert history is read).
_AGP = """
SELECT coalesce(array_agg(extract(epoch FROM measured_at)::float8), '{}'),
       coalesce(array_agg(value), '{}'),
       coalesce(array_agg((extract(hour FROM local) * 60 + extract(minute FROM local))::int), '{}'),
       count(DISTINCT local::date)
  FROM (SELECT measured_at, value, measured_at AT TIME ZONE %(tz)s AS local FROM observations
         WHERE patient_id = %(patient)s AND metric = 'glucose' AND measured_at >= %(since)s
           AND measured_at < %(until)s AND value IS NOT NULL AND NOT (flags && %(excluded)s::text[])) o
"""


# Every window reaches at most a year back (adherence: 12 x 30 days); these bounds keep each date sum, in any
# zone, inside the calendar, so an odd `until` is a 422 rather than an overflow.
UNTIL_RANGE = (datetime(1971, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC))


def _end(until: datetime | None) -> datetime:
    if until is None:
        return datetime.now(UTC)
    end = until if until.tzinfo else until.replace(tzinfo=UTC)
    try:
        inside = UNTIL_RANGE[0] <= end <= UNTIL_RANGE[1]
    except OverflowError:  # an offset that moves it past the calendar's edge
        inside = False
    if not inside:
        raise ApiProblem(422, f"until must lie between {UNTIL_RANGE[0].date()} and {UNTIL_RANGE[1].date()}",
                         slug="validation")
    return end


def _zone(conn: DbConn, patient_id: str) -> dict[str, str]:
    """The patient's time zone, or UTC (and why) when there is none or it is not a known zone."""
    name = (queries.patient_row(conn, patient_id) or {}).get("timezone")
    if name:
        try:
            return {"timezone": ZoneInfo(name).key, "timezone_source": "patient"}
        except (ValueError, ZoneInfoNotFoundError):
            return {"timezone": "UTC", "timezone_source": f"default: the patient's zone {name!r} is not known"}
    return {"timezone": "UTC", "timezone_source": "default: the patient has no time zone"}


def _latest(conn: DbConn, patient_id: str, kind: str, metric: str, until: datetime) -> ReadingFacts | None:
    row = conn.execute(_LATEST, {"patient": patient_id, "metric": metric, "until": until,
                                 "excluded": queries.EXCLUDED}).fetchone()
    if row is None:
        return None
    reading_id, measured_at, values = row
    return ReadingFacts(reading_id, patient_id, kind, measured_at, {m: float(v) for m, v in values.items()})


@router.get("/glucose", summary="Mean, GMI, CV and time in ranges over the last `days`",
            response_model=GlucoseSummary)
def glucose(access: ReadingsAccess, conn: DbConn, days: Annotated[int, Query(ge=1, le=365)] = 14,
            until: Until = None) -> dict[str, Any]:
    end = _end(until)
    zone = _zone(conn, access.patient_id)
    since = end - timedelta(days=days)
    stats = queries.glucose_stats(conn, access.patient_id, since, end, zone["timezone"])
    return {"patient_id": access.patient_id, "until": end, "unit": "mg/dL", **zone,
            "window": maths.window(since, end, f"the {days} days before until (days_with_data in the time zone)"),
            **maths.glucose_summary(stats, days)}


@router.get("/glucose/agp", response_model=AgpSummary,
            summary="Ambulatory glucose profile: 5/25/50/75/95th percentiles per 15 min of the patient's day")
def glucose_agp(access: ReadingsAccess, conn: DbConn, days: Annotated[int, Query(ge=1, le=90)] = 14,
                until: Until = None,
                pool_slots: Annotated[int, Query(ge=0, le=6, description=(
                    "0: each 15-min slot's own readings (raw); k: each slot pools the k slots either side,"
                    " wrapping at midnight, for sparse finger-stick data"))] = 0) -> dict[str, Any]:
    end = _end(until)
    zone = _zone(conn, access.patient_id)
    since = end - timedelta(days=days)
    with conn.cursor(binary=True) as cur:
        row = cur.execute(_AGP, {"patient": access.patient_id, "since": since, "until": end,
                                 "tz": zone["timezone"], "excluded": queries.EXCLUDED}).fetchone()
    assert row is not None  # an aggregate always answers one row
    times, values, minutes, days_with_data = row
    profile = maths.agp(np.asarray(minutes, dtype=int), np.asarray(values, dtype=float),
                        np.asarray(times, dtype=float), days, pool_slots)
    return {
        "patient_id": access.patient_id, "until": end, "unit": "mg/dL", "days": days, **zone,
        "window": maths.window(since, end, f"the {days} days before until; times of day in the time zone"),
        "smoothing": {"method": "pooled_neighbour_slots" if pool_slots else "none", "pool_slots": pool_slots,
                      "window_minutes": maths.AGP_SLOT_MINUTES * (2 * pool_slots + 1)},
        "percentile_method": "linear interpolation (numpy default, as PostgreSQL percentile_cont)",
        "days_with_data": days_with_data,
        # The consensus asks for 14 days with data at least 70 % of the time before reading an AGP.
        "sufficient_data": days >= 14 and (profile["percent_time_with_data"] or 0) >= 70,
        **profile,
    }


@router.get("/blood-pressure", response_model=BloodPressureSummary,
            summary="ACC/AHA category of the average the bp_stage2_average rule judges; 7/30-day averages, "
                    "morning/evening")
def blood_pressure(access: ReadingsAccess, conn: DbConn, until: Until = None) -> dict[str, Any]:
    end = _end(until)
    zone = _zone(conn, access.patient_id)
    rule = next((r for r in effective_rules(conn, access.patient_id) if r.id == maths.BP_AVERAGE_RULE), None)
    latest = _latest(conn, access.patient_id, "blood_pressure", "systolic", end)
    history = {}
    if latest is not None:
        days = max(30.0, float(rule.params.get("window_days", 7)) if rule else 7.0)
        history = load_history(conn, [access.patient_id], maths.BP_METRICS,
                               latest.measured_at - timedelta(days=days), latest.measured_at)
    summary = maths.bp_summary(history, latest, rule, end, zone["timezone"])
    last = latest.measured_at if latest else end
    return {"patient_id": access.patient_id, "until": end, "unit": "mm[Hg]", "unit_label": "mmHg", **zone,
            "window": maths.window(last - timedelta(days=30), last,
                                   "the 30 days up to the latest reading before until (each average: its own days"
                                   " up to that reading, as the average rule's window)"),
            **summary}


@router.get("/weight", summary="Change over 1, 7 and 30 days as the weight-gain rules measure it, 30-day slope",
            response_model=WeightSummary)
def weight(access: ReadingsAccess, conn: DbConn, until: Until = None) -> dict[str, Any]:
    end = _end(until)
    zone = _zone(conn, access.patient_id)
    windows = maths.weight_windows({r.id: r for r in effective_rules(conn, access.patient_id)})
    latest = _latest(conn, access.patient_id, "body_weight", "body_weight", end)
    history = {}
    if latest is not None:
        hours = max([24.0 * 30, *(h for _, _, h in windows)])
        history = load_history(conn, [access.patient_id], ["body_weight"],
                               latest.measured_at - timedelta(hours=hours), latest.measured_at)
    last = latest.measured_at if latest else end
    return {"patient_id": access.patient_id, "until": end, "unit": "kg", **zone,
            "window": maths.window(last - timedelta(days=30), last,
                                   "the 30 days up to the latest weigh-in before until; each change: its hours"
                                   " before that weigh-in, as the weight-gain rules"),
            **maths.weight_summary(history, latest, windows, end)}


@router.get("/oximetry", summary="SpO2 over the last `days`: time below 90 and 88 %, each night's minimum",
            response_model=OximetrySummary)
def oximetry(access: ReadingsAccess, conn: DbConn, days: Annotated[int, Query(ge=1, le=90)] = 7,
             until: Until = None) -> dict[str, Any]:
    end = _end(until)
    zone = _zone(conn, access.patient_id)
    since = end - timedelta(days=days)
    series = queries.metric_series(conn, access.patient_id, "spo2", since, end)
    return {"patient_id": access.patient_id, "until": end, "unit": "%", **zone,
            "window": maths.window(since, end, f"the {days} days before until (nights in the time zone)"),
            **maths.oximetry_summary(series, days, zone["timezone"])}


@router.get("/temperature", summary="Body temperature over the last `days`: each day's maximum, fever days",
            response_model=TemperatureSummary)
def temperature(access: ReadingsAccess, conn: DbConn, days: Annotated[int, Query(ge=1, le=90)] = 7,
                until: Until = None) -> dict[str, Any]:
    end = _end(until)
    zone = _zone(conn, access.patient_id)
    since = end - timedelta(days=days)
    series = queries.metric_series(conn, access.patient_id, "body_temperature", since, end)
    return {"patient_id": access.patient_id, "until": end, "unit": "Cel", "unit_label": "°C", **zone,
            "window": maths.window(since, end, f"the {days} days before until (days in the time zone)"),
            **maths.temperature_summary(series, days, zone["timezone"])}


@router.get("/adherence", summary="Days with readings per 30-day period (days in the patient's zone), 16-day rule",
            response_model=AdherenceSummary)
def adherence(access: ReadingsAccess, conn: DbConn, periods: Annotated[int, Query(ge=1, le=12)] = 3,
              until: Until = None) -> dict[str, Any]:
    end = _end(until)
    zone = _zone(conn, access.patient_id)
    tz = ZoneInfo(zone["timezone"])
    as_of = end.astimezone(tz).date()
    first_day = as_of - timedelta(days=30 * periods - 1)
    first, last = _local_midnight(first_day, tz), _local_midnight(as_of + timedelta(days=1), tz)
    rows = conn.execute(_LOCAL_DAYS, {"patient": access.patient_id, "since": first, "until": last,
                                      "tz": zone["timezone"], "excluded": queries.EXCLUDED}).fetchall()
    days = [r[0].isoformat() for r in rows]
    return {"patient_id": access.patient_id, "as_of": as_of, **zone,
            "window": maths.window(first, last, f"{periods} period(s) of 30 whole days in the time zone ending"
                                                " with the day of until"),
            **maths.adherence_summary(days, as_of, periods)}


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time.min, zone)
