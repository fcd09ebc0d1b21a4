"""The panel row's ``programme`` field (issue 25) at its edges, through the real panel API and PostgreSQL: the
current 30-day period of the open episode, its days with data so far, the days the fullest device-supply code
still needs (99454: 16) and in how many days (today included while it has no data yet).

Each patient's "today" is the database's local date in the patient's zone (Pacific/Auckland for one, far from
UTC), so the expectations below are hand-computed from the enrolment date and the days with readings:

- enrolled 10 days ago, no reading: 0 days, needs 16 in the next 20 (days 11-30 of the period), reachable;
- enrolled 20 days ago, 15 days with data: needs 1 in the next 10; 16 days: needs 0 (the rule is met);
- today is the period's last day, 15 days and nothing today: needs 1 in the next 1 (today), reachable;
- today is the last day, 14 days plus a reading today (15): the day is spent, needs 1 in 0 days, out of reach;
- enrolled 30 days ago: a new period began today, the previous one's 20 days do not count: needs 16 in 30;
- not enrolled, or enrolled from a future date: no programme (null).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.cloud.alerts.scripted_patient import add_patient, bp, insert_readings

pytestmark = pytest.mark.integration


def _today(conn: psycopg.Connection, zone: str) -> date:
    row = conn.execute("SELECT (now() AT TIME ZONE %s)::date", (zone,)).fetchone()
    assert row is not None
    return row[0]


def _patient(conn: psycopg.Connection, team: str, patient: str, zone: str, enrolled_ago: int | None,
             reading_days: list[int], *, today_too: bool = False) -> date:
    """A consented patient enrolled ``enrolled_ago`` days before their today (None: not enrolled), with one
    cuff reading at local noon on each of ``reading_days`` (days after the set-up date) and, if asked, today."""
    devices = add_patient(conn, patient)
    conn.execute("UPDATE patients SET timezone = %s WHERE id = %s", (zone, patient))
    conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                 (patient, team, ["readings", "alerts"], patient))
    today = _today(conn, zone)
    if enrolled_ago is None:
        return today
    enrolled = today - timedelta(days=enrolled_ago)
    conn.execute("INSERT INTO programme_enrolments (patient_id, programme_id, enrolled_on, created_by)"
                 " VALUES (%s, 'us-cms-2026', %s, 'test')", (patient, enrolled))
    days = [enrolled + timedelta(days=d) for d in reading_days] + ([today] if today_too else [])
    local = ZoneInfo(zone)
    # Local noon; today not later than now (a reading is never in the future): either way, on its local day.
    moments = [min(datetime.combine(d, time(12), local), datetime.now(local)) for d in days]
    assert all(m.date() == d for m, d in zip(moments, days, strict=True))
    insert_readings(conn, [bp(devices["blood_pressure"], m, 124, 78) for m in moments], patient)
    return today


def test_the_panel_says_what_the_current_period_still_needs(conn: psycopg.Connection, client: TestClient,
                                                             auth: Any) -> None:
    prefix = f"pp{uuid.uuid4().hex[:8]}"
    team = f"{prefix}-team"
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Panel programme')", (team,))
    ny, nz = "America/New_York", "Pacific/Auckland"
    cases = {  # name: (zone, enrolled days ago, days with readings after set-up, a reading today)
        "none": (ny, 10, [], False),
        "fifteen": (nz, 20, list(range(15)), False),
        "sixteen": (ny, 20, list(range(16)), False),
        "last-day-open": (ny, 29, list(range(15)), False),
        "last-day-spent": (nz, 29, list(range(14)), True),
        "new-period": (ny, 30, list(range(20)), False),
        "not-enrolled": (ny, None, [], False),
        "future": (ny, -3, [], False),
    }
    today = {name: _patient(conn, team, f"{prefix}-{name}", zone, ago, days, today_too=now)
             for name, (zone, ago, days, now) in cases.items()}
    response = client.get("/v1/patients", params={"q": prefix, "limit": 50},
                          headers=auth("clinician", sub=f"{prefix}-dr", care_teams=(team,)))
    assert response.status_code == 200, response.text
    rows = {r["patient_id"].removeprefix(f"{prefix}-"): r for r in response.json()["patients"]}
    assert set(rows) == set(cases)
    got = {name: row["programme"] for name, row in rows.items()}

    def expect(name: str, start_ago: int, days: int, needs: int, left: int, reachable: bool) -> None:
        start = today[name] - timedelta(days=start_ago)
        assert got[name] == {
            "programme_id": "us-cms-2026", "period_start": start.isoformat(),
            "period_end": (start + timedelta(days=29)).isoformat(), "days_with_data": days, "target_days": 16,
            "needs_days": needs, "days_left": left, "reachable": reachable}, name

    expect("none", 10, 0, 16, 20, True)
    expect("fifteen", 20, 15, 1, 10, True)
    expect("sixteen", 20, 16, 0, 10, True)
    expect("last-day-open", 29, 15, 1, 1, True)
    expect("last-day-spent", 29, 15, 1, 0, False)
    expect("new-period", 0, 0, 16, 30, True)
    assert got["not-enrolled"] is None and got["future"] is None
