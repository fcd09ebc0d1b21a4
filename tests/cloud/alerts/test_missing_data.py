"""Missing data: evaluated by the scheduler (no reading is what is missing), resolved by the next reading."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from cloud.alerts import service
from cloud.alerts.scheduler import evaluate_missing_data
from cloud.twin import service as twin
from tests.cloud.alerts.scripted_patient import add_patient, alerts_in, bp, ingest, now

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(fresh_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_database_url, autocommit=True) as connection:
        yield connection


def test_no_reading_for_48_hours_opens_one_alert_and_the_next_reading_resolves_it(conn, unique_id):
    t = now()
    quiet = add_patient(conn, unique_id, assigned_at=t - timedelta(days=5))["blood_pressure"]
    busy_id = f"{unique_id}b"
    busy = add_patient(conn, busy_id, assigned_at=t - timedelta(days=5))["blood_pressure"]
    ingest(conn, [bp(quiet, t - timedelta(hours=50), 120, 80)], unique_id)
    ingest(conn, [bp(busy, t - timedelta(hours=10), 120, 80)], busy_id)

    assert evaluate_missing_data(conn, t) == 1
    [alert] = service.list_alerts(conn, patient_id=unique_id)
    assert alert["rule_id"] == "missing_blood_pressure" and "for 50 h" in alert["message"]
    assert service.list_alerts(conn, patient_id=busy_id) == []
    assert evaluate_missing_data(conn, t + timedelta(hours=1)) == 0, "an open alert is not opened again"
    assert str(alert["id"]) in twin.get_twin(conn, unique_id)["state"]["open_alerts"]
    assert conn.execute("SELECT count(*) FROM alert_deliveries WHERE channel = 'mqtt'").fetchone()[0] == 1

    resolved = alerts_in(ingest(conn, [bp(quiet, now(), 121, 79)], unique_id))
    assert [(a.rule, a.status) for a in resolved] == [("missing_blood_pressure", "resolved")]


def test_a_patient_who_never_sent_anything_is_missing_from_the_assignment_on(conn, unique_id):
    t = now()
    add_patient(conn, unique_id, kinds=("body_weight",), assigned_at=t - timedelta(hours=30))
    assert evaluate_missing_data(conn, t) == 0
    assert evaluate_missing_data(conn, t + timedelta(hours=20)) == 1
    [alert] = service.list_alerts(conn, patient_id=unique_id)
    assert alert["rule_id"] == "missing_body_weight" and "none since the device was assigned" in alert["message"]


def test_override_can_switch_missing_data_off_or_change_its_hours(conn, unique_id):
    t = now()
    add_patient(conn, unique_id, assigned_at=t - timedelta(hours=30))
    service.set_rule_override(conn, unique_id, "missing_blood_pressure", params={"hours": 24}, by="dr.x")
    assert evaluate_missing_data(conn, t) == 1
    other = f"{unique_id}b"
    add_patient(conn, other, assigned_at=t - timedelta(days=4))
    service.set_rule_override(conn, other, "missing_blood_pressure", enabled=False, by="dr.x")
    assert evaluate_missing_data(conn, t) == 0


def test_rpm_cloud_scheduler_once_opens_missing_data_alerts_and_delivers(fresh_database_url, unique_id):
    from cloud.cli import main

    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        add_patient(conn, unique_id, assigned_at=now() - timedelta(days=3))
    assert main(["scheduler", "--once", "--no-mqtt", "--database-url", fresh_database_url]) == 0
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        [alert] = service.list_alerts(conn, patient_id=unique_id)
        assert alert["rule_id"] == "missing_blood_pressure"
        # Without MQTT the outbox keeps the message, untouched, for a scheduler that has a broker.
        attempts, delivered = conn.execute("SELECT attempts, delivered_at FROM alert_deliveries").fetchone()
        assert attempts == 0 and delivered is None


def test_rpm_cloud_scheduler_reports_an_unreachable_database(capsys):
    from cloud.cli import main

    assert main(["scheduler", "--once", "--no-mqtt", "--database-url", "postgresql://nobody@127.0.0.1:1/x"]) == 2
    assert "cannot reach the database" in capsys.readouterr().out
