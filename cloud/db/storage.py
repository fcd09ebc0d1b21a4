"""Storage policy on TimescaleDB: applied from the settings on every ``rpm-cloud migrate``, shown by
``rpm-cloud storage``.

``RPM_COMPRESS_AFTER_DAYS`` (compress ``observations`` chunks older than this) and ``RPM_RETENTION_DAYS``
(drop them; unset: keep everything) are the source of truth: each ``migrate`` makes the database's
policy jobs match them, so a changed value takes effect and an unchanged one changes nothing. Migration
0090 only creates the first policies; before this, later changes to the settings were ignored.

The continuous aggregates get retention jobs at the same horizon. What holds values outside the hypertable
(readings and their raw frames, day statistics, the aggregates' buckets before the horizon, dead letters) is
removed by the retention pass (:mod:`cloud.db.retention`) on both backends: ``rpm-cloud storage
--apply-retention`` runs one and prints what it removed per table; the scheduler runs one a day.

On plain PostgreSQL there are no policy jobs (no compression); ``storage`` then shows the sizes and the
retention setting the pass applies.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import psycopg

from cloud.db.pool import failure_line
from cloud.db.retention import apply_retention, continuous_aggregates, format_retention
from cloud.settings import get_settings

HYPERTABLE = "observations"


@dataclass(frozen=True, slots=True)
class PolicyChange:
    policy: str
    """``compression``, ``retention`` or ``refresh window start of <continuous aggregate>``."""
    before_days: float | None
    after_days: float | None


@dataclass(slots=True)
class StorageReport:
    backend: str
    """``timescaledb <version>`` or ``postgresql``."""
    server_version: str
    observations_bytes: int
    readings_bytes: int
    hypertable: bool = False
    chunks: int = 0
    compressed_chunks: int = 0
    before_compression_bytes: int | None = None
    after_compression_bytes: int | None = None
    compress_after_days: float | None = None
    retention_days: float | None = None
    continuous_aggregates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def compression_ratio(self) -> float | None:
        if not self.before_compression_bytes or not self.after_compression_bytes:
            return None
        return self.before_compression_bytes / self.after_compression_bytes


def timescale_version(conn: psycopg.Connection) -> str | None:
    """The installed (not merely available) TimescaleDB extension's version in this database."""
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return row[0] if row else None


def _is_hypertable(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = %s",
                        (HYPERTABLE,)).fetchone() is not None


def _policy_days(conn: psycopg.Connection, proc: str, key: str, relation: str = HYPERTABLE) -> float | None:
    row = conn.execute(
        "SELECT (config ->> %s)::interval FROM timescaledb_information.jobs"
        " WHERE proc_name = %s AND hypertable_name = %s", (key, proc, relation)).fetchone()
    if row is None or row[0] is None:
        return None
    interval: timedelta = row[0]
    return interval.total_seconds() / 86400


def _check(name: str, days: int | None) -> None:
    if days is not None and days < 1:
        raise ValueError(f"{name} must be at least 1 day (got {days})")


def apply_policies(conn: psycopg.Connection, *, retention_days: int | None,
                   compress_after_days: int) -> list[PolicyChange]:
    """Make the compression and retention jobs of ``observations`` match the settings; return what changed
    (nothing where they already match, or where observations is no hypertable)."""
    _check("compress_after_days", compress_after_days)
    _check("retention_days", retention_days)
    if timescale_version(conn) is None or not _is_hypertable(conn):
        return []
    changes: list[PolicyChange] = []
    with conn.transaction():
        current = _policy_days(conn, "policy_compression", "compress_after")
        if current != compress_after_days:
            # remove + add rather than alter_job: the interval lives in the job's config, and add_* validates it.
            conn.execute("SELECT remove_compression_policy(%s, if_exists => true)", (HYPERTABLE,))
            conn.execute("SELECT add_compression_policy(%s, make_interval(days => %s))",
                         (HYPERTABLE, compress_after_days))
            changes.append(PolicyChange("compression", current, compress_after_days))
        current = _policy_days(conn, "policy_retention", "drop_after")
        if current != (None if retention_days is None else float(retention_days)):
            conn.execute("SELECT remove_retention_policy(%s, if_exists => true)", (HYPERTABLE,))
            if retention_days is not None:
                conn.execute("SELECT add_retention_policy(%s, make_interval(days => %s))",
                             (HYPERTABLE, retention_days))
            changes.append(PolicyChange("retention", current, retention_days))
        changes += _aggregate_retention(conn, retention_days)
        changes += _refresh_whole_history(conn)
    return changes


