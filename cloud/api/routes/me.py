"""Who I am (any signed-in role) and, for a patient, my readings in plain words: the patient's page's first two
requests.

The overview calls the same summary functions the workspace's summary routes are (``routes/summaries.py``)
and the equipment route (``routes/equipment.py``), so every number the patient reads is the number the care
team reads and the alert rules judge; :mod:`cloud.api.overview` only puts them into words. Only the record's
own patient sees it (``OwnRecord``: anyone else, 404).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request

from cloud.api import overview, patient_queries, queries
from cloud.api.deps import CurrentPrincipal, DbConn, OwnRecord, note_audit
from cloud.api.patient_models import Me, Overview
from cloud.api.problems import problem_responses
from cloud.api.routes import equipment, summaries
from cloud.db.alert_rules import effective_rules

router = APIRouter(tags=["patient"], responses=problem_responses(401, 403, 503, "default"))
HEART_RATE_DAYS = 7


@router.get("/v1/me", summary="Who the bearer token says I am (and, for a patient, my record's name and zone)",
            response_model=Me)
def me(request: Request, principal: CurrentPrincipal, conn: DbConn) -> dict[str, Any]:
    out: dict[str, Any] = {"role": principal.role, "subject": principal.subject,
                           "name": principal.claims.get("name") if isinstance(principal.claims.get("name"), str)
                           else None}
    if principal.role == "patient" and principal.patient_id:
        note_audit(request, principal.patient_id)  # the record's name and zone are the patient's data
        row = queries.patient_row(conn, principal.patient_id) or {}
        out.update(patient_id=principal.patient_id, display_name=row.get("display_name"),
                   timezone=overview.zone_name(row.get("timezone")) if row else None)
    else:
        # Names no patient, so the middleware would not audit it; the contract audits every route.
        queries.write_audit(conn, principal.subject, principal.role, principal.care_teams, "GET /v1/me", [],
                            "allowed", 200, request.state.request_id)
    return out


@router.get("/v1/patients/{patient_id}/overview", response_model=Overview, responses=problem_responses(404, 422),
            summary="My readings in plain words (latest value, what it means, charts to draw), devices and gateways")
def patient_overview(request: Request, access: OwnRecord, conn: DbConn) -> dict[str, Any]:
    now = datetime.now(UTC)
    pid = access.patient_id
    row = queries.patient_row(conn, pid) or {}
    tz = overview.zone_name(row.get("timezone"))
    equipment_view = equipment.patient_equipment(request, access, conn)
    metrics = [m for g in overview.GROUPS for m, _ in g.charts]
    latest = patient_queries.latest_values(conn, pid, metrics)
    device_kinds = {overview.PROFILE_KIND.get(d["profile"] or "") for d in equipment_view["devices"]}
    alerts = patient_queries.open_alerts(conn, pid)
    rules = {r.id: r for r in effective_rules(conn, pid)}
    measures = []
    for group in overview.GROUPS:
        measured = any(m in latest for m, _ in group.charts)
        if not measured and group.reading_kind not in device_kinds:
            continue  # nothing measures it and nothing ever did: not the patient's to read about
        words = _measure(group, conn, access, latest, rules, now, tz) if measured else {
            "latest": None, "status": "unknown",
            "sentence": f"No readings yet from your {overview.DEVICE_WORDS[group.reading_kind].lower()}."}
        status = overview.worse(words["status"], overview.alert_status(alerts, group.reading_kind))
        measures.append({"metric_group": group.key, "title": group.title, "latest": words["latest"],
                         "sentence": words["sentence"], "status": status, "charts": overview.charts(group)})
    devices = [{"uid": d["uid"], "name": overview.device_name(d), "type_text": overview.device_type_text(d["profile"]),
                "battery_pct": d["battery_percent"],
                "last_reading_at": (d["last_reading"] or {}).get("measured_at"), "gateway_id": d["gateway_id"]}
               for d in equipment_view["devices"]]
    gateways = [{"gateway_id": g["gateway_id"], **overview.gateway_words(g)} for g in equipment_view["gateways"]]
    return {"patient_id": pid, "display_name": row.get("display_name"), "timezone": tz, "measures": measures,
            "devices": devices, "gateways": gateways}


def _measure(group: overview.Group, conn: DbConn, access: Any, latest: dict[str, dict[str, Any]],
             rules: dict[str, Any], now: datetime, tz: str) -> dict[str, Any]:
    """The words for one group, from the summary the workspace shows for it (called as its route is)."""
    if group.key == "blood_pressure":
        summary = summaries.blood_pressure(access, conn, until=None)
        return overview.blood_pressure(summary, rules.get("bp_stage2_average"), now, tz)
    if group.key == "glucose":
        return overview.glucose(summaries.glucose(access, conn, days=14, until=None), latest.get("glucose"))
    if group.key == "weight":
        return overview.weight(summaries.weight(access, conn, until=None), rules)
    if group.key == "spo2":
        return overview.oxygen(summaries.oximetry(access, conn, days=7, until=None), rules)
    if group.key == "temperature":
        return overview.temperature(summaries.temperature(access, conn, days=7, until=None))
    series = queries.metric_series(conn, access.patient_id, "heart_rate", now - timedelta(days=HEART_RATE_DAYS), now)
    return overview.heart_rate(series, latest.get("heart_rate"), HEART_RATE_DAYS)
