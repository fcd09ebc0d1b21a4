"""Storage on both backends, through the real API and the real migrations:

- a plain-PostgreSQL database with data moves onto TimescaleDB (``-- requires: timescaledb`` migrations
  pending on a populated database), keeping every value and the trends, with day statistics kept after;
- a reading 9 days late — written into a compressed chunk where the backend compresses — shows in every
  trend bucket it belongs to (hour, day, week, month), and values arriving in any order and interleaved
  with reads give the trends computed from the raw values;
- ``RPM_RETENTION_DAYS`` / ``RPM_COMPRESS_AFTER_DAYS`` reach the policy jobs on every migrate, and
  ``rpm-cloud storage`` shows them.

The TimescaleDB tests skip, with the reason, where the server lacks the extension (CI has none): run the
suite with ``RPM_TEST_DATABASE_URL`` at a server with ``shared_preload_libraries = timescaledb``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.api.app import create_app
from cloud.db.migrate import MIGRATIONS_DIR, apply_migrations, discover
from cloud.db.storage import apply_policies, report
from cloud.settings import CloudSettings
from tests.cloud.alerts.scripted_patient import add_patient, ingest, make_reading
from tests.cloud.api.conftest import DEV_KEY, TokenFactory, grant
from tests.conftest import _own_database

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def _timescale_reason(conn: psycopg.Connection) -> str | None:
    """Why TimescaleDB cannot be used on this server, or None where it can."""
    if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone() is None:
        return "the timescaledb extension is not installed on this PostgreSQL server"
    preload = conn.execute("SHOW shared_preload_libraries").fetchone()
    if preload is None or "timescaledb" not in preload[0]:
        return "timescaledb is installed but not in shared_preload_libraries"
    return None


@pytest.fixture(scope="module")
def timescale(pg_admin_url: str) -> None:
    with psycopg.connect(pg_admin_url) as conn:
        reason = _timescale_reason(conn)
    if reason:
        pytest.skip(reason)


def _is_hypertable(conn: psycopg.Connection) -> bool:
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None:
        return False
    return conn.execute("SELECT 1 FROM timescaledb_information.hypertables"
                        " WHERE hypertable_name = 'observations'").fetchone() is not None


def _client(url: str) -> TestClient:
    return TestClient(create_app(CloudSettings(database_url=url, jwt_dev_key=DEV_KEY, api_pool_max=2)),
                      raise_server_exceptions=False)


def _expected(points: list[tuple[datetime, float]], bucket: str, zone: str) -> dict[str, tuple[int, float, float]]:
    """Count, mean and max per bucket from the raw values, in the patient's zone (no SQL involved)."""
    tz = ZoneInfo(zone)
    groups: dict[str, list[float]] = {}
    for at, value in points:
        local = at.astimezone(tz)
        if bucket == "hour":
            key = local.strftime("%Y-%m-%dT%H")
        elif bucket == "day":
            key = local.date().isoformat()
        elif bucket == "week":  # ISO weeks start on Monday, as date_trunc('week')
            key = (local.date() - timedelta(days=local.weekday())).isoformat()
        else:
            key = local.date().replace(day=1).isoformat()
        groups.setdefault(key, []).append(value)
    return {k: (len(v), float(np.mean(v)), max(v)) for k, v in groups.items()}


def _got(trend: dict, bucket: str) -> dict[str, tuple[int, float, float]]:
    width = 13 if bucket == "hour" else 10
    return {b["start"][:width]: (b["count"], b["mean"], b["max"]) for b in trend["buckets"]}


def _assert_trend(client: TestClient, headers: dict[str, str], patient: str, bucket: str, since: datetime,
                  until: datetime, points: list[tuple[datetime, float]], zone: str) -> dict:
    response = client.get(f"/v1/patients/{patient}/trends/glucose",
                          params={"bucket": bucket, "since": since.isoformat(), "until": until.isoformat()},
                          headers=headers)
    assert response.status_code == 200, response.text[:300]
    trend = response.json()
    inside = [(at, v) for at, v in points if since <= at < until]
    got, expected = _got(trend, bucket), _expected(inside, bucket, zone)
    assert sorted(got) == sorted(expected), bucket
    for key, (n, mean, high) in expected.items():
        assert got[key][0] == n, (bucket, key)
        assert got[key][1] == pytest.approx(mean) and got[key][2] == pytest.approx(high), (bucket, key)
    return trend


