"""Benchmarks (``-m bench``): server time, read from the ``Server-Timing`` header the API sets, for

- a patient with one year of 5-minute glucose readings (105 120 rows): the daily trend for the year
  and a 14-day glucose summary (target < 50 ms each);
- a clinician's panel of 10 000 patients' latest vitals, audit rows included, a page of 500 and every page
  reachable; and its filters, search and sorts, p50/p95 per query shape (target p95 < 200 ms).

Data is loaded with COPY into a database of its own, then ANALYZEd (as autovacuum would).
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from cloud.api.app import create_app
from cloud.api.tokens import mint_token
from cloud.settings import CloudSettings
from cloud.twin.state import apply_events, empty_state
from tests.cloud.api.conftest import DEV_KEY
from tests.conftest import _own_database

pytestmark = pytest.mark.bench
YEAR_OF_5_MINUTES = 365 * 288  # 105 120
PANEL_SIZE = 10_000
RUNS = 25


@pytest.fixture(scope="module")
def bench_db(pg_admin_url: str, _migrated_template: str) -> Iterator[str]:
    """One migrated database for the module's measurements (the session's clone, made and dropped once)."""
    with _own_database(pg_admin_url, _migrated_template) as url:
        yield url


@pytest.fixture(scope="module")
def bench_client(bench_db: str) -> Iterator[TestClient]:
    settings = CloudSettings(database_url=bench_db, jwt_dev_key=DEV_KEY, api_pool_max=4)
    with TestClient(create_app(settings)) as client:
        yield client


def _headers(**claims: object) -> dict[str, str]:
    token = mint_token(CloudSettings(jwt_dev_key=DEV_KEY), **claims)  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {token}"}


def _server_ms(client: TestClient, url: str, params: dict, headers: dict[str, str]) -> list[float]:
    timings = []
    for _ in range(RUNS):
        response = client.get(url, params=params, headers=headers)
        assert response.status_code == 200, response.text[:300]
        timings.append(float(response.headers["server-timing"].split("dur=")[1]))
    return timings


def _report(label: str, timings: list[float], target_ms: float) -> float:
    timings = sorted(timings)
    median, p95 = statistics.median(timings), timings[int(0.95 * (len(timings) - 1))]
    print(f"\n{label}: median {median:.1f} ms, p95 {p95:.1f} ms, min {timings[0]:.1f} ms over {len(timings)} runs "
          f"(target < {target_ms:.0f} ms)")
    return median


def test_year_of_cgm_daily_trend_and_14_day_summary(bench_client: TestClient, bench_db: str) -> None:
    patient, device, team = "bench-cgm", "ble:bench-cgm", "bench-team"
    end = datetime(2026, 11, 1, tzinfo=UTC)
    start = end - timedelta(days=365)
    loaded = time.perf_counter()
    with psycopg.connect(bench_db, autocommit=True) as conn:
        conn.execute("INSERT INTO patients (id) VALUES (%s)", (patient,))
        conn.execute("INSERT INTO devices (uid, transport, profile) VALUES (%s, 'ble', 'ble.glucose')", (device,))
        conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Bench')", (team,))
        conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s,"
                     " '{readings}', %s)", (patient, team, patient))
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy("COPY readings (id, patient_id, device_uid, gateway_id, batch_id, kind, measured_at,"
                          " clock_judgement) FROM STDIN") as copy_in:
                for i in range(YEAR_OF_5_MINUTES):
                    copy_in.write_row((f"cgm-{i}", patient, device, "gw-bench", "b", "glucose",
                                       start + timedelta(minutes=5 * i), "device"))
            with cur.copy("COPY observations (reading_id, patient_id, kind, metric, measured_at, value, unit)"
                          " FROM STDIN") as copy_in:
                for i in range(YEAR_OF_5_MINUTES):
                    # A daily swing between 80 and 220 mg/dL.
                    value = 150 + 70 * ((i % 288) - 144) / 144
                    copy_in.write_row((f"cgm-{i}", patient, "glucose", "glucose", start + timedelta(minutes=5 * i),
                                       value, "mg/dL"))
        conn.execute("ANALYZE readings")
        conn.execute("ANALYZE observations")
    print(f"\nloaded {YEAR_OF_5_MINUTES} glucose readings in {time.perf_counter() - loaded:.1f} s")
    headers = _headers(role="clinician", sub="dr.bench", care_teams=[team])

    first = bench_client.get(f"/v1/patients/{patient}/trends/glucose",
                             params={"bucket": "day", "since": start.isoformat(), "until": end.isoformat()},
                             headers=headers)
    # The first read builds the stored daily statistics (migration 0420); later reads refresh stale days only.
    print(f"first daily trend (builds 365 days of statistics): {first.headers['server-timing']}")
    trend = first.json()
    assert len(trend["buckets"]) == 365 and sum(b["count"] for b in trend["buckets"]) == YEAR_OF_5_MINUTES
    trend_ms = _report("daily trend, 1 year of 5-minute glucose (105 120 rows)",
                       _server_ms(bench_client, f"/v1/patients/{patient}/trends/glucose",
                                  {"bucket": "day", "since": start.isoformat(), "until": end.isoformat()}, headers),
                       50)
    summary = bench_client.get(f"/v1/patients/{patient}/summaries/glucose",
                               params={"days": 14, "until": end.isoformat()}, headers=headers).json()
    assert summary["readings"] == 14 * 288
    summary_ms = _report("14-day glucose summary", _server_ms(bench_client, f"/v1/patients/{patient}/summaries/glucose",
                                                              {"days": 14, "until": end.isoformat()}, headers), 50)
    assert trend_ms < 50 and summary_ms < 50


def _twin_template(days: int) -> dict:
    today = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0)
    return apply_events(empty_state("template"), [
        ("reading_added", {"reading_id": f"r{d}-{k}", "measured_at": (today - timedelta(days=d)).isoformat(),
                           "device_uid": f"dev-{k}", "values": values, "units": units, "flags": []})
        for d in range(days - 1, -1, -1)
        for k, (values, units) in enumerate([
            ({"systolic": 128 + d % 7, "diastolic": 82, "pulse_rate": 71},
             {"systolic": "mm[Hg]", "diastolic": "mm[Hg]", "pulse_rate": "/min"}),
            ({"glucose": 120 + d}, {"glucose": "mg/dL"}),
            ({"body_weight": 81.5}, {"body_weight": "kg"})])
    ])


@pytest.fixture(scope="module")
def panel_team(bench_db: str) -> str:
    """10 000 patients of one care team: twins with 21 days of readings (one in four: 5 days); one in twenty
    with an open critical alert (one in three of those acknowledged), one in fifty with a crisis resolved
    before review, one in forty missing data, one in a hundred with a device problem. Alerts go in through
    plain INSERTs, so the projection's triggers (migration 0590) keep patient_panel as they do in production."""
    team = "bench-panel"
    templates = {21: _twin_template(21), 5: _twin_template(5)}
    loaded = time.perf_counter()
    with psycopg.connect(bench_db, autocommit=True) as conn:
        conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Panel')", (team,))
        ids = [f"panel-{i:05d}" for i in range(PANEL_SIZE)]
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy("COPY patients (id, display_name) FROM STDIN") as copy_in:
                for patient_id in ids:
                    copy_in.write_row((patient_id, f"Patient {patient_id}"))
            with cur.copy("COPY consents (patient_id, care_team_id, scopes, granted_by) FROM STDIN") as copy_in:
                for patient_id in ids:
                    copy_in.write_row((patient_id, team, ["readings", "alerts", "twin"], patient_id))
            with cur.copy("COPY twins (patient_id, version, state) FROM STDIN") as copy_in:
                for i, patient_id in enumerate(ids):
                    state = copy.deepcopy(templates[5 if i % 4 == 3 else 21])
                    state["patient_id"] = patient_id
                    copy_in.write_row((patient_id, 63, Jsonb(state)))
            cur.executemany("INSERT INTO alerts (patient_id, rule_id, severity, status, message) VALUES"
                            " (%s, 'bp_crisis', 'critical', 'open', 'bench')", [(p,) for p in ids[::20]])
            cur.execute("UPDATE alerts SET status = 'acknowledged', acknowledged_at = now(), acknowledged_by = 'dr',"
                        " reviewed_at = now(), reviewed_by = 'dr' WHERE id % 3 = 0")
            cur.executemany("INSERT INTO alerts (patient_id, rule_id, severity, status, message, resolved_at,"
                            " resolved_by) VALUES (%s, 'glucose_level2_hypo', 'critical', 'resolved', 'bench', now(),"
                            " 'system')", [(p,) for p in ids[7::50]])
            cur.executemany("INSERT INTO alerts (patient_id, rule_id, severity, status, message) VALUES"
                            " (%s, 'missing_blood_pressure', 'warning', 'open', 'bench')", [(p,) for p in ids[3::40]])
            cur.executemany("INSERT INTO alerts (patient_id, rule_id, severity, status, message) VALUES"
                            " (%s, 'device_unreadable_records', 'warning', 'open', 'bench')",
                            [(p,) for p in ids[5::100]])
        for table in ("patients", "consents", "twins", "alerts", "patient_panel"):
            conn.execute(f"ANALYZE {table}")
    print(f"\nloaded a panel of {PANEL_SIZE} patients in {time.perf_counter() - loaded:.1f} s")
    return team


