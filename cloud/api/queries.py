"""SQL behind the clinician API (tables from 0001_core, 0300_alerts, 0310_twins, 0400_access).

Always parameterised. Functions take a psycopg connection (autocommit from the API's pool) and return
plain rows; the routes stay thin and the maths lives in :mod:`cloud.api.summaries`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cloud.alerts.queries import ALERT_COLUMNS
from gateway.metrics import EXCLUDED_FLAGS

EXCLUDED = sorted(EXCLUDED_FLAGS)
"""Flags that make a value not the patient's (failed measurement, control solution): left out of maths."""
SCOPES = ("readings", "alerts", "twin")
_ACTIVE = "c.revoked_at IS NULL AND c.granted_at <= now() AND (c.expires_at IS NULL OR c.expires_at > now())"
# _ACTIVE, _dicts and _dict serve every SQL module of the API (patient_queries, fhir_queries) and fhir_bulk:
# one definition of "consent in force" and of a dict row.


def _dicts(conn: Any, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchall()


def _dict(conn: Any, sql: str, params: Sequence[Any] | dict[str, Any]) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchone()


# --- access and audit ------------------------------------------------------------------------------

def patient_exists(conn: Any, patient_id: str) -> bool:
    return conn.execute("SELECT 1 FROM patients WHERE id = %s", (patient_id,)).fetchone() is not None


def consented_scopes(conn: Any, patient_id: str, care_teams: Sequence[str]) -> set[str]:
    """Scopes the patient's active consents grant any of these care teams (empty: no access)."""
    row = conn.execute(
        f"SELECT array_agg(DISTINCT s) FROM consents c, unnest(c.scopes) AS s"
        f" WHERE c.patient_id = %s AND c.care_team_id = ANY(%s) AND {_ACTIVE}",
        (patient_id, list(care_teams)),
    ).fetchone()
    return set(row[0] or ()) if row else set()


def write_audit(conn: Any, subject: str, role: str, care_teams: Sequence[str], action: str,
                patient_ids: Sequence[str], outcome: str, status: int | None, request_id: str,
                detail: Mapping[str, Any] | None = None) -> None:
    """One row for the request, naming every patient it touched (none for a configuration write), and what
    a write changed (``detail``, migration 0510)."""
    # What a request named is recorded as it came, but PostgreSQL text and jsonb refuse NUL: a hostile
    # id ("\x00") must not make the audit row, and so the answer, fail (it is kept escaped).
    conn.execute(
        "INSERT INTO audit_log (subject, role, care_teams, action, patient_ids, outcome, status, request_id, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (_no_nul(subject), role, _no_nul(list(care_teams)), action, _no_nul(list(patient_ids)), outcome, status,
         request_id, Jsonb(_no_nul(dict(detail))) if detail is not None else None),
    )


def _no_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nul(v) for v in value]
    return value


def audit_trail(conn: Any, *, patient_id: str | None, before_id: int | None, limit: int,
                with_detail: bool = False) -> list[dict[str, Any]]:
    """Newest first. Other patients named by the same request (a panel) are counted, never listed; so is
    ``detail`` (which can name them) left out unless ``with_detail`` (the administrators' log)."""
    detail = ", detail" if with_detail else ""
    return _dicts(
        conn,
        "SELECT id, at, subject, role, care_teams, action, cardinality(patient_ids) AS patients_in_request,"
        f" outcome, status, request_id{detail} FROM audit_log"
        " WHERE (%(patient)s::text IS NULL OR patient_ids @> ARRAY[%(patient)s::text])"
        " AND (%(before)s::bigint IS NULL OR id < %(before)s) ORDER BY id DESC LIMIT %(limit)s",
        {"patient": patient_id, "before": before_id, "limit": limit},
    )


# --- care teams and consents -------------------------------------------------------------------------

def list_care_teams(conn: Any) -> list[dict[str, Any]]:
    return _dicts(conn, "SELECT id, name, created_at FROM care_teams ORDER BY id", ())


def create_care_team(conn: Any, team_id: str, name: str) -> dict[str, Any] | None:
    """None when the id is taken."""
    return _dict(conn, "INSERT INTO care_teams (id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING"
                       " RETURNING id, name, created_at", (team_id, name))


def add_member(conn: Any, team_id: str, subject: str, role: str) -> dict[str, Any]:
    row = _dict(conn, "INSERT INTO care_team_members (care_team_id, subject, role) VALUES (%s, %s, %s)"
                      " ON CONFLICT (care_team_id, subject) DO UPDATE SET role = EXCLUDED.role"
                      " RETURNING care_team_id, subject, role, added_at", (team_id, subject, role))
    assert row is not None
    return row


def list_members(conn: Any, team_id: str) -> list[dict[str, Any]]:
    return _dicts(conn, "SELECT care_team_id, subject, role, added_at FROM care_team_members"
                        " WHERE care_team_id = %s ORDER BY subject", (team_id,))


def care_team_exists(conn: Any, team_id: str) -> bool:
    return conn.execute("SELECT 1 FROM care_teams WHERE id = %s", (team_id,)).fetchone() is not None


_CONSENT_COLUMNS = ("id, patient_id, care_team_id, scopes, granted_at, granted_by, expires_at, revoked_at, revoked_by,"
                    " (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())) AS active")


