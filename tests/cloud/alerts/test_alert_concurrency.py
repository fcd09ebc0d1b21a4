"""Two ingest workers racing on one patient open one alert: the partial unique index decides, not memory."""

from __future__ import annotations

import threading
from datetime import timedelta

import psycopg
import pytest

from cloud.alerts import service
from cloud.alerts.new_readings import evaluate_readings
from cloud.effects import apply_new_readings
from tests.cloud.alerts.scripted_patient import add_patient, alerts_in, bp, insert_readings, now

pytestmark = pytest.mark.integration


def race(database_url: str, work) -> list:
    """Run ``work(conn, i)`` in two threads, each in its own transaction, released together."""
    barrier = threading.Barrier(2, timeout=10)
    results: list = [None, None]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with psycopg.connect(database_url) as conn, conn.transaction():
                results[i] = work(conn, i, barrier)
        except BaseException as err:  # reported to the test below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    return results


@pytest.mark.parametrize("round_", range(3))
def test_two_workers_evaluating_at_once_open_one_alert(database_url, unique_id, round_):
    with psycopg.connect(database_url, autocommit=True) as conn:
        cuff = add_patient(conn, unique_id)["blood_pressure"]
    t = now()
    readings = [bp(cuff, t - timedelta(minutes=2), 190, 100), bp(cuff, t - timedelta(minutes=1), 195, 100)]

    with psycopg.connect(database_url, autocommit=True) as conn:
        # Stored beforehand: concurrent inserts of one patient-day wait on each other in the API's
        # day-statistics trigger (0420), which would serialise the workers before the race.
        stored = [insert_readings(conn, [r], unique_id) for r in readings]

    def work(conn, i, barrier):
        barrier.wait()  # both transactions start evaluating together
        # The alerts alone (not the twin's row lock) so the two really race on the unique index.
        return alerts_in(evaluate_readings(conn, stored[i], now()))

    results = race(database_url, work)
    statuses = sorted(a.status for r in results for a in r if a.rule == "bp_crisis")
    assert statuses == ["open", "updated"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        [alert] = service.list_alerts(conn, patient_id=unique_id)
        assert alert["trigger_count"] == 2


def test_two_workers_through_all_hooks_open_one_alert_and_keep_the_twin_consistent(database_url, unique_id):
    with psycopg.connect(database_url, autocommit=True) as conn:
        cuff = add_patient(conn, unique_id)["blood_pressure"]
    t = now()
    readings = [bp(cuff, t - timedelta(minutes=2), 190, 100), bp(cuff, t - timedelta(minutes=1), 195, 100)]

    with psycopg.connect(database_url, autocommit=True) as conn:
        stored = [insert_readings(conn, [r], unique_id) for r in readings]

    def work(conn, i, barrier):
        barrier.wait()
        return alerts_in(apply_new_readings(conn, stored[i], now()))

    race(database_url, work)
    from cloud.twin import service as twin

    with psycopg.connect(database_url, autocommit=True) as conn:
        assert len(service.list_alerts(conn, patient_id=unique_id)) == 1
        state = twin.get_twin(conn, unique_id)["state"]
        assert state["counts"]["readings"] == 2 and len(state["open_alerts"]) == 1
        assert twin.replay_twin(conn, unique_id) == state
