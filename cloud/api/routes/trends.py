"""Time buckets (hour, day, week, month, in the patient's time zone) with count, mean, min, max, SD and
percentiles, computed by PostgreSQL (``percentile_cont``) over any range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query

from cloud.api import queries
from cloud.api.deps import DbConn, ReadingsAccess
from cloud.api.problems import ApiProblem
from gateway.metrics import METRICS

router = APIRouter(prefix="/v1/patients/{patient_id}/trends", tags=["trends"])
MAX_BUCKETS = 20_000


class Bucket(StrEnum):
    hour = "hour"
    day = "day"
    week = "week"
    month = "month"


_BUCKET_SPAN = {Bucket.hour: timedelta(hours=1), Bucket.day: timedelta(days=1), Bucket.week: timedelta(days=7),
                Bucket.month: timedelta(days=28)}


@router.get("/{metric}", summary="Bucketed statistics of one metric")
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
    patient = queries.patient_row(conn, access.patient_id) or {}
    tz = patient.get("timezone") or "UTC"
    rows = queries.trend(conn, access.patient_id, metric, bucket.value, since, until, tz)
    return {
        "patient_id": access.patient_id, "metric": metric, "unit": METRICS[metric].unit, "bucket": bucket.value,
        "time_zone": tz, "since": since, "until": until,
        "percentiles": [int(p * 100) for p in queries.PERCENTILES],
        "buckets": [
            {"start": r["bucket_start"], "count": r["count"], "mean": r["mean"], "min": r["min"], "max": r["max"],
             "sd": r["sd"], "percentiles": {f"p{int(p * 100)}": v for p, v in zip(queries.PERCENTILES, r["percentiles"],
                                                                                    strict=True)}}
            for r in rows
        ],
    }