def list_consents(conn: Any, patient_id: str) -> list[dict[str, Any]]:
    return _dicts(conn, f"SELECT {_CONSENT_COLUMNS} FROM consents WHERE patient_id = %s ORDER BY id DESC",
                  (patient_id,))


def grant_consent(conn: Any, patient_id: str, care_team_id: str, scopes: Sequence[str], expires_at: datetime | None,
                  by: str) -> dict[str, Any]:
    row = _dict(conn, f"INSERT INTO consents (patient_id, care_team_id, scopes, expires_at, granted_by)"
                      f" VALUES (%s, %s, %s, %s, %s) RETURNING {_CONSENT_COLUMNS}",
                (patient_id, care_team_id, list(scopes), expires_at, by))
    assert row is not None
    return row


def revoke_consent(conn: Any, patient_id: str, consent_id: int, by: str) -> dict[str, Any] | None:
    """Revoke (idempotent: a revoked consent keeps its first revocation). None when it is not the patient's."""
    return _dict(conn, f"UPDATE consents SET revoked_at = coalesce(revoked_at, now()),"
                       f" revoked_by = coalesce(revoked_by, %s)"
                       f" WHERE id = %s AND patient_id = %s RETURNING {_CONSENT_COLUMNS}",
                 (by, consent_id, patient_id))


# --- patients ------------------------------------------------------------------------------------------

# The panel reads patient_panel (a projection kept by triggers on twins and alerts, migrations 0410 and
# 0590): filters, counts and sort keys are columns of one narrow row per patient, so a panel of 10 000
# patients never joins alerts per request. Rows are ranked on narrow keys and only the page is turned
# into JSON, by PostgreSQL, so nothing goes through Python objects one field at a time.
PANEL_FILTERS = ("critical", "unacknowledged", "needs_review", "missing_data", "below_16_days", "device_problem")
"""Filters of the panel (all given must hold); each is also a count over the caller's whole panel."""
_BY_URGENCY = 'critical {d}, warning {d}, info {d}, adherence_days {r}, patient_id COLLATE "C" {r}'
# Fixed SQL per sort key and direction: the only text the request chooses, and it chooses among these.
PANEL_SORTS = {
    # Most urgent first: open critical, warning, info alerts, then the fewest days with readings.
    "triage": {"desc": _BY_URGENCY.format(d="DESC", r="ASC"), "asc": _BY_URGENCY.format(d="ASC", r="DESC")},
    "name": {d: f'lower(coalesce(display_name, patient_id)) {d}, patient_id COLLATE "C" {d}' for d in ("asc", "desc")},
    "last_reading": {d: f'last_reading_at {d} NULLS LAST, patient_id COLLATE "C"' for d in ("asc", "desc")},
    "days_with_data": {d: f'CASE WHEN readings THEN adherence_days END {d} NULLS LAST, patient_id COLLATE "C"'
                       for d in ("asc", "desc")},
}
PANEL_DEFAULT_ORDER = {"triage": "desc", "name": "asc", "last_reading": "desc", "days_with_data": "asc"}

