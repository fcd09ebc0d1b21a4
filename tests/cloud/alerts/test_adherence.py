"""The adherence rule: warn while 16 days with readings in the 30-day period can still be reached."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from cloud.alerts import service
from cloud.alerts.scheduler import adherence_status, evaluate_adherence
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, now

NOON = datetime(2026, 6, 20, 12, tzinfo=UTC)
ENROLLED = datetime(2026, 6, 1, 9, tzinfo=UTC)  # day 20 of the first period is 2026-06-20


def days(*offsets: int) -> list[date]:
    return [ENROLLED.date() + timedelta(days=o) for o in offsets]


@pytest.mark.unit
@pytest.mark.parametrize(("reading_days", "at_risk"), [
    (days(*range(0, 19)), False),       # 19 of 19 days: fine
    (days(*range(0, 19, 2)), False),    # 10 so far + 11 left (today included) = 21 >= 19
    (days(*range(0, 19, 3)), True),     # 7 so far + 11 left = 18 < 16 + 3
    (days(*range(0, 20, 3)), True),     # a reading today does not add a day left
])
def test_at_risk_while_the_period_can_still_be_saved(reading_days, at_risk):
    risky, why = adherence_status(ENROLLED, reading_days, NOON)
    assert risky is at_risk
    assert "day period from 2026-06-01" in why


@pytest.mark.unit
def test_periods_run_from_enrolment():
    # Day 35: the second period began on day 30; the first period's days do not count.
    risky, why = adherence_status(ENROLLED, days(*range(0, 30)), ENROLLED + timedelta(days=35))
    assert not risky and "from 2026-07-01" in why and "readings on 0 of the 6 days" in why


@pytest.fixture
def conn(fresh_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_database_url, autocommit=True) as connection:
        yield connection


@pytest.mark.integration
def test_scheduler_opens_an_adherence_alert_and_resolves_it_when_the_rule_is_relaxed(conn, unique_id):
    t = now()
    cuff = add_patient(conn, unique_id, assigned_at=t - timedelta(days=20))["blood_pressure"]
    ingest(conn, [bp(cuff, t - timedelta(days=d), 120, 80) for d in (19, 15, 10)], unique_id)
    steady = f"{unique_id}s"
    steady_cuff = add_patient(conn, steady, assigned_at=t - timedelta(days=20))["blood_pressure"]
    ingest(conn, [bp(steady_cuff, t - timedelta(days=d, minutes=1), 120, 80) for d in range(20)], steady)

    assert evaluate_adherence(conn, t) == (1, 0)
    [alert] = service.list_alerts(conn, patient_id=unique_id)
    assert alert["rule_id"] == "adherence_16_days" and "readings on 3 of the 21 days" in alert["message"]
    assert service.list_alerts(conn, patient_id=steady) == []
    assert evaluate_adherence(conn, t) == (0, 0), "opened once"

    service.set_rule_override(conn, unique_id, "adherence_16_days", params={"required_days": 2}, by="dr.z")
    assert evaluate_adherence(conn, t) == (0, 1)
    assert service.list_alerts(conn, patient_id=unique_id, status=["open"]) == []
