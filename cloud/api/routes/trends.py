"""Time buckets (hour, day, week, month, in the patient's time zone) with count, mean, min, max, SD and
percentiles, computed by PostgreSQL (``percentile_cont``) over any range. Daily buckets come from the
stored per-day statistics (migration 0420, refreshed on read) where they are kept."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Query

from cloud.api import queries
from cloud.api.deps import DbConn, ReadingsAccess
from cloud.api.models import Trend
from cloud.api.problems import ApiProblem, problem_responses
from gateway.metrics import METRICS

router = APIRouter(prefix="/v1/patients/{patient_id}/trends", tags=["trends"],
                   responses=problem_responses(401, 403, 422, 503, "default"))
MAX_BUCKETS = 20_000


class Bucket(StrEnum):
    hour = "hour"
    day = "day"
    week = "week"
    month = "month"


_BUCKET_SPAN = {Bucket.hour: timedelta(hours=1), Bucket.day: timedelta(days=1), Bucket.week: timedelta(days=7),
                Bucket.month: timedelta(days=28)}


def _zone_name(name: str | None) -> str:
    try:
        return ZoneInfo(name).key if name else "UTC"
    except (ValueError, ZoneInfoNotFoundError):
        return "UTC"  # a patient's zone we cannot read: UTC days rather than no trend


def _in_zone(instant: datetime, zone: ZoneInfo) -> datetime:
    try:
        return instant.astimezone(zone)
    except OverflowError:  # the first or last day of the calendar
        return instant


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time.min, zone)


def _daily(conn: DbConn, patient_id: str, metric: str, since: datetime, until: datetime,
           tz: str) -> list[dict[str, Any]]:
    """Whole local days from the stored daily statistics (refreshed first); the partial days at either
    end of the range from the raw values."""
    zone = ZoneInfo(tz)
    local_since, local_until = since.astimezone(zone), until.astimezone(zone)
    first_full = local_since.date()
    if local_since != _local_midnight(first_full, zone):
        first_full += timedelta(days=1)
    end_full = local_until.date()  # whole days end at this local midnight
    if first_full >= end_full:
        return queries.trend(conn, patient_id, metric, "day", since, until, tz)
    queries.refresh_day_stats(conn, patient_id, metric, tz)
    rows = queries.day_stats(conn, patient_id, metric, tz, first_full, end_full - timedelta(days=1))
    head_end, tail_start = _local_midnight(first_full, zone), _local_midnight(end_full, zone)
    head = queries.trend(conn, patient_id, metric, "day", since, head_end, tz) if since < head_end else []
    tail = queries.trend(conn, patient_id, metric, "day", tail_start, until, tz) if tail_start < until else []
    return [*head, *rows, *tail]


@router.get("/{metric}", summary="Bucketed statistics of one metric", response_model=Trend,
            responses=problem_responses(404, when={404: "No such patient (or not visible), or no numeric metric"}))
def metric_trend(
    access: ReadingsAccess, conn: DbConn, metric: str,
    bucket: Annotated[Bucket, Query()] = Bucket.day,
    since: Annotated[datetime | None, Query(description="default: 30 days before until")] = None,
    until: Annotated[datetime | None, Query(description="default: now")] = None,
) -> dict[str, Any]:
    if metric not in METRICS or METRICS[metric].is_list:
        raise ApiProblem(404, f"no numeric metric {metric!r}", slug="not-found")
    until = until or datetime.now(UTC)
    since = since or until - timedelta(days=30)
    if since.tzinfo is None or until.tzinfo is None:
        raise ApiProblem(422, "since and until need a time zone", slug="validation")
    if since >= until:
        raise ApiProblem(422, "since must be before until", slug="validation")
    if (until - since) / _BUCKET_SPAN[bucket] > MAX_BUCKETS:
        raise ApiProblem(422, f"at most {MAX_BUCKETS} buckets per request; use a coarser bucket", slug="validation")
    tz = _zone_name((queries.patient_row(conn, access.patient_id) or {}).get("timezone"))
    rows = None
    if bucket is Bucket.day and queries.day_stats_maintained(conn):
        try:
            rows = _daily(conn, access.patient_id, metric, since, until, tz)
        except OverflowError:
            rows = None  # a range at the edge of the calendar: let PostgreSQL cut the days
    if rows is None:
        rows = queries.trend(conn, access.patient_id, metric, bucket.value, since, until, tz)
    zone = ZoneInfo(tz)  # bucket starts in the patient's own time, e.g. 2032-03-09T00:00:00-05:00
    return {
        "patient_id": access.patient_id, "metric": metric, "unit": METRICS[metric].unit, "bucket": bucket.value,
        "time_zone": tz, "since": since, "until": until,
        "percentiles": [int(p * 100) for p in queries.PERCENTILES],
        "buckets": [
            {"start": _in_zone(r["bucket_start"], zone), "count": r["count"], "mean": r["mean"], "min": r["min"],
             "max": r["max"], "sd": r["sd"],
             "percentiles": {f"p{int(p * 100)}": v for p, v in zip(queries.PERCENTILES, r["percentiles"], strict=True)}}
            for r in rows
        ],
    }