def _aggregate_retention(conn: psycopg.Connection, retention_days: int | None) -> list[PolicyChange]:
    """The continuous aggregates' own retention jobs at the same horizon as the raw values: drop_chunks on
    observations leaves their buckets in place. (Their chunks are ten times the raw interval, so the job
    lags; the retention pass, cloud.db.retention, removes the buckets before the horizon exactly.)"""
    changes = []
    wanted = None if retention_days is None else float(retention_days)
    for view, _schema, _table, _column in continuous_aggregates(conn):
        current = _policy_days(conn, "policy_retention", "drop_after", view)
        if current == wanted:
            continue
        conn.execute("SELECT remove_retention_policy(%s, if_exists => true)", (view,))
        if retention_days is not None:
            conn.execute("SELECT add_retention_policy(%s, make_interval(days => %s))", (view, retention_days))
        changes.append(PolicyChange(f"retention of {view}", current, retention_days))
    return changes


def _refresh_whole_history(conn: psycopg.Connection) -> list[PolicyChange]:
    """Refresh policies of the continuous aggregates without a start: 0090 gave them windows of the last
    3 (hourly) and 30 (daily) days, so a reading later than that (an offline gateway's, 9 days on) never
    reached them, and on a database migrated with data everything older than the window fell out of the
    aggregates at the first refresh (it was below the watermark and never materialised). Without a start,
    each run re-materialises only what TimescaleDB logged as invalidated, whatever its age."""
    changes = []
    for job_id, view, config, start in conn.execute(
            "SELECT j.job_id, a.view_name, j.config, (j.config ->> 'start_offset')::interval"
            "  FROM timescaledb_information.jobs j"
            "  JOIN timescaledb_information.continuous_aggregates a"  # a refresh job names the view
            "    ON a.view_name = j.hypertable_name AND a.view_schema = j.hypertable_schema"
            " WHERE j.proc_name = 'policy_refresh_continuous_aggregate'"
            "   AND a.hypertable_name = %s ORDER BY 2", (HYPERTABLE,)).fetchall():
        if config.get("start_offset") is None:
            continue
        schedule = conn.execute("SELECT schedule_interval FROM timescaledb_information.jobs WHERE job_id = %s",
                                (job_id,)).fetchone()[0]
        conn.execute("SELECT remove_continuous_aggregate_policy(%s)", (view,))
        conn.execute("SELECT add_continuous_aggregate_policy(%s, start_offset => NULL,"
                     " end_offset => %s::interval, schedule_interval => %s)",
                     (view, config.get("end_offset"), schedule))
        changes.append(PolicyChange(f"refresh window start of {view}", start.total_seconds() / 86400, None))
    return changes


def report(conn: psycopg.Connection) -> StorageReport:
    """What the database stores and which policy it runs, read from the database itself."""
    server = conn.execute("SHOW server_version").fetchone()
    version = timescale_version(conn)
    sizes = dict(conn.execute(
        "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c"
        " WHERE c.relname IN ('observations', 'readings') AND c.relkind IN ('r', 'p')"
        "   AND c.relnamespace = 'public'::regnamespace").fetchall())
    result = StorageReport(backend=f"timescaledb {version}" if version else "postgresql",
                           server_version=server[0] if server else "?",
                           observations_bytes=int(sizes.get("observations", 0)),
                           readings_bytes=int(sizes.get("readings", 0)))
    if version is None or not _is_hypertable(conn):
        return result
    result.hypertable = True
    # A hypertable's own relation is empty: its rows live in chunks.
    total = conn.execute("SELECT hypertable_size(%s)", (HYPERTABLE,)).fetchone()
    result.observations_bytes = int(total[0] or 0) if total else 0
    chunks = conn.execute("SELECT count(*), count(*) FILTER (WHERE is_compressed)"
                          " FROM timescaledb_information.chunks WHERE hypertable_name = %s", (HYPERTABLE,)).fetchone()
    if chunks:
        result.chunks, result.compressed_chunks = int(chunks[0]), int(chunks[1])
    stats = conn.execute("SELECT before_compression_total_bytes, after_compression_total_bytes"
                         " FROM hypertable_compression_stats(%s)", (HYPERTABLE,)).fetchone()
    if stats and stats[0] is not None:
        result.before_compression_bytes, result.after_compression_bytes = int(stats[0]), int(stats[1])
    result.compress_after_days = _policy_days(conn, "policy_compression", "compress_after")
    result.retention_days = _policy_days(conn, "policy_retention", "drop_after")
    for name, start, end, every in conn.execute(
            "SELECT j.hypertable_name, j.config ->> 'start_offset', j.config ->> 'end_offset', j.schedule_interval"
            "  FROM timescaledb_information.jobs j WHERE j.proc_name = 'policy_refresh_continuous_aggregate'"
            " ORDER BY 1").fetchall():
        result.continuous_aggregates.append({"view": name, "start_offset": start,
                                             "end_offset": end, "schedule_interval": str(every),
                                             "retention_days": _policy_days(conn, "policy_retention",
                                                                            "drop_after", name)})
    return result


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _days(d: float | None) -> str:
    return "none" if d is None else f"{d:g} days"