_PANEL = f"""
WITH visible AS MATERIALIZED (
    SELECT c.patient_id, bool_or('readings' = ANY(c.scopes)) AS readings, bool_or('alerts' = ANY(c.scopes)) AS alerts
      FROM consents c
     WHERE c.care_team_id = ANY(%(teams)s) AND {_ACTIVE}
     GROUP BY c.patient_id
    UNION ALL
    SELECT %(own)s::text, true, true WHERE %(own)s::text IS NOT NULL
), base AS MATERIALIZED (
    -- What the caller's consent does not cover counts as nothing: a filter never reveals a hidden alert.
    SELECT b.*, b.critical > 0 AS is_critical, b.unacknowledged > 0 AS is_unacknowledged,
           b.needs_review > 0 AS is_needs_review, b.missing_data > 0 AS is_missing_data,
           b.readings AND b.adherence_days < 16 AS is_below_16_days, b.device_problem > 0 AS is_device_problem
      FROM (SELECT v.patient_id, v.readings, v.alerts, p.display_name,
                   CASE WHEN v.alerts THEN coalesce(pp.open_critical, 0) ELSE 0 END AS critical,
                   CASE WHEN v.alerts THEN coalesce(pp.open_warning, 0) ELSE 0 END AS warning,
                   CASE WHEN v.alerts THEN coalesce(pp.open_info, 0) ELSE 0 END AS info,
                   CASE WHEN v.alerts THEN coalesce(pp.unacknowledged, 0) ELSE 0 END AS unacknowledged,
                   CASE WHEN v.alerts THEN coalesce(pp.needs_review, 0) ELSE 0 END AS needs_review,
                   CASE WHEN v.alerts THEN coalesce(pp.missing_data, 0) ELSE 0 END AS missing_data,
                   CASE WHEN v.alerts THEN coalesce(pp.device_problem, 0) ELSE 0 END AS device_problem,
                   -- days on or after first_day = all days minus those before it (reading_days is ascending)
                   coalesce(cardinality(pp.reading_days)
                            - width_bucket(%(first_day)s::date - 1, pp.reading_days), 0) AS adherence_days,
                   CASE WHEN v.readings THEN pp.last_reading_at END AS last_reading_at
              FROM visible v JOIN patients p ON p.id = v.patient_id
              LEFT JOIN patient_panel pp ON pp.patient_id = v.patient_id) AS b
), counts AS (
    -- Over the whole panel, whatever the search and filters: what each filter would find.
    SELECT json_build_object('all', count(*), 'critical', count(*) FILTER (WHERE is_critical),
                             'unacknowledged', count(*) FILTER (WHERE is_unacknowledged),
                             'needs_review', count(*) FILTER (WHERE is_needs_review),
                             'missing_data', count(*) FILTER (WHERE is_missing_data),
                             'below_16_days', count(*) FILTER (WHERE is_below_16_days),
                             'device_problem', count(*) FILTER (WHERE is_device_problem))::text AS counts
      FROM base
), matching AS (
    SELECT b.* FROM base b
     WHERE (%(q)s::text IS NULL OR b.patient_id ILIKE %(q)s OR b.display_name ILIKE %(q)s)
       AND (is_critical OR NOT %(critical)s) AND (is_unacknowledged OR NOT %(unacknowledged)s)
       AND (is_needs_review OR NOT %(needs_review)s) AND (is_missing_data OR NOT %(missing_data)s)
       AND (is_below_16_days OR NOT %(below_16_days)s) AND (is_device_problem OR NOT %(device_problem)s)
), ranked AS MATERIALIZED (
    -- Narrow rows only: the sort never carries the JSON. Byte order for ids: locale-aware comparison of
    -- 10 000 ids costs more than the rest of the sort.
    SELECT m.* FROM matching m ORDER BY {{order}} LIMIT %(limit)s OFFSET %(offset)s
), ordered AS MATERIALIZED (
    SELECT r.*, row_number() OVER () AS position FROM ranked r
), audit AS (
    -- The access is audited by the statement that reads the data: one row naming every patient shown.
    INSERT INTO audit_log (subject, role, care_teams, action, patient_ids, outcome, status, request_id)
    SELECT %(subject)s, %(role)s, %(teams)s, %(action)s, array_agg(patient_id), 'allowed', 200, %(request_id)s
      FROM ordered HAVING count(*) > 0
)
SELECT (SELECT count(*) FROM matching), (SELECT counts FROM counts),
       array_agg(r.patient_id ORDER BY r.position), string_agg(json_build_object(
           'patient_id', r.patient_id, 'display_name', r.display_name,
           'open_alerts', CASE WHEN r.alerts THEN json_build_object('critical', r.critical, 'warning', r.warning,
                                                                   'info', r.info) END,
           'unacknowledged', CASE WHEN r.alerts THEN r.unacknowledged END,
           'needs_review', CASE WHEN r.alerts THEN r.needs_review END,
           'missing_data', CASE WHEN r.alerts THEN r.missing_data END,
           'device_problem', CASE WHEN r.alerts THEN r.device_problem END,
           'adherence', CASE WHEN r.readings THEN json_build_object('days_with_readings', r.adherence_days,
                                                                   'meets_16_day_rule', r.adherence_days >= 16) END,
           'last_reading_at', r.last_reading_at,
           'latest', CASE WHEN r.readings THEN coalesce(pp.latest, '{{}}'::json) END,
           'categories', CASE WHEN r.readings THEN coalesce(pp.categories, '{{}}'::json) END,
           -- Issue 25: the current 30-day period's days so far and the days still needed (page rows only).
           'programme', CASE WHEN r.readings THEN programme_panel_status(r.patient_id) END)::text,
           ',' ORDER BY r.position)
  FROM ordered r LEFT JOIN patient_panel pp ON pp.patient_id = r.patient_id
"""


def _like_pattern(text: str) -> str:
    """``text`` anywhere, taken literally (``%``, ``_`` and the escape character match themselves)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def panel_json(conn: Any, *, care_teams: Sequence[str], own_patient: str | None, first_day: str, limit: int,
               offset: int, audit: Mapping[str, str], q: str | None = None, filters: Sequence[str] = (),
               sort: str = "triage", order: str | None = None) -> tuple[int, str, list[str], str]:
    """The caller's panel: how many patients match (``q``: name or id, case-insensitive substring; every
    filter of ``filters``), the counts of each filter over the whole panel (JSON text), and the page: ids
    and their JSON objects joined by commas. Default order is triage (open critical, warning, info alerts,
    then the fewest days with readings, at risk of missing the 16-day rule, then id). The same statement
    writes the audit row naming the patients on the page (``audit``: subject, role, action, request_id)."""
    unknown = set(filters) - set(PANEL_FILTERS)
    if unknown or sort not in PANEL_SORTS or order not in (None, "asc", "desc"):
        raise ValueError(f"unknown panel filter, sort or order: {sorted(unknown) or sort or order}")
    sql = _PANEL.replace("{order}", PANEL_SORTS[sort][order or PANEL_DEFAULT_ORDER[sort]])
    params: dict[str, Any] = {"teams": list(care_teams), "own": own_patient, "first_day": first_day, "limit": limit,
                              "offset": offset, "q": _like_pattern(q) if q else None, **audit}
    params |= {name: name in filters for name in PANEL_FILTERS}
    with conn.transaction():
        # The page's JSON (about 700 bytes a patient) is ordered in memory, not in a temporary file.
        conn.execute("SET LOCAL work_mem = '64MB'")
        row = conn.execute(sql, params).fetchone()
    assert row is not None  # aggregates without GROUP BY: always one row
    total, counts, ids, objects = row
    return total, counts, ids or [], objects or ""


def patient_row(conn: Any, patient_id: str) -> dict[str, Any] | None:
    return _dict(conn, "SELECT id, display_name, birth_date, sex, timezone, created_at FROM patients WHERE id = %s",
                 (patient_id,))


def open_alert_counts(conn: Any, patient_id: str) -> dict[str, int]:
    rows = conn.execute("SELECT severity, count(*) FROM alerts WHERE patient_id = %s AND status <> 'resolved'"
                        " GROUP BY severity", (patient_id,)).fetchall()
    counts = {"critical": 0, "warning": 0, "info": 0}
    counts.update({severity: n for severity, n in rows})
    return counts


def twin_state(conn: Any, patient_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT state FROM twins WHERE patient_id = %s", (patient_id,)).fetchone()
    return row[0] if row else None


# --- readings ------------------------------------------------------------------------------------------

_READING_COLUMNS = """
r.id, r.patient_id, r.kind, r.measured_at, r.device_time, r.clock_judgement, r.clock_offset_s, r.user_index,
r.flags, r.late, r.received_at, r.gateway_id, r.sequence,
json_build_object('uid', r.device_uid, 'transport', d.transport, 'profile', d.profile, 'model', d.model,
                  'serial', d.serial, 'manufacturer', d.manufacturer) AS device,
