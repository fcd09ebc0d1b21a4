"""SQL for alerts, alert events, webhooks and the delivery outbox (migration 0300_alerts.sql)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

ALERT_COLUMNS = (
    "id, patient_id, rule_id, severity, status, message, metric, value, reading_id, measured_at, late, flags,"
    " trigger_count, normal_streak, reopen_count, opened_at, updated_at, acknowledged_at, acknowledged_by,"
    " resolved_at, resolved_by, category, review_required, review_state, reviewed_at, reviewed_by,"
    " (status = 'resolved' AND review_state = 'pending') AS needs_review,"
    # The rule's name as people say it: its description up to the criteria ("Hypertensive crisis").
    r" (SELECT regexp_replace(split_part(r.description, ':', 1), '\s*\(.*$', '') FROM alert_rules r"
    "   WHERE r.id = rule_id) AS rule_title"
)


def _one(conn: Any, sql: str, params: Sequence[Any]) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchone()


def _all(conn: Any, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchall()


def lock_open_alerts(conn: Any, patient_ids: list[str]) -> list[dict[str, Any]]:
    return _all(conn, f"SELECT {ALERT_COLUMNS} FROM alerts WHERE patient_id = ANY(%s) AND status <> 'resolved'"
                      " ORDER BY id FOR UPDATE", (patient_ids,))


def lock_open_alert(conn: Any, patient_id: str, rule_id: str) -> dict[str, Any] | None:
    return _one(conn, f"SELECT {ALERT_COLUMNS} FROM alerts WHERE patient_id = %s AND rule_id = %s"
                      " AND status <> 'resolved' FOR UPDATE", (patient_id, rule_id))


def lock_alert(conn: Any, alert_id: int) -> dict[str, Any] | None:
    return _one(conn, f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = %s FOR UPDATE", (alert_id,))


def get_alert(conn: Any, alert_id: int) -> dict[str, Any] | None:
    return _one(conn, f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = %s", (alert_id,))


def recently_resolved(conn: Any, patient_ids: list[str], since: datetime) -> list[dict[str, Any]]:
    return _all(conn, f"SELECT DISTINCT ON (patient_id, rule_id) {ALERT_COLUMNS} FROM alerts"
                      " WHERE patient_id = ANY(%s) AND status = 'resolved' AND resolved_at >= %s"
                      " ORDER BY patient_id, rule_id, resolved_at DESC", (patient_ids, since))


def insert_alert(conn: Any, patient_id: str, rule_id: str, f: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    return _one(
        conn,
        f"""
        INSERT INTO alerts (patient_id, rule_id, severity, status, message, metric, value, reading_id, measured_at,
                            late, flags, opened_at, updated_at)
        VALUES (%s, %s, %s, 'open', %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (patient_id, rule_id) WHERE status <> 'resolved' DO NOTHING
        RETURNING {ALERT_COLUMNS}
        """,
        (patient_id, rule_id, f["severity"], f["message"], f["metric"], f["value"], f["reading_id"],
         f["measured_at"], f["late"], f["flags"], now, now),
    )


def reopen_alert(conn: Any, alert_id: int, f: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    return _one(
        conn,
        f"""
        UPDATE alerts SET status = 'open', severity = %s, message = %s, metric = %s, value = %s, reading_id = %s,
               measured_at = %s, late = %s, flags = %s, trigger_count = trigger_count + 1, normal_streak = 0,
               reopen_count = reopen_count + 1, updated_at = %s, resolved_at = NULL, resolved_by = NULL,
               acknowledged_at = NULL, acknowledged_by = NULL, reviewed_at = NULL, reviewed_by = NULL
         WHERE id = %s AND status = 'resolved'
        RETURNING {ALERT_COLUMNS}
        """,
        (f["severity"], f["message"], f["metric"], f["value"], f["reading_id"], f["measured_at"], f["late"],
         f["flags"], now, alert_id),
    )


def update_triggered(conn: Any, alert_id: int, f: dict[str, Any], now: datetime) -> dict[str, Any]:
    row = _one(
        conn,
        f"""
        UPDATE alerts SET severity = %s, message = %s, metric = %s, value = %s, reading_id = %s, measured_at = %s,
               late = %s, flags = %s, trigger_count = trigger_count + 1, normal_streak = 0, updated_at = %s
         WHERE id = %s
        RETURNING {ALERT_COLUMNS}
        """,
        (f["severity"], f["message"], f["metric"], f["value"], f["reading_id"], f["measured_at"], f["late"],
         f["flags"], now, alert_id),
    )
    assert row is not None  # the caller holds the row lock
    return row


def count_trigger(conn: Any, alert_id: int, now: datetime) -> dict[str, Any]:
    row = _one(conn, f"UPDATE alerts SET trigger_count = trigger_count + 1, normal_streak = 0, updated_at = %s"
                     f" WHERE id = %s RETURNING {ALERT_COLUMNS}", (now, alert_id))
    assert row is not None
    return row


def set_streak(conn: Any, alert_id: int, streak: int, now: datetime) -> dict[str, Any]:
    row = _one(conn, f"UPDATE alerts SET normal_streak = %s, updated_at = %s WHERE id = %s RETURNING {ALERT_COLUMNS}",
               (streak, now, alert_id))
    assert row is not None
    return row


def resolve_alert(conn: Any, alert_id: int, by: str, now: datetime, *, reviewed: bool) -> dict[str, Any]:
    """``reviewed``: a person resolved it, so a person has seen it."""
    row = _one(conn, f"UPDATE alerts SET status = 'resolved', resolved_at = %s, resolved_by = %s, updated_at = %s,"
                     f" reviewed_at = CASE WHEN %s THEN coalesce(reviewed_at, %s) ELSE reviewed_at END,"
                     f" reviewed_by = CASE WHEN %s THEN coalesce(reviewed_by, %s) ELSE reviewed_by END"
                     f" WHERE id = %s RETURNING {ALERT_COLUMNS}", (now, by, now, reviewed, now, reviewed, by, alert_id))
    assert row is not None
    return row


def acknowledge_alert(conn: Any, alert_id: int, by: str, now: datetime) -> dict[str, Any]:
    """Acknowledging is the review of an open alert."""
    row = _one(conn, f"UPDATE alerts SET status = 'acknowledged', acknowledged_at = %s, acknowledged_by = %s,"
                     f" reviewed_at = coalesce(reviewed_at, %s), reviewed_by = coalesce(reviewed_by, %s),"
                     f" updated_at = %s WHERE id = %s RETURNING {ALERT_COLUMNS}", (now, by, now, by, now, alert_id))
    assert row is not None
    return row


def review_alert(conn: Any, alert_id: int, by: str, now: datetime) -> dict[str, Any] | None:
    """Review an alert that resolved before anyone looked; None when it is not pending review."""
    return _one(conn, f"UPDATE alerts SET reviewed_at = %s, reviewed_by = %s, updated_at = %s"
                      f" WHERE id = %s AND status = 'resolved' AND review_state = 'pending'"
                      f" RETURNING {ALERT_COLUMNS}", (now, by, now, alert_id))


def insert_event(conn: Any, alert_id: int, at: datetime, event: str, actor: str, reading_id: str | None,
                 detail: Any) -> None:
    conn.execute(
        "INSERT INTO alert_events (alert_id, at, event, actor, reading_id, detail) VALUES (%s, %s, %s, %s, %s, %s)",
        (alert_id, at, event, actor, reading_id, detail),
    )


def alert_events(conn: Any, alert_id: int) -> list[dict[str, Any]]:
    return _all(conn, "SELECT id, alert_id, at, event, actor, reading_id, detail FROM alert_events"
                      " WHERE alert_id = %s ORDER BY id", (alert_id,))


def list_alerts(conn: Any, *, patient_id: str | None, statuses: Sequence[str] | None, severities: Sequence[str] | None,
                since: datetime | None, before_id: int | None, limit: int,
                review_states: Sequence[str] | None = None) -> list[dict[str, Any]]:
    return _all(
        conn,
        f"""
        SELECT {ALERT_COLUMNS} FROM alerts
         WHERE (%(patient)s::text IS NULL OR patient_id = %(patient)s)
           AND (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s))
           AND (%(severities)s::text[] IS NULL OR severity = ANY(%(severities)s))
           AND (%(reviews)s::text[] IS NULL OR review_state = ANY(%(reviews)s))
           AND (%(since)s::timestamptz IS NULL OR updated_at >= %(since)s)
           AND (%(before)s::bigint IS NULL OR id < %(before)s)
         ORDER BY id DESC LIMIT %(limit)s
        """,
        {"patient": patient_id, "statuses": list(statuses) if statuses else None,
         "reviews": list(review_states) if review_states else None,
         "severities": list(severities) if severities else None, "since": since, "before": before_id,
         "limit": limit},
    )


def webhooks_for(conn: Any, patient_ids: list[str]) -> list[dict[str, Any]]:
    return _all(conn, "SELECT id, url, secret, patient_id, events FROM webhooks"
                      " WHERE enabled AND (patient_id IS NULL OR patient_id = ANY(%s)) ORDER BY id", (patient_ids,))


def insert_deliveries(conn: Any, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO alert_deliveries (channel, webhook_id, topic, alert_id, status, payload, next_attempt_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


def add_webhook(conn: Any, url: str, secret: str, patient_id: str | None, events: list[str]) -> int:
    row = conn.execute("INSERT INTO webhooks (url, secret, patient_id, events) VALUES (%s, %s, %s, %s) RETURNING id",
                       (url, secret, patient_id, events)).fetchone()
    return int(row[0])


def missing_data_candidates(conn: Any, kind: str, profiles: list[str], now: datetime) -> list[dict[str, Any]]:
    """Patients expected to send ``kind`` (an active assignment of a device whose profile is one of
    ``profiles`` or that has sent that kind for them), with when they were first assigned and the time
    of their latest reading of that kind."""
    return _all(
        conn,
        """
        SELECT a.patient_id, min(a.created_at) AS assigned_at,
               (SELECT max(r.measured_at) FROM readings r
                 WHERE r.patient_id = a.patient_id AND r.kind = %(kind)s AND r.measured_at <= %(now)s) AS last_at
          FROM device_assignments a JOIN devices d ON d.uid = a.device_uid
         WHERE a.valid_from <= %(now)s AND (a.valid_to IS NULL OR a.valid_to > %(now)s)
           AND (d.profile = ANY(%(profiles)s)
                OR EXISTS (SELECT 1 FROM readings r WHERE r.device_uid = a.device_uid
                             AND r.patient_id = a.patient_id AND r.kind = %(kind)s))
         GROUP BY a.patient_id
         ORDER BY a.patient_id
        """,
        {"now": now, "kind": kind, "profiles": profiles},
    )


def adherence_candidates(conn: Any, now: datetime, excluded_flags: list[str]) -> list[dict[str, Any]]:
    """Enrolled patients (an active assignment): first assignment time and the UTC days of the last 31
    with a patient reading of any kind."""
    return _all(
        conn,
        """
        SELECT a.patient_id, min(a.created_at) AS enrolled_at,
               ARRAY(SELECT DISTINCT (r.measured_at AT TIME ZONE 'UTC')::date FROM readings r
                      WHERE r.patient_id = a.patient_id AND r.measured_at > %(now)s - interval '31 days'
                        AND r.measured_at <= %(now)s AND NOT (r.flags && %(excluded)s::text[])) AS days
          FROM device_assignments a
         WHERE a.valid_from <= %(now)s AND (a.valid_to IS NULL OR a.valid_to > %(now)s)
         GROUP BY a.patient_id
         ORDER BY a.patient_id
        """,
        {"now": now, "excluded": excluded_flags},
    )


# --- technical alerts (cloud.alerts.technical) ------------------------------------------------------

# Devices of this gateway whose reported count differs from the one stored, with the patients they
# are assigned to now (a two-user cuff can have two). Read without locks: the locks are taken in the
# order above once the patients are known.
_CHANGED_COUNTS = """
SELECT d.uid, d.profile, d.model, d.quarantined_records AS before, r.n AS now,
       coalesce((SELECT array_agg(DISTINCT da.patient_id ORDER BY da.patient_id) FROM device_assignments da
                  WHERE da.device_uid = d.uid AND da.valid_from <= %(now)s
                    AND (da.valid_to IS NULL OR %(now)s < da.valid_to)), '{}') AS patients
