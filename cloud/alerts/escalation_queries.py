"""SQL for escalation: policies, contacts, on-call, escalation state, patient contacts and messages
(migration 0580_escalation.sql)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from cloud.alerts.queries import ALERT_COLUMNS


def _one(conn: Any, sql: str, params: Any) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchone()


def _all(conn: Any, sql: str, params: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchall()


# The stop condition of contracts A: someone looked (acknowledged or reviewed), or it resolved and needs
# no review; also when the episode is over (re-opened since) or the team lost the patient's consent.
_ACTIVE_CONSENT = ("EXISTS (SELECT 1 FROM consents c WHERE c.patient_id = a.patient_id AND c.care_team_id = {team}"
                   " AND c.revoked_at IS NULL AND (c.expires_at IS NULL OR c.expires_at > %(now)s)"
                   " AND 'alerts' = ANY(c.scopes))")
STOP_REASON = f"""
    CASE WHEN a.status = 'acknowledged' THEN 'acknowledged'
         WHEN a.reviewed_at IS NOT NULL THEN 'reviewed'
         WHEN (a.status = 'resolved' AND a.review_state = 'not_required') OR a.reopen_count <> e.episode
              THEN 'resolved'
         WHEN NOT {_ACTIVE_CONSENT.format(team='e.care_team_id')} THEN 'consent_revoked'
    END"""
_SEVERITY_RANK = "array_position(ARRAY['info', 'warning', 'critical'], {})"


def stop_finished(conn: Any, now: datetime) -> list[dict[str, Any]]:
    """Stop every running escalation whose alert no longer needs it, and cancel its messages not yet
    sent; rows another scheduler holds are left for its own pass (SKIP LOCKED)."""
    return _all(
        conn,
        f"""
        WITH ended AS (
            SELECT e.id, {STOP_REASON} AS reason
              FROM alert_escalations e JOIN alerts a ON a.id = e.alert_id
             WHERE e.stopped_at IS NULL AND ({STOP_REASON}) IS NOT NULL
               FOR UPDATE OF e SKIP LOCKED
        ), stopped AS (
            UPDATE alert_escalations e SET stopped_at = %(now)s, stop_reason = ended.reason, next_at = NULL
              FROM ended WHERE e.id = ended.id
            RETURNING e.id, e.alert_id, e.stop_reason
        ), cancelled AS (
            UPDATE alert_deliveries d SET failed_at = %(now)s,
                   last_error = 'cancelled: the escalation stopped (' || s.stop_reason || ')'
              FROM stopped s
             WHERE d.escalation_id = s.id AND d.delivered_at IS NULL AND d.failed_at IS NULL
            RETURNING d.id
        )
        SELECT s.id, s.alert_id, s.stop_reason, (SELECT count(*) FROM cancelled) AS cancelled FROM stopped s
        """,
        {"now": now},
    )


def start_escalations(conn: Any, now: datetime) -> list[dict[str, Any]]:
    """One escalation per alert that needs a human and care team with a matching policy, where none
    exists for this episode yet. Two schedulers inserting the same row: the unique key keeps one."""
    return _all(
        conn,
        f"""
        INSERT INTO alert_escalations (alert_id, care_team_id, policy_id, episode, step_count, started_at, next_at)
        SELECT a.id, t.care_team_id, p.id, a.reopen_count, p.step_count, %(now)s,
               CASE WHEN a.reopen_count = 0 THEN a.opened_at ELSE %(now)s END + make_interval(secs => p.first_delay)
          FROM alerts a
          JOIN LATERAL (
                SELECT DISTINCT c.care_team_id FROM consents c
                 WHERE c.patient_id = a.patient_id AND c.revoked_at IS NULL
                   AND (c.expires_at IS NULL OR c.expires_at > %(now)s) AND 'alerts' = ANY(c.scopes)
               ) t ON true
          JOIN LATERAL (
                SELECT p.id, count(s.step) AS step_count, min(s.delay_s) FILTER (WHERE s.step = 0) AS first_delay
                  FROM escalation_policies p JOIN escalation_steps s ON s.policy_id = p.id
                 WHERE p.care_team_id = t.care_team_id AND p.retired_at IS NULL AND a.category = ANY(p.categories)
                   AND {_SEVERITY_RANK.format('a.severity')} >= {_SEVERITY_RANK.format('p.min_severity')}
                   AND a.opened_at >= p.applies_from
                 GROUP BY p.id, p.position ORDER BY p.position LIMIT 1
               ) p ON true
         WHERE (a.status = 'open' OR a.review_state = 'pending')
           AND a.reviewed_at IS NULL AND NOT a.late
           AND NOT EXISTS (SELECT 1 FROM alert_escalations e
                            WHERE e.alert_id = a.id AND e.care_team_id = t.care_team_id AND e.episode = a.reopen_count)
        ON CONFLICT (alert_id, care_team_id, episode) DO NOTHING
        RETURNING id, alert_id, care_team_id
        """,
        {"now": now},
    )


def claim_due(conn: Any, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Due escalations, locked for this transaction; another scheduler skips them. Due: its time came,
    or every message of the step it sent last was given up (fall back to the next step at once)."""
    return _all(
        conn,
        """
        SELECT e.* FROM alert_escalations e
         WHERE e.stopped_at IS NULL
           AND (e.next_at <= %(now)s
                OR (e.sent_step IS NOT NULL AND e.next_step < e.step_count
                    AND EXISTS (SELECT 1 FROM alert_deliveries d WHERE d.escalation_id = e.id AND d.step = e.sent_step)
                    AND NOT EXISTS (SELECT 1 FROM alert_deliveries d WHERE d.escalation_id = e.id
                                       AND d.step = e.sent_step AND d.failed_at IS NULL)))
         ORDER BY e.next_at, e.id
         LIMIT %(limit)s
           FOR UPDATE SKIP LOCKED
        """,
        {"now": now, "limit": limit},
    )