(SELECT json_object_agg(o.metric, json_build_object('value', coalesce(to_json(o.value), to_json(o.value_list)),
                                                    'unit', o.unit, 'original_value', o.original_value,
                                                    'original_unit', o.original_unit))
   FROM observations o WHERE o.reading_id = r.id) AS values
"""


def readings_page(conn: Any, patient_id: str, *, kinds: Sequence[str] | None, metric: str | None,
                  since: datetime | None, until: datetime | None, after: tuple[datetime, str] | None,
                  limit: int) -> list[dict[str, Any]]:
    """Newest first; ``after`` is the (measured_at, id) of the last row of the previous page."""
    return _dicts(
        conn,
        f"""
        SELECT {_READING_COLUMNS}
          FROM readings r LEFT JOIN devices d ON d.uid = r.device_uid
         WHERE r.patient_id = %(patient)s
           AND (%(kinds)s::text[] IS NULL OR r.kind = ANY(%(kinds)s))
           AND (%(since)s::timestamptz IS NULL OR r.measured_at >= %(since)s)
           AND (%(until)s::timestamptz IS NULL OR r.measured_at < %(until)s)
           AND (%(metric)s::text IS NULL OR EXISTS (SELECT 1 FROM observations o
                                                     WHERE o.reading_id = r.id AND o.metric = %(metric)s))
           AND (%(after_t)s::timestamptz IS NULL OR (r.measured_at, r.id) < (%(after_t)s, %(after_id)s))
         ORDER BY r.measured_at DESC, r.id DESC
         LIMIT %(limit)s
        """,
        {"patient": patient_id, "kinds": list(kinds) if kinds else None, "since": since, "until": until,
         "metric": metric, "after_t": after[0] if after else None, "after_id": after[1] if after else None,
         "limit": limit},
    )


# --- trends and summaries ------------------------------------------------------------------------------

PERCENTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def trend(conn: Any, patient_id: str, metric: str, bucket: str, since: datetime, until: datetime,
          tz: str) -> list[dict[str, Any]]:
    """Buckets (local to ``tz``) with count, mean, min, max and percentiles, oldest first."""
    assert bucket in ("hour", "day", "week", "month")
    return _dicts(
        conn,
        """
        SELECT date_trunc(%(bucket)s, o.measured_at, %(tz)s) AS bucket_start,
               count(*) AS count, avg(o.value) AS mean, min(o.value) AS min, max(o.value) AS max,
               stddev_samp(o.value) AS sd,
               percentile_cont(%(percentiles)s::float8[]) WITHIN GROUP (ORDER BY o.value) AS percentiles
          FROM observations o
         WHERE o.patient_id = %(patient)s AND o.metric = %(metric)s
           AND o.measured_at >= %(since)s AND o.measured_at < %(until)s
           AND o.value IS NOT NULL AND NOT (o.flags && %(excluded)s::text[])
         GROUP BY 1 ORDER BY 1
        """,
        {"bucket": bucket, "tz": tz, "patient": patient_id, "metric": metric, "since": since, "until": until,
         "percentiles": list(PERCENTILES), "excluded": EXCLUDED},
    )


def glucose_stats(conn: Any, patient_id: str, since: datetime, until: datetime, tz: str) -> dict[str, Any]:
    """Counts per International Consensus range, mean and SD of glucose (mg/dL) in [since, until)."""
    row = _dict(
        conn,
        """
        SELECT count(*) AS count, avg(value) AS mean, stddev_samp(value) AS sd,
               count(*) FILTER (WHERE value < 54) AS below_54,
               count(*) FILTER (WHERE value >= 54 AND value < 70) AS from_54_to_69,
               count(*) FILTER (WHERE value >= 70 AND value <= 180) AS from_70_to_180,
               count(*) FILTER (WHERE value > 180 AND value <= 250) AS from_181_to_250,
               count(*) FILTER (WHERE value > 250) AS above_250,
               count(DISTINCT date_trunc('day', measured_at, %(tz)s)) AS days_with_data,
               min(measured_at) AS first, max(measured_at) AS last
          FROM observations
         WHERE patient_id = %(patient)s AND metric = 'glucose' AND measured_at >= %(since)s AND measured_at < %(until)s
           AND value IS NOT NULL AND NOT (flags && %(excluded)s::text[])
        """,
        {"patient": patient_id, "since": since, "until": until, "tz": tz, "excluded": EXCLUDED},
    )
    assert row is not None
    return row


def bp_pairs(conn: Any, patient_id: str, since: datetime, until: datetime, tz: str) -> list[dict[str, Any]]:
    """One row per cuff reading with systolic, diastolic, pulse and the local hour of measurement."""
    return _dicts(
        conn,
        """
        SELECT r.id, r.measured_at, extract(hour FROM r.measured_at AT TIME ZONE %(tz)s)::int AS local_hour,
               max(o.value) FILTER (WHERE o.metric = 'systolic') AS systolic,
               max(o.value) FILTER (WHERE o.metric = 'diastolic') AS diastolic,
               max(o.value) FILTER (WHERE o.metric = 'pulse_rate') AS pulse_rate
          FROM readings r JOIN observations o ON o.reading_id = r.id
         WHERE r.patient_id = %(patient)s AND r.kind = 'blood_pressure'
           AND r.measured_at >= %(since)s AND r.measured_at < %(until)s AND NOT (r.flags && %(excluded)s::text[])
         GROUP BY r.id, r.measured_at ORDER BY r.measured_at
        """,
        {"patient": patient_id, "since": since, "until": until, "tz": tz, "excluded": EXCLUDED},
    )


def metric_series(conn: Any, patient_id: str, metric: str, since: datetime,
                  until: datetime) -> list[tuple[datetime, float]]:
    return [
        (t, v) for t, v in conn.execute(
            "SELECT measured_at, value FROM observations WHERE patient_id = %s AND metric = %s"
            " AND measured_at >= %s AND measured_at < %s AND value IS NOT NULL AND NOT (flags && %s::text[])"
            " ORDER BY measured_at",
            (patient_id, metric, since, until, EXCLUDED),
        ).fetchall()
    ]


def reading_days(conn: Any, patient_id: str, since: datetime, until: datetime) -> list[str]:
    """Distinct UTC days with at least one patient reading (any kind), ISO dates."""
    rows = conn.execute(
        "SELECT DISTINCT (measured_at AT TIME ZONE 'UTC')::date FROM readings WHERE patient_id = %s"
        " AND measured_at >= %s AND measured_at < %s AND NOT (flags && %s::text[]) ORDER BY 1",
        (patient_id, since, until, EXCLUDED),
    ).fetchall()
    return [r[0].isoformat() for r in rows]


# --- alerts --------------------------------------------------------------------------------------------

def alerts_for_care_teams(conn: Any, care_teams: Sequence[str], *, statuses: Sequence[str] | None,
                          severities: Sequence[str] | None, since: datetime | None, before_id: int | None,
                          limit: int, review_states: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Alerts of every patient whose active consent covers ``alerts`` for one of these teams, newest first."""
    return _dicts(
        conn,
        f"""
        SELECT {ALERT_COLUMNS} FROM alerts a
         WHERE a.patient_id IN (SELECT c.patient_id FROM consents c
                                 WHERE c.care_team_id = ANY(%(teams)s) AND 'alerts' = ANY(c.scopes) AND {_ACTIVE})
           AND (%(statuses)s::text[] IS NULL OR a.status = ANY(%(statuses)s))
           AND (%(reviews)s::text[] IS NULL OR a.review_state = ANY(%(reviews)s))
           AND (%(severities)s::text[] IS NULL OR a.severity = ANY(%(severities)s))
           AND (%(since)s::timestamptz IS NULL OR a.opened_at >= %(since)s)
           AND (%(before)s::bigint IS NULL OR a.id < %(before)s)
         ORDER BY a.id DESC LIMIT %(limit)s
        """,
        {"teams": list(care_teams), "statuses": list(statuses) if statuses else None,
         "reviews": list(review_states) if review_states else None,
         "severities": list(severities) if severities else None, "since": since, "before": before_id,
         "limit": limit},
    )


