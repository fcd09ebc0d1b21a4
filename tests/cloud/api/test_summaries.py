"""Summary maths against hand-computed cases, first as pure functions, then through the API over
stored readings (the SQL binning and averaging)."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from cloud.alerts import service
from cloud.alerts.evaluate import ReadingFacts, evaluate
from cloud.api.summaries import (
    adherence_summary,
    agp,
    bp_summary,
    glucose_summary,
    gmi,
    oximetry_summary,
    temperature_summary,
    weight_summary,
)
from cloud.db.alert_rules import Condition, Rule
from cloud.twin.baselines import History, Series
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, make_reading, weight
from tests.cloud.api.conftest import World

NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)


@pytest.mark.unit
def test_time_below_weights_each_reading_by_its_spacing_capped_and_nights_take_their_minimum() -> None:
    # Berlin (UTC+2 in summer): a continuous night 23:00-23:09 local, one reading a minute, 4 of them
    # below 90 (two of those below 88); then a daytime spot-check at 12:00 local, 13 h later.
    night = datetime(2026, 6, 1, 21, 0, tzinfo=UTC)
    values = [93, 91, 89, 89, 87, 86, 90, 92, 94, 95]
    series = [(night + timedelta(minutes=n), float(v)) for n, v in enumerate(values)]
    series.append((datetime(2026, 6, 2, 10, 0, tzinfo=UTC), 96.0))
    summary = oximetry_summary(series, 7, "Europe/Berlin")
    # Each of the first 10 stands for one minute; the spot-check for the median spacing (1 min); the 10th
    # reading stands for 10 min (capped), not for the 13 h to the spot-check: 9 + 10 + 1 = 20 min measured.
    assert summary["measured_minutes"] == 20.0
    assert summary["time_below"]["below_90"] == {"minutes": 4.0, "percent": 20.0}
    assert summary["time_below"]["below_88"] == {"minutes": 2.0, "percent": 10.0}
    assert (summary["min_percent"], summary["latest_percent"], summary["readings"]) == (86.0, 96.0, 11)
    (only_night,) = summary["nights"]  # the 12:00 spot-check belongs to no night
    assert only_night["night_of"] == date(2026, 6, 1) and only_night["min_percent"] == 86.0
    assert only_night["min_at"] == night + timedelta(minutes=5)
    assert (only_night["readings"], only_night["minutes_below_90"]) == (10, 4.0)


@pytest.mark.unit
def test_a_night_after_midnight_belongs_to_the_date_it_started_and_no_readings_is_no_error() -> None:
    early = datetime(2026, 1, 10, 3, 30, tzinfo=UTC)  # 03:30 in London (UTC+0 in winter): night of 9 Jan
    summary = oximetry_summary([(early, 91.0)], 7, "Europe/London")
    assert [n["night_of"] for n in summary["nights"]] == [date(2026, 1, 9)]
    empty = oximetry_summary([], 7, "UTC")
    assert empty["readings"] == 0 and empty["time_below"] == {"below_90": None, "below_88": None}
    assert empty["nights"] == [] and empty["latest_percent"] is None


@pytest.mark.unit
def test_temperature_summary_takes_each_local_days_maximum_and_marks_fever_days() -> None:
    tz = "America/New_York"  # UTC-5 in January
    series = [
        (datetime(2026, 1, 5, 14, 0, tzinfo=UTC), 36.8),
        (datetime(2026, 1, 6, 3, 0, tzinfo=UTC), 38.3),  # 22:00 on 5 Jan, local
        (datetime(2026, 1, 6, 15, 0, tzinfo=UTC), 37.9),
        (datetime(2026, 1, 6, 20, 0, tzinfo=UTC), 37.2),
    ]
    summary = temperature_summary(series, 7, tz)
    assert [(d["date"], d["max_cel"], d["fever"], d["readings"]) for d in summary["daily"]] == [
        (date(2026, 1, 5), 38.3, True, 2), (date(2026, 1, 6), 37.9, False, 2)]
    assert (summary["max_cel"], summary["latest_cel"], summary["days_with_fever"]) == (38.3, 37.2, 1)
    assert temperature_summary([], 7, tz)["max_cel"] is None


@pytest.mark.unit
def test_gmi_is_bergenstal_formula() -> None:
    # 3.31 + 0.02392 x 154 = 6.99368 (the paper's own example: mean 154 mg/dL is a GMI of about 7.0 %)
    assert gmi(154) == pytest.approx(6.99368)
    assert gmi(100) == pytest.approx(5.702)


@pytest.mark.unit
def test_glucose_summary_from_counts_matches_hand_computation() -> None:
    # Values 50, 60, 100, 150, 200, 300: mean 143.333, sample SD 95.219 (sum of squares 45 333.3 / 5).
    stats = {"count": 6, "mean": 860 / 6, "sd": 95.2190, "below_54": 1, "from_54_to_69": 1, "from_70_to_180": 2,
             "from_181_to_250": 1, "above_250": 1, "days_with_data": 6}
    summary = glucose_summary(stats, days=14)
    assert summary["mean_mg_dl"] == 143.3
    assert summary["gmi_percent"] == 6.74  # 3.31 + 0.02392 x 143.333 = 6.7385
    assert summary["cv_percent"] == 66.4  # 95.219 / 143.333
    assert summary["time_in_ranges_percent"] == {"below_54": 16.7, "from_54_to_69": 16.7, "from_70_to_180": 33.3,
                                                 "from_181_to_250": 16.7, "above_250": 16.7}
    assert summary["targets_met"]["time_in_range_over_70"] is False
    assert summary["targets_met"]["cv_at_most_36"] is False
    assert summary["sufficient_data"] is False  # 6 of 14 days


@pytest.mark.unit
def test_glucose_summary_without_readings_is_empty_not_an_error() -> None:
    summary = glucose_summary({"count": 0, "mean": None, "sd": None, "days_with_data": 0}, days=14)
    assert summary["readings"] == 0 and summary["gmi_percent"] is None and summary["time_in_ranges_percent"] is None


def _facts(kind: str, at: datetime, values: dict[str, float], reading_id: str) -> ReadingFacts:
    return ReadingFacts(reading_id, "p", kind, at, values)


def _history(readings: list[tuple[datetime, dict[str, float], str]]) -> History:
    """(patient "p", metric) -> Series, as cloud.twin.baselines.load_history builds it."""
    by_metric: dict[str, list[tuple[float, float, str]]] = {}
    for at, values, reading_id in sorted(readings, key=lambda r: (r[0], r[2])):
        for metric, value in values.items():
            by_metric.setdefault(metric, []).append((at.timestamp(), value, reading_id))
    return {("p", m): Series(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), [r[2] for r in rows])
            for m, rows in by_metric.items()}


def _rule(rule_id: str, rule_type: str, kind: str, conditions: list[tuple[str, float]], **params: float) -> Rule:
    return Rule(rule_id, rule_type, kind, tuple(Condition(m, ">=", v) for m, v in conditions), params, "warning",
                0.5, 1, 0, True, rule_id, "test")


BP_RULE = _rule("bp_stage2_average", "average", "blood_pressure", [("systolic", 140), ("diastolic", 90)],
                window_days=7, min_readings=4)


def _bp(at: datetime, systolic: float, diastolic: float, n: int) -> tuple[datetime, dict[str, float], str]:
    return at, {"systolic": systolic, "diastolic": diastolic, "pulse_rate": 70.0}, f"bp{n}"


@pytest.mark.unit
def test_bp_summary_windows_end_at_the_latest_reading_and_categorise_the_average() -> None:
    # Local hours in UTC: 09:00, 07:00 (morning), 20:00 (evening).
    readings = [_bp(NOW - timedelta(days=20, hours=3), 110, 70, 1), _bp(NOW - timedelta(days=2, hours=5), 130, 85, 2),
                _bp(NOW - timedelta(days=1, hours=-8), 150, 95, 3)]
    latest = _facts("blood_pressure", readings[-1][0], readings[-1][1], "bp3")
    summary = bp_summary(_history(readings), latest, BP_RULE, NOW + timedelta(days=3), "UTC")
    assert summary["average_7_days"]["systolic"] == 140 and summary["average_7_days"]["diastolic"] == 90
    assert summary["average_7_days"]["until"] == latest.measured_at  # not `now`: the rule's window
    assert summary["aha_category"] == "stage_2_hypertension"  # 140/90
    assert summary["rule_average"]["readings"] == 2 and summary["rule_average"]["enough_readings"] is False
    assert summary["rule"]["outcome"] is None  # two readings: the rule does not judge
    assert summary["average_30_days"]["systolic"] == 130 and summary["average_30_days"]["diastolic"] == 83.3
    assert summary["average_30_days"]["category"] == "stage_1_hypertension"
    assert summary["morning_7_days"]["systolic"] == 130 and summary["morning_7_days"]["readings"] == 1
    assert summary["evening_7_days"]["systolic"] == 150
    assert summary["morning_30_days"]["readings"] == 2
    assert summary["latest_category"] == "stage_2_hypertension"


@pytest.mark.unit
def test_bp_headline_follows_the_rules_window_and_verdict_not_the_latest_reading() -> None:
    # Four high readings then a stage-1 one: the latest is stage 1, the 7-day average (143.4/84.4) stage 2,
    # and the rule itself (evaluate) triggers on it. A reading exactly 7 days before the latest is outside
    # the window, as the rule takes it.
    latest_at = NOW - timedelta(hours=1)
    readings = [_bp(latest_at - timedelta(days=7), 200, 110, 0)]
    readings += [_bp(latest_at - timedelta(days=d), s, dia, d) for d, s, dia in
                 ((5, 150, 85), (4, 148, 86), (3, 146, 84), (2, 145, 85))]
    readings.append(_bp(latest_at, 128, 82, 9))
    latest = _facts("blood_pressure", latest_at, readings[-1][1], "bp9")
    history = _history(readings)
    summary = bp_summary(history, latest, BP_RULE, NOW, "Europe/Berlin")
    verdict = evaluate(BP_RULE, latest, history, NOW)
    assert verdict is not None and verdict.outcome == "trigger" and verdict.value == pytest.approx(143.4)
    assert summary["rule"]["outcome"] == "trigger" and "7-day average" in summary["rule"]["message"]
    assert summary["rule_average"]["systolic"] == 143.4 and summary["rule_average"]["readings"] == 5
    assert summary["aha_category"] == "stage_2_hypertension"
    assert summary["latest_category"] == "stage_1_hypertension"
    # A patient's own window (override: 3 days, 2 readings) moves the headline with the rule: the reading
    # exactly 3 days back is out, 145/85 and 128/82 average 136.5/83.5, stage 1, and the rule clears.
    three_days = replace(BP_RULE, params={"window_days": 3, "min_readings": 2})
    short = bp_summary(history, latest, three_days, NOW, "UTC")
    assert (short["rule_average"]["readings"], short["rule_average"]["systolic"]) == (2, 136.5)
    assert short["aha_category"] == "stage_1_hypertension" and short["rule"]["outcome"] == "clear"
    assert evaluate(three_days, latest, history, NOW).outcome == "clear"


@pytest.mark.unit
def test_bp_summary_without_readings_is_empty_not_an_error() -> None:
    summary = bp_summary({}, None, BP_RULE, NOW, "UTC")
    assert summary["aha_category"] is None and summary["latest"] is None and summary["rule"]["outcome"] is None


WEIGHT_WINDOWS = [("1_day", _rule("weight_gain_24h", "rate", "body_weight", [("body_weight", 0.9)], window_hours=24),
                   24.0),
                  ("7_days", _rule("weight_gain_7d", "rate", "body_weight", [("body_weight", 2.3)], window_hours=168),
                   168.0),
                  ("30_days", None, 720.0)]


@pytest.mark.unit
def test_weight_change_is_the_rate_rules_gain_over_the_same_window() -> None:
    # 80.0 eight days before, 79.5 six, 80.2 three, 81.0 a day and a half, 82.4 now: no reading near "7 days
    # before", yet the 7-day rule sees +2.9 from 79.5, and so does the summary.
    latest_at = NOW
    series = [(latest_at - timedelta(days=d), {"body_weight": v}, f"w{d}")
              for d, v in ((8, 80.0), (6, 79.5), (3, 80.2), (1.5, 81.0), (0, 82.4))]
    history = _history(series)
    latest = _facts("body_weight", latest_at, {"body_weight": 82.4}, "w0")
    summary = weight_summary(history, latest, WEIGHT_WINDOWS, NOW)
    assert summary["change_kg"] == {"1_day": None, "7_days": 2.9, "30_days": 2.9}
    week = summary["changes"][1]
    assert (week["hours"], week["readings"], week["from_kg"], week["net_change_kg"]) == (168.0, 3, 79.5, 2.9)
    verdict = evaluate(WEIGHT_WINDOWS[1][1], latest, history, NOW)
    assert verdict.outcome == "trigger" and verdict.detail["gain"] == pytest.approx(week["change_kg"])
    assert week["rule"]["outcome"] == "trigger" and "within 168 h" in week["rule"]["message"]
    assert summary["changes"][0]["rule"]["outcome"] is None  # nothing in the 24 h before: the rule does not judge
    assert summary["changes"][2]["net_change_kg"] == 2.4 and summary["readings_30_days"] == 5


@pytest.mark.unit
def test_weight_windows_exclude_their_start_as_the_rule_and_the_slope_is_least_squares() -> None:
    series = [(NOW - timedelta(days=d), {"body_weight": v}, name)
              for d, v, name in ((30, 80.0, "a"), (7, 81.0, "b"), (1, 81.5, "c"), (0, 82.0, "d"))]
    latest = _facts("body_weight", NOW, {"body_weight": 82.0}, "d")
    summary = weight_summary(_history(series), latest, WEIGHT_WINDOWS, NOW)
    # Readings exactly 24 h, 168 h and 720 h before are outside (start, latest): as Series.window in _rate.
    assert summary["change_kg"] == {"1_day": None, "7_days": 0.5, "30_days": 1.0}
    # The 30 days after the 80.0: x = 0, 6, 7 days, y = 81, 81.5, 82 -> Sxy = 3.5, Sxx = 28.667,
    # 0.12209 kg/day = 0.855 kg/week
    assert summary["slope_kg_per_week"] == 0.855
    assert weight_summary({}, None, WEIGHT_WINDOWS, NOW)["change_kg"] == {"1_day": None, "7_days": None,
                                                                       "30_days": None}


@pytest.mark.unit
def test_agp_percentiles_per_slot_match_hand_computation() -> None:
    # Slot 0 (00:00-00:14): 100..140 -> linear percentiles p5 = 100 + 0.05 x 4 x 10 = 102, p25 110, p50 120,
    # p75 130, p95 = 130 + 0.8 x 10 = 138. Slot 95 (23:45): 200 alone. Slot 1: nothing.
    minutes = np.array([3, 7, 11, 14, 0, 1430])
    values = np.array([120.0, 100.0, 140.0, 110.0, 130.0, 200.0])
    times = np.arange(6) * 86400.0  # a day apart: each covers one 15-min slot
    profile = agp(minutes, values, times, days=14)
    assert len(profile["slots"]) == 96 and profile["readings"] == 6
    assert profile["slots"][0] == {"minute": 0, "p5": 102.0, "p25": 110.0, "p50": 120.0, "p75": 130.0, "p95": 138.0,
                                   "n": 5}
    assert profile["slots"][95] == {"minute": 1425, "p5": 200.0, "p25": 200.0, "p50": 200.0, "p75": 200.0,
                                    "p95": 200.0, "n": 1}
    assert profile["slots"][1] == {"minute": 15, "p5": None, "p25": None, "p50": None, "p75": None, "p95": None,
                                   "n": 0}
    assert profile["percent_time_with_data"] == 0.4  # 6 x 15 min of 14 days = 0.446 %
    # Pooled with one slot either side (wrapping at midnight): slot 0 takes slot 95 too: 100..140, 200.
    pooled = agp(minutes, values, times, days=14, pool_slots=1)["slots"][0]
    # sorted 100 110 120 130 140 200: p5 at rank 0.25 -> 102.5; p50 at 2.5 -> 125; p95 at 4.75 -> 185
    assert (pooled["p5"], pooled["p50"], pooled["p95"], pooled["n"]) == (102.5, 125.0, 185.0, 6)
    assert agp(np.array([], dtype=int), np.array([]), np.array([]), days=14)["percent_time_with_data"] == 0.0


@pytest.mark.unit
def test_adherence_counts_days_per_period_and_the_16_day_rule() -> None:
    as_of = date(2026, 3, 31)
    current = [(as_of - timedelta(days=i)).isoformat() for i in range(16)]  # Mar 16..31
    current.append(date(2026, 3, 1).isoformat())  # one day before the period: not counted
    previous = [(as_of - timedelta(days=30 + i)).isoformat() for i in range(10)]  # 10 days in the period before
    summary = adherence_summary(current + previous, as_of, periods=2)
    assert summary["current"]["days_with_readings"] == 16 and summary["current"]["meets_16_day_rule"]
    assert summary["current"]["start"] == date(2026, 3, 2)
    second = summary["periods"][1]
    assert second["days_with_readings"] == 10 and not second["meets_16_day_rule"] and second["days_short"] == 6


@pytest.mark.integration
def test_glucose_summary_over_stored_readings(client: TestClient, world: World, conn: psycopg.Connection) -> None:
    patient = world.patients["consented"]
    device = world.devices["consented"]["glucose"]
    end = datetime.now(UTC) + timedelta(days=30)  # a window of its own, after the seeded readings
    values = [50, 60, 100, 150, 200, 300]
    ingest(conn, [make_reading(device, "glucose", end - timedelta(hours=i + 1), {"glucose": v})
                  for i, v in enumerate(values)], patient)
    # A control-solution sample is not the patient's glucose and must not count.
    ingest(conn, [make_reading(device, "glucose", end - timedelta(minutes=30), {"glucose": 500},
                               flags=["control_solution"])], patient)
    response = client.get(f"/v1/patients/{patient}/summaries/glucose",
                          params={"days": 1, "until": end.isoformat()}, headers=world.headers["clinician"])
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["readings"] == 6
    assert summary["mean_mg_dl"] == 143.3 and summary["gmi_percent"] == 6.74 and summary["cv_percent"] == 66.4
    assert summary["time_in_ranges_percent"]["from_70_to_180"] == 33.3


@pytest.mark.integration
def test_glucose_range_boundaries_follow_the_consensus(client: TestClient, world: World,
                                                       conn: psycopg.Connection) -> None:
    patient = world.patients["consented"]
    device = world.devices["consented"]["glucose"]
    end = datetime.now(UTC) + timedelta(days=60)
    # 53.9 | 54, 69.9 | 70, 180 | 180.5, 250 | 250.1, 400
    values = [53.9, 54, 69.9, 70, 180, 180.5, 250, 250.1, 400, 120]
    ingest(conn, [make_reading(device, "glucose", end - timedelta(minutes=i + 1), {"glucose": v})
                  for i, v in enumerate(values)], patient)
    summary = client.get(f"/v1/patients/{patient}/summaries/glucose", params={"days": 1, "until": end.isoformat()},
                         headers=world.headers["clinician"]).json()
    assert summary["time_in_ranges_percent"] == {"below_54": 10.0, "from_54_to_69": 20.0, "from_70_to_180": 30.0,
                                                 "from_181_to_250": 20.0, "above_250": 20.0}


@pytest.mark.integration
def test_bp_weight_and_adherence_summaries_over_stored_readings(client: TestClient, world: World,
                                                                 conn: psycopg.Connection) -> None:
    patient = world.patients["own"]
    cuff, scale = world.devices["own"]["blood_pressure"], world.devices["own"]["body_weight"]
    end = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) + timedelta(days=90)
    ingest(conn, [bp(cuff, end - timedelta(days=2, hours=5), 130, 85),  # 07:00 UTC (patient time zone UTC)
                  bp(cuff, end - timedelta(days=1, hours=-8), 150, 95),  # 20:00
                  bp(cuff, end - timedelta(days=20, hours=3), 110, 70)], patient)
    ingest(conn, [weight(scale, end - timedelta(days=29), 80.0), weight(scale, end - timedelta(days=6), 81.0),
                  weight(scale, end - timedelta(hours=20), 81.5), weight(scale, end, 82.0)], patient)
    headers = world.headers["patient"]
    pressure = client.get(f"/v1/patients/{patient}/summaries/blood-pressure",
                          params={"until": (end + timedelta(seconds=1)).isoformat()}, headers=headers).json()
    assert pressure["average_7_days"]["systolic"] == 140 and pressure["aha_category"] == "stage_2_hypertension"
    assert pressure["morning_7_days"]["systolic"] == 130 and pressure["evening_7_days"]["systolic"] == 150
    assert pressure["timezone"] == "UTC" and pressure["timezone_source"].startswith("default")
    assert pressure["latest"]["systolic"] == 150 and pressure["window"]["until"] == pressure["latest"]["measured_at"]
    mass = client.get(f"/v1/patients/{patient}/summaries/weight",
                      params={"until": (end + timedelta(seconds=1)).isoformat()}, headers=headers).json()
    # Latest minus the lowest before it in (latest - window, latest): 81.5; 81.0 and 81.5; all three.
    assert mass["change_kg"] == {"1_day": 0.5, "7_days": 1.0, "30_days": 2.0}
    # x = 0, 23, 28.167, 29 days, y = 80, 81, 81.5, 82: Sxy = 33.0625, Sxx = 556.69 -> 0.05939 kg/day
    assert mass["slope_kg_per_week"] == 0.416
    adherence = client.get(f"/v1/patients/{patient}/summaries/adherence",
                           params={"until": end.isoformat(), "periods": 1}, headers=headers).json()
    # Days 2, 1, 20 before (BP) and 29, 6, 1 (20 h), 0 (weight): six distinct days, all in the period.
    assert adherence["current"]["days_with_readings"] == 6
    assert adherence["current"]["meets_16_day_rule"] is False


@pytest.mark.integration
def test_oximetry_and_temperature_summaries_over_stored_readings(client: TestClient, world: World,
                                                                 conn: psycopg.Connection) -> None:
    patient = world.patients["own"]
    with conn.transaction():
        devices = add_patient(conn, f"{patient}-spare", kinds=("pulse_oximetry", "body_temperature"))
        conn.execute("UPDATE device_assignments SET patient_id = %s WHERE device_uid = ANY(%s)",
                     (patient, list(devices.values())))
    night = datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0) + timedelta(days=120)  # UTC zone
    spo2 = [94, 91, 89, 87, 90, 93]  # one a minute
    ingest(conn, [make_reading(devices["pulse_oximetry"], "pulse_oximetry", night + timedelta(minutes=i),
                               {"spo2": v, "spo2_pulse_rate": 70}) for i, v in enumerate(spo2)], patient)
    # An invalid reading is no time below anything.
    ingest(conn, [make_reading(devices["pulse_oximetry"], "pulse_oximetry", night + timedelta(minutes=7),
                               {"spo2": 70, "spo2_pulse_rate": 70}, flags=["invalid_measurement"])], patient)
    ingest(conn, [make_reading(devices["body_temperature"], "body_temperature", night + timedelta(hours=h),
                               {"body_temperature": t}) for h, t in ((2, 37.1), (14, 38.4), (30, 37.0))], patient)
    until = (night + timedelta(days=2)).isoformat()
    headers = world.headers["patient"]
    oxi = client.get(f"/v1/patients/{patient}/summaries/oximetry", params={"until": until, "days": 3},
                     headers=headers)
    assert oxi.status_code == 200, oxi.text
    summary = oxi.json()
    assert summary["readings"] == 6 and summary["min_percent"] == 87.0 and summary["unit"] == "%"
    assert summary["time_below"]["below_90"] == {"minutes": 2.0, "percent": 33.3}
    assert summary["time_below"]["below_88"] == {"minutes": 1.0, "percent": 16.7}
    assert [n["min_percent"] for n in summary["nights"]] == [87.0]
    temp = client.get(f"/v1/patients/{patient}/summaries/temperature", params={"until": until, "days": 3},
                      headers=headers).json()
    assert [(d["max_cel"], d["fever"]) for d in temp["daily"]] == [(38.4, True), (37.0, False)]
    assert temp["days_with_fever"] == 1 and temp["unit"] == "Cel"


def _own_patient(conn: psycopg.Connection, patient_id: str, kinds: tuple[str, ...], tz: str | None) -> dict[str, str]:
    devices = add_patient(conn, patient_id, kinds=kinds)
    conn.execute("UPDATE patients SET timezone = %s WHERE id = %s", (tz, patient_id))
    return devices


@pytest.mark.integration
def test_bp_headline_is_the_category_the_open_average_alert_judged(client: TestClient, conn: psycopg.Connection,
                                                                   auth, unique_id: str) -> None:
    cuff = _own_patient(conn, unique_id, ("blood_pressure",), "America/New_York")["blood_pressure"]
    latest = datetime.now(UTC) - timedelta(hours=1)
    # Four stage-2 readings then a stage-1 one, through the alert engine as ingest runs it.
    ingest(conn, [bp(cuff, latest - timedelta(days=d), s, dia) for d, s, dia in
                  ((5, 150, 85), (4, 148, 86), (3, 146, 84), (2, 145, 85))], unique_id)
    ingest(conn, [bp(cuff, latest, 128, 82)], unique_id)
    [alert] = [a for a in service.list_alerts(conn, patient_id=unique_id) if a["rule_id"] == "bp_stage2_average"]
    assert alert["status"] == "open"
    summary = client.get(f"/v1/patients/{unique_id}/summaries/blood-pressure",
                         headers=auth("patient", patient=unique_id)).json()
    assert summary["aha_category"] == "stage_2_hypertension"  # beside the open stage-2 alert
    assert summary["latest_category"] == "stage_1_hypertension"  # 128/82, the second field
    assert summary["rule"] == {"rule_id": "bp_stage2_average", "enabled": True, "outcome": "trigger",
                               "message": alert["message"]}
    assert summary["rule_average"]["systolic"] == round(alert["value"], 1) == 143.4
    assert summary["rule_average"]["window_days"] == 7 and summary["rule_average"]["enough_readings"] is True
    assert summary["timezone"] == "America/New_York" and summary["timezone_source"] == "patient"
    # A later `until` does not move the window off the readings the alert judged.
    later = client.get(f"/v1/patients/{unique_id}/summaries/blood-pressure",
                       params={"until": (latest + timedelta(days=4)).isoformat()},
                       headers=auth("patient", patient=unique_id)).json()
    assert later["aha_category"] == "stage_2_hypertension" and later["rule_average"] == summary["rule_average"]


@pytest.mark.integration
def test_weight_change_is_the_gain_the_open_weight_alert_reported(client: TestClient, conn: psycopg.Connection,
                                                                  auth, unique_id: str) -> None:
    scale = _own_patient(conn, unique_id, ("body_weight",), None)["body_weight"]
    latest = datetime.now(UTC) - timedelta(hours=1)
    ingest(conn, [weight(scale, latest - timedelta(days=d), v) for d, v in ((8, 80.0), (6, 79.5), (3, 80.2),
                                                                            (1.5, 81.0))], unique_id)
    ingest(conn, [weight(scale, latest, 82.4)], unique_id)
    [alert] = [a for a in service.list_alerts(conn, patient_id=unique_id) if a["status"] == "open"]
    assert alert["rule_id"] == "weight_gain_7d"
    said = re.search(r"up (\d+\.\d+) from", alert["message"])  # "... 82.4 kg, up 2.90 from 79.5 kg within 168 h"
    assert said is not None, alert["message"]
    gain = float(said.group(1))
    summary = client.get(f"/v1/patients/{unique_id}/summaries/weight",
                         headers=auth("patient", patient=unique_id)).json()
    assert summary["change_kg"]["7_days"] == round(gain, 2) == 2.9  # never "null" beside the alert
    assert summary["change_kg"]["1_day"] is None  # nothing in the 24 h before the latest: no 24 h rule verdict
    week = summary["changes"][1]
    assert week["rule"]["rule_id"] == "weight_gain_7d" and week["rule"]["outcome"] == "trigger"
    assert week["threshold_kg"] == 2.3 and week["from_kg"] == 79.5
    assert summary["changes"][2]["net_change_kg"] == 2.4  # 82.4 - 80.0 over 30 days


@pytest.mark.integration
def test_agp_percentiles_by_local_time_of_day(client: TestClient, conn: psycopg.Connection, auth,
                                              unique_id: str) -> None:
    meter = _own_patient(conn, unique_id, ("glucose",), "America/New_York")["glucose"]
    # January: New York is UTC-5. Local 00:03..00:14 on five days (slot 0), 23:50 on a sixth (slot 95).
    midnight = datetime(2026, 1, 10, 5, 0, tzinfo=UTC)  # 00:00 local
    readings = [make_reading(meter, "glucose", midnight + timedelta(days=d, minutes=m), {"glucose": v})
                for d, m, v in ((0, 3, 120), (1, 7, 100), (2, 11, 140), (3, 14, 110), (4, 0, 130), (5, 1430, 200))]
    # A control-solution sample is not the patient's glucose.
    readings.append(make_reading(meter, "glucose", midnight + timedelta(days=6, minutes=5), {"glucose": 500},
                                 flags=["control_solution"]))
    ingest(conn, readings, unique_id)
    until = (midnight + timedelta(days=13)).isoformat()
    response = client.get(f"/v1/patients/{unique_id}/summaries/glucose/agp", params={"until": until},
                          headers=auth("patient", patient=unique_id))
    assert response.status_code == 200, response.text
    profile = response.json()
    assert (profile["days"], profile["readings"], profile["days_with_data"]) == (14, 6, 6)
    assert profile["timezone"] == "America/New_York" and profile["unit"] == "mg/dL"
    assert len(profile["slots"]) == 96 and profile["smoothing"]["method"] == "none"
    assert profile["slots"][0] == {"minute": 0, "p5": 102.0, "p25": 110.0, "p50": 120.0, "p75": 130.0, "p95": 138.0,
                                   "n": 5}
    assert profile["slots"][95]["p50"] == 200.0 and profile["slots"][95]["n"] == 1
    assert profile["slots"][20]["n"] == 0  # 05:00 UTC: the slot the readings would fall in on UTC days
    assert profile["sufficient_data"] is False and profile["percent_time_with_data"] == 0.4
    pooled = client.get(f"/v1/patients/{unique_id}/summaries/glucose/agp", params={"until": until, "pool_slots": 1},
                        headers=auth("patient", patient=unique_id)).json()
    assert (pooled["slots"][0]["p50"], pooled["slots"][0]["n"], pooled["smoothing"]["window_minutes"]) == (125.0, 6, 45)
    for params in ({"days": 91}, {"until": "0001-01-01T00:00:00Z"}, {"until": "9999-12-31T23:00:00-12:00"}):
        bad = client.get(f"/v1/patients/{unique_id}/summaries/glucose/agp", params=params,
                         headers=auth("patient", patient=unique_id))
        assert bad.status_code == 422, params  # a clear problem, never an overflow
        assert bad.headers["content-type"].startswith("application/problem+json")


@pytest.mark.integration
def test_summaries_name_a_default_zone_and_use_the_patients_zone_for_days(client: TestClient,
                                                                          conn: psycopg.Connection, auth,
                                                                          unique_id: str) -> None:
    meter = _own_patient(conn, unique_id, ("glucose",), "Asia/Tokyo")["glucose"]
    # 20:00 and 23:00 UTC on 1 March are 05:00 and 08:00 on 2 March in Tokyo: one local day, and the day
    # of `until` (2 March 10:00 Tokyo) is as_of.
    ingest(conn, [make_reading(meter, "glucose", datetime(2026, 3, 1, h, tzinfo=UTC), {"glucose": 100})
                  for h in (20, 23)], unique_id)
    ingest(conn, [make_reading(meter, "glucose", datetime(2026, 3, 1, 10, tzinfo=UTC), {"glucose": 100})], unique_id)
    headers = auth("patient", patient=unique_id)
    until = datetime(2026, 3, 2, 1, tzinfo=UTC).isoformat()
    adherence = client.get(f"/v1/patients/{unique_id}/summaries/adherence", params={"until": until, "periods": 1},
                           headers=headers).json()
    assert adherence["as_of"] == "2026-03-02" and adherence["timezone"] == "Asia/Tokyo"
    assert adherence["current"]["days_with_readings"] == 2  # 1 March 19:00 and 2 March (two readings) in Tokyo
    glucose = client.get(f"/v1/patients/{unique_id}/summaries/glucose", params={"until": until, "days": 2},
                         headers=headers).json()
    assert glucose["days_with_data"] == 2 and glucose["window"]["until"].startswith("2026-03-02T01:00")
    conn.execute("UPDATE patients SET timezone = 'Mars/Olympus' WHERE id = %s", (unique_id,))
    odd = client.get(f"/v1/patients/{unique_id}/summaries/adherence", params={"until": until}, headers=headers)
    assert odd.status_code == 200 and odd.json()["timezone"] == "UTC"
    assert "Mars/Olympus" in odd.json()["timezone_source"]
