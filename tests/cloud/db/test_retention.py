"""Retention (cloud.db.retention) on a populated database, through the real migrations, the real API and
ingest's own statements: what is older than the horizon goes from every table that holds values, what is
newer is untouched (the API answers the same for the kept window), records of care stay, a second pass
removes nothing, and ingest running during a pass loses nothing.

On a TimescaleDB server (``RPM_TEST_DATABASE_URL`` at one with the extension preloaded) the same tests run
the hypertable path (drop_chunks, the continuous aggregates' buckets); the TimescaleDB-only checks skip,
with the reason, elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.db.migrate import apply_migrations
from cloud.db.retention import apply_retention, horizon_for
from cloud.db.storage import report
from cloud.settings import CloudSettings
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, insert_readings, make_reading
from tests.cloud.api import conftest as api_conftest
from tests.cloud.api.conftest import DEV_KEY, TokenFactory, grant

pytestmark = pytest.mark.integration
# The API tests' token fixtures, for the clinician who reads the trends here.
api_settings = api_conftest.api_settings
auth = api_conftest.auth
ROOT = Path(__file__).resolve().parents[3]
DAYS = 30
ZONES = {"auckland": "Pacific/Auckland", "angeles": "America/Los_Angeles", "utc": "UTC"}


def _hypertable(conn: psycopg.Connection) -> bool:
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None:
        return False
    return (
        conn.execute(
            "SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'observations'"
        ).fetchone()
        is not None
    )


class Populated:
    """60 days of glucose for three patients in three zones, blood pressure for one of them (with a crisis
    reading 50 days ago that opened an alert), unassigned readings, dead letters and EHR outbox rows."""

    def __init__(self, conn: psycopg.Connection, prefix: str, auth: TokenFactory, now: datetime) -> None:
        self.now = now
        self.horizon = horizon_for(DAYS, now)
        team = f"{prefix}-team"
        conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Retention')", (team,))
        self.patients: dict[str, str] = {}
        devices = {}
        for name, zone in ZONES.items():
            patient = f"{prefix}-{name}"
            kinds = ("glucose", "blood_pressure") if name == "utc" else ("glucose",)
            devices[name] = add_patient(conn, patient, kinds=kinds, assigned_at=datetime(2000, 1, 1, tzinfo=UTC))
            conn.execute("UPDATE patients SET timezone = %s WHERE id = %s", (zone, patient))
            grant(conn, patient, team, ["readings"])
            self.patients[name] = patient
        self.headers = auth("clinician", sub=f"{prefix}-dr", care_teams=(team,))
        start = now - timedelta(days=60)
        for name, patient in self.patients.items():
            points = [start + timedelta(hours=2 * i, minutes=7) for i in range(60 * 12)]
            readings = [
                make_reading(devices[name]["glucose"], "glucose", at, {"glucose": 90.0 + (i * 37) % 120})
                for i, at in enumerate(points)
                if at < now
            ]
            for i in range(0, len(readings), 400):
                ingest(conn, readings[i : i + 400], patient, late=True)
        utc = self.patients["utc"]
        pressures = [
            bp(devices["utc"]["blood_pressure"], now - timedelta(days=d, hours=h), 128 + d % 9, 82)
            for d in range(1, 60)
            for h in (3, 13)
        ]
        ingest(conn, pressures, utc, late=True)
        self.crisis = bp(devices["utc"]["blood_pressure"], now - timedelta(days=50, hours=1), 192, 124)
        ingest(conn, [self.crisis], utc)
        # A device nobody is assigned to yet: its readings wait with no patient.
        orphan = f"ble:{prefix}:orphan"
        conn.execute("INSERT INTO devices (uid, transport, profile) VALUES (%s, 'ble', 'ble.glucose')", (orphan,))
        insert_readings(
            conn,
            [make_reading(orphan, "glucose", now - timedelta(days=d), {"glucose": 111.0}) for d in (45, 40, 5, 1)],
            None,
        )
        conn.execute(
            "INSERT INTO dead_letters (received_at, topic, reason, payload)"
            " VALUES (%s, 't', 'old', '\\x00'), (%s, 't', 'new', '\\x00')",
            (now - timedelta(days=40), now - timedelta(days=2)),
        )
        conn.execute(
            "INSERT INTO ehr_push_outbox (reading_id, patient_id, stored_at)"
            " SELECT id, patient_id, stored_at FROM readings WHERE patient_id = %s ON CONFLICT DO NOTHING",
            (utc,),
        )

    def counts(self, conn: psycopg.Connection) -> dict[str, tuple[int, int]]:
        """Rows before and at-or-after the horizon, per table that holds values."""
        h = self.horizon
        queries = {
            "readings": "SELECT count(*) FILTER (WHERE measured_at < %(h)s),"
            " count(*) FILTER (WHERE measured_at >= %(h)s) FROM readings",
            "observations": "SELECT count(*) FILTER (WHERE measured_at < %(h)s),"
            " count(*) FILTER (WHERE measured_at >= %(h)s) FROM observations",
            "ehr_push_outbox": "SELECT count(*) FILTER (WHERE r.measured_at < %(h)s),"
            " count(*) FILTER (WHERE r.measured_at >= %(h)s)"
            " FROM ehr_push_outbox e JOIN readings r ON r.id = e.reading_id",
            "outbox orphans": "SELECT count(*), 0 FROM ehr_push_outbox e"
            " WHERE NOT EXISTS (SELECT 1 FROM readings r WHERE r.id = e.reading_id)",
            "observation_day_stats": "SELECT count(*) FILTER (WHERE ((day + 1)::timestamp AT TIME ZONE tz) <= %(h)s),"
            " count(*) FILTER (WHERE (day::timestamp AT TIME ZONE tz) >= %(h)s)"
            " FROM observation_day_stats",
            "dead_letters": "SELECT count(*) FILTER (WHERE received_at < %(h)s),"
            " count(*) FILTER (WHERE received_at >= %(h)s) FROM dead_letters",
        }
        result = {}
        for table, query in queries.items():
            row = conn.execute(query, {"h": h}).fetchone()
            assert row is not None
            result[table] = (int(row[0]), int(row[1]))
        return result

    def api_view(self, client: TestClient) -> dict[str, object]:
        """What a clinician reads about the kept window (from two days after the horizon: the local day that
        holds the horizon keeps only part of its values, by design)."""
        since, until = (self.horizon + timedelta(days=2)).isoformat(), self.now.isoformat()
        view: dict[str, object] = {}
        for name, patient in self.patients.items():
            for bucket in ("hour", "day", "week"):
                response = client.get(
                    f"/v1/patients/{patient}/trends/glucose",
                    headers=self.headers,
                    params={"bucket": bucket, "since": since, "until": until},
                )
                assert response.status_code == 200, response.text[:300]
                buckets = response.json()["buckets"]
                if bucket == "week":  # a week can reach back over the horizon: compare whole weeks after it
                    buckets = [b for b in buckets if b["start"] >= since]
                view[f"{name} {bucket}"] = buckets
            summary = client.get(
                f"/v1/patients/{patient}/summaries/glucose", headers=self.headers, params={"days": 14, "until": until}
            )
            assert summary.status_code == 200, summary.text[:300]
            view[f"{name} summary"] = {k: v for k, v in summary.json().items() if k != "generated_at"}
        pressure = client.get(
            f"/v1/patients/{self.patients['utc']}/summaries/blood-pressure",
            headers=self.headers,
            params={"until": until},
        )
        assert pressure.status_code == 200, pressure.text[:300]
        # Its windows end at the latest reading, not at ``until``: one that reaches back over the kept window's
        # start holds fewer readings after the pass, by design (the 30-day windows, on most days).
        view["bp summary"] = _windows_from(pressure.json(), since)
        return view


def _windows_from(value: object, since: str) -> object:
    """``value`` without the windows (dicts with a ``since``) that start before ``since``."""
    if isinstance(value, dict):
        return {k: _windows_from(v, since) for k, v in value.items()
                if not (isinstance(v, dict) and isinstance(v.get("since"), str) and v["since"] < since)}
    return value


def _client(url: str) -> TestClient:
    return TestClient(
        create_app(CloudSettings(database_url=url, jwt_dev_key=DEV_KEY, api_pool_max=2)), raise_server_exceptions=False
    )


@pytest.fixture
def populated(
    fresh_database_url: str, unique_id: str, auth: TokenFactory
) -> Iterator[tuple[psycopg.Connection, TestClient, Populated]]:
    with psycopg.connect(fresh_database_url, autocommit=True) as conn, _client(fresh_database_url) as client:
        data = Populated(conn, unique_id, auth, datetime.now(UTC).replace(microsecond=0))
        yield conn, client, data


def test_a_pass_removes_everything_older_than_the_horizon_and_nothing_newer(
    populated: tuple[psycopg.Connection, TestClient, Populated],
) -> None:
    conn, client, data = populated
    # The API builds the day statistics of every day, old ones included, on its first read.
    for patient in data.patients.values():
        client.get(
            f"/v1/patients/{patient}/trends/glucose",
            headers=data.headers,
            params={
                "bucket": "day",
                "since": (data.now - timedelta(days=61)).isoformat(),
                "until": data.now.isoformat(),
            },
        )
    before = data.counts(conn)
    view_before = data.api_view(client)
    alerts_before = conn.execute("SELECT id, reading_id, value FROM alerts ORDER BY id").fetchall()
    assert any(reading == data.crisis.id for _, reading, _ in alerts_before), "the crisis opened an alert"
    programme_days = conn.execute("SELECT count(*) FROM programme_device_days").fetchone()
    for table in ("readings", "observations", "observation_day_stats", "dead_letters", "ehr_push_outbox"):
        assert before[table][0] > 0 and before[table][1] > 0, (table, before[table])  # both sides populated

    removed = apply_retention(conn, DAYS, batch_size=500)
    after = data.counts(conn)
    for table in ("readings", "observations", "observation_day_stats", "dead_letters", "ehr_push_outbox"):
        assert after[table][0] == 0, (table, after[table])
        assert after[table][1] == before[table][1], table  # nothing at or after the horizon touched
    assert after["outbox orphans"] == (0, 0)
    assert removed.removed["readings"] == before["readings"][0]
    if _hypertable(conn):  # whole chunks are dropped, not counted by row
        assert removed.removed["observations chunks"] > 0
    else:
        assert removed.removed["observations"] == before["observations"][0]
    assert removed.removed["dead_letters"] == before["dead_letters"][0]
    assert data.api_view(client) == view_before
    # Records of care stay: the alert keeps what it said, though its reading is gone.
    assert conn.execute("SELECT id, reading_id, value FROM alerts ORDER BY id").fetchall() == alerts_before
    assert conn.execute("SELECT count(*) FROM readings WHERE id = %s", (data.crisis.id,)).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM programme_device_days").fetchone() == programme_days
    assert conn.execute("SELECT count(*) FROM twin_events").fetchone()[0] > 0

    again = apply_retention(conn, DAYS, batch_size=500)
    assert again.skipped is None and set(again.removed.values()) == {0}, again.removed
    assert data.counts(conn) == after
    assert data.api_view(client) == view_before


def test_the_day_that_holds_the_horizon_is_recomputed_from_what_is_kept(
    populated: tuple[psycopg.Connection, TestClient, Populated],
) -> None:
    conn, client, data = populated
    patient = data.patients["angeles"]  # local days straddle the UTC-midnight horizon by 7 or 8 hours
    params = {"bucket": "day", "since": (data.now - timedelta(days=61)).isoformat(), "until": data.now.isoformat()}
    client.get(f"/v1/patients/{patient}/trends/glucose", headers=data.headers, params=params)
    apply_retention(conn, DAYS)
    buckets = client.get(f"/v1/patients/{patient}/trends/glucose", headers=data.headers, params=params).json()[
        "buckets"
    ]
    first = buckets[0]
    kept = conn.execute(
        "SELECT count(*) FROM observations WHERE patient_id = %s AND measured_at < %s",
        (patient, datetime.fromisoformat(first["start"]) + timedelta(days=1)),
    ).fetchone()[0]
    assert datetime.fromisoformat(first["start"]) < data.horizon, "the first day is the one holding the horizon"
    assert 0 < first["count"] == kept < 12  # only its values after the horizon


def test_ingest_during_a_pass_loses_nothing(
    populated: tuple[psycopg.Connection, TestClient, Populated], fresh_database_url: str
) -> None:
    conn, _, data = populated
    device = f"ble:{data.patients['auckland']}:glucose"
    stored: list[str] = []
    failures: list[BaseException] = []
    running = threading.Event()

    def write() -> None:
        try:
            with psycopg.connect(fresh_database_url, autocommit=True) as writer:
                running.set()
                for i in range(60):
                    batch = [
                        make_reading(device, "glucose", data.now - timedelta(minutes=i * 10 + k), {"glucose": 99.0})
                        for k in range(10)
                    ]
                    ingest(writer, batch, data.patients["auckland"])
                    stored.extend(r.id for r in batch)
        except BaseException as err:  # surfaced by the assertion below
            failures.append(err)

    thread = threading.Thread(target=write)
    thread.start()
    assert running.wait(10)
    removed = apply_retention(conn, DAYS, batch_size=100)  # many small transactions beside the writer
    thread.join(timeout=120)
    assert not thread.is_alive() and not failures, failures
    assert removed.removed["readings"] > 0
    present = conn.execute("SELECT count(*) FROM readings WHERE id = ANY(%s)", (stored,)).fetchone()[0]
    values = conn.execute("SELECT count(*) FROM observations WHERE reading_id = ANY(%s)", (stored,)).fetchone()[0]
    assert present == values == len(stored) == 600
    assert data.counts(conn)["readings"][0] == 0


def test_a_second_pass_at_once_skips(
    populated: tuple[psycopg.Connection, TestClient, Populated], fresh_database_url: str
) -> None:
    conn, _, _ = populated
    with psycopg.connect(fresh_database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (0x52504D_0002,))
        assert apply_retention(conn, DAYS).skipped == "another retention pass is running"
        other.execute("SELECT pg_advisory_unlock(%s)", (0x52504D_0002,))
    assert apply_retention(conn, DAYS).skipped is None


def test_bad_arguments_are_refused(fresh_database_url: str) -> None:
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        with pytest.raises(ValueError, match="at least 1 day"):
            apply_retention(conn, 0)
        with pytest.raises(ValueError, match="batch_size"):
            apply_retention(conn, 30, batch_size=0)
    with psycopg.connect(fresh_database_url) as conn, pytest.raises(ValueError, match="autocommit"):
        apply_retention(conn, 30)


def _cli(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "RPM_DATABASE_URL": url, **env}
    environment.pop("RPM_RETENTION_DAYS", None) if "RPM_RETENTION_DAYS" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "cloud.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=120,
    )


def test_the_storage_command_applies_retention_and_says_what_it_removed(
    populated: tuple[psycopg.Connection, TestClient, Populated], fresh_database_url: str
) -> None:
    conn, _, data = populated
    off = _cli(fresh_database_url, "storage", "--apply-retention")
    assert off.returncode == 0 and "RPM_RETENTION_DAYS is unset" in off.stdout, off.stdout + off.stderr
    assert data.counts(conn)["readings"][0] > 0  # unset: nothing removed
    shown = _cli(fresh_database_url, "storage", RPM_RETENTION_DAYS=str(DAYS))
    assert f"retention (RPM_RETENTION_DAYS): {DAYS} days" in shown.stdout, shown.stdout
    done = _cli(fresh_database_url, "storage", "--apply-retention", RPM_RETENTION_DAYS=str(DAYS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"before {data.horizon.isoformat()}" in done.stdout
    readings_line = next(line for line in done.stdout.splitlines() if line.strip().startswith("readings:"))
    assert int(readings_line.split(":")[1]) > 0
    assert data.counts(conn)["readings"][0] == 0


# --- TimescaleDB: chunks, the continuous aggregates and their policies -------------------------------------


def test_on_timescaledb_chunks_and_aggregate_buckets_go_and_policies_follow_the_setting(
    populated: tuple[psycopg.Connection, TestClient, Populated], fresh_database_url: str
) -> None:
    conn, _, data = populated
    if not _hypertable(conn):
        pytest.skip("observations is no hypertable here (no TimescaleDB on this server)")
    conn.execute(
        "SELECT compress_chunk(c, if_not_compressed => true)"
        " FROM show_chunks('observations', older_than => interval '7 days') c"
    )
    views = [
        r[0]
        for r in conn.execute(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates"
            " WHERE hypertable_name = 'observations' ORDER BY 1"
        ).fetchall()
    ]
    assert views
    for view in views:
        for attempt in range(50):  # the policy job may be refreshing it at the same moment
            try:
                conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")
                break
            except psycopg.errors.LockNotAvailable:
                if attempt == 49:
                    raise
                time.sleep(0.2)
    changes: list = []
    apply_migrations(fresh_database_url, retention_days=DAYS, compress_after_days=7, policy_changes=changes)
    assert {f"retention of {v}" for v in views} <= {c.policy for c in changes}
    assert {a["view"]: a["retention_days"] for a in report(conn).continuous_aggregates} == dict.fromkeys(views, DAYS)
    again: list = []
    apply_migrations(fresh_database_url, retention_days=DAYS, compress_after_days=7, policy_changes=again)
    assert again == []
    chunks_before = conn.execute("SELECT count(*) FROM show_chunks('observations')").fetchone()[0]

    removed = apply_retention(conn, DAYS)
    assert removed.removed["observations chunks"] > 0
    assert conn.execute("SELECT count(*) FROM show_chunks('observations')").fetchone()[0] < chunks_before
    assert data.counts(conn)["observations"][0] == 0
    for view in views:
        old = conn.execute(f"SELECT count(*) FROM {view} WHERE bucket < %s", (data.horizon,)).fetchone()[0]
        assert old == 0, view
        kept = conn.execute(f"SELECT count(*) FROM {view} WHERE bucket >= %s", (data.horizon,)).fetchone()[0]
        assert kept > 0, view
    # What was compressed and kept stays compressed.
    assert (
        conn.execute(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'observations'"
            " AND is_compressed AND range_start >= %s",
            (data.horizon,),
        ).fetchone()[0]
        > 0
    )

    apply_migrations(fresh_database_url, retention_days=None, compress_after_days=7)
    assert {a["retention_days"] for a in report(conn).continuous_aggregates} == {None}


def test_the_scheduler_runs_a_pass_in_a_thread_of_its_own(fresh_database_url: str) -> None:
    from cloud.alerts.scheduler import retention_loop

    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO dead_letters (received_at, topic, reason, payload) VALUES (now() - interval '40 days',"
            " 't', 'old', '\\x00'), (now(), 't', 'new', '\\x00')"
        )
        stop = threading.Event()
        thread = threading.Thread(target=retention_loop, args=(fresh_database_url, DAYS, 3600.0, stop), daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while conn.execute("SELECT count(*) FROM dead_letters").fetchone() != (1,):
            assert time.monotonic() < deadline, "the scheduler's pass did not run"
            time.sleep(0.1)
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert conn.execute("SELECT reason FROM dead_letters").fetchone() == ("new",)
