"""SQL for the notification outbox's messages, their attempts and the deep links (migration 0570_channels.sql)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row


def _one(conn: Any, sql: str, params: Any) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def _all(conn: Any, sql: str, params: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def alert_facts(conn: Any, alert_id: int) -> dict[str, Any] | None:
    """The alert with its patient's name and time zone and its rule's description and reading kind."""
    return _one(
        conn,
        """
        SELECT a.id, a.patient_id, p.display_name, p.timezone, a.severity, a.status, a.message, a.metric, a.value,
               a.reading_id, a.measured_at, a.opened_at, a.category, r.description, r.reading_kind
          FROM alerts a JOIN patients p ON p.id = a.patient_id JOIN alert_rules r ON r.id = a.rule_id
         WHERE a.id = %s
        """,
        (alert_id,),
    )


def reading_values(conn: Any, reading_id: str, patient_id: str, measured_at: datetime | None) -> dict[str, float]:
    # measured_at lets a hypertable skip every chunk but one.
    rows = conn.execute(
        "SELECT metric, value FROM observations WHERE reading_id = %s AND patient_id = %s"
        " AND (%s::timestamptz IS NULL OR measured_at = %s)",
        (reading_id, patient_id, measured_at, measured_at),
    ).fetchall()
    return {metric: value for metric, value in rows}


def insert_message(conn: Any, *, channel: str, alert_id: int, status: str, payload: bytes, address: str,
                   recipient: str, audience: str, kind: str, escalation_id: int | None, step: int | None,
                   max_attempts: int | None, now: datetime) -> int:
    row = conn.execute(
        "INSERT INTO alert_deliveries (channel, alert_id, status, payload, address, recipient, audience, kind,"
        " escalation_id, step, max_attempts, next_attempt_at, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (channel, alert_id, status, payload, address, recipient, audience, kind, escalation_id, step, max_attempts,
         now, now),
    ).fetchone()
    return int(row[0])


def claim(conn: Any, now: datetime, lease_until: datetime, limit: int, channels: Sequence[str]) -> list[dict[str, Any]]:
    """Take due deliveries for this sender: pushing their next attempt to ``lease_until`` keeps other
    senders off them while the call runs outside any transaction (``FOR UPDATE SKIP LOCKED``: two
    schedulers never take the same row)."""
    return _all(
        conn,
        """
        WITH due AS (
            SELECT id FROM alert_deliveries
             WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= %s AND channel = ANY(%s)
             ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE alert_deliveries d SET next_attempt_at = %s, attempts = d.attempts + 1
              FROM due WHERE d.id = due.id
            RETURNING d.id, d.channel, d.webhook_id, d.topic, d.alert_id, d.status, d.payload, d.attempts,
                      d.address, d.recipient, d.audience, d.kind, d.max_attempts
        )
        SELECT c.*, w.url, w.secret FROM claimed c LEFT JOIN webhooks w ON w.id = c.webhook_id ORDER BY c.id
        """,
        (now, list(channels), limit, lease_until),
    )


def release(conn: Any, delivery_ids: Sequence[int], lease_until: datetime, now: datetime) -> int:
    """Give back claimed rows not attempted (the claim's attempt is taken back), unless another sender
    holds them by now; return how many."""
    cur = conn.execute("UPDATE alert_deliveries SET next_attempt_at = %s, attempts = attempts - 1"
                       " WHERE id = ANY(%s) AND next_attempt_at = %s AND delivered_at IS NULL AND failed_at IS NULL",
                       (now, list(delivery_ids), lease_until))
    return cur.rowcount


def finish_attempt(conn: Any, delivery_id: int, attempt: int, *, error: str | None, retry_at: datetime | None,
                   at: datetime, duration_ms: int) -> None:
    """Record one attempt and its outcome on the delivery in one statement. ``error`` None: sent; else
    retried at ``retry_at``, or given up when that is None. A row another sender already finished (its
    lease ran out while this one was still sending) keeps its outcome; the attempt is recorded anyway."""
    conn.execute(
        """
        WITH attempt AS (
            INSERT INTO delivery_attempts (delivery_id, attempt, at, outcome, error, duration_ms)
            VALUES (%(id)s, %(attempt)s, %(at)s, CASE WHEN %(error)s::text IS NULL THEN 'sent' ELSE 'failed' END,
                    %(error)s, %(ms)s)
            ON CONFLICT (delivery_id, attempt) DO NOTHING
        )
        UPDATE alert_deliveries
           SET delivered_at = CASE WHEN %(error)s::text IS NULL THEN %(at)s END,
               last_error = %(error)s,
               next_attempt_at = COALESCE(%(retry)s, next_attempt_at),
               failed_at = CASE WHEN %(error)s::text IS NOT NULL AND %(retry)s::timestamptz IS NULL THEN %(at)s END
         WHERE id = %(id)s AND delivered_at IS NULL AND failed_at IS NULL
        """,
        {"id": delivery_id, "attempt": attempt, "at": at, "error": error[:500] if error else None,
         "ms": duration_ms, "retry": retry_at},
    )


def deliveries_of(conn: Any, alert_id: int) -> list[dict[str, Any]]:
    return _all(
        conn,
        """
        SELECT d.id, d.channel, d.webhook_id, coalesce(d.address, d.topic) AS address, d.recipient, d.audience,
               d.kind, d.escalation_id, d.step, d.status AS alert_status, d.attempts AS attempt_count,
               d.max_attempts, d.created_at, d.next_attempt_at, d.delivered_at, d.failed_at, d.last_error,
               CASE WHEN d.delivered_at IS NOT NULL THEN 'sent' WHEN d.failed_at IS NOT NULL THEN 'failed'
                    WHEN d.last_error IS NOT NULL THEN 'retrying' ELSE 'queued' END AS status,
               coalesce((SELECT jsonb_agg(jsonb_build_object('attempt', t.attempt, 'at', t.at, 'outcome', t.outcome,
                                                             'error', t.error, 'duration_ms', t.duration_ms)
                                          ORDER BY t.attempt)
                           FROM delivery_attempts t WHERE t.delivery_id = d.id), '[]') AS attempts
          FROM alert_deliveries d
         WHERE d.alert_id = %s
         ORDER BY d.id
        """,
        (alert_id,),
    )


def insert_link(conn: Any, token_hash: bytes, alert_id: int, recipient: str, now: datetime,
                expires_at: datetime) -> None:
    conn.execute("INSERT INTO alert_links (token_hash, alert_id, recipient, created_at, expires_at)"
                 " VALUES (%s, %s, %s, %s, %s)", (token_hash, alert_id, recipient, now, expires_at))


def find_link(conn: Any, token_hash: bytes) -> dict[str, Any] | None:
    return _one(conn, "SELECT l.alert_id, a.patient_id, l.recipient, l.created_at, l.expires_at, l.used_at, l.used_by"
                      "  FROM alert_links l JOIN alerts a ON a.id = l.alert_id WHERE l.token_hash = %s",
                (token_hash,))


def use_link(conn: Any, token_hash: bytes, by: str, now: datetime) -> bool:
    """Mark the link used by ``by``; False when it was used already (by a concurrent open too) or expired."""
    row = conn.execute("UPDATE alert_links SET used_at = %s, used_by = %s"
                       " WHERE token_hash = %s AND used_at IS NULL AND expires_at > %s RETURNING 1",
                       (now, by, token_hash, now)).fetchone()
    return row is not None
