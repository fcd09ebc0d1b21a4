"""Migrations on a real PostgreSQL: twice is a no-op, two processes at once apply each version once,
and the plain-PostgreSQL path skips the TimescaleDB migration yet answers the same queries."""

from __future__ import annotations

import multiprocessing

import psycopg
import pytest

from cloud.db.migrate import apply_migrations, discover

pytestmark = pytest.mark.integration


def _migrate(url: str, results: multiprocessing.Queue[list[str]]) -> None:
    results.put(apply_migrations(url))


def test_migrating_twice_applies_nothing_the_second_time(empty_database_url: str) -> None:
    first = apply_migrations(empty_database_url)
    assert "0001" in first and "0002" in first
    assert apply_migrations(empty_database_url) == []


def test_two_processes_migrating_at_once_apply_each_version_once(empty_database_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_migrate, args=(empty_database_url, results)) for _ in range(2)]
    for process in processes:
        process.start()
    applied = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(10)
        assert process.exitcode == 0
    one, other = applied
    assert sorted(one + other) == sorted(set(one + other)), "a version was applied twice"
    with psycopg.connect(empty_database_url) as conn:
        recorded = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert recorded == sorted(one + other)


def test_timescale_migration_is_skipped_where_the_extension_is_missing(empty_database_url: str) -> None:
    applied = apply_migrations(empty_database_url)
    with psycopg.connect(empty_database_url) as conn:
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone() is not None
        kinds = dict(conn.execute(
            "SELECT relname, relkind FROM pg_class WHERE relname IN ('observations_hourly', 'observations_daily')"
        ).fetchall())
    timescale = [m for m in discover() if m.requires == "timescaledb"]
    assert timescale, "the TimescaleDB migration exists"
    if available:
        assert all(m.version in applied for m in timescale)
    else:
        assert not any(m.version in applied for m in timescale)
        assert kinds == {"observations_hourly": "v", "observations_daily": "v"}


def test_hourly_and_daily_views_bucket_in_utc(fresh_database_url: str) -> None:
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute("SET TIME ZONE 'America/New_York'")
        conn.execute("INSERT INTO observations (reading_id, patient_id, kind, metric, measured_at, value, unit) VALUES"
                     " ('r1', 'p1', 'body_weight', 'body_weight', '2026-03-01T23:30:00Z', 80, 'kg'),"
                     " ('r2', 'p1', 'body_weight', 'body_weight', '2026-03-01T23:50:00Z', 82, 'kg'),"
                     " ('r3', 'p1', 'body_weight', 'body_weight', '2026-03-02T00:10:00Z', 90, 'kg')")
        hourly = conn.execute("SELECT bucket AT TIME ZONE 'UTC', n, mean FROM observations_hourly"
                              " WHERE patient_id = 'p1' ORDER BY bucket").fetchall()
        daily = conn.execute("SELECT bucket AT TIME ZONE 'UTC', n, min, max FROM observations_daily"
                             " WHERE patient_id = 'p1' ORDER BY bucket").fetchall()
    assert [(str(b), n, m) for b, n, m in hourly] == [("2026-03-01 23:00:00", 2, 81.0),
                                                      ("2026-03-02 00:00:00", 1, 90.0)]
    assert [(str(b), n, lo, hi) for b, n, lo, hi in daily] == [("2026-03-01 00:00:00", 2, 80.0, 82.0),
                                                               ("2026-03-02 00:00:00", 1, 90.0, 90.0)]