def _seed(conn: psycopg.Connection, unique_id: str, auth: TokenFactory, zone: str) -> tuple[str, str, dict]:
    patient, team = f"{unique_id}-ts", f"{unique_id}-ts-team"
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Storage')", (team,))
    device = add_patient(conn, patient, kinds=("glucose",), assigned_at=datetime(2000, 1, 1, tzinfo=UTC))["glucose"]
    conn.execute("UPDATE patients SET timezone = %s WHERE id = %s", (zone, patient))
    grant(conn, patient, team, ["readings"])
    return patient, device, auth("clinician", sub=f"{unique_id}-dr", care_teams=(team,))


def _glucose(device: str, points: list[tuple[datetime, float]]) -> list:
    return [make_reading(device, "glucose", at, {"glucose": v}) for at, v in points]


# --- a populated plain database moves onto TimescaleDB ---------------------------------------------------


@pytest.fixture
def plain_then_timescale(pg_admin_url: str, timescale: None) -> Iterator[tuple[str, Path]]:
    """An empty database and a migrations folder without the TimescaleDB ones: what a deployment that
    started on plain PostgreSQL has applied."""
    plain_dir = Path(tempfile.mkdtemp(prefix="rpm-plain-migrations-"))
    for migration in discover():
        if migration.requires != "timescaledb":
            shutil.copy(migration.path, plain_dir / migration.path.name)
    try:
        with _own_database(pg_admin_url) as url:
            yield url, plain_dir
    finally:
        shutil.rmtree(plain_dir, ignore_errors=True)


def test_a_populated_plain_database_migrates_onto_timescaledb(
        plain_then_timescale: tuple[str, Path], unique_id: str, auth: TokenFactory) -> None:
    url, plain_dir = plain_then_timescale
    apply_migrations(url, plain_dir)
    zone = "America/New_York"
    end = datetime(2031, 3, 20, tzinfo=UTC)
    start = end - timedelta(days=40)
    points = [(start + timedelta(minutes=30 * i), round(140 + 60 * np.sin(i / 7), 1)) for i in range(40 * 48)]
    with psycopg.connect(url, autocommit=True) as conn:
        patient, device, headers = _seed(conn, unique_id, auth, zone)
        ingest(conn, _glucose(device, points), patient)
        # Proof that this is the blocked case: 0420's transition-table triggers are in place.
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'observations'::regclass"
                            " AND (tgoldtable IS NOT NULL OR tgnewtable IS NOT NULL)").fetchone()[0] > 0
        assert not _is_hypertable(conn)
    with _client(url) as client:
        before = _assert_trend(client, headers, patient, "day", start, end, points, zone)

    applied = apply_migrations(url, retention_days=None, compress_after_days=7)
    assert [m.version for m in discover() if m.requires == "timescaledb"] == applied
    assert apply_migrations(url) == []  # nothing stays pending: later migrates do not fail
    with psycopg.connect(url, autocommit=True) as conn:
        assert _is_hypertable(conn)
        chunks = conn.execute("SELECT count(*) FROM show_chunks('observations')").fetchone()[0]
        assert chunks >= 6  # 40 days in 7-day chunks: the rows really moved into chunks
        only_parent = conn.execute("SELECT count(*) FROM ONLY observations").fetchone()[0]
        assert only_parent == 0
        assert conn.execute("SELECT count(*) FROM observations WHERE patient_id = %s",
                            (patient,)).fetchone()[0] == len(points)
        # Row-level replacements, none with a transition table.
        triggers = dict(conn.execute("SELECT tgname, tgnewtable IS NOT NULL OR tgoldtable IS NOT NULL"
                                     " FROM pg_trigger WHERE tgrelid = 'observations'::regclass"
                                     " AND NOT tgisinternal").fetchall())
        assert {"observations_day_stale_insert", "observations_day_stale_update",
                "observations_day_stale_delete"} <= set(triggers)
        assert not any(triggers.values())
        # Values after the move still reach the stored day statistics.
        extra = [(start + timedelta(days=10, hours=3), 401.0), (end - timedelta(hours=5), 33.0)]
        ingest(conn, _glucose(device, extra), patient)
        conn.execute("SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('observations') c")
        late = [(start + timedelta(days=20, hours=1), 399.0)]  # into a compressed chunk
        ingest(conn, _glucose(device, late), patient)
    with _client(url) as client:
        after = _assert_trend(client, headers, patient, "day", start, end, points + extra + late, zone)
    assert len(after["buckets"]) == len(before["buckets"])