def alert_patient(conn: Any, alert_id: int) -> str | None:
    row = conn.execute("SELECT patient_id FROM alerts WHERE id = %s", (alert_id,)).fetchone()
    return row[0] if row else None


# --- devices -------------------------------------------------------------------------------------------

_ASSIGNMENT = """
(SELECT coalesce(json_agg(json_build_object(
            'id', a.id, 'user_index', a.user_index, 'patient_id', a.patient_id,
            'valid_from', nullif(a.valid_from, '-infinity'), 'valid_to', a.valid_to) ORDER BY a.id), '[]')
   FROM device_assignments a WHERE a.device_uid = d.uid AND (a.valid_to IS NULL OR a.valid_to > now())
   {extra}) AS assignments
"""


def list_devices(conn: Any, *, limit: int, offset: int) -> list[dict[str, Any]]:
    return _dicts(conn, f"SELECT d.*, {_ASSIGNMENT.format(extra='')} FROM devices d ORDER BY d.uid"
                        f" LIMIT %s OFFSET %s", (limit, offset))


def patient_devices(conn: Any, patient_id: str) -> list[dict[str, Any]]:
    return _dicts(
        conn,
        f"SELECT d.*, {_ASSIGNMENT.format(extra='AND a.patient_id = %(p)s')} FROM devices d"
        f" WHERE EXISTS (SELECT 1 FROM device_assignments a WHERE a.device_uid = d.uid AND a.patient_id = %(p)s"
        f" AND (a.valid_to IS NULL OR a.valid_to > now())) ORDER BY d.uid",
        {"p": patient_id},
    )


