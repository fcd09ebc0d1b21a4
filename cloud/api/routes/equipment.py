"""A patient's equipment: each assigned device (battery, last reading, clock offset, errors and records the
gateway quarantined) and each gateway they speak through (online or not, last status, outbox backlog,
storage), from what the cloud already stores: the ``devices`` and ``readings`` rows ingest writes and each
gateway's newest retained status (``gateways.status``, a :class:`gateway.contract.GatewayStatus`).

Online is judged on the cloud's clock, not the gateway's: a gateway is ``online`` while its last message
(status or readings) reached the cloud within ``RPM_GATEWAY_ONLINE_WITHIN_S`` (300 s by default; the
gateway sends a status every 60 s) and its newest status does not say it went offline. Seen by the
patient's ``readings`` consent scope, as ``/devices``, and audited like every patient route. A gateway's
status names every device it hears; only this patient's devices are shown."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request

from cloud.api.deps import DbConn, ReadingsAccess
from cloud.api.models import PatientEquipment
from cloud.api.problems import problem_responses

router = APIRouter(tags=["devices"], responses=problem_responses(401, 403, 404, 422, 503, "default"))
BATTERY_LOW_PERCENT = 20
"""At or below this a device's battery is a problem to act on (replace or charge before it stops measuring)."""
CLOCK_OFF_S = 300.0
"""A device clock this far from the gateway's (s) is a problem: its readings' times are being corrected."""

# Devices assigned to the patient now, each with its newest reading for this patient, and its entry in the
# newest status of the gateway it is bound to (else the one it was last seen through).
_DEVICES = """
SELECT d.uid, d.transport, d.profile, d.model, d.serial, d.manufacturer, d.first_seen, d.last_seen,
       d.battery, d.quarantined_records, coalesce(d.bound_gateway_id, d.gateway_id) AS gateway_id,
       a.user_index, nullif(a.valid_from, '-infinity') AS assigned_from,
       r.id AS last_reading_id, r.kind AS last_reading_kind, r.measured_at AS last_reading_at,
       r.received_at AS last_received_at, r.clock_offset_s AS reading_clock_offset_s,
       r.clock_judgement AS reading_clock_judgement,
       (g.status ->> 'at')::timestamptz AS status_at, s.entry AS status_entry
  FROM device_assignments a
  JOIN devices d ON d.uid = a.device_uid
  LEFT JOIN LATERAL (SELECT id, kind, measured_at, received_at, clock_offset_s, clock_judgement FROM readings
                      WHERE patient_id = a.patient_id AND device_uid = d.uid
                      ORDER BY measured_at DESC LIMIT 1) r ON true
  LEFT JOIN gateways g ON g.id = coalesce(d.bound_gateway_id, d.gateway_id)
  LEFT JOIN LATERAL (SELECT e AS entry FROM jsonb_array_elements(
                         CASE WHEN jsonb_typeof(g.status -> 'devices') = 'array' THEN g.status -> 'devices'
                              ELSE '[]'::jsonb END) e
                      WHERE e ->> 'uid' = d.uid LIMIT 1) s ON true
 WHERE a.patient_id = %(patient)s AND a.valid_from <= %(now)s AND (a.valid_to IS NULL OR a.valid_to > %(now)s)
 ORDER BY d.uid, a.user_index NULLS FIRST
"""

_GATEWAYS = "SELECT id, first_seen, last_seen, status FROM gateways WHERE id = ANY(%s) ORDER BY id"


def gateway_state(status: Mapping[str, Any] | None, last_seen: datetime, now: datetime,
                  within: timedelta) -> str:
    """``online``; ``offline`` (its newest status says so: a goodbye or its last will); ``not_reporting``
    (nothing reached the cloud within ``within``); ``unknown`` (it never sent a status: readings only)."""
    if status is not None and status.get("online") is False:
        return "offline"
    if now - last_seen > within:
        return "not_reporting"
    return "online" if status is not None else "unknown"