# --- late data in every bucket, whatever the arrival order ----------------------------------------------


def _compress_old_chunks(conn: psycopg.Connection) -> int:
    """Compress every chunk that ended a day ago or more, where the backend compresses: the chunk of a
    value 9 days old is among them (7-day chunks), as it is once the compression policy has run."""
    if not _is_hypertable(conn):
        return 0
    return len(conn.execute("SELECT compress_chunk(c, if_not_compressed => true)"
                            " FROM show_chunks('observations', older_than => interval '1 day') c").fetchall())


@pytest.fixture
def own(fresh_database_url: str) -> Iterator[tuple[TestClient, psycopg.Connection]]:
    # A database of its own: compressing chunks must not change what other tests of the session see.
    with _client(fresh_database_url) as client, psycopg.connect(fresh_database_url, autocommit=True) as conn:
        yield client, conn


def test_a_reading_nine_days_late_shows_in_every_trend_bucket(
        own: tuple[TestClient, psycopg.Connection], unique_id: str, auth: TokenFactory) -> None:
    client, conn = own
    zone = "Europe/Berlin"
    patient, device, headers = _seed(conn, unique_id, auth, zone)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=40)
    points = [(start + timedelta(minutes=20 * i), float(100 + (i * 37) % 90)) for i in range(40 * 72)]
    ingest(conn, _glucose(device, points), patient)
    for bucket in ("hour", "day", "week", "month"):  # read first: the day statistics are built
        since = end - timedelta(days=11) if bucket == "hour" else start
        _assert_trend(client, headers, patient, bucket, since, end, points, zone)
    compressed = _compress_old_chunks(conn)

    late = [(end - timedelta(days=9, minutes=7), 333.0)]  # the offline gateway delivers, 9 days on
    ingest(conn, _glucose(device, late), patient, late=True)
    if _is_hypertable(conn):
        assert compressed > 0
        assert conn.execute(
            "SELECT c.is_compressed FROM timescaledb_information.chunks c WHERE c.hypertable_name = 'observations'"
            " AND %s >= c.range_start AND %s < c.range_end", (late[0][0], late[0][0])).fetchone()[0], \
            "the late value went into a compressed chunk"
    for bucket in ("hour", "day", "week", "month"):
        since = end - timedelta(days=11) if bucket == "hour" else start
        trend = _assert_trend(client, headers, patient, bucket, since, end, points + late, zone)
        assert any(b["max"] == 333.0 for b in trend["buckets"]), bucket


def test_assigning_a_device_later_keeps_compressed_data_compressed(fresh_database_url: str, timescale: None,
                                                                   unique_id: str) -> None:
    """Issue 21: the backfill used to decompress every chunk (``UPDATE … WHERE reading_id = ANY``), and past
    TimescaleDB's tuple limit the assignment of a device with ONE waiting reading was refused. Now it touches
    the unassigned segment of the chunks of that reading's time only: with the limit set far below what the
    compressed chunks hold, the assignment goes through and every other chunk stays compressed."""
    from cloud.devices.assignment import assign_device

    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        crowd = f"{unique_id}-crowd"
        device = add_patient(conn, crowd, kinds=("glucose",), assigned_at=datetime(2000, 1, 1, tzinfo=UTC))["glucose"]
        points = [(end - timedelta(days=42) + timedelta(minutes=5 * i), float(100 + i % 80)) for i in range(42 * 288)]
        ingest(conn, _glucose(device, points), crowd)  # 12 096 values of another patient, 6 chunks
        waiting = make_reading(f"ble:{unique_id}:meter", "glucose", end - timedelta(days=20), {"glucose": 150.0})
        ingest(conn, [waiting], None)  # an unknown meter: stored, unassigned, in the same old chunks
        compressed = _compress_old_chunks(conn)
        assert compressed >= 5
        before = dict(conn.execute("SELECT chunk_name, is_compressed FROM timescaledb_information.chunks"
                                   " WHERE hypertable_name = 'observations'").fetchall())
        patient = f"{unique_id}-late"
        conn.execute("INSERT INTO patients (id, display_name) VALUES (%s, 'Late')", (patient,))
        with conn.transaction():
            # Far below the 2 000 values each compressed chunk holds for the crowd: only the waiting value's
            # own batch may be decompressed.
            conn.execute("SET LOCAL timescaledb.max_tuples_decompressed_per_dml_transaction = 500")
            result = assign_device(conn, waiting.device.uid, patient, valid_from=datetime(2000, 1, 1, tzinfo=UTC),
                                   created_by="test")
        assert result.readings_backfilled == 1 and result.observations_backfilled == 1
        assert conn.execute("SELECT patient_id FROM observations WHERE reading_id = %s",
                            (waiting.id,)).fetchone()[0] == patient
        after = dict(conn.execute("SELECT chunk_name, is_compressed FROM timescaledb_information.chunks"
                                  " WHERE hypertable_name = 'observations'").fetchall())
        still = [name for name, was in before.items() if was and after.get(name)]
        assert len(still) == sum(before.values()), "no compressed chunk was decompressed whole"