def unassigned_queue(conn: Any, *, limit: int) -> list[dict[str, Any]]:
    """Devices (and user indexes) with readings stored but no patient: what needs assigning
    (the ``unassigned_devices`` view of migration 0002, shared with ``rpm-cloud assign --list``)."""
    return _dicts(
        conn,
        "SELECT device_uid, user_index, profile, model, gateway_id, readings, first_measured_at, last_measured_at"
        " FROM unassigned_devices ORDER BY last_stored_at DESC LIMIT %s",
        (limit,),
    )


# --- daily statistics (migration 0420): exact per-day stats kept lazily -------------------------------

_DAY_STATS_INSERT = """
INSERT INTO observation_day_stats (patient_id, metric, tz, day, count, mean, min, max, sd, percentiles)
SELECT %(patient)s, %(metric)s, %(tz)s, (o.measured_at AT TIME ZONE %(tz)s)::date AS day,
       count(*), avg(o.value), min(o.value), max(o.value), stddev_samp(o.value),
       percentile_cont(%(percentiles)s::float8[]) WITHIN GROUP (ORDER BY o.value)
  FROM observations o
 WHERE o.patient_id = %(patient)s AND o.metric = %(metric)s
   AND o.value IS NOT NULL AND NOT (o.flags && %(excluded)s::text[])
   AND (%(first)s::date IS NULL OR o.measured_at >= (%(first)s::date::timestamp AT TIME ZONE %(tz)s))
   AND (%(last)s::date IS NULL OR o.measured_at < ((%(last)s::date + 1)::timestamp AT TIME ZONE %(tz)s))
   AND (%(days)s::date[] IS NULL OR (o.measured_at AT TIME ZONE %(tz)s)::date = ANY(%(days)s::date[]))
 GROUP BY 4
"""


def day_stats_maintained(conn: Any) -> bool:
    """Whether the day-stale triggers exist (statement triggers of 0420 on plain PostgreSQL, row triggers of
    0090/0425 on a TimescaleDB hypertable); without them daily trends come from the raw values."""
    return conn.execute("SELECT 1 FROM pg_trigger WHERE tgname = 'observations_day_stale_insert'"
                        " AND tgrelid = 'observations'::regclass").fetchone() is not None


def refresh_day_stats(conn: Any, patient_id: str, metric: str, tz: str) -> int:
    """Recompute the days whose values changed since the last read; returns how many UTC days were stale
    (-1: a first build, or the patient's time zone changed)."""
    params = {"patient": patient_id, "metric": metric, "tz": tz, "percentiles": list(PERCENTILES),
              "excluded": EXCLUDED, "first": None, "last": None, "days": None}
    with conn.transaction():
        # One refresher per patient and metric; a second request waits and then finds nothing stale.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))", (patient_id, metric))
        # Days cut in another time zone are wrong once the patient's zone changed.
        conn.execute("DELETE FROM observation_day_stats WHERE patient_id = %s AND metric = %s AND tz <> %s",
                     (patient_id, metric, tz))
        built = conn.execute("SELECT 1 FROM observation_day_stats WHERE patient_id = %s AND metric = %s AND tz = %s"
                             " LIMIT 1", (patient_id, metric, tz)).fetchone() is not None
        stale = [r[0] for r in conn.execute("DELETE FROM observation_day_stale WHERE patient_id = %s AND metric = %s"
                                            " RETURNING day", (patient_id, metric)).fetchall()]
        if not built:
            conn.execute(_DAY_STATS_INSERT, params)
            return -1
        if not stale:
            return 0
        # A UTC day overlaps the local day before, of, or after it, whatever the zone's offset.
        days = sorted({day + timedelta(days=k) for day in stale for k in (-1, 0, 1)})
        conn.execute("DELETE FROM observation_day_stats WHERE patient_id = %s AND metric = %s AND tz = %s"
                     " AND day = ANY(%s)", (patient_id, metric, tz, days))
        conn.execute(_DAY_STATS_INSERT, {**params, "first": days[0], "last": days[-1], "days": days})
        return len(stale)


def day_stats(conn: Any, patient_id: str, metric: str, tz: str, first: date, last: date) -> list[dict[str, Any]]:
    """Stored daily statistics for local days ``first`` .. ``last`` (inclusive), in :func:`trend`'s shape."""
    return _dicts(
        conn,
        "SELECT (day::timestamp AT TIME ZONE %(tz)s) AS bucket_start, count, mean, min, max, sd, percentiles"
        "  FROM observation_day_stats WHERE patient_id = %(patient)s AND metric = %(metric)s AND tz = %(tz)s"
        "   AND day >= %(first)s AND day <= %(last)s ORDER BY day",
        {"patient": patient_id, "metric": metric, "tz": tz, "first": first, "last": last},
    )


# --- FHIR Device (cloud.twin.fhir.device_resource) ----------------------------------------------------

# The same digest as cloud.twin.fhir.resource_digest: a Device id is found without a column of its own
# (a scan of devices, which holds one row per device, not per reading).
_DIGEST = "left(encode(sha256({}::bytea), 'hex'), 32)"  # matches the indexes of migration 0550
_FHIR_DEVICE = """
SELECT d.uid, d.transport, d.profile, d.model, d.serial, d.manufacturer, d.battery, d.bound_gateway_id, d.last_seen,
       array(SELECT DISTINCT a.patient_id FROM device_assignments a WHERE a.device_uid = d.uid ORDER BY 1)
           AS patients,
       array(SELECT DISTINCT a.patient_id FROM device_assignments a WHERE a.device_uid = d.uid
                AND (a.valid_to IS NULL OR a.valid_to > now()) ORDER BY 1) AS current_patients
  FROM devices d
"""


