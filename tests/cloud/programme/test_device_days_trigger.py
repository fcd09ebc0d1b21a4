"""The days-with-data projection (programme_device_days) kept by the readings' statement trigger, one ingest-like
statement at a time, against real PostgreSQL: a day's first transmission is the earliest reading whatever order
they arrive in (a meter downloaded late sends an earlier reading afterwards), a later or equally early one
changes nothing, each device and local day is its own row, and a reading of no patient is not counted."""

from __future__ import annotations

import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tests.cloud.alerts.scripted_patient import add_patient, bp, insert_readings

pytestmark = pytest.mark.integration
ZONE = ZoneInfo("Europe/London")


def _days(conn: psycopg.Connection, patient: str) -> list[tuple[str, str, str, datetime]]:
    return [(str(day), uid, rid, at) for day, uid, rid, at in conn.execute(
        "SELECT day, device_uid, first_reading_id, first_at FROM programme_device_days WHERE patient_id = %s"
        " ORDER BY day, device_uid", (patient,)).fetchall()]


def test_the_first_transmission_of_a_day_is_the_earliest_whatever_the_arrival_order(conn: psycopg.Connection) -> None:
    patient = f"dd{uuid.uuid4().hex[:10]}"
    cuff = add_patient(conn, patient)["blood_pressure"]
    conn.execute("UPDATE patients SET timezone = 'Europe/London' WHERE id = %s", (patient,))
    ten = bp(cuff, datetime(2026, 11, 10, 10, tzinfo=ZONE), 120, 80)
    insert_readings(conn, [ten], patient)
    assert _days(conn, patient) == [("2026-11-10", cuff, ten.id, ten.measured_at)]

    later = bp(cuff, datetime(2026, 11, 10, 11, tzinfo=ZONE), 121, 80)
    insert_readings(conn, [later], patient)  # later the same day: nothing changes
    assert _days(conn, patient) == [("2026-11-10", cuff, ten.id, ten.measured_at)]

    eight = bp(cuff, datetime(2026, 11, 10, 8, tzinfo=ZONE), 119, 79)
    next_day = bp(cuff, datetime(2026, 11, 11, 0, 30, tzinfo=ZONE), 118, 78)
    nine = bp(cuff, datetime(2026, 11, 10, 9, tzinfo=ZONE), 122, 81)
    insert_readings(conn, [nine, next_day, eight], patient)  # one statement, out of order: 08:00 wins
    assert _days(conn, patient) == [("2026-11-10", cuff, eight.id, eight.measured_at),
                                    ("2026-11-11", cuff, next_day.id, next_day.measured_at)]

    same_time = bp(cuff, datetime(2026, 11, 10, 8, tzinfo=ZONE), 125, 85)
    unassigned = bp(cuff, datetime(2026, 11, 12, 8, tzinfo=ZONE), 125, 85)
    insert_readings(conn, [same_time], patient)  # as early, not earlier: the stored one stays
    insert_readings(conn, [unassigned], None)  # no patient yet: no day for anyone
    assert _days(conn, patient) == [("2026-11-10", cuff, eight.id, eight.measured_at),
                                    ("2026-11-11", cuff, next_day.id, next_day.measured_at)]
    assert conn.execute("SELECT count(*) FROM programme_device_days WHERE first_reading_id = %s",
                        (unassigned.id,)).fetchone() == (0,)