_WINDOW_S = 21 * 24 * 3600
_ARRIVALS = itertools.count()


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_order_of_arrival_gives_the_trend_of_the_raw_values(
        own: tuple[TestClient, psycopg.Connection], unique_id: str, auth: TokenFactory, data: st.DataObject) -> None:
    """Hypothesis chooses the values (times over three weeks that hold a DST change in the patient's
    zone, several at the same instant allowed), the order they arrive in and how they are cut into
    batches; after every batch the daily trend, and at the end every bucket, equals what the raw values
    give, with old chunks compressed between batches where the backend compresses."""
    client, conn = own
    zone = "America/Los_Angeles"  # 10 March 2030: a day of 23 hours
    patient, device, headers = _seed(conn, f"{unique_id}-{next(_ARRIVALS)}", auth, zone)
    start = datetime(2030, 3, 1, tzinfo=UTC)
    end = start + timedelta(seconds=_WINDOW_S)
    raw = data.draw(st.lists(st.tuples(st.integers(0, _WINDOW_S - 1), st.integers(40, 400)), min_size=1,
                             max_size=150), label="values")
    points = [(start + timedelta(seconds=at), float(value)) for at, value in raw]
    order = data.draw(st.permutations(range(len(points))), label="arrival order")
    cuts = data.draw(st.lists(st.integers(1, 60), min_size=1, max_size=6), label="batch sizes")
    arriving = [points[i] for i in order]
    arrived: list[tuple[datetime, float]] = []
    sizes = iter(cuts)
    while arriving:
        size = next(sizes, len(arriving))
        batch, arriving = arriving[:size], arriving[size:]
        ingest(conn, _glucose(device, batch), patient, late=True)
        arrived += batch
        _compress_old_chunks(conn)
        _assert_trend(client, headers, patient, "day", start, end, arrived, zone)
    for bucket in ("hour", "week", "month"):
        _assert_trend(client, headers, patient, bucket, start, end, arrived, zone)


# --- policies from the settings, on every migrate -------------------------------------------------------


def test_policy_settings_take_effect_on_every_migrate(fresh_database_url: str, timescale: None) -> None:
    url = fresh_database_url
    with psycopg.connect(url, autocommit=True) as conn:
        assert report(conn).compress_after_days == 7 and report(conn).retention_days is None  # template: defaults
    changes: list = []
    assert apply_migrations(url, retention_days=400, compress_after_days=3, policy_changes=changes) == []
    # The continuous aggregates get the same retention as the values they aggregate (cloud.db.retention).
    assert {(c.policy, c.before_days, c.after_days) for c in changes} == {
        ("compression", 7, 3), ("retention", None, 400), ("retention of observations_daily", None, 400),
        ("retention of observations_hourly", None, 400)}
    again: list = []
    apply_migrations(url, retention_days=400, compress_after_days=3, policy_changes=again)
    assert again == []  # idempotent: the same settings change nothing
    with psycopg.connect(url, autocommit=True) as conn:
        state = report(conn)
        assert (state.compress_after_days, state.retention_days) == (3, 400)
        jobs = conn.execute("SELECT proc_name, count(*) FROM timescaledb_information.jobs"
                            " WHERE hypertable_name = 'observations' GROUP BY 1").fetchall()
        assert dict(jobs) == {"policy_compression": 1, "policy_retention": 1}
        assert apply_policies(conn, retention_days=None, compress_after_days=10)  # retention turned off
        state = report(conn)
        assert (state.compress_after_days, state.retention_days) == (10, None)
        with pytest.raises(ValueError, match="at least 1 day"):
            apply_policies(conn, retention_days=0, compress_after_days=10)