def fhir_device(conn: Any, digest: str) -> dict[str, Any] | None:
    """The device whose uid has this digest, with every patient it was ever assigned to (``patients``) and
    those it is assigned to now (``current_patients``)."""
    return _dict(conn, f"{_FHIR_DEVICE} WHERE {_DIGEST.format('d.uid')} = %s", (digest,))


def fhir_patient_devices(conn: Any, patient_id: str) -> list[dict[str, Any]]:
    """Every device ever assigned to the patient, in :func:`fhir_device`'s shape."""
    return _dicts(conn, f"{_FHIR_DEVICE} WHERE EXISTS (SELECT 1 FROM device_assignments a WHERE a.device_uid = d.uid"
                        f" AND a.patient_id = %s) ORDER BY d.uid", (patient_id,))


def fhir_gateway(conn: Any, digest: str, *, own_patient: str | None,
                 care_teams: Sequence[str]) -> dict[str, Any] | None:
    """The gateway whose id has this digest, with one patient (or none) of a device bound to it that is the
    caller's own or consented to their care teams for readings: a candidate the API still authorises."""
    return _dict(
        conn,
        f"""
        SELECT d.bound_gateway_id AS gateway_id,
               (SELECT a.patient_id FROM devices b JOIN device_assignments a ON a.device_uid = b.uid
                 WHERE b.bound_gateway_id = d.bound_gateway_id
                   AND (a.patient_id = %(own)s OR EXISTS (
                        SELECT 1 FROM consents c WHERE c.patient_id = a.patient_id AND c.care_team_id = ANY(%(teams)s)
                           AND 'readings' = ANY(c.scopes) AND {_ACTIVE}))
                 LIMIT 1) AS patient_id
          FROM devices d
         WHERE d.bound_gateway_id IS NOT NULL AND {_DIGEST.format('d.bound_gateway_id')} = %(digest)s
         LIMIT 1
        """,
        {"own": own_patient, "teams": list(care_teams), "digest": digest},
    )


# --- the workspace: alert inbox, assignment, live stream (migration 0590) -------------------------------

# "Needs a human" (contracts A): open and nobody acknowledged it, or resolved before anyone reviewed it.
_NEEDS_HUMAN = "(a.status = 'open' OR a.review_state = 'pending')"
_SEVERITY_RANK = "CASE a.severity WHEN 'critical' THEN 3 WHEN 'warning' THEN 2 ELSE 1 END"
_ALERTS_VISIBLE = f"""
SELECT c.patient_id FROM consents c
 WHERE c.care_team_id = ANY(%(teams)s) AND 'alerts' = ANY(c.scopes) AND {_ACTIVE}
UNION
SELECT %(own)s::text WHERE %(own)s::text IS NOT NULL
"""


def inbox(conn: Any, *, care_teams: Sequence[str], own_patient: str | None, subject: str,
          severities: Sequence[str] | None, categories: Sequence[str] | None, assigned: str | None,
          before_id: int | None, limit: int) -> dict[str, Any]:
    """What needs a human across the patients whose ``alerts`` the caller may see (their active consents, or
    their own record), most severe first, then still open before resolved-awaiting-review (an ongoing crisis
    before one that is over), then newest (opened), then id: ``ids`` of one page after the alert
    ``before_id`` (its place in that order), ``total`` matching the filters and ``counts`` over the whole
    inbox. ``assigned``: ``me`` (assigned to ``subject``) or ``unassigned``."""
    row = _dict(
        conn,
        f"""
        WITH needing AS MATERIALIZED (
            SELECT a.id, a.severity, a.category, a.assigned_to, a.opened_at, {_SEVERITY_RANK} AS rank,
                   a.status = 'resolved' AS needs_review, a.status <> 'resolved' AS live
              FROM alerts a
             WHERE {_NEEDS_HUMAN} AND a.patient_id IN ({_ALERTS_VISIBLE})
        ), matching AS MATERIALIZED (
            SELECT n.* FROM needing n
             WHERE (%(severities)s::text[] IS NULL OR n.severity = ANY(%(severities)s))
               AND (%(categories)s::text[] IS NULL OR n.category = ANY(%(categories)s))
               AND (%(assigned)s::text IS NULL OR (%(assigned)s = 'me' AND n.assigned_to = %(subject)s)
                    OR (%(assigned)s = 'unassigned' AND n.assigned_to IS NULL))
        ), cursor AS (
            SELECT {_SEVERITY_RANK} AS rank, a.status <> 'resolved' AS live, a.opened_at, a.id
              FROM alerts a WHERE a.id = %(before)s
        )
        SELECT (SELECT count(*) FROM matching) AS total,
               (SELECT json_build_object(
                    'all', count(*), 'critical', count(*) FILTER (WHERE severity = 'critical'),
                    'warning', count(*) FILTER (WHERE severity = 'warning'),
                    'info', count(*) FILTER (WHERE severity = 'info'),
                    'needs_review', count(*) FILTER (WHERE needs_review),
                    'unassigned', count(*) FILTER (WHERE assigned_to IS NULL),
                    'assigned_to_me', count(*) FILTER (WHERE assigned_to = %(subject)s)) FROM needing) AS counts,
               ARRAY(SELECT m.id FROM matching m
                      WHERE %(before)s::bigint IS NULL
                         OR (m.rank, m.live, m.opened_at, m.id) < (SELECT c.rank, c.live, c.opened_at, c.id
                                                                     FROM cursor c)
                      ORDER BY m.rank DESC, m.live DESC, m.opened_at DESC, m.id DESC LIMIT %(limit)s) AS ids
        """,
        {"teams": list(care_teams), "own": own_patient, "subject": subject,
         "severities": list(severities) if severities else None,
         "categories": list(categories) if categories else None, "assigned": assigned, "before": before_id,
         "limit": limit},
    )
    assert row is not None
    return row


