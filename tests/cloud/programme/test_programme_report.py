"""A scripted month against real PostgreSQL and the real API: hand-computed classifications at the edges.

Days (patient in America/New_York, set up 2026-10-05; DST ends 2026-11-01): period 0 is Oct 5 - Nov 3,
period 1 Nov 4 - Dec 3. Period 0 gets 15 days: Oct 5-18 and Nov 3 23:30 EST (already Nov 4 in UTC, so a
UTC count would move it to period 1). A reading typed in by hand (Oct 20) and a control-solution sample
(Oct 21) would make 16 if they counted. Period 1 gets Nov 4 00:30 EST (05:30 UTC) and Nov 5-19: 16 days.
So November reports 99453 + 99445 (period 0 ends in it) and December 99454 (period 1).
Minutes (this calendar month, through POST /time-entries): 19 with an interactive call -> 99470; 20 -> 99457;
40 -> 99457 + 99458; 39 -> 99457 alone; 30 without interactive communication -> nothing.
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from fastapi.testclient import TestClient

from cloud.programme.rules import periods_overlapping
from gateway.metrics import EXCLUDED_FLAGS
from tests.cloud.alerts.scripted_patient import add_patient, bp, insert_readings, make_reading

pytestmark = pytest.mark.integration
NY = ZoneInfo("America/New_York")


def _local(y: int, m: int, d: int, hh: int, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=NY)


@pytest.fixture
def team(conn: psycopg.Connection, auth: Any) -> dict[str, Any]:
    prefix = f"p{uuid.uuid4().hex[:10]}"
    team_id = f"{prefix}-team"
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'RPM programme')", (team_id,))
    return {"id": team_id, "prefix": prefix,
            "headers": auth("clinician", sub=f"{prefix}-dr", care_teams=(team_id,)),
            "nurse": auth("care_team", sub=f"{prefix}-nurse", care_teams=(team_id,))}


def _enrol(conn: psycopg.Connection, client: TestClient, team: dict[str, Any], name: str, enrolled_on: date,
           tz: str = "America/New_York") -> tuple[str, dict[str, str]]:
    patient = f"{team['prefix']}-{name}"
    devices = add_patient(conn, patient, kinds=("blood_pressure", "body_weight"))
    conn.execute("UPDATE patients SET timezone = %s WHERE id = %s", (tz, patient))
    conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                 (patient, team["id"], ["readings"], patient))
    response = client.post(f"/v1/patients/{patient}/programme-enrolments", headers=team["headers"],
                           json={"enrolled_on": enrolled_on.isoformat()})
    assert response.status_code == 201, response.text
    return patient, devices


def _report(client: TestClient, team: dict[str, Any], month: str) -> dict[str, dict[str, Any]]:
    response = client.get(f"/v1/care-teams/{team['id']}/reports/rpm", params={"month": month},
                          headers=team["headers"])
    assert response.status_code == 200, response.text
    return {row["patient_id"]: row for row in response.json()["patients"]}


def test_days_are_counted_per_period_in_the_patients_zone_across_dst(conn: psycopg.Connection, client: TestClient,
                                                                       team: dict[str, Any]) -> None:
    patient, devices = _enrol(conn, client, team, "edge", date(2026, 10, 5))
    cuff, scale = devices["blood_pressure"], devices["body_weight"]
    readings = [bp(cuff, _local(2026, 10, 5 + i, 8), 120, 80) for i in range(14)]        # Oct 5-18: 14 days
    readings.append(make_reading(scale, "body_weight", _local(2026, 10, 6, 7), {"body_weight": 80}))  # same day
    readings.append(bp(cuff, _local(2026, 11, 3, 23, 30), 121, 79))                       # local Nov 3 (UTC Nov 4)
    typed_in = bp(cuff, _local(2026, 10, 20, 9), 122, 80)
    control = make_reading(scale, "body_weight", _local(2026, 10, 21, 9), {"body_weight": 80},
                           flags=["measurement_unsuccessful"])
    readings += [typed_in, control]
    readings.append(bp(cuff, _local(2026, 11, 4, 0, 30), 119, 78))                        # period 1, first day
    readings += [bp(cuff, _local(2026, 11, 5 + i, 18), 118, 77) for i in range(15)]       # Nov 5-19
    insert_readings(conn, readings, patient)
    # Marked as typed in after the fact: the update trigger recounts the device.
    conn.execute("UPDATE readings SET entry_method = 'manual' WHERE id = %s", (typed_in.id,))

    november = _report(client, team, "2026-11")[patient]
    first, second = november["periods"]
    assert (first["start"], first["end"], first["days_with_data"]) == ("2026-10-05", "2026-11-03", 15)
    assert first["devices"] == {cuff: 15, scale: 1}
    assert (first["device_supply_code"], first["setup_code"], first["ends_in_month"]) == ("99445", "99453", True)
    assert (second["start"], second["end"], second["days_with_data"]) == ("2026-11-04", "2026-12-03", 16)
    assert (second["device_supply_code"], second["setup_code"], second["ends_in_month"]) == ("99454", None, False)
    assert november["codes"] == ["99453", "99445"]
    assert november["days_with_data"] == 15 and november["period_end"] == "2026-11-03"
    assert november["first_reading_at"] == "2026-11-04T04:30:00+00:00"  # Nov 3 23:30 EST, the month's first
    december = _report(client, team, "2026-12")[patient]
    assert december["codes"] == ["99454"] and december["days_with_data"] == 16

    detail = client.get(f"/v1/patients/{patient}/reports/rpm", params={"month": "2026-11"}, headers=team["nurse"])
    assert detail.status_code == 200, detail.text
    days = [(t["day"], t["device_uid"]) for t in detail.json()["first_transmissions"]]
    assert ("2026-11-03", cuff) in days and ("2026-11-04", cuff) in days
    assert ("2026-10-20", cuff) not in days and ("2026-10-21", scale) not in days  # typed in; failed measurement
    # The patient moves to UTC: the days are cut again, and the Nov 3 23:30 EST reading is a Nov 4 one.
    conn.execute("UPDATE patients SET timezone = 'UTC' WHERE id = %s", (patient,))
    moved = _report(client, team, "2026-11")[patient]
    assert [p["days_with_data"] for p in moved["periods"]] == [14, 16]


def test_minutes_become_management_codes_at_the_edges(conn: psycopg.Connection, client: TestClient,
                                                      team: dict[str, Any]) -> None:
    today = datetime.now(NY).date()
    month = today.strftime("%Y-%m")
    cases = {"m19": ([(19, True)], {"99470": 1}), "m20": ([(20, True)], {"99457": 1}),
             "m40": ([(25, False), (15, True)], {"99457": 1, "99458": 1}), "m39": ([(39, True)], {"99457": 1}),
             "m30": ([(30, False)], {})}
    patients = {}
    for name, (entries, _) in cases.items():
        patient, _ = _enrol(conn, client, team, name, today - timedelta(days=3))
        patients[name] = patient
        for minutes, interactive in entries:
            response = client.post(f"/v1/patients/{patient}/time-entries", headers=team["nurse"],
                                   json={"minutes": minutes, "reason": "call" if interactive else "alert_review",
                                         "interactive_communication": interactive})
            assert response.status_code == 201, response.text
            assert response.json()["person"] == f"{team['prefix']}-nurse"
    report = _report(client, team, month)
    for name, (entries, codes) in cases.items():
        row = report[patients[name]]
        assert row["minutes"] == sum(m for m, _ in entries), name
        assert row["management_codes"] == codes, name
    assert report[patients["m30"]]["management_note"] == "no interactive communication with the patient this month"
    assert report[patients["m40"]]["people"] == [f"{team['prefix']}-nurse"]

    csv_response = client.get(f"/v1/care-teams/{team['id']}/reports/rpm",
                              params={"month": month, "format": "csv"}, headers=team["headers"])
    assert csv_response.status_code == 200 and csv_response.headers["content-type"].startswith("text/csv")
    rows = {r["patient_id"]: r for r in csv.DictReader(io.StringIO(csv_response.text))}
    assert rows[patients["m40"]]["management_codes"] == "99457x1;99458x1"
    assert rows[patients["m40"]]["minutes"] == "40"
    audit = conn.execute("SELECT patient_ids FROM audit_log WHERE request_id = %s",
                         (csv_response.headers["x-request-id"],)).fetchone()
    assert audit is not None and set(patients.values()) <= set(audit[0])


def test_the_csv_is_formula_safe(conn: psycopg.Connection, client: TestClient, team: dict[str, Any]) -> None:
    patient, _ = _enrol(conn, client, team, "formula", datetime.now(NY).date())
    conn.execute("UPDATE patients SET display_name = '=HYPERLINK(\"http://x\")' WHERE id = %s", (patient,))
    response = client.get(f"/v1/care-teams/{team['id']}/reports/rpm",
                          params={"month": datetime.now(NY).strftime("%Y-%m"), "format": "csv"},
                          headers=team["headers"])
    row = next(r for r in csv.DictReader(io.StringIO(response.text)) if r["patient_id"] == patient)
    assert row["display_name"] == "'=HYPERLINK(\"http://x\")"


def test_timers_and_bad_entries_answer_typed_problems(conn: psycopg.Connection, client: TestClient,
                                                      team: dict[str, Any]) -> None:
    patient, _ = _enrol(conn, client, team, "timer", datetime.now(NY).date())
    other, _ = _enrol(conn, client, team, "other", datetime.now(NY).date())
    url, headers = f"/v1/patients/{patient}/time-entries", team["headers"]
    assert client.post(url, headers=headers, json={"timer": "stop"}).status_code == 409
    started = client.post(url, headers=headers, json={"timer": "start", "reason": "data_review"})
    assert started.status_code == 201 and started.json()["minutes"] is None
    again = client.post(url, headers=headers, json={"timer": "start", "reason": "data_review"})
    assert again.status_code == 409 and again.headers["content-type"].startswith("application/problem+json")
    # Started 25 minutes ago (as if the clinician had been reviewing since): the stop counts whole minutes.
    conn.execute("UPDATE time_entries SET started_at = started_at - interval '25 minutes 40 seconds'"
                 " WHERE id = %s", (started.json()["id"],))
    stopped = client.post(url, headers=headers, json={"timer": "stop", "interactive_communication": True})
    assert stopped.status_code == 200, stopped.text
    assert (stopped.json()["minutes"], stopped.json()["interactive_communication"]) == (25, True)
    tomorrow = (datetime.now(NY).date() + timedelta(days=2)).isoformat()
    alert = conn.execute("INSERT INTO alerts (patient_id, rule_id, severity, status, message)"
                         " VALUES (%s, 'bp_crisis', 'critical', 'open', 'x') RETURNING id", (other,)).fetchone()
    for body in ({"minutes": 0, "reason": "call"}, {"minutes": 241, "reason": "call"}, {"minutes": 5},
                 {"minutes": 5, "reason": "gossip"}, {"minutes": 5, "reason": "call", "timer": "start"},
                 {"minutes": 5, "reason": "call", "performed_on": tomorrow},
                 {"minutes": 5, "reason": "call", "alert_id": alert[0] if alert else 1},
                 {"minutes": 5, "reason": "call", "person": "someone-else"}):
        response = client.post(url, headers=headers, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    for month in ("2026-13", "26-01", "2026-1x"):
        response = client.get(f"/v1/care-teams/{team['id']}/reports/rpm", params={"month": month}, headers=headers)
        assert response.status_code == 422, month
    listed = client.get(url, headers=headers, params={"month": datetime.now(NY).strftime("%Y-%m")}).json()
    assert [e["minutes"] for e in listed["entries"]] == [25]
    overlap = client.post(f"/v1/patients/{patient}/programme-enrolments", headers=headers,
                          json={"enrolled_on": datetime.now(NY).date().isoformat()})
    assert overlap.status_code == 409
    backwards = client.post(f"/v1/patients/{patient}/programme-enrolments", headers=headers,
                            json={"enrolled_on": "2030-02-01", "ended_on": "2030-01-31"})
    assert backwards.status_code == 422, backwards.text


def test_another_team_cannot_read_the_report(client: TestClient, team: dict[str, Any], auth: Any) -> None:
    stranger = auth("clinician", sub="stranger", care_teams=("elsewhere",))
    response = client.get(f"/v1/care-teams/{team['id']}/reports/rpm", params={"month": "2026-11"}, headers=stranger)
    assert response.status_code == 403
    admin = client.get(f"/v1/care-teams/{team['id']}/reports/rpm", params={"month": "2026-11"},
                       headers=auth("admin"))
    assert admin.status_code == 403  # administrators configure; the report is clinical data


def test_the_sql_excluded_flags_are_the_metric_catalogues(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT programme_excluded_flags()").fetchone()
    assert row is not None and sorted(row[0]) == sorted(EXCLUDED_FLAGS)


@pytest.mark.unit
def test_periods_are_anchored_at_enrolment() -> None:
    periods = periods_overlapping(date(2026, 1, 31), 30, date(2026, 2, 1), date(2026, 2, 28))
    assert [(p.index, p.start, p.end) for p in periods] == [(0, date(2026, 1, 31), date(2026, 3, 1))]
    assert periods_overlapping(date(2026, 3, 1), 30, date(2026, 2, 1), date(2026, 2, 28)) == []
    assert [p.index for p in periods_overlapping(date(2025, 1, 1), 30, date(2026, 1, 1), date(2026, 1, 31))] == [12, 13]