def lock_alert_shared(conn: Any, alert_id: int) -> dict[str, Any]:
    # FOR SHARE waits for an acknowledgement in flight (it holds the row FOR UPDATE), so a step is never
    # queued on the strength of a status that is being changed.
    row = _one(conn, f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = %s FOR SHARE", (alert_id,))
    assert row is not None  # alerts are never deleted
    return row


def stop_reason(conn: Any, escalation_id: int, now: datetime) -> str | None:
    row = conn.execute(f"SELECT {STOP_REASON} FROM alert_escalations e JOIN alerts a ON a.id = e.alert_id"
                       " WHERE e.id = %(id)s", {"id": escalation_id, "now": now}).fetchone()
    return row[0] if row else None


def update_escalation(conn: Any, escalation_id: int, **fields: Any) -> None:
    allowed = {"next_step", "sent_step", "repeats", "next_at", "last_sent_at", "last_note", "stopped_at",
               "stop_reason"}
    assert fields and set(fields) <= allowed, fields
    assignments = ", ".join(f"{name} = %({name})s" for name in fields)  # names from the fixed set above
    conn.execute(f"UPDATE alert_escalations SET {assignments} WHERE id = %(id)s", {**fields, "id": escalation_id})


def policy_with_steps(conn: Any, policy_id: int) -> dict[str, Any]:
    row = _one(conn, "SELECT * FROM escalation_policies WHERE id = %s", (policy_id,))
    assert row is not None
    row["steps"] = _all(conn, "SELECT step, delay_s, target_type, target, channels FROM escalation_steps"
                              " WHERE policy_id = %s ORDER BY step", (policy_id,))
    return row


def contacts(conn: Any, team: str, *, subjects: Sequence[str] | None = None,
             role: str | None = None) -> list[dict[str, Any]]:
    return _all(conn, "SELECT subject, display_name, email, phone, webhook_id, roles FROM care_team_contacts"
                      " WHERE care_team_id = %s AND (%s::text[] IS NULL OR subject = ANY(%s))"
                      " AND (%s::text IS NULL OR %s = ANY(roles)) ORDER BY subject",
                (team, list(subjects) if subjects is not None else None,
                 list(subjects) if subjects is not None else None, role, role))


def schedule(conn: Any, team: str, role: str) -> dict[str, Any] | None:
    row = _one(conn, "SELECT role, timezone, rotation, rotation_start, rotation_hours, updated_at, updated_by"
                     " FROM on_call_schedules WHERE care_team_id = %s AND role = %s", (team, role))
    if row is not None:
        row["shifts"] = _all(conn, "SELECT subject, starts_local, ends_local FROM on_call_shifts"
                                   " WHERE care_team_id = %s AND role = %s ORDER BY starts_local, subject",
                             (team, role))
    return row


def insert_webhook_message(conn: Any, *, webhook_id: int, alert_id: int, status: str, payload: bytes,
                           recipient: str, kind: str, escalation_id: int, step: int, max_attempts: int | None,
                           now: datetime) -> int:
    """A webhook outbox row for one step (``queue_message`` carries e-mail and provider messages)."""
    row = conn.execute(
        "INSERT INTO alert_deliveries (channel, webhook_id, alert_id, status, payload, recipient, audience, kind,"
        " escalation_id, step, max_attempts, next_attempt_at, created_at)"
        " VALUES ('webhook', %s, %s, %s, %s, %s, 'care_team', %s, %s, %s, %s, %s, %s) RETURNING id",
        (webhook_id, alert_id, status, payload, recipient, kind, escalation_id, step, max_attempts, now, now),
    ).fetchone()
    return int(row[0])


def escalations_of(conn: Any, alert_id: int) -> list[dict[str, Any]]:
    return _all(conn, "SELECT id, care_team_id, policy_id, episode, step_count, started_at, next_step, sent_step,"
                      " repeats, next_at, last_sent_at, last_note, stopped_at, stop_reason"
                      " FROM alert_escalations WHERE alert_id = %s ORDER BY id", (alert_id,))


# --- patient messages ------------------------------------------------------------------------------

def patient_message_candidates(conn: Any, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Open alerts whose rule sends a patient message that is due, to a patient with an opted-in
    contact since before the alert opened, not yet messaged for this episode."""
    return _all(
        conn,
        """
        SELECT a.id AS alert_id, a.patient_id, a.reopen_count AS episode, p.timezone, r.kind, r.context,
               r.send_from, r.send_until
          FROM alerts a
          JOIN patient_message_rules r ON r.rule_id = a.rule_id AND r.enabled
          JOIN patients p ON p.id = a.patient_id
         WHERE a.status = 'open' AND NOT a.late AND a.opened_at + make_interval(secs => r.delay_s) <= %(now)s
           AND EXISTS (SELECT 1 FROM patient_contacts c WHERE c.patient_id = a.patient_id
                          AND c.opted_out_at IS NULL AND c.opted_in_at <= a.opened_at)
           AND NOT EXISTS (SELECT 1 FROM patient_notifications n WHERE n.alert_id = a.id AND n.episode = a.reopen_count)
         ORDER BY a.opened_at LIMIT %(limit)s
        """,
        {"now": now, "limit": limit},
    )


def claim_patient_notification(conn: Any, alert_id: int, episode: int, kind: str, now: datetime) -> bool:
    row = conn.execute("INSERT INTO patient_notifications (alert_id, episode, kind, queued_at, messages)"
                       " VALUES (%s, %s, %s, %s, 0) ON CONFLICT DO NOTHING RETURNING 1",
                       (alert_id, episode, kind, now)).fetchone()
    return row is not None


def set_patient_notification_count(conn: Any, alert_id: int, episode: int, messages: int) -> None:
    conn.execute("UPDATE patient_notifications SET messages = %s WHERE alert_id = %s AND episode = %s",
                 (messages, alert_id, episode))


_CONTACT_COLUMNS = "id, patient_id, channel, address, opted_in_at, opted_in_by, opted_out_at, opted_out_by"


def active_patient_contacts(conn: Any, patient_id: str, opened_before: datetime | None = None) -> list[dict[str, Any]]:
    return _all(conn, f"SELECT {_CONTACT_COLUMNS}"
                      " FROM patient_contacts WHERE patient_id = %s AND opted_out_at IS NULL"
                      " AND (%s::timestamptz IS NULL OR opted_in_at <= %s) ORDER BY channel",
                (patient_id, opened_before, opened_before))


def patient_contacts(conn: Any, patient_id: str) -> list[dict[str, Any]]:
    return _all(conn, f"SELECT {_CONTACT_COLUMNS}"
                      " FROM patient_contacts WHERE patient_id = %s ORDER BY opted_in_at, id", (patient_id,))


def opt_out(conn: Any, patient_id: str, channel: str, by: str, now: datetime) -> dict[str, Any] | None:
    return _one(conn, "UPDATE patient_contacts SET opted_out_at = %s, opted_out_by = %s"
                      " WHERE patient_id = %s AND channel = %s AND opted_out_at IS NULL"
                      f" RETURNING {_CONTACT_COLUMNS}",
                (now, by, patient_id, channel))


def opt_in(conn: Any, patient_id: str, channel: str, address: str, by: str, now: datetime) -> dict[str, Any]:
    row = _one(conn, "INSERT INTO patient_contacts (patient_id, channel, address, opted_in_at, opted_in_by)"
                     " VALUES (%s, %s, %s, %s, %s)"
                     f" RETURNING {_CONTACT_COLUMNS}",
               (patient_id, channel, address, now, by))
    assert row is not None
    return row


# --- configuration (the API's read and replace) ----------------------------------------------------

def lock_team(conn: Any, team: str) -> bool:
    """Serialise configuration changes of one team (two admins replacing at once)."""
    return conn.execute("SELECT 1 FROM care_teams WHERE id = %s FOR UPDATE", (team,)).fetchone() is not None


def active_policies(conn: Any, team: str) -> list[dict[str, Any]]:
    policies = _all(conn, "SELECT id, position, name, min_severity, categories, timezone, quiet_start, quiet_end,"
                          " repeat_every_minutes, repeat_max, applies_from, created_at, created_by"
                          " FROM escalation_policies WHERE care_team_id = %s AND retired_at IS NULL ORDER BY position",
                    (team,))
    for policy in policies:
        policy["steps"] = _all(conn, "SELECT step, delay_s, target_type, target, channels FROM escalation_steps"
                                     " WHERE policy_id = %s ORDER BY step", (policy["id"],))
    return policies


def retire_policies(conn: Any, team: str, now: datetime) -> datetime | None:
    """Retire the team's active policies; the earliest ``applies_from`` among them (None: there were none)."""
    row = conn.execute("WITH retired AS (UPDATE escalation_policies SET retired_at = %s"
                       " WHERE care_team_id = %s AND retired_at IS NULL RETURNING applies_from)"
                       " SELECT min(applies_from) FROM retired", (now, team)).fetchone()
    return row[0] if row else None


def insert_policy(conn: Any, team: str, position: int, policy: dict[str, Any], applies_from: datetime, by: str,
                  now: datetime) -> int:
    row = conn.execute(
        "INSERT INTO escalation_policies (care_team_id, position, name, min_severity, categories, timezone,"
        " quiet_start, quiet_end, repeat_every_minutes, repeat_max, applies_from, created_at, created_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (team, position, policy["name"], policy["min_severity"], policy["categories"], policy["timezone"],
         policy["quiet_start"], policy["quiet_end"], policy["repeat_every_minutes"], policy["repeat_max"],
         applies_from, now, by),
    ).fetchone()
    policy_id = int(row[0])
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO escalation_steps (policy_id, step, delay_s, target_type, target, channels)"
                        " VALUES (%s, %s, %s, %s, %s, %s)",
                        [(policy_id, i, s["delay_s"], s["target_type"], s["target"], s["channels"])
                         for i, s in enumerate(policy["steps"])])
    return policy_id