def workspace_alerts(conn: Any, ids: Sequence[int]) -> list[dict[str, Any]]:
    """These alerts in this order, each as ``/v1/alerts`` gives it plus ``assigned_to``, ``assigned_at`` and
    ``patient_display_name``."""
    return _dicts(
        conn,
        f"""
        SELECT a.*, p.display_name AS patient_display_name
          FROM unnest(%s::bigint[]) WITH ORDINALITY AS page (id, position)
          JOIN (SELECT {ALERT_COLUMNS}, assigned_to, assigned_at FROM alerts) a ON a.id = page.id
          JOIN patients p ON p.id = a.patient_id
         ORDER BY page.position
        """,
        (list(ids),),
    )


def assign_alert(conn: Any, alert_id: int, to: str | None, by: str, now: datetime) -> dict[str, Any] | None:
    """Assign the alert to ``to`` (a subject) or clear it (None), with a ``comment`` event in its history
    (``detail``: ``assigned_to``, ``previously``, ``text``) when that changes anything. None when the alert
    needs no human any more (resolved, and reviewed or never needing review)."""
    with conn.transaction():
        before = conn.execute("SELECT assigned_to, status = 'open' OR review_state = 'pending' FROM alerts"
                              " WHERE id = %s FOR UPDATE", (alert_id,)).fetchone()
        if before is None or not before[1]:
            return None
        if before[0] != to:
            conn.execute("UPDATE alerts SET assigned_to = %s, assigned_at = CASE WHEN %s::text IS NULL THEN NULL"
                         " ELSE %s::timestamptz END WHERE id = %s", (to, to, now, alert_id))
            text = f"assigned to {to}" if to else f"unassigned (was {before[0]})"
            conn.execute("INSERT INTO alert_events (alert_id, at, event, actor, detail) VALUES (%s, %s, 'comment',"
                         " %s, %s)", (alert_id, now, by,
                                      Jsonb({"assigned_to": to, "previously": before[0], "text": text})))
        return workspace_alerts(conn, [alert_id])[0]


_STREAM_EVENT = """
json_build_object('alert_id', e.alert_id, 'patient_id', a.patient_id, 'event', e.event, 'severity', a.severity,
                  'status', a.status, 'review_state', a.review_state,
                  'at', to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text
"""


def alert_events_after(conn: Any, *, after_id: int, care_teams: Sequence[str], own_patient: str | None,
                       limit: int) -> list[tuple[int, str, str]]:
    """Alert events after ``after_id`` of patients whose alerts the caller may see, oldest first, at most
    ``limit``: (event id, patient id, the stream's JSON, as migration 0590's notification writes it, with the
    alert's current severity, status and review state)."""
    return conn.execute(
        f"""
        SELECT e.id, a.patient_id, {_STREAM_EVENT}
          FROM alert_events e JOIN alerts a ON a.id = e.alert_id
         WHERE e.id > %(after)s AND a.patient_id IN ({_ALERTS_VISIBLE})
         ORDER BY e.id LIMIT %(limit)s
        """,
        {"after": after_id, "teams": list(care_teams), "own": own_patient, "limit": limit},
    ).fetchall()


ALERT_EVENTS_SINCE = (f"SELECT e.id, a.patient_id, {_STREAM_EVENT} FROM alert_events e JOIN alerts a"
                      " ON a.id = e.alert_id WHERE e.id > %s ORDER BY e.id LIMIT %s")
"""Every patient's alert events after an id, at most a limit: what a stream listener missed while reconnecting
(run on its own asynchronous connection, hence a statement rather than a function)."""


def audit_stream_patient(conn: Any, *, subject: str, role: str, care_teams: Sequence[str], own_patient: str | None,
                         patient_id: str, request_id: str) -> bool:
    """Whether the caller may see ``patient_id``'s alerts now; if so, the access is audited in the same
    statement (one row naming the patient, action ``GET /v1/stream``) before any event of theirs is sent."""
    row = conn.execute(
        f"""
        WITH allowed AS (SELECT 1 WHERE %(patient)s IN ({_ALERTS_VISIBLE}))
        INSERT INTO audit_log (subject, role, care_teams, action, patient_ids, outcome, status, request_id)
        SELECT %(subject)s, %(role)s, %(teams)s, 'GET /v1/stream', ARRAY[%(patient)s::text], 'allowed', 200,
               %(request_id)s FROM allowed
        RETURNING id
        """,
        {"patient": patient_id, "teams": list(care_teams), "own": own_patient, "subject": subject, "role": role,
         "request_id": request_id},
    ).fetchone()
    return row is not None
