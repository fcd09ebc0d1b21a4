"""The SQL of programme reports (tables of migration 0620). Always parameterised; plain rows out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from psycopg.rows import dict_row

from cloud.programme import EnrolmentConflict, InvalidTimeEntry, ProgrammeNotFound, TimerConflict
from cloud.programme.rules import Programme, programme_from_rows

_ACTIVE = "c.revoked_at IS NULL AND c.granted_at <= now() AND (c.expires_at IS NULL OR c.expires_at > now())"
TIMER_MAX_MINUTES = 240
"""A timer that ran longer than this was left running: refused rather than believed (enter the minutes)."""


def _dicts(conn: Any, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchall()


def load_programmes(conn: Any) -> dict[str, Programme]:
    """Every programme with its rules (a handful of rows: read per request, never cached)."""
    rules = _dicts(conn, "SELECT * FROM programme_rules ORDER BY programme_id, code", ())
    out = {}
    for row in _dicts(conn, "SELECT id, name, period_days, source FROM programmes ORDER BY id", ()):
        out[row["id"]] = programme_from_rows(row, [r for r in rules if r["programme_id"] == row["id"]])
    return out


def patient_zone(conn: Any, patient_id: str) -> str:
    """The zone the patient's days are cut in (PostgreSQL's check, as the day projection uses)."""
    row = conn.execute("SELECT programme_zone(timezone) FROM patients WHERE id = %s", (patient_id,)).fetchone()
    return row[0] if row else "UTC"


# --- enrolment episodes ---------------------------------------------------------------------------------

_ENROLMENT = "id, patient_id, programme_id, enrolled_on, ended_on, created_at, created_by"


def list_enrolments(conn: Any, patient_id: str) -> list[dict[str, Any]]:
    return _dicts(conn, f"SELECT {_ENROLMENT} FROM programme_enrolments WHERE patient_id = %s ORDER BY enrolled_on",
                  (patient_id,))


def create_enrolment(conn: Any, patient_id: str, programme_id: str, enrolled_on: date, ended_on: date | None,
                     by: str) -> dict[str, Any]:
    """A new episode; refused when it would overlap another of the patient's (checked under the patient's
    row lock, so two requests at once cannot both pass)."""
    with conn.transaction():
        if conn.execute("SELECT 1 FROM programmes WHERE id = %s", (programme_id,)).fetchone() is None:
            raise ProgrammeNotFound(f"no programme {programme_id!r}")
        conn.execute("SELECT 1 FROM patients WHERE id = %s FOR UPDATE", (patient_id,))
        clash = conn.execute(
            "SELECT id, enrolled_on, ended_on FROM programme_enrolments WHERE patient_id = %s"
            " AND enrolled_on <= coalesce(%s::date, 'infinity'::date) AND coalesce(ended_on, 'infinity'::date) >= %s"
            " LIMIT 1", (patient_id, ended_on, enrolled_on)).fetchone()
        if clash:
            raise EnrolmentConflict(f"overlaps episode {clash[0]} ({clash[1]} to {clash[2] or 'ongoing'});"
                                    " end it first")
        rows = _dicts(conn, f"INSERT INTO programme_enrolments (patient_id, programme_id, enrolled_on, ended_on,"
                            f" created_by) VALUES (%s, %s, %s, %s, %s) RETURNING {_ENROLMENT}",
                      (patient_id, programme_id, enrolled_on, ended_on, by))
    return rows[0]


def end_enrolment(conn: Any, patient_id: str, enrolment_id: int, ended_on: date) -> dict[str, Any] | None:
    with conn.transaction():
        row = conn.execute("SELECT enrolled_on, ended_on FROM programme_enrolments WHERE id = %s AND patient_id = %s"
                           " FOR UPDATE", (enrolment_id, patient_id)).fetchone()
        if row is None:
            return None
        if ended_on < row[0]:
            raise EnrolmentConflict(f"an episode cannot end ({ended_on}) before it began ({row[0]})")
        later = conn.execute("SELECT 1 FROM programme_enrolments WHERE patient_id = %s AND id <> %s"
                             " AND enrolled_on > %s AND enrolled_on <= %s", (patient_id, enrolment_id, row[0],
                                                                             ended_on)).fetchone()
        if later:
            raise EnrolmentConflict("that end would overlap a later episode")
        rows = _dicts(conn, f"UPDATE programme_enrolments SET ended_on = %s WHERE id = %s RETURNING {_ENROLMENT}",
                      (ended_on, enrolment_id))
    return rows[0]


# --- clinician time -------------------------------------------------------------------------------------

_ENTRY = ("id, patient_id, person, role, reason, interactive AS interactive_communication, performed_on, minutes,"
          " started_at, stopped_at, alert_id, note, created_at")


def _check_alert(conn: Any, patient_id: str, alert_id: int | None) -> None:
    if alert_id is None:
        return
    row = conn.execute("SELECT patient_id FROM alerts WHERE id = %s", (alert_id,)).fetchone()
    if row is None or row[0] != patient_id:
        raise InvalidTimeEntry(f"alert {alert_id} is not an alert of this patient")


def add_minutes(conn: Any, patient_id: str, *, person: str, role: str, reason: str, interactive: bool,
                performed_on: date, minutes: int, alert_id: int | None, note: str | None) -> dict[str, Any]:
    _check_alert(conn, patient_id, alert_id)
    return _dicts(conn, f"INSERT INTO time_entries (patient_id, person, role, reason, interactive, performed_on,"
                        f" minutes, alert_id, note) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_ENTRY}",
                  (patient_id, person, role, reason, interactive, performed_on, minutes, alert_id, note))[0]


def start_timer(conn: Any, patient_id: str, *, person: str, role: str, reason: str, interactive: bool,
                performed_on: date, at: datetime, alert_id: int | None, note: str | None) -> dict[str, Any]:
    _check_alert(conn, patient_id, alert_id)
    rows = _dicts(conn, f"INSERT INTO time_entries (patient_id, person, role, reason, interactive, performed_on,"
                        f" started_at, alert_id, note) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                        f" ON CONFLICT (patient_id, person) WHERE minutes IS NULL DO NOTHING RETURNING {_ENTRY}",
                  (patient_id, person, role, reason, interactive, performed_on, at, alert_id, note))
    if not rows:
        raise TimerConflict("a timer is already running for you on this patient; stop it first")
    return rows[0]


def stop_timer(conn: Any, patient_id: str, *, person: str, at: datetime, interactive: bool | None,
               note: str | None) -> dict[str, Any]:
    """Whole minutes, rounded down; a timer left running past TIMER_MAX_MINUTES is discarded (409)."""
    with conn.transaction():
        row = conn.execute("SELECT id, started_at FROM time_entries WHERE patient_id = %s AND person = %s"
                           " AND minutes IS NULL FOR UPDATE", (patient_id, person)).fetchone()
        if row is None:
            raise TimerConflict("no timer of yours is running on this patient")
        entry_id, started_at = row
        minutes = max(0, int((at - started_at).total_seconds() // 60))
        if minutes > TIMER_MAX_MINUTES:
            conn.execute("DELETE FROM time_entries WHERE id = %s", (entry_id,))
            raise TimerConflict(f"the timer ran {minutes} minutes (more than {TIMER_MAX_MINUTES}): it was discarded;"
                                " enter the minutes you spent instead")
        return _dicts(conn, f"UPDATE time_entries SET minutes = %s, stopped_at = %s,"
                            f" interactive = coalesce(%s, interactive), note = coalesce(%s, note)"
                            f" WHERE id = %s RETURNING {_ENTRY}", (minutes, at, interactive, note, entry_id))[0]


def list_time_entries(conn: Any, patient_id: str, first: date | None, last: date | None) -> list[dict[str, Any]]:
    return _dicts(conn, f"SELECT {_ENTRY} FROM time_entries WHERE patient_id = %s"
                        f" AND (%s::date IS NULL OR performed_on >= %s) AND (%s::date IS NULL OR performed_on <= %s)"
                        f" ORDER BY performed_on, coalesce(started_at, created_at), id",
                  (patient_id, first, first, last, last))


# --- the report -----------------------------------------------------------------------------------------

# One row per enrolment episode of the team's consented patients (readings scope) overlapping the month:
# its 30-day periods that overlap the month with the distinct days with data of each (and per device),
# the month's first transmission and (one index probe per patient) its last. Days come from the
# programme_device_days projection, never from the readings themselves.
#
# Shaped for 10 000 patients (issue 25's benchmark; EXPLAIN ANALYZE in tests/bench): each period is one
# index range scan of the projection aggregated where it is read (a LATERAL per episode and period), so no
# intermediate set of every day row is materialised, sorted and scanned three times; the zone check (a
# plpgsql function with an exception block: a subtransaction per call) runs once per distinct zone, not
# per patient; and the usual one-device period builds its per-device object without unnesting.
_REPORT = f"""
WITH visible AS MATERIALIZED (
    SELECT DISTINCT c.patient_id FROM consents c
     WHERE c.care_team_id = ANY(%(teams)s) AND 'readings' = ANY(c.scopes) AND {_ACTIVE}
       AND (%(patient)s::text IS NULL OR c.patient_id = %(patient)s)
    UNION
    SELECT %(own)s::text WHERE %(own)s::text IS NOT NULL
), zones AS MATERIALIZED (
    SELECT t.timezone, programme_zone(t.timezone) AS tz
      FROM (SELECT DISTINCT p.timezone FROM patients p JOIN visible v ON v.patient_id = p.id) AS t
), enrol AS MATERIALIZED (
    SELECT e.id, e.patient_id, e.programme_id, e.enrolled_on, e.ended_on, pr.period_days, p.display_name,
           z.tz
      FROM programme_enrolments e
      JOIN visible v ON v.patient_id = e.patient_id
      JOIN programmes pr ON pr.id = e.programme_id
      JOIN patients p ON p.id = e.patient_id
      JOIN zones z ON z.timezone IS NOT DISTINCT FROM p.timezone
     WHERE e.enrolled_on <= %(last)s AND (e.ended_on IS NULL OR e.ended_on >= %(first)s)
)
SELECT en.id AS enrolment_id, en.patient_id, en.display_name, en.programme_id, en.enrolled_on, en.ended_on,
       en.tz, pe.month_first AS first_reading_at,
       (SELECT r.measured_at FROM readings r
         WHERE r.patient_id = en.patient_id AND r.measured_at >= (%(first)s::date::timestamp AT TIME ZONE en.tz)
           AND r.measured_at < ((%(last)s::date + 1)::timestamp AT TIME ZONE en.tz)
           AND r.entry_method = 'device' AND NOT (r.flags && programme_excluded_flags())
         ORDER BY r.measured_at DESC LIMIT 1) AS last_reading_at,
       pe.periods
  FROM enrol en
 CROSS JOIN LATERAL (
    SELECT min(a.month_first) AS month_first,
           json_agg(json_build_object('index', k, 'start', en.enrolled_on + k * en.period_days,
                                      'end', en.enrolled_on + (k + 1) * en.period_days - 1, 'days', a.days,
                                      'devices', a.devices) ORDER BY k) AS periods
      FROM generate_series(greatest(0, (%(first)s::date - en.enrolled_on) / en.period_days),
                           (%(last)s::date - en.enrolled_on) / en.period_days) AS k
     CROSS JOIN LATERAL (
        SELECT count(DISTINCT d.day) AS days,
               min(d.first_at) FILTER (WHERE d.day BETWEEN %(first)s AND %(last)s) AS month_first,
               CASE WHEN min(d.device_uid) = max(d.device_uid) THEN json_build_object(min(d.device_uid), count(*))
                    ELSE (SELECT coalesce(json_object_agg(u, n ORDER BY u), '{{}}'::json)
                            FROM (SELECT u, count(*) AS n FROM unnest(array_agg(d.device_uid)) AS u GROUP BY u) AS x)
               END AS devices
          FROM programme_device_days d
         WHERE d.patient_id = en.patient_id AND d.day >= en.enrolled_on + k * en.period_days
           AND d.day <= least(en.enrolled_on + (k + 1) * en.period_days - 1, coalesce(en.ended_on, 'infinity'::date))) a
     WHERE en.ended_on IS NULL OR en.enrolled_on + k * en.period_days <= en.ended_on) pe
 ORDER BY en.patient_id COLLATE "C", en.enrolled_on
