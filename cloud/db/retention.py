"""Retention: remove what holds values of readings measured before the horizon, consistently, on both backends.

The horizon is ``RPM_RETENTION_DAYS`` days back, rounded down to UTC midnight (so hourly and daily buckets,
which are UTC, never straddle it, and passes on one day agree). Unset: nothing is removed.

Removed, for readings measured before the horizon:

- ``readings`` (with the raw frame) and their ``observations``; on plain PostgreSQL in one transaction per
  batch (``batch_size`` readings), found per patient through ``readings_patient_time`` and the values through
  ``observations_reading``, so no index is added to the ingest path and ingest never waits long. On
  TimescaleDB, ``drop_chunks`` removes whole chunks and the rest of the chunk that holds the horizon goes
  by measured_at, one day per transaction (the chunk stays compressed: checked on TimescaleDB 2.28.3);
- ``ehr_push_outbox`` rows of those readings (the EHR holds its own copy; a pending one is not sent);
- ``observation_day_stats`` of local days wholly before the horizon; the day that holds it was marked
  stale by the deletes (0420's trigger) and is recomputed from what is kept at its next read; stale marks
  of older days go too;
- continuous-aggregate buckets (TimescaleDB) that start before the horizon: their chunks by
  ``drop_chunks`` and the rest from the chunk that holds the horizon (a continuous aggregate's chunks are
  ten times the raw chunk interval, so ``drop_chunks`` alone would keep up to 70 days too many);
- ``dead_letters`` received before the horizon (the rejected payload holds values too).

Kept, as records of care, security or billing (they hold no series of values): alerts and their events
(value, metric and time of the triggering reading are on the alert; its ``reading_id`` may then name a
removed reading), twins and twin events (append-only), the audit log, security events, programme days
with data (the evidence of billed periods: 0655 keeps 0620's trigger from recounting them), time entries.

A reading older than the horizon that arrives after a pass (an offline gateway, a re-read device memory)
is stored as any other and removed by the next pass: ingest does no per-reading check for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

# Arbitrary but fixed, next to cloud.db.migrate's: one retention pass at a time across processes.
RETENTION_LOCK_ID = 0x52504D_0002
DEFAULT_BATCH = 10_000
_PATIENT_GROUP = 500
HYPERTABLE = "observations"


@dataclass(slots=True)
class RetentionReport:
    horizon: datetime
    """Values measured before this are removed."""
    removed: dict[str, int] = field(default_factory=dict)
    """Rows (or ``… chunks``) removed per table in this pass, in the order removed."""
    seconds: float = 0.0
    skipped: str | None = None
    """Why nothing was done (another pass holds the lock)."""

    def add(self, what: str, n: int) -> None:
        self.removed[what] = self.removed.get(what, 0) + n


def horizon_for(retention_days: int, now: datetime) -> datetime:
    """``retention_days`` before ``now``, rounded down to UTC midnight: at least that many days are kept."""
    if retention_days < 1:
        raise ValueError(f"retention_days must be at least 1 day (got {retention_days})")
    day = (now.astimezone(UTC) - timedelta(days=retention_days)).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@contextmanager
def _batch(conn: psycopg.Connection) -> Iterator[None]:
    """One bounded transaction of the pass, marked so that 0655's trigger keeps the programme days."""
    with conn.transaction():
        conn.execute("SELECT set_config('rpm.retention_pass', 'on', true)")
        yield


def _hypertable(conn: psycopg.Connection) -> bool:
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None:
        return False
    return (
        conn.execute(
            "SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = %s", (HYPERTABLE,)
        ).fetchone()
        is not None
    )