def test_panel_of_ten_thousand_patients(bench_client: TestClient, panel_team: str) -> None:
    headers = _headers(role="clinician", sub="dr.panel", care_teams=[panel_team])
    # Every patient is reachable: pages of the largest size, 20 of them, each patient once.
    seen: list[str] = []
    size = 0
    for offset in range(0, PANEL_SIZE, 500):
        body = bench_client.get("/v1/patients", params={"limit": 500, "offset": offset}, headers=headers)
        page = json.loads(body.text)
        assert page["total"] == PANEL_SIZE
        seen += [p["patient_id"] for p in page["patients"]]
        size += len(body.content)
    assert len(seen) == len(set(seen)) == PANEL_SIZE
    first = json.loads(bench_client.get("/v1/patients", params={"limit": 1}, headers=headers).text)["patients"][0]
    assert first["open_alerts"]["critical"] == 1 and first["latest"]["systolic"]["value"] == 128
    print(f"panel, all 20 pages of 500: {size / 1e6:.1f} MB")
    median = _report("panel page of 500 of 10 000 patients (latest vitals, open alerts, adherence; 500 audit rows)",
                     _server_ms(bench_client, "/v1/patients", {"limit": 500}, headers), 200)
    assert median < 200


PANEL_SHAPES = [
    ("triage, first page of 50", {}),
    ("triage, page of 50 at offset 9 000", {"offset": 9000}),
    ("filter critical", {"filter": "critical"}),
    ("filter critical + unacknowledged", {"filter": ["critical", "unacknowledged"]}),
    ("filter needs_review", {"filter": "needs_review"}),
    ("filter missing_data", {"filter": "missing_data"}),
    ("filter device_problem", {"filter": "device_problem"}),
    ("filter below_16_days, sort last_reading", {"filter": "below_16_days", "sort": "last_reading"}),
    ("search q=0421 (id or name)", {"q": "0421"}),
    ("search q=patient panel-09 (name), sort name", {"q": "patient panel-09", "sort": "name"}),
    ("sort name desc, offset 5 000", {"sort": "name", "order": "desc", "offset": 5000}),
    ("sort days_with_data, limit 500", {"sort": "days_with_data", "limit": 500}),
]


def test_panel_filters_search_and_sort_over_ten_thousand_patients(bench_client: TestClient, panel_team: str) -> None:
    headers = _headers(role="clinician", sub="dr.panel", care_teams=[panel_team])
    counts = json.loads(bench_client.get("/v1/patients", headers=headers).text)["counts"]
    print(f"\npanel counts: {counts}")
    assert counts["all"] == PANEL_SIZE and counts["below_16_days"] == PANEL_SIZE // 4
    assert counts["critical"] == PANEL_SIZE // 20 and counts["needs_review"] == PANEL_SIZE // 50
    worst = {}
    for label, params in PANEL_SHAPES:
        timings = sorted(_server_ms(bench_client, "/v1/patients", params, headers))
        p50, p95 = statistics.median(timings), timings[int(0.95 * (len(timings) - 1))]
        print(f"panel 10 000 patients, {label}: p50 {p50:.1f} ms, p95 {p95:.1f} ms over {len(timings)} runs"
              " (target p95 < 200 ms)")
        worst[label] = p95
    assert max(worst.values()) < 200, worst