def format_report(r: StorageReport, *, wanted_retention: int | None, wanted_compress: int) -> str:
    lines = [f"backend: {r.backend} (PostgreSQL {r.server_version})",
             f"readings: {_mib(r.readings_bytes)}", f"observations: {_mib(r.observations_bytes)}"]
    wanted = "off: everything is kept" if wanted_retention is None else (
        f"{wanted_retention} days: values measured before then are removed by `rpm-cloud storage --apply-retention`"
        " and the scheduler's daily pass")
    if not r.hypertable:
        lines.append("policies: none (observations is a plain table: no compression, no retention jobs)")
        lines.append(f"retention (RPM_RETENTION_DAYS): {wanted}")
        return "\n".join(lines)
    ratio = r.compression_ratio
    lines += [f"chunks: {r.chunks} ({r.compressed_chunks} compressed)",
              f"compressed chunks: {_mib(r.before_compression_bytes)} before, {_mib(r.after_compression_bytes)} after"
              + (f" ({ratio:.1f}x)" if ratio else ""),
              f"compression after: {_days(r.compress_after_days)} (setting: {wanted_compress} days)",
              f"retention: {_days(r.retention_days)} (setting: "
              f"{'none' if wanted_retention is None else f'{wanted_retention} days'})"]
    for agg in r.continuous_aggregates:
        start = "the whole history" if agg["start_offset"] is None else f"from {agg['start_offset']} ago"
        lines.append(f"continuous aggregate {agg['view']}: refreshes {start} to {agg['end_offset']} ago,"
                     f" every {agg['schedule_interval']}; retention {_days(agg.get('retention_days'))}")
    lines.append(f"retention (RPM_RETENTION_DAYS): {wanted}")
    wanted_days = None if wanted_retention is None else float(wanted_retention)
    if r.compress_after_days != wanted_compress or r.retention_days != wanted_days or any(
            agg.get("retention_days") != wanted_days for agg in r.continuous_aggregates):
        lines.append("the settings differ from the database: run `rpm-cloud migrate` to apply them")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default=None, help="default: RPM_DATABASE_URL")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--apply-retention", action="store_true",
                        help="run one retention pass (RPM_RETENTION_DAYS) and print what it removed per table")


def main(args: argparse.Namespace) -> int:
    settings = get_settings()
    url = args.database_url or settings.database_url
    if args.apply_retention and settings.retention_days is None:
        print("retention: off (RPM_RETENTION_DAYS is unset): nothing removed")
        return 0
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            if args.apply_retention:
                removed = apply_retention(conn, settings.retention_days)
                if args.json:
                    print(json.dumps({"horizon": removed.horizon.isoformat(), "removed": removed.removed,
                                      "seconds": round(removed.seconds, 3), "skipped": removed.skipped}))
                else:
                    print(format_retention(removed))
                return 0
            result = report(conn)
    except psycopg.OperationalError as err:
        print(f"error: {failure_line(err)}")
        return 2
    except psycopg.errors.UndefinedTable:
        print("error: the database is not migrated: run `rpm-cloud migrate` first")
        return 2
    if args.json:
        print(json.dumps({**asdict(result), "compression_ratio": result.compression_ratio,
                          "settings": {"retention_days": settings.retention_days,
                                       "compress_after_days": settings.compress_after_days}}))
    else:
        print(format_report(result, wanted_retention=settings.retention_days,
                            wanted_compress=settings.compress_after_days))
    return 0