def _device(row: Mapping[str, Any]) -> dict[str, Any]:
    entry: Mapping[str, Any] = row["status_entry"] or {}
    battery, battery_source = entry.get("battery"), "gateway_status"
    if battery is None:
        battery, battery_source = row["battery"], "device_record" if row["battery"] is not None else None
    offset, offset_source = entry.get("clock_offset_s"), "gateway_status"
    if offset is None:
        offset = row["reading_clock_offset_s"]
        offset_source = "last_reading" if offset is not None else None
    quarantined = max(int(entry.get("quarantined") or 0), int(row["quarantined_records"] or 0))
    problems = []
    if battery is not None and battery <= BATTERY_LOW_PERCENT:
        problems.append("battery_low")
    if entry.get("error"):
        problems.append("device_error")
    if quarantined:
        problems.append("quarantined_records")
    if offset is not None and abs(offset) >= CLOCK_OFF_S:
        problems.append("clock_off")
    last_reading = None
    if row["last_reading_id"] is not None:
        last_reading = {"reading_id": row["last_reading_id"], "kind": row["last_reading_kind"],
                        "measured_at": row["last_reading_at"], "received_at": row["last_received_at"],
                        "clock_judgement": row["reading_clock_judgement"]}
    return {
        "uid": row["uid"], "transport": row["transport"], "profile": row["profile"], "model": row["model"],
        "serial": row["serial"], "manufacturer": row["manufacturer"], "user_index": row["user_index"],
        "assigned_from": row["assigned_from"], "gateway_id": row["gateway_id"],
        "first_seen": row["first_seen"], "last_seen": row["last_seen"],
        "gateway_last_heard": entry.get("last_seen"),
        "battery_percent": battery, "battery_source": battery_source,
        "battery_reported_at": row["status_at"] if battery_source == "gateway_status" else None,
        "clock_offset_s": offset, "clock_offset_source": offset_source,
        "error": entry.get("error"), "quarantined_records": quarantined,
        "last_reading": last_reading, "problems": problems,
    }


def _gateway(row: Mapping[str, Any], now: datetime, within: timedelta) -> dict[str, Any]:
    status: Mapping[str, Any] | None = row["status"] if isinstance(row["status"], dict) else None
    state = gateway_state(status, row["last_seen"], now, within)
    s: Mapping[str, Any] = status or {}
    storage_full = bool(s.get("outbox_full")) or s.get("storage_state") in ("full", "unwritable")
    problems = [p for p, present in (("not_online", state != "online" and state != "unknown"),
                                     ("storage_full", storage_full), ("uplink_error", bool(s.get("uplink_error"))),
                                     ("component_errors", bool(s.get("component_errors"))),
                                     ("readings_lost", bool(s.get("readings_lost")))) if present]
    return {
        "gateway_id": row["id"], "state": state, "online": state == "online",
        "online_within_s": within.total_seconds(), "first_seen": row["first_seen"], "last_contact_at": row["last_seen"],
        "last_status_at": s.get("at"), "reported_online": s.get("online"), "version": s.get("version"),
        "outbox_depth": s.get("outbox_depth"), "outbox_oldest_age_s": s.get("outbox_oldest_age_s"),
        "storage_full": storage_full if status is not None else None, "storage_state": s.get("storage_state"),
        "storage_message": s.get("storage_message"), "storage_free_bytes": s.get("storage_free_bytes"),
        "readings_lost": s.get("readings_lost"), "readings_waiting_on_devices": s.get("readings_waiting_on_devices"),
        "quarantined": s.get("quarantined"), "uplink_error": s.get("uplink_error"),
        "component_errors": dict(s.get("component_errors") or {}), "problems": problems,
    }


@router.get("/v1/patients/{patient_id}/equipment", response_model=PatientEquipment,
            summary="The patient's devices (battery, last reading, clock offset, errors) and gateways "
                    "(online state, last status, outbox backlog)")
def patient_equipment(request: Request, access: ReadingsAccess, conn: DbConn) -> dict[str, Any]:
    now = datetime.now(UTC)
    within = timedelta(seconds=request.app.state.settings.gateway_online_within_s)
    with conn.cursor() as cur:
        cur.execute(_DEVICES, {"patient": access.patient_id, "now": now})
        columns = [c.name for c in cur.description or ()]
        devices = [_device(dict(zip(columns, r, strict=True))) for r in cur.fetchall()]
        gateway_ids = sorted({d["gateway_id"] for d in devices if d["gateway_id"]})
        cur.execute(_GATEWAYS, (gateway_ids,))
        columns = [c.name for c in cur.description or ()]
        gateways = [_gateway(dict(zip(columns, r, strict=True)), now, within) for r in cur.fetchall()]
    return {"patient_id": access.patient_id, "as_of": now, "online_within_s": within.total_seconds(),
            "battery_low_percent": BATTERY_LOW_PERCENT, "clock_off_s": CLOCK_OFF_S,
            "devices": devices, "gateways": gateways}