FROM unnest(%(uids)s::text[], %(counts)s::int[]) AS r(uid, n)
JOIN devices d ON d.uid = r.uid AND d.bound_gateway_id = %(gateway)s
WHERE d.quarantined_records <> r.n
ORDER BY d.uid
"""

_SET_COUNTS = """
UPDATE devices d SET quarantined_records = r.n
FROM (SELECT * FROM unnest(%s::text[], %s::int[]) AS r(uid, n) ORDER BY uid) r
WHERE d.uid = r.uid
"""

# Patients with a device bound to this gateway, and whether another of their gateways is full too.
_GATEWAY_PATIENTS = """
SELECT da.patient_id,
       bool_or(d.bound_gateway_id <> %(gateway)s AND (coalesce((g.status ->> 'outbox_full')::boolean, false)
                                                    OR g.status ->> 'storage_state' IN ('full', 'unwritable')))
           AS other_full
FROM device_assignments da
JOIN devices mine ON mine.uid = da.device_uid AND mine.bound_gateway_id = %(gateway)s
JOIN device_assignments every ON every.patient_id = da.patient_id
     AND every.valid_from <= %(now)s AND (every.valid_to IS NULL OR %(now)s < every.valid_to)
JOIN devices d ON d.uid = every.device_uid
LEFT JOIN gateways g ON g.id = d.bound_gateway_id
WHERE da.valid_from <= %(now)s AND (da.valid_to IS NULL OR %(now)s < da.valid_to)
GROUP BY da.patient_id
ORDER BY da.patient_id
"""

_NEWEST_STATUS_AT = "SELECT (status ->> 'at')::timestamptz AS at FROM gateways WHERE id = %s"


def changed_quarantine_counts(conn: Any, gateway_id: str, uids: list[str], counts: list[int],
                              now: datetime) -> list[dict[str, Any]]:
    return _all(conn, _CHANGED_COUNTS, {"now": now, "gateway": gateway_id, "uids": uids, "counts": counts})


def gateway_patients(conn: Any, gateway_id: str, now: datetime) -> list[dict[str, Any]]:
    return _all(conn, _GATEWAY_PATIENTS, {"now": now, "gateway": gateway_id})


def set_quarantine_counts(conn: Any, uids: list[str], counts: list[int]) -> None:
    conn.execute(_SET_COUNTS, (uids, counts))


def newest_status_at(conn: Any, gateway_id: str) -> datetime | None:
    row = _one(conn, _NEWEST_STATUS_AT, (gateway_id,))
    return row["at"] if row else None
