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

from gateway.metrics import EXCLUDED_FLAGS

EXCLUDED = sorted(EXCLUDED_FLAGS)
"""Flags that make a value not the patient's (failed measurement, control solution): left out of maths."""
SCOPES = ("readings", "alerts", "twin")
_ACTIVE = "c.revoked_at IS NULL AND c.granted_at <= now() AND (c.expires_at IS NULL OR c.expires_at > now())"


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
    conn.execute(
        "INSERT INTO audit_log (subject, role, care_teams, action, patient_ids, outcome, status, request_id, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (subject, role, list(care_teams), action, list(patient_ids), outcome, status, request_id,
         Jsonb(dict(detail)) if detail is not None else None),
    )


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

# The panel reads patient_panel (a projection of the twin kept by a trigger, migration 0410) and counts
# open alerts; rows are ranked on narrow keys and the page is turned into JSON by PostgreSQL, so 10 000
# patients do not go through Python objects one field at a time.
_PANEL = f"""
WITH visible AS MATERIALIZED (
    SELECT c.patient_id, bool_or('readings' = ANY(c.scopes)) AS readings, bool_or('alerts' = ANY(c.scopes)) AS alerts
      FROM consents c
     WHERE c.care_team_id = ANY(%(teams)s) AND {_ACTIVE}
     GROUP BY c.patient_id
    UNION ALL
    SELECT %(own)s::text, true, true WHERE %(own)s::text IS NOT NULL
), open_alerts AS (
    SELECT a.patient_id,
           count(*) FILTER (WHERE a.severity = 'critical') AS critical,
           count(*) FILTER (WHERE a.severity = 'warning') AS warning,
           count(*) FILTER (WHERE a.severity = 'info') AS info
      FROM alerts a JOIN visible v ON v.patient_id = a.patient_id AND v.alerts
     WHERE a.status <> 'resolved'
     GROUP BY a.patient_id
), ranked AS MATERIALIZED (
    -- Narrow rows only: the sort never carries the JSON.
    SELECT v.patient_id, v.readings, v.alerts,
           coalesce(oa.critical, 0) AS critical, coalesce(oa.warning, 0) AS warning, coalesce(oa.info, 0) AS info,
           -- days on or after first_day = all days minus those before it (reading_days is ascending)
           coalesce(cardinality(pp.reading_days)
                    - width_bucket(%(first_day)s::date - 1, pp.reading_days), 0) AS adherence_days
      FROM visible v LEFT JOIN patient_panel pp ON pp.patient_id = v.patient_id
      LEFT JOIN open_alerts oa ON oa.patient_id = v.patient_id
     -- Byte order for the id: locale-aware comparison of 10 000 ids costs more than the rest of the sort.
     ORDER BY critical DESC, warning DESC, info DESC, adherence_days ASC, v.patient_id COLLATE "C"
     LIMIT %(limit)s OFFSET %(offset)s
), ordered AS MATERIALIZED (
    SELECT r.*, row_number() OVER () AS position FROM ranked r
), audit AS (
    -- The access is audited by the statement that reads the data: one row naming every patient shown.
    INSERT INTO audit_log (subject, role, care_teams, action, patient_ids, outcome, status, request_id)
    SELECT %(subject)s, %(role)s, %(teams)s, %(action)s, array_agg(patient_id), 'allowed', 200, %(request_id)s
      FROM ordered HAVING count(*) > 0
)
SELECT array_agg(r.patient_id ORDER BY r.position), string_agg(json_build_object(
           'patient_id', r.patient_id, 'display_name', p.display_name,
           'open_alerts', CASE WHEN r.alerts THEN json_build_object('critical', r.critical, 'warning', r.warning,
                                                                   'info', r.info) END,
           'adherence', CASE WHEN r.readings THEN json_build_object('days_with_readings', r.adherence_days,
                                                                   'meets_16_day_rule', r.adherence_days >= 16) END,
           'latest', CASE WHEN r.readings THEN coalesce(pp.latest, '{{}}'::json) END,
           'categories', CASE WHEN r.readings THEN coalesce(pp.categories, '{{}}'::json) END)::text,
           ',' ORDER BY r.position)
  FROM ordered r JOIN patients p ON p.id = r.patient_id LEFT JOIN patient_panel pp ON pp.patient_id = r.patient_id
"""


def panel_json(conn: Any, *, care_teams: Sequence[str], own_patient: str | None, first_day: str, limit: int,
               offset: int, audit: Mapping[str, str]) -> tuple[list[str], str]:
    """The visible patients' ids and their JSON objects joined by commas (one row from PostgreSQL), in triage
    order: open critical, warning, info alerts, then the fewest days with readings (at risk of missing the
    16-day rule), then id. The same statement writes the audit row (``audit``: subject, role, action,
    request_id)."""
    with conn.transaction():
        # The page's JSON (about 700 bytes a patient) is ordered in memory, not in a temporary file.
        conn.execute("SET LOCAL work_mem = '64MB'")
        row = conn.execute(_PANEL, {"teams": list(care_teams), "own": own_patient, "first_day": first_day,
                                    "limit": limit, "offset": offset, **audit}).fetchone()
    if row is None or row[0] is None:
        return [], ""
    return row[0], row[1]


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


def readings_with_values(conn: Any, patient_id: str, *, metrics: Sequence[str] | None, kinds: Sequence[str] | None,
                         ranges: Sequence[tuple[str, datetime]], limit: int) -> list[dict[str, Any]]:
    """Readings in the shape :func:`cloud.twin.fhir.observations_from_row` takes (values by metric)."""
    conditions = ["r.patient_id = %s"]
    params: list[Any] = [patient_id]
    if kinds is not None or metrics is not None:
        # Either: a panel code names a kind of reading, a value code the metric it holds.
        conditions.append("(r.kind = ANY(%s) OR EXISTS (SELECT 1 FROM observations o"
                          " WHERE o.reading_id = r.id AND o.metric = ANY(%s)))")
        params += [list(kinds or ()), list(metrics or ())]
    for op, instant in ranges:
        # op comes from a fixed set (FHIR date prefixes mapped in the route), never from the caller's text.
        assert op in ("<", "<=", ">", ">=")
        conditions.append(f"r.measured_at {op} %s")
        params.append(instant)
    params.append(limit)
    return _dicts(
        conn,
        f"""
        SELECT r.id, r.patient_id, r.device_uid, r.kind, r.measured_at, r.flags, r.body_site,
               coalesce((SELECT json_object_agg(o.metric, json_build_object('value', o.value, 'unit', o.unit))
                           FROM observations o WHERE o.reading_id = r.id AND o.value IS NOT NULL), '{{}}') AS values
          FROM readings r
         WHERE {' AND '.join(conditions)}
         ORDER BY r.measured_at DESC, r.id DESC
         LIMIT %s
        """,
        params,
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
        SELECT a.*, (a.status = 'resolved' AND a.review_state = 'pending') AS needs_review FROM alerts a
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
    """False where observations is a TimescaleDB hypertable (no transition-table triggers there)."""
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
