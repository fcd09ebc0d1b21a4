"""SQL behind the patient's own routes (tables of migrations 0400 and 0610): the overview's latest values
and open alerts, who has access, invite codes, first-time links, the access log and closure requests.

Always parameterised. Secrets (invite codes, link tokens) arrive here already hashed; using one is a
single ``UPDATE ... WHERE used_at IS NULL`` so two requests racing for it cannot both win.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cloud.api import queries
from cloud.api.queries import _ACTIVE, _dict, _dicts

# --- the overview --------------------------------------------------------------------------------------

def latest_values(conn: Any, patient_id: str, metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The newest judged value of each metric ({metric: {value, measured_at}}; a metric never measured is
    missing). One index probe per metric (observations_patient_metric_time), whatever the history's size."""
    rows = _dicts(
        conn,
        "SELECT m AS metric, o.value, o.measured_at FROM unnest(%(metrics)s::text[]) AS m,"
        " LATERAL (SELECT value, measured_at FROM observations"
        "           WHERE patient_id = %(patient)s AND metric = m AND value IS NOT NULL"
        "             AND NOT (flags && %(excluded)s::text[])"
        "           ORDER BY measured_at DESC LIMIT 1) AS o",
        {"metrics": list(metrics), "patient": patient_id, "excluded": queries.EXCLUDED},
    )
    return {r["metric"]: {"value": float(r["value"]), "measured_at": r["measured_at"]} for r in rows}


def open_alerts(conn: Any, patient_id: str) -> list[dict[str, Any]]:
    """Severity and reading kind of each alert not resolved (what the status of each measure weighs)."""
    return _dicts(conn, "SELECT a.severity, r.reading_kind FROM alerts a JOIN alert_rules r ON r.id = a.rule_id"
                        " WHERE a.patient_id = %s AND a.status <> 'resolved'", (patient_id,))


# --- who has access --------------------------------------------------------------------------------------

def consents_with_teams(conn: Any, patient_id: str, past_limit: int = 100) -> list[dict[str, Any]]:
    """The patient's consents, newest first: every active one and the newest ``past_limit`` ended ones, each
    with its care team's name and members."""
    return _dicts(
        conn,
        f"""
        SELECT * FROM (
            SELECT c.id AS consent_id, c.care_team_id, t.name AS care_team_name, c.scopes, c.granted_at,
                   c.expires_at, c.revoked_at, ({_ACTIVE}) AS active,
                   coalesce((SELECT json_agg(json_build_object('subject', m.subject, 'name', m.name, 'role', m.role)
                                             ORDER BY m.subject)
                               FROM care_team_members m WHERE m.care_team_id = c.care_team_id), '[]'::json) AS members,
                   row_number() OVER (PARTITION BY ({_ACTIVE}) ORDER BY c.granted_at DESC, c.id DESC) AS position
              FROM consents c JOIN care_teams t ON t.id = c.care_team_id
             WHERE c.patient_id = %s) AS x
         WHERE active OR position <= %s
         ORDER BY granted_at DESC, consent_id DESC
        """,
        (patient_id, past_limit),
    )


# --- invite codes ----------------------------------------------------------------------------------------

def create_invite(conn: Any, team_id: str, code_hash: str, by: str, expires_at: datetime) -> dict[str, Any] | None:
    """None when the hash is taken (a code drawn twice: the caller draws another)."""
    return _dict(conn, "INSERT INTO care_team_invites (care_team_id, code_hash, created_by, expires_at)"
                       " VALUES (%s, %s, %s, %s) ON CONFLICT (code_hash) DO NOTHING RETURNING id, expires_at",
                 (team_id, code_hash, by, expires_at))


def lock_invite_attempts(conn: Any, patient_id: str) -> None:
    """Serialise one patient's invite-code tries (inside a transaction), so the count of wrong ones is exact
    however many arrive at once."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('invite-code'), hashtext(%s))", (patient_id,))


def wrong_attempts(conn: Any, patient_id: str, window_s: int) -> tuple[int, datetime | None]:
    """Wrong invite codes the patient entered in the last ``window_s`` seconds, and the oldest one's time."""
    row = conn.execute("SELECT count(*), min(at) FROM invite_code_attempts WHERE patient_id = %s AND NOT ok"
                       " AND at > now() - make_interval(secs => %s)", (patient_id, window_s)).fetchone()
    return (int(row[0]), row[1]) if row else (0, None)


