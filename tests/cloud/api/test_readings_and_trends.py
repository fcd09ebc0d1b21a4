"""Readings (filters, cursor pagination, CSV and NDJSON export) and trends (buckets against numpy)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.cloud.alerts.scripted_patient import bp, ingest, make_reading
from tests.cloud.api.conftest import World

pytestmark = pytest.mark.integration


def test_cursor_pages_cover_every_reading_once_newest_first(client: TestClient, world: World) -> None:
    patient, headers = world.patients["consented"], world.headers["clinician"]
    seen: list[dict] = []
    cursor = None
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/v1/patients/{patient}/readings", params=params, headers=headers).json()
        seen += page["readings"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    everything = client.get(f"/v1/patients/{patient}/readings", params={"limit": 1000}, headers=headers).json()
    assert [r["id"] for r in seen] == [r["id"] for r in everything["readings"]]
    assert len(seen) == 19 == len({r["id"] for r in seen})  # 7 cuff + 6 scale + 6 meter readings
    times = [r["measured_at"] for r in seen]
    assert times == sorted(times, reverse=True)


def test_reading_carries_canonical_values_device_flags_and_clock(client: TestClient, world: World) -> None:
    patient = world.patients["consented"]
    reading = client.get(f"/v1/patients/{patient}/readings", params={"kind": "blood_pressure", "limit": 1},
                         headers=world.headers["clinician"]).json()["readings"][0]
    assert reading["kind"] == "blood_pressure"
    assert reading["values"]["systolic"] == {"value": 190.0, "unit": "mm[Hg]", "original_value": None,
                                             "original_unit": None}
    assert reading["device"]["uid"] == world.devices["consented"]["blood_pressure"]
    assert reading["device"]["profile"] == "ble.blood_pressure"
    assert reading["clock_judgement"] == "device" and isinstance(reading["flags"], list)


def test_filters_by_kind_metric_and_time(client: TestClient, world: World) -> None:
    patient, headers = world.patients["consented"], world.headers["clinician"]
    url = f"/v1/patients/{patient}/readings"
    glucose = client.get(url, params={"metric": "glucose"}, headers=headers).json()["readings"]
    assert len(glucose) == 6 and {r["kind"] for r in glucose} == {"glucose"}
    two_kinds = client.get(url, params=[("kind", "glucose"), ("kind", "body_weight")], headers=headers).json()
    assert len(two_kinds["readings"]) == 12
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    recent = client.get(url, params={"since": since}, headers=headers).json()["readings"]
    assert [r["values"]["systolic"]["value"] for r in recent] == [190.0]
    assert client.get(url, params={"metric": "cholesterol"}, headers=headers).status_code == 422
    assert client.get(url, params={"cursor": "garbage"}, headers=headers).status_code == 400


def test_csv_export_has_one_row_per_value(client: TestClient, world: World) -> None:
    patient = world.patients["consented"]
    response = client.get(f"/v1/patients/{patient}/readings", params={"format": "csv", "kind": "blood_pressure"},
                          headers=world.headers["clinician"])
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 7 * 3  # systolic, diastolic, pulse per cuff reading
    assert {r["metric"] for r in rows} == {"systolic", "diastolic", "pulse_rate"}
    assert {r["unit"] for r in rows if r["metric"] == "systolic"} == {"mm[Hg]"}


def test_ndjson_export_has_one_reading_per_line(client: TestClient, world: World) -> None:
    patient = world.patients["consented"]
    response = client.get(f"/v1/patients/{patient}/readings", params={"format": "ndjson"},
                          headers=world.headers["clinician"])
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert len(lines) == 19 and all("values" in line and "device" in line for line in lines)


def test_daily_trend_matches_numpy(client: TestClient, world: World, conn: psycopg.Connection) -> None:
    patient, device = world.patients["readings_only"], world.devices["readings_only"]["glucose"]
    start = datetime(2030, 1, 1, tzinfo=UTC)
    rng = np.random.default_rng(7)
    values = {day: rng.normal(140, 30, size=24).round(1) for day in range(3)}
    ingest(conn, [make_reading(device, "glucose", start + timedelta(days=day, hours=h), {"glucose": float(v)})
                  for day, day_values in values.items() for h, v in enumerate(day_values)], patient)
    trend = client.get(f"/v1/patients/{patient}/trends/glucose",
                       params={"bucket": "day", "since": start.isoformat(),
                               "until": (start + timedelta(days=3)).isoformat()},
                       headers=world.headers["clinician"]).json()
    assert [b["start"][:10] for b in trend["buckets"]] == ["2030-01-01", "2030-01-02", "2030-01-03"]
    for bucket, day_values in zip(trend["buckets"], values.values(), strict=True):
        assert bucket["count"] == 24
        assert bucket["mean"] == pytest.approx(day_values.mean())
        assert bucket["min"] == pytest.approx(day_values.min()) and bucket["max"] == pytest.approx(day_values.max())
        assert bucket["percentiles"]["p50"] == pytest.approx(np.percentile(day_values, 50))
        assert bucket["percentiles"]["p95"] == pytest.approx(np.percentile(day_values, 95))
    weekly = client.get(f"/v1/patients/{patient}/trends/glucose",
                        params={"bucket": "week", "since": start.isoformat(),
                                "until": (start + timedelta(days=3)).isoformat()},
                        headers=world.headers["clinician"]).json()
    assert sum(b["count"] for b in weekly["buckets"]) == 72


def test_trend_rejects_unknown_metric_and_too_many_buckets(client: TestClient, world: World) -> None:
    patient, headers = world.patients["consented"], world.headers["clinician"]
    assert client.get(f"/v1/patients/{patient}/trends/nonsense", headers=headers).status_code == 404
    response = client.get(f"/v1/patients/{patient}/trends/systolic",
                          params={"bucket": "hour", "since": "2000-01-01T00:00:00Z"}, headers=headers)
    assert response.status_code == 422


def test_excluded_flags_stay_out_of_trends(client: TestClient, world: World, conn: psycopg.Connection) -> None:
    patient, device = world.patients["readings_only"], world.devices["readings_only"]["blood_pressure"]
    at = datetime(2031, 5, 5, 8, tzinfo=UTC)
    ingest(conn, [bp(device, at, 120, 80), bp(device, at + timedelta(minutes=5), 250, 150,
                                                flags=["measurement_unsuccessful"])], patient)
    trend = client.get(f"/v1/patients/{patient}/trends/systolic",
                       params={"since": at.isoformat(), "until": (at + timedelta(days=1)).isoformat()},
                       headers=world.headers["care_team"]).json()
    assert [(b["count"], b["max"]) for b in trend["buckets"]] == [(1, 120.0)]


def _local_day_stats(points: list[tuple[datetime, float]], zone: str) -> dict[str, list[float]]:
    from zoneinfo import ZoneInfo

    days: dict[str, list[float]] = {}
    for at, value in points:
        days.setdefault(at.astimezone(ZoneInfo(zone)).date().isoformat(), []).append(value)
    return days


def _assert_buckets_match(trend: dict, points: list[tuple[datetime, float]], zone: str) -> None:
    expected = _local_day_stats(points, zone)
    got = {b["start"][:10]: b for b in trend["buckets"]}
    assert sorted(got) == sorted(expected)
    for day, values in expected.items():
        bucket = got[day]
        assert bucket["count"] == len(values)
        assert bucket["mean"] == pytest.approx(np.mean(values))
        assert bucket["max"] == pytest.approx(max(values))
        assert bucket["percentiles"]["p50"] == pytest.approx(np.percentile(values, 50))


def test_daily_trend_from_stored_day_stats_stays_exact_through_changes(
        client: TestClient, world: World, conn: psycopg.Connection) -> None:
    patient, device = world.patients["readings_only"], world.devices["readings_only"]["glucose"]
    conn.execute("UPDATE patients SET timezone = 'America/New_York' WHERE id = %s", (patient,))
    base = datetime(2032, 3, 9, 4, 0, tzinfo=UTC)  # spans the 2032 DST change in New York (March 14)
    rng = np.random.default_rng(11)
    points = [(base + timedelta(hours=float(h)), round(float(rng.normal(150, 40)), 1))
              for h in np.sort(rng.uniform(0, 24 * 8, size=200))]
    ingest(conn, [make_reading(device, "glucose", at, {"glucose": v}) for at, v in points], patient)
    params = {"bucket": "day", "since": (base + timedelta(hours=7)).isoformat(),
              "until": (base + timedelta(days=7, hours=13)).isoformat()}
    window = [(at, v) for at, v in points if base + timedelta(hours=7) <= at < base + timedelta(days=7, hours=13)]
    url, headers = f"/v1/patients/{patient}/trends/glucose", world.headers["clinician"]

    trend = client.get(url, params=params, headers=headers).json()
    assert trend["time_zone"] == "America/New_York"
    _assert_buckets_match(trend, window, "America/New_York")
    stored = conn.execute("SELECT count(*) FROM observation_day_stats WHERE patient_id = %s AND metric = 'glucose'"
                          " AND tz = 'America/New_York'", (patient,)).fetchone()
    assert stored is not None and stored[0] >= 7  # whole days came from the stored statistics

    # New values in the middle of the range: the stale days are recomputed on the next read.
    extra = [(base + timedelta(days=3, hours=5), 400.0), (base + timedelta(days=3, hours=6), 30.0)]
    ingest(conn, [make_reading(device, "glucose", at, {"glucose": v}) for at, v in extra], patient)
    _assert_buckets_match(client.get(url, params=params, headers=headers).json(), window + extra, "America/New_York")

    # The patient moves: days are cut again in the new zone.
    conn.execute("UPDATE patients SET timezone = 'Asia/Tokyo' WHERE id = %s", (patient,))
    _assert_buckets_match(client.get(url, params=params, headers=headers).json(), window + extra, "Asia/Tokyo")
