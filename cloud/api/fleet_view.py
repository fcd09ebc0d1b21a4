"""The fleet view: every gateway a caller may see, from what the cloud already keeps — the pinned identity
and claim (migration 0600), the newest retained status ingest stores (``gateways.status``, a
:class:`gateway.contract.GatewayStatus`), the presence the status trigger records, and the config versions.

Online is judged as in the patient's equipment (``cloud/api/routes/equipment.py``): the newest status says
online and something reached the cloud within ``RPM_GATEWAY_ONLINE_WITHIN_S``. Care teams see the gateways
claimed for patients whose active consent gives one of their teams the ``readings`` scope; administrators
see every gateway (claimed or not, polled or only ever connected with a TOML)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from cloud.api.routes.equipment import BATTERY_LOW_PERCENT, CLOCK_OFF_S, gateway_state

_ACTIVE = "x.revoked_at IS NULL AND x.granted_at <= now() AND (x.expires_at IS NULL OR x.expires_at > now())"

# One row per gateway: identities that polled (not released) and gateways that ever sent something.
_FLEET = f"""
WITH ident AS (SELECT * FROM gateway_identities WHERE released_at IS NULL),
fleet AS (
  SELECT coalesce(i.gateway_id, g.id) AS gateway_id, i.first_poll_at, i.last_poll_at,
         i.software_version AS polled_version, i.polled_config_version,
         g.first_seen, g.last_seen, g.status
    FROM ident i FULL JOIN gateways g ON g.id = i.gateway_id
)
SELECT f.gateway_id, f.first_poll_at, f.last_poll_at, f.polled_version, f.polled_config_version,
       f.first_seen, f.last_seen, f.status, c.patient_id, c.care_team_id, c.claimed_at, c.claimed_by,
       p.online AS presence_online, p.since AS presence_since,
       (SELECT max(version) FROM gateway_configs gc WHERE gc.gateway_id = f.gateway_id) AS latest_config_version,
       (SELECT kind FROM gateway_credentials k WHERE k.gateway_id = f.gateway_id AND k.revoked_at IS NULL
         ORDER BY id DESC LIMIT 1) AS credential_kind,
       (SELECT delivered_at FROM gateway_credentials k WHERE k.gateway_id = f.gateway_id AND k.revoked_at IS NULL
         ORDER BY id DESC LIMIT 1) AS credential_delivered_at,
       (f.status ->> 'online')::boolean IS TRUE AND f.last_seen >= %(online_after)s AS is_online,
       coalesce(f.last_seen, f.last_poll_at) AS last_contact
  FROM fleet f
  LEFT JOIN gateway_claims c ON c.gateway_id = f.gateway_id AND c.released_at IS NULL
  LEFT JOIN gateway_presence p ON p.gateway_id = f.gateway_id
 WHERE (%(gateway)s::text IS NULL OR f.gateway_id = %(gateway)s)
   AND (%(admin)s OR EXISTS (SELECT 1 FROM consents x WHERE x.patient_id = c.patient_id
                               AND x.care_team_id = ANY(%(teams)s) AND 'readings' = ANY(x.scopes) AND {_ACTIVE}))
   AND (%(offline_over)s::float8 IS NULL OR (
          NOT ((f.status ->> 'online')::boolean IS TRUE AND f.last_seen >= %(online_after)s)
          AND coalesce(f.last_seen, f.last_poll_at) < %(now)s - make_interval(secs => %(offline_over)s)))
   AND (%(backlog_over)s::float8 IS NULL OR
          (CASE WHEN jsonb_typeof(f.status -> 'outbox_oldest_age_s') = 'number'
                THEN (f.status ->> 'outbox_oldest_age_s')::float8 END) > %(backlog_over)s)
 ORDER BY f.gateway_id
 LIMIT %(limit)s OFFSET %(offset)s