"""

_MINUTES = """
SELECT patient_id, sum(minutes)::int AS minutes, bool_or(interactive) AS interactive,
       array_agg(DISTINCT person ORDER BY person) AS people, count(*)::int AS activities
  FROM time_entries
 WHERE patient_id = ANY(%(patients)s) AND performed_on BETWEEN %(first)s AND %(last)s AND minutes IS NOT NULL
 GROUP BY patient_id
"""


def report_rows(conn: Any, *, care_teams: Sequence[str], own_patient: str | None, patient: str | None,
                first: date, last: date) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Episodes overlapping ``first``..``last`` of the patients the caller sees, and each patient's minutes."""
    params = {"teams": list(care_teams), "own": own_patient, "patient": patient, "first": first, "last": last}
    with conn.transaction():
        conn.execute("SET LOCAL work_mem = '64MB'")
        # The planner cannot see that generate_series yields one or two periods per episode: it estimates
        # hundreds, prices the plan in the millions and JIT-compiles it, which cost 1.1 s of a 3 s report.
        conn.execute("SET LOCAL jit = off")
        episodes = _dicts(conn, _REPORT, params)
    patients = sorted({e["patient_id"] for e in episodes})
    minutes = {r["patient_id"]: r for r in _dicts(conn, _MINUTES, {"patients": patients, "first": first,
                                                                   "last": last})} if patients else {}
    return episodes, minutes


def first_transmissions(conn: Any, patient_id: str, first: date, last: date) -> list[dict[str, Any]]:
    """Each local day's first transmission per device, from ``first`` to ``last``, with the reading's kind."""
    return _dicts(conn, "SELECT d.day, d.device_uid, d.first_reading_id AS reading_id, d.first_at AS measured_at,"
                        " r.kind, d.tz FROM programme_device_days d LEFT JOIN readings r ON r.id = d.first_reading_id"
                        " WHERE d.patient_id = %s AND d.day BETWEEN %s AND %s ORDER BY d.day, d.first_at, d.device_uid",
                  (patient_id, first, last))
