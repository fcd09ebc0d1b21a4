"""A patient's readings: by kind, metric and time range, newest first, cursor pagination; values in
canonical units with device, flags and device time; CSV (one row per value) and NDJSON export."""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.encoders import jsonable_encoder

from cloud.api import queries
from cloud.api.deps import DbConn, ReadingsAccess
from cloud.api.models import ReadingsPage
from cloud.api.problems import ApiProblem, problem_responses
from gateway.metrics import METRICS, Kind

router = APIRouter(prefix="/v1/patients/{patient_id}/readings", tags=["readings"],
                   responses=problem_responses(401, 403, 422, 503, "default"))
EXPORT_MAX = 100_000
# The route renders each format itself (ReadingsPage documents the JSON page; nothing validates it twice).
_EXPORTS = {200: {"content": {
    "text/csv": {"schema": {"type": "string", "description": "RFC 4180, one row per value: reading_id, measured_at, "
                            "kind, metric, value, unit, original_value, original_unit, device_uid, device_model, "
                            "user_index, device_time, clock_judgement, flags"}},
    "application/x-ndjson": {"schema": {"type": "string",
                                        "description": "one Reading (as in the JSON page) per line"}},
}}}


class ExportFormat(StrEnum):
    json = "json"
    csv = "csv"
    ndjson = "ndjson"


def encode_cursor(measured_at: datetime, reading_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([measured_at.isoformat(), reading_id]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        measured_at, reading_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        instant = datetime.fromisoformat(measured_at)
        if instant.tzinfo is None or not isinstance(reading_id, str):
            raise ValueError("cursor fields")
        return instant, reading_id
    except (ValueError, TypeError) as exc:
        raise ApiProblem(400, "the cursor is not one this API gave out", slug="bad-cursor") from exc


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ApiProblem(422, f"{name} needs a time zone (e.g. 2026-01-31T08:00:00Z)", slug="validation")
    return value


# OWASP CSV injection: a spreadsheet runs a cell that starts with one of these as a formula (ASVS 1.2.10
# adds NUL; a leading line feed is just as invisible). Device strings come from the device and the
# gateway, so a cuff's model number could otherwise reach the clinician's spreadsheet as =HYPERLINK(...).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\0")


def text_cell(value: object) -> str:
    """A text cell made inert for spreadsheets: a single quote before a formula's first character.

    Only for text columns: numeric columns hold numbers from the database (a negative value is a
    number, and must stay one)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _number_cell(value: object) -> object:
    if isinstance(value, list):
        return ";".join(map(str, value))
    return value


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    # RFC 4180 line ends: the writer then quotes any field holding a CR or LF (a device string can).
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["reading_id", "measured_at", "kind", "metric", "value", "unit", "original_value", "original_unit",
                     "device_uid", "device_model", "user_index", "device_time", "clock_judgement", "flags"])
    for row in rows:
        for metric, value in sorted((row["values"] or {}).items()):
            t = text_cell
            writer.writerow([t(row["id"]), row["measured_at"].isoformat(), t(row["kind"]), t(metric),
                             _number_cell(value["value"]), t(value["unit"]), value.get("original_value"),
                             t(value.get("original_unit")), t(row["device"]["uid"]), t(row["device"].get("model")),
                             row["user_index"], row["device_time"].isoformat() if row["device_time"] else "",
                             t(row["clock_judgement"]), t(";".join(row["flags"]))])
    return out.getvalue()


@router.get("", summary="Readings newest first (JSON page, or CSV / NDJSON export)", response_model=ReadingsPage,
            responses={**_EXPORTS, **problem_responses(400, 404)})
def list_readings(
    access: ReadingsAccess, conn: DbConn,
    kind: Annotated[list[Kind] | None, Query()] = None,
    metric: Annotated[str | None, Query(description="only readings holding this metric, e.g. glucose")] = None,
    since: Annotated[datetime | None, Query(description="measured at or after (ISO 8601 with zone)")] = None,
    until: Annotated[datetime | None, Query(description="measured before")] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=EXPORT_MAX)] = 100,
    format: Annotated[ExportFormat, Query()] = ExportFormat.json,
) -> Response:
    if metric is not None and metric not in METRICS:
        raise ApiProblem(422, f"unknown metric {metric!r}; known: {', '.join(METRICS)}", slug="validation")
    if format is ExportFormat.json and limit > 1000:
        raise ApiProblem(422, "a JSON page holds at most 1000 readings; use format=csv or ndjson to export",
                         slug="validation")
    after = decode_cursor(cursor) if cursor else None
    rows = queries.readings_page(conn, access.patient_id, kinds=[k.value for k in kind] if kind else None,
                                 metric=metric, since=_aware(since, "since"), until=_aware(until, "until"),
                                 after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    if format is ExportFormat.csv:
        return Response(_csv(rows), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{access.patient_id}-readings.csv"'})
    if format is ExportFormat.ndjson:
        lines = (json.dumps(jsonable_encoder(row)) for row in rows)
        return Response("".join(line + "\n" for line in lines), media_type="application/x-ndjson")
    next_cursor = encode_cursor(rows[-1]["measured_at"], rows[-1]["id"]) if more and rows else None
    body = {"patient_id": access.patient_id, "readings": rows, "next_cursor": next_cursor}
    return Response(json.dumps(jsonable_encoder(body)), media_type="application/json")
