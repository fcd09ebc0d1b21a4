"""Summary maths against hand-computed cases, first as pure functions, then through the API over
stored readings (the SQL binning and averaging)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

from cloud.api.summaries import (
    adherence_summary,
    bp_summary,
    glucose_summary,
    gmi,
    oximetry_summary,
    temperature_summary,
    weight_summary,
)
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


def _bp_row(at: datetime, local_hour: int, systolic: float, diastolic: float, pulse: float = 70) -> dict:
    return {"measured_at": at, "local_hour": local_hour, "systolic": systolic, "diastolic": diastolic,
            "pulse_rate": pulse}


@pytest.mark.unit
def test_bp_summary_averages_windows_and_categorises_the_average() -> None:
    rows = [
        _bp_row(NOW - timedelta(days=20), 9, 110, 70),
        _bp_row(NOW - timedelta(days=2), 7, 130, 85),
        _bp_row(NOW - timedelta(days=1), 20, 150, 95),
    ]
    summary = bp_summary(rows, NOW)
    assert summary["average_7_days"]["systolic"] == 140 and summary["average_7_days"]["diastolic"] == 90
    assert summary["aha_category"] == "stage_2_hypertension"  # 140/90
    assert summary["average_30_days"]["systolic"] == 130 and summary["average_30_days"]["diastolic"] == 83.3
    assert summary["average_30_days"]["category"] == "stage_1_hypertension"
    assert summary["morning_7_days"]["systolic"] == 130 and summary["morning_7_days"]["readings"] == 1
    assert summary["evening_7_days"]["systolic"] == 150
    assert summary["morning_30_days"]["readings"] == 2


@pytest.mark.unit
def test_bp_summary_falls_back_to_30_days_for_the_category() -> None:
    summary = bp_summary([_bp_row(NOW - timedelta(days=10), 8, 118, 75)], NOW)
    assert summary["average_7_days"] is None and summary["aha_category"] == "normal"


@pytest.mark.unit
def test_weight_changes_and_slope_match_hand_computation() -> None:
    series = [(NOW - timedelta(days=30), 80.0), (NOW - timedelta(days=7), 81.0), (NOW - timedelta(days=1), 81.5),
              (NOW, 82.0)]
    summary = weight_summary(series, NOW)
    assert summary["change_kg"] == {"1_day": 0.5, "7_days": 1.0, "30_days": 2.0}
    # x = 0, 23, 29, 30 days; Sxy = 34.25, Sxx = 589 -> 0.058149 kg/day = 0.407 kg/week
    assert summary["slope_kg_per_week"] == 0.407
    assert summary["latest_kg"] == 82.0 and summary["readings_30_days"] == 4


@pytest.mark.unit
def test_weight_change_needs_a_reading_near_the_reference_time() -> None:
    series = [(NOW - timedelta(days=3), 80.0), (NOW, 81.0)]
    summary = weight_summary(series, NOW)
    assert summary["change_kg"] == {"1_day": None, "7_days": None, "30_days": None}
    assert summary["slope_kg_per_week"] == pytest.approx(7 / 3, abs=1e-3)


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
    ingest(conn, [weight(scale, end - timedelta(days=30), 80.0), weight(scale, end - timedelta(days=7), 81.0),
                  weight(scale, end - timedelta(days=1), 81.5), weight(scale, end, 82.0)], patient)
    headers = world.headers["patient"]
    pressure = client.get(f"/v1/patients/{patient}/summaries/blood-pressure",
                          params={"until": (end + timedelta(seconds=1)).isoformat()}, headers=headers).json()
    assert pressure["average_7_days"]["systolic"] == 140 and pressure["aha_category"] == "stage_2_hypertension"
    assert pressure["morning_7_days"]["systolic"] == 130 and pressure["evening_7_days"]["systolic"] == 150
    mass = client.get(f"/v1/patients/{patient}/summaries/weight",
                      params={"until": (end + timedelta(seconds=1)).isoformat()}, headers=headers).json()
    assert mass["change_kg"] == {"1_day": 0.5, "7_days": 1.0, "30_days": 2.0}
    assert mass["slope_kg_per_week"] == 0.407
    adherence = client.get(f"/v1/patients/{patient}/summaries/adherence",
                           params={"until": end.isoformat(), "periods": 1}, headers=headers).json()
    # 2, 1, 20 days before (BP) and 30, 7, 1, 0 (weight): 30 days back is outside the 30-day period.
    assert adherence["current"]["days_with_readings"] == 5
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