def record_attempt(conn: Any, patient_id: str, ok: bool) -> None:
    conn.execute("INSERT INTO invite_code_attempts (patient_id, ok) VALUES (%s, %s)", (patient_id, ok))


def use_invite(conn: Any, code_hash: str, patient_id: str) -> dict[str, Any] | None:
    """Mark the invite used by this patient (once, before it expires); None when no usable invite has it."""
    return _dict(conn, "UPDATE care_team_invites SET used_at = now(), used_by = %s"
                       " WHERE code_hash = %s AND used_at IS NULL AND expires_at > now()"
                       " RETURNING id, care_team_id", (patient_id, code_hash))


def link_invite_consent(conn: Any, invite_id: int, consent_id: int) -> None:
    conn.execute("UPDATE care_team_invites SET consent_id = %s WHERE id = %s", (consent_id, invite_id))


# --- first-time links -------------------------------------------------------------------------------------

def create_first_time_link(conn: Any, patient_id: str, token_hash: str, by: str,
                           expires_at: datetime) -> dict[str, Any]:
    row = _dict(conn, "INSERT INTO first_time_links (token_hash, patient_id, created_by, expires_at)"
                      " VALUES (%s, %s, %s, %s) RETURNING id, expires_at", (token_hash, patient_id, by, expires_at))
    assert row is not None
    return row


def redeem_first_time_link(conn: Any, token_hash: str) -> tuple[str, dict[str, Any] | None]:
    """Use the link once: ("ok", its row), ("gone", its row: used or expired) or ("unknown", None)."""
    used = _dict(conn, "UPDATE first_time_links SET used_at = now() WHERE token_hash = %s AND used_at IS NULL"
                       " AND expires_at > now() RETURNING id, patient_id", (token_hash,))
    if used is not None:
        return "ok", used
    row = _dict(conn, "SELECT id, patient_id FROM first_time_links WHERE token_hash = %s", (token_hash,))
    return ("gone", row) if row is not None else ("unknown", None)


# --- the access log -------------------------------------------------------------------------------------

def access_log(conn: Any, patient_id: str, before_id: int | None, limit: int) -> list[dict[str, Any]]:
    """Requests by others that named the patient, newest first: the patient's own requests (role patient) are
    left out. Each with the person's name where a care team gave one, and the names of those of their care
    teams the patient ever shared with (their other teams are not the patient's business)."""
    return _dicts(
        conn,
        """
        SELECT a.id, a.at, a.subject, a.role, a.action, a.outcome,
               (SELECT m.name FROM care_team_members m WHERE m.subject = a.subject AND m.name IS NOT NULL
                 ORDER BY m.care_team_id = ANY(a.care_teams) DESC, m.care_team_id LIMIT 1) AS name,
               ARRAY(SELECT t.name FROM care_teams t
                      WHERE t.id = ANY(a.care_teams)
                        AND EXISTS (SELECT 1 FROM consents c WHERE c.patient_id = %(patient)s
                                       AND c.care_team_id = t.id)
                      ORDER BY t.name) AS team_names
          FROM audit_log a
         WHERE a.patient_ids @> ARRAY[%(patient)s::text] AND a.role <> 'patient'
           AND (%(before)s::bigint IS NULL OR a.id < %(before)s)
         ORDER BY a.id DESC LIMIT %(limit)s
        """,
        {"patient": patient_id, "before": before_id, "limit": limit},
    )


# --- closing the account ---------------------------------------------------------------------------------

def request_closure(conn: Any, patient_id: str, by: str, reason: str | None) -> dict[str, Any]:
    """The pending request (asking again keeps the first one and its reason)."""
    conn.execute("INSERT INTO closure_requests (patient_id, requested_by, reason) VALUES (%s, %s, %s)"
                 " ON CONFLICT (patient_id) WHERE status = 'pending' DO NOTHING", (patient_id, by, reason))
    row = pending_closure(conn, patient_id)
    assert row is not None
    return row


def pending_closure(conn: Any, patient_id: str) -> dict[str, Any] | None:
    return _dict(conn, "SELECT id, requested_at, reason, status FROM closure_requests"
                       " WHERE patient_id = %s AND status = 'pending'", (patient_id,))


def name_member(conn: Any, team_id: str, subject: str, name: str) -> None:
    """The name the patient reads for a care-team member ("Dr Ada Lovelace"); the member must exist."""
    conn.execute("UPDATE care_team_members SET name = %s WHERE care_team_id = %s AND subject = %s",
                 (name, team_id, subject))