"""


def _device(entry: Mapping[str, Any]) -> dict[str, Any]:
    problems = []
    battery, offset = entry.get("battery"), entry.get("clock_offset_s")
    if isinstance(battery, int) and battery <= BATTERY_LOW_PERCENT:
        problems.append("battery_low")
    if entry.get("error"):
        problems.append("device_error")
    if entry.get("quarantined"):
        problems.append("quarantined_records")
    if isinstance(offset, int | float) and abs(offset) >= CLOCK_OFF_S:
        problems.append("clock_off")
    return {"uid": entry.get("uid"), "profile": entry.get("profile"), "last_seen": entry.get("last_seen"),
            "battery_percent": battery, "clock_offset_s": offset, "error": entry.get("error"),
            "quarantined_records": entry.get("quarantined") or 0, "problems": problems}


def summarise(row: Mapping[str, Any], now: datetime, within: timedelta) -> dict[str, Any]:
    status: Mapping[str, Any] = row["status"] if isinstance(row["status"], dict) else {}
    if row["last_seen"] is not None:
        state = gateway_state(status or None, row["last_seen"], now, within)
    else:
        state = "never_connected"
    online = state == "online"
    if online:
        since = row["presence_since"] if row["presence_online"] else None
    elif state == "not_reporting":
        since = row["last_contact"]
    else:
        since = row["presence_since"] if row["presence_online"] is False else row["last_contact"]
    config: Mapping[str, Any] = status.get("config") if isinstance(status.get("config"), dict) else {}  # type: ignore[assignment]
    devices = [_device(d) for d in status.get("devices") or [] if isinstance(d, dict)]
    candidates = [c for c in status.get("candidates") or [] if isinstance(c, dict)]
    problems = [name for name, present in (
        ("not_online", state in ("offline", "not_reporting")), ("never_connected", state == "never_connected"),
        ("uplink_error", bool(status.get("uplink_error"))), ("component_errors", bool(status.get("component_errors"))),
        ("storage_full", bool(status.get("outbox_full")) or status.get("storage_state") in ("full", "unwritable")),
        ("config_rejected", bool(config.get("rejected"))),
        ("device_problems", any(d["problems"] for d in devices))) if present]
    return {
        "gateway_id": row["gateway_id"], "patient_id": row["patient_id"], "care_team_id": row["care_team_id"],
        "claimed": row["patient_id"] is not None, "claimed_at": row["claimed_at"], "claimed_by": row["claimed_by"],
        "state": state, "online": online, "since": since, "last_contact_at": row["last_contact"],
        "last_status_at": status.get("at"), "first_poll_at": row["first_poll_at"], "last_poll_at": row["last_poll_at"],
        "software_version": status.get("version") or row["polled_version"],
        "config": {"running_version": config.get("version", row["polled_config_version"]),
                   "latest_version": row["latest_config_version"], "rejected": config.get("rejected"),
                   "provisioning": config.get("provisioning")},
        "credentials": {"kind": row["credential_kind"], "delivered_at": row["credential_delivered_at"]},
        "outbox_depth": status.get("outbox_depth"), "outbox_oldest_age_s": status.get("outbox_oldest_age_s"),
        "uplink_error": status.get("uplink_error"), "component_errors": dict(status.get("component_errors") or {}),
        "devices": devices, "candidates_count": len(candidates), "problems": problems,
    }


def fleet(conn: psycopg.Connection, *, admin: bool, care_teams: tuple[str, ...], within: timedelta,
          gateway_id: str | None = None, offline_over_s: float | None = None, backlog_over_s: float | None = None,
          limit: int = 100, offset: int = 0, now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or datetime.now(UTC)
    params = {"now": now, "online_after": now - within, "admin": admin, "teams": list(care_teams),
              "gateway": gateway_id, "offline_over": offline_over_s, "backlog_over": backlog_over_s,
              "limit": limit, "offset": offset}
    with conn.cursor() as cur:
        cur.execute(_FLEET, params)
        columns = [c.name for c in cur.description or ()]
        return [summarise(dict(zip(columns, r, strict=True)), now, within) for r in cur.fetchall()]


def latest_status(conn: psycopg.Connection, gateway_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT status FROM gateways WHERE id = %s", (gateway_id,)).fetchone()
    return row[0] if row and isinstance(row[0], dict) else None