def all_contacts(conn: Any, team: str) -> list[dict[str, Any]]:
    return _all(conn, "SELECT subject, display_name, email, phone, webhook_id, roles, updated_at, updated_by"
                      " FROM care_team_contacts WHERE care_team_id = %s ORDER BY subject", (team,))


def replace_contacts(conn: Any, team: str, contacts: Sequence[dict[str, Any]], by: str, now: datetime) -> None:
    conn.execute("DELETE FROM care_team_contacts WHERE care_team_id = %s", (team,))
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO care_team_contacts (care_team_id, subject, display_name, email, phone, webhook_id,"
                        " roles, updated_at, updated_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        [(team, c["subject"], c["display_name"], c["email"], c["phone"], c["webhook_id"], c["roles"],
                          now, by) for c in contacts])


def all_schedules(conn: Any, team: str) -> list[dict[str, Any]]:
    rows = _all(conn, "SELECT role FROM on_call_schedules WHERE care_team_id = %s ORDER BY role", (team,))
    return [s for s in (schedule(conn, team, r["role"]) for r in rows) if s is not None]


def replace_schedules(conn: Any, team: str, schedules: Sequence[dict[str, Any]], by: str, now: datetime) -> None:
    conn.execute("DELETE FROM on_call_schedules WHERE care_team_id = %s", (team,))  # shifts cascade
    with conn.cursor() as cur:
        for s in schedules:
            cur.execute("INSERT INTO on_call_schedules (care_team_id, role, timezone, rotation, rotation_start,"
                        " rotation_hours, updated_at, updated_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        (team, s["role"], s["timezone"], s["rotation"], s["rotation_start"], s["rotation_hours"],
                         now, by))
            cur.executemany("INSERT INTO on_call_shifts (care_team_id, role, subject, starts_local, ends_local)"
                            " VALUES (%s, %s, %s, %s, %s)",
                            [(team, s["role"], x["subject"], x["starts_local"], x["ends_local"]) for x in s["shifts"]])


def existing_webhooks(conn: Any, webhook_ids: Sequence[int]) -> set[int]:
    rows = conn.execute("SELECT id FROM webhooks WHERE id = ANY(%s)", (list(webhook_ids),)).fetchall()
    return {r[0] for r in rows}