def continuous_aggregates(conn: psycopg.Connection) -> list[tuple[str, str, str, str]]:
    """Each continuous aggregate over observations: (view, materialization schema, table, time column)."""
    rows = conn.execute(
        "SELECT a.view_name, a.materialization_hypertable_schema, a.materialization_hypertable_name, d.column_name"
        "  FROM timescaledb_information.continuous_aggregates a"
        "  JOIN timescaledb_information.dimensions d"
        "    ON d.hypertable_schema = a.materialization_hypertable_schema"
        "   AND d.hypertable_name = a.materialization_hypertable_name AND d.dimension_number = 1"
        " WHERE a.hypertable_name = %s ORDER BY 1",
        (HYPERTABLE,),
    ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


# Readings of the given patients (or of none: the unassigned queue) measured before the horizon, with
# their values ({values}) and outbox rows, in one statement. The subselect's LIMIT bounds the transaction.
_DELETE_READINGS = """
WITH gone AS (
    DELETE FROM readings WHERE id IN (
        SELECT id FROM readings WHERE {who} AND measured_at < %(horizon)s LIMIT %(limit)s)
    RETURNING id
), values_gone AS ({values}
), outbox_gone AS (
    DELETE FROM ehr_push_outbox e USING gone WHERE e.reading_id = gone.id RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM values_gone), (SELECT count(*) FROM outbox_gone)
"""
_VALUES_BY_READING = "DELETE FROM observations o USING gone WHERE o.reading_id = gone.id RETURNING 1"
# On a hypertable the values are already gone by time (chunks, then day slices): joining by reading id
# would decompress the chunk that holds the horizon.
_NO_VALUES = "SELECT 1 WHERE false"


def _delete_readings(conn: psycopg.Connection, report: RetentionReport, batch_size: int, hypertable: bool) -> None:
    values_sql = _NO_VALUES if hypertable else _VALUES_BY_READING
    patients = [r[0] for r in conn.execute("SELECT id FROM patients ORDER BY id").fetchall()]
    groups: list[list[str] | None] = [patients[i : i + _PATIENT_GROUP] for i in range(0, len(patients), _PATIENT_GROUP)]
    groups.append(None)  # readings not assigned to anyone yet
    for group in groups:
        who = "patient_id IS NULL" if group is None else "patient_id = ANY(%(patients)s)"
        statement = _DELETE_READINGS.format(who=who, values=values_sql)
        while True:  # a group again until it has nothing left before the horizon
            with _batch(conn):
                row = conn.execute(
                    statement, {"patients": group, "horizon": report.horizon, "limit": batch_size}
                ).fetchone()
            readings, values, outbox = (int(n) for n in row) if row else (0, 0, 0)
            report.add("readings", readings)
            if not hypertable:
                report.add("observations", values)
            report.add("ehr_push_outbox", outbox)
            if readings < batch_size:
                break


def _drop_hypertable_values(conn: psycopg.Connection, report: RetentionReport) -> None:
    dropped = conn.execute(
        "SELECT count(*) FROM drop_chunks(%s, older_than => %s)", (HYPERTABLE, report.horizon)
    ).fetchone()
    report.add("observations chunks", int(dropped[0]) if dropped else 0)
    rows = 0
    start: datetime | None = datetime.min.replace(tzinfo=UTC)
    while True:
        # From the oldest value left, not day by day from the first: a stray old reading leaves no gap to walk.
        oldest = conn.execute(
            "SELECT min(measured_at) FROM observations WHERE measured_at >= %s AND measured_at < %s",
            (start, report.horizon),
        ).fetchone()
        start = oldest[0] if oldest else None
        if start is None:
            break
        end = min(start + timedelta(days=1), report.horizon)
        with _batch(conn):
            rows += conn.execute(
                "DELETE FROM observations WHERE measured_at >= %s AND measured_at < %s", (start, end)
            ).rowcount
        start = end
    report.add("observations", rows)
    for view, schema, table, column in continuous_aggregates(conn):
        dropped = conn.execute(
            "SELECT count(*) FROM drop_chunks(%s, older_than => %s)", (view, report.horizon)
        ).fetchone()
        report.add(f"{view} chunks", int(dropped[0]) if dropped else 0)
        with _batch(conn):
            gone = conn.execute(
                sql.SQL("DELETE FROM {} WHERE {} < %s").format(sql.Identifier(schema, table), sql.Identifier(column)),
                (report.horizon,),
            ).rowcount
        report.add(view, gone)


def _delete_day_stats(conn: psycopg.Connection, report: RetentionReport, batch_size: int) -> None:
    # A local day wholly before the horizon: its end (next midnight in the patient's zone) is at or before it.
    # The first condition is the same test made loose (zones are within a day of UTC), for the planner.
    statement = (
        "DELETE FROM observation_day_stats WHERE (patient_id, metric, tz, day) IN ("
        " SELECT patient_id, metric, tz, day FROM observation_day_stats"
        "  WHERE day < %(utc_day)s AND ((day + 1)::timestamp AT TIME ZONE tz) <= %(horizon)s LIMIT %(limit)s)"
    )
    params = {"utc_day": report.horizon.date() + timedelta(days=1), "horizon": report.horizon, "limit": batch_size}
    while True:
        with _batch(conn):
            n = conn.execute(statement, params).rowcount
        report.add("observation_day_stats", n)
        if n < batch_size:
            break
    # The local day that holds the horizon lost its values before it; where drop_chunks removed them no
    # trigger marked it, so it is marked here (a mark on the horizon's UTC day recomputes the local days
    # either side, which is where the day holding it lies whatever the zone).
    with _batch(conn):
        conn.execute(
            "INSERT INTO observation_day_stale (patient_id, metric, day)"
            " SELECT DISTINCT patient_id, metric, %(day)s::date FROM observation_day_stats"
            "  WHERE day BETWEEN %(day)s::date - 1 AND %(day)s::date"
            "    AND (day::timestamp AT TIME ZONE tz) < %(horizon)s"
            "    AND ((day + 1)::timestamp AT TIME ZONE tz) > %(horizon)s"
            " ORDER BY 1, 2 ON CONFLICT DO NOTHING",
            {"day": report.horizon.date(), "horizon": report.horizon},
        )
    # Marks of UTC days two or more before the horizon's: a recompute of them (that day and its neighbours)
    # could only reach days wholly gone. Nearer marks, those of the day holding the horizon, are kept.
    with _batch(conn):
        n = conn.execute(
            "DELETE FROM observation_day_stale WHERE day < %s", (report.horizon.date() - timedelta(days=1),)
        ).rowcount
    report.add("observation_day_stale", n)


def _delete_dead_letters(conn: psycopg.Connection, report: RetentionReport, batch_size: int) -> None:
    while True:
        with _batch(conn):
            n = conn.execute(
                "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters"
                " WHERE received_at < %s ORDER BY received_at LIMIT %s)",
                (report.horizon, batch_size),
            ).rowcount
        report.add("dead_letters", n)
        if n < batch_size:
            break


def apply_retention(
    conn: psycopg.Connection, retention_days: int, *, batch_size: int = DEFAULT_BATCH, now: datetime | None = None
) -> RetentionReport:
    """One retention pass (see the module docstring); ``conn`` must be in autocommit mode (each batch is its
    own transaction). Safe to repeat, and to run beside ingest and another pass (which then skips)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
    if not conn.autocommit:
        raise ValueError("apply_retention needs an autocommit connection: each batch is its own transaction")
    if now is None:
        row = conn.execute("SELECT now()").fetchone()
        now = row[0] if row else datetime.now(UTC)
    report = RetentionReport(horizon=horizon_for(retention_days, now))
    started = time.perf_counter()
    locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (RETENTION_LOCK_ID,)).fetchone()
    if not locked or not locked[0]:
        report.skipped = "another retention pass is running"
        return report
    try:
        hypertable = _hypertable(conn)
        # Values first on a hypertable: readings are then removed after their values, never the reverse, so
        # no moment shows a value whose reading is gone.
        if hypertable:
            _drop_hypertable_values(conn, report)
        _delete_readings(conn, report, batch_size, hypertable)
        _delete_day_stats(conn, report, batch_size)
        _delete_dead_letters(conn, report, batch_size)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK_ID,))
    report.seconds = time.perf_counter() - started
    log.info(
        "retention before %s: %s in %.1f s",
        report.horizon.isoformat(),
        ", ".join(f"{k} {v}" for k, v in report.removed.items()),
        report.seconds,
    )
    return report


def format_retention(report: RetentionReport) -> str:
    if report.skipped:
        return f"retention: skipped ({report.skipped})"
    lines = [f"retention: removed what was measured before {report.horizon.isoformat()} ({report.seconds:.1f} s)"]
    lines += [f"  {what}: {n}" for what, n in report.removed.items()]
    return "\n".join(lines)