def test_late_readings_reach_the_continuous_aggregates(own: tuple[TestClient, psycopg.Connection],
                                                      unique_id: str, auth: TokenFactory, timescale: None) -> None:
    _, conn = own
    patient, device, _ = _seed(conn, unique_id, auth, "UTC")
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    points = [(end - timedelta(days=40) + timedelta(minutes=30 * i), float(100 + i % 50)) for i in range(40 * 48)]
    ingest(conn, _glucose(device, points), patient)
    jobs = dict(conn.execute("SELECT a.view_name, j.job_id FROM timescaledb_information.jobs j"
                             " JOIN timescaledb_information.continuous_aggregates a"
                             "   ON a.view_name = j.hypertable_name").fetchall())
    assert set(jobs) == {"observations_hourly", "observations_daily"}

    def refreshed(view: str) -> dict[datetime, int]:
        for attempt in range(50):  # what the policy does on its schedule; the scheduler may be at it too
            try:
                conn.execute("CALL run_job(%s)", (jobs[view],))
                break
            except psycopg.errors.LockNotAvailable:
                if attempt == 49:
                    raise
                time.sleep(0.2)
        return dict(conn.execute(f"SELECT bucket, n FROM {view} WHERE patient_id = %s AND metric = 'glucose'",
                                 (patient,)).fetchall())

    hourly = refreshed("observations_hourly")
    assert sum(hourly.values()) == len(points)  # older than any refresh window: still all there
    _compress_old_chunks(conn)
    late_at = end - timedelta(days=9, minutes=13)
    ingest(conn, _glucose(device, [(late_at, 333.0)]), patient, late=True)
    bucket = late_at.replace(minute=0)
    assert refreshed("observations_hourly")[bucket] == hourly[bucket] + 1
    daily = refreshed("observations_daily")
    assert daily[late_at.replace(hour=0, minute=0)] == 48 + 1 and sum(daily.values()) == len(points) + 1


def _storage_cli(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "RPM_DATABASE_URL": url, **env}
    return subprocess.run([sys.executable, "-m", "cloud.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=environment, timeout=60)


def test_storage_command_shows_the_backend_and_the_policy_it_runs(fresh_database_url: str) -> None:
    with psycopg.connect(fresh_database_url) as conn:
        hypertable = _is_hypertable(conn)
    shown = _storage_cli(fresh_database_url, "storage", RPM_COMPRESS_AFTER_DAYS="5")
    assert shown.returncode == 0, shown.stderr
    body = json.loads(_storage_cli(fresh_database_url, "storage", "--json").stdout)
    assert body["hypertable"] is hypertable
    if hypertable:
        assert shown.stdout.startswith("backend: timescaledb 2.")
        assert "compression after: 7 days (setting: 5 days)" in shown.stdout
        assert "run `rpm-cloud migrate` to apply them" in shown.stdout
        migrated = _storage_cli(fresh_database_url, "migrate", RPM_COMPRESS_AFTER_DAYS="5")
        assert "storage policy compression: 7 days -> 5 days" in migrated.stdout, migrated.stdout
        assert "to apply them" not in _storage_cli(fresh_database_url, "storage", RPM_COMPRESS_AFTER_DAYS="5").stdout
    else:
        assert shown.stdout.startswith("backend: postgresql")
        assert "policies: none" in shown.stdout
    bad = _storage_cli(fresh_database_url, "migrate", RPM_RETENTION_DAYS="0")
    assert bad.returncode == 2 and "at least 1 day" in bad.stdout + bad.stderr
    unreachable = _storage_cli("postgresql://postgres@127.0.0.1:9/none", "storage")
    assert unreachable.returncode == 2 and "cannot reach the database" in unreachable.stdout


def test_the_migrations_folder_keeps_the_timescale_files_in_order() -> None:
    # 0425 needs 0420's table and 0090's function: the order the runner applies them in.
    versions = [m.version for m in discover(MIGRATIONS_DIR)]
    assert versions.index("0090") < versions.index("0420") < versions.index("0425")
    assert {"0090", "0425"} <= {m.version for m in discover() if m.requires == "timescaledb"}
