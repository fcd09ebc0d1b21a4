"""The twin in PostgreSQL: updated in ingest's transaction, versioned, append-only, and a replay of its
events rebuilds exactly the stored state."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from cloud.alerts import service as alerts
from cloud.twin import service as twin
from tests.cloud.alerts.scripted_patient import (
    add_patient,
    alerts_in,
    bp,
    ingest,
    make_reading,
    normal_week,
    now,
    weight,
)

pytestmark = pytest.mark.integration


def test_replaying_the_events_rebuilds_the_stored_state(conn, unique_id):
    devices = add_patient(conn, unique_id, kinds=("blood_pressure", "body_weight", "glucose"))
    t = now()
    twin.record_device_assigned(conn, unique_id, devices["blood_pressure"], user_index=1, by="nurse")
    ingest(conn, normal_week(devices["blood_pressure"], t, days=20), unique_id)
    fired = alerts_in(ingest(conn, [bp(devices["blood_pressure"], t - timedelta(minutes=5), 190, 100)], unique_id))
    assert sorted(a.rule for a in fired) == ["bp_crisis", "systolic_baseline_deviation"]
    [crisis] = [a for a in fired if a.rule == "bp_crisis"]
    alerts.acknowledge(conn, int(crisis.alert_id), "dr.a")
    alerts.set_rule_override(conn, unique_id, "weight_gain_24h", thresholds={"body_weight": 1.5}, by="dr.a")
    ingest(conn, [weight(devices["body_weight"], t - timedelta(days=1), 80), weight(devices["body_weight"], t, 79.5)],
           unique_id)
    ingest(conn, [make_reading(devices["glucose"], "glucose", t, {"glucose": 60})], unique_id)
    ingest(conn, [bp(devices["blood_pressure"], t - timedelta(days=9), 140, 90)], unique_id, late=True)

    stored = twin.get_twin(conn, unique_id)
    state = stored["state"]
    assert stored["version"] == len(twin.twin_events(conn, unique_id, limit=None))
    assert twin.replay_twin(conn, unique_id) == state
    # What the record holds.
    assert state["latest"]["systolic"]["value"] == 190, "the late 140 mmHg reading did not become latest"
    assert state["categories"]["blood_pressure"]["category"] == "hypertensive_crisis"
    assert state["categories"]["glucose"]["range"] == "level_1_hypoglycaemia"
    assert state["baselines"]["systolic"]["n"] >= 14
    assert {a["rule"] for a in state["open_alerts"].values()} >= {"bp_crisis", "glucose_hypo"}
    assert state["open_alerts"][crisis.alert_id]["status"] == "acknowledged"
    assert state["thresholds"]["weight_gain_24h"]["conditions"][0]["value"] == 1.5
    device = state["devices"][devices["blood_pressure"]]
    assert device["battery"] == 80 and device["user_index"] == 1 and device["last_seen"]
    assert stored["adherence"]["days_with_readings"] >= 16 and stored["adherence"]["meets_16_day_rule"]
    in_force = {r["id"]: r for r in stored["thresholds_in_force"]}
    assert in_force["weight_gain_24h"]["overridden"] and not in_force["bp_crisis"]["overridden"]
    types = {e["event_type"] for e in twin.twin_events(conn, unique_id, limit=None)}
    assert types >= {"device_assigned", "reading_added", "baselines_computed", "alert_opened",
                     "alert_acknowledged", "threshold_changed"}


def test_late_reading_does_not_change_latest_but_counts_for_adherence(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    t = now()
    ingest(conn, [bp(cuff, t, 122, 78)], unique_id)
    ingest(conn, [bp(cuff, t - timedelta(days=4), 150, 95)], unique_id, late=True)
    state = twin.get_twin(conn, unique_id)["state"]
    assert state["latest"]["systolic"]["value"] == 122 and state["counts"]["late_readings"] == 1
    assert len(state["reading_days"]) == 2


def test_resolved_alert_leaves_the_open_alerts(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    [opened] = alerts_in(ingest(conn, [bp(cuff, now(), 200, 100)], unique_id))
    assert opened.alert_id in twin.get_twin(conn, unique_id)["state"]["open_alerts"]
    alerts.resolve(conn, int(opened.alert_id), "dr.b")
    assert twin.get_twin(conn, unique_id)["state"]["open_alerts"] == {}
    assert twin.replay_twin(conn, unique_id) == twin.get_twin(conn, unique_id)["state"]


def test_twin_history_is_append_only(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    ingest(conn, [bp(cuff, now(), 120, 80)], unique_id)
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("UPDATE twin_events SET data = '{}' WHERE patient_id = %s", (unique_id,))
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("DELETE FROM twin_events WHERE patient_id = %s", (unique_id,))


def test_unknown_patient_is_a_typed_error(conn, unique_id):
    with pytest.raises(twin.PatientNotFound):
        twin.get_twin(conn, f"{unique_id}-nobody")


def test_the_effects_read_one_history_for_the_twin_and_the_alerts_of_a_batch(conn, unique_id, monkeypatch):
    from cloud.alerts.new_readings import evaluate_readings
    from cloud.effects import apply_new_readings
    from cloud.twin import baselines
    from tests.cloud.alerts.scripted_patient import insert_readings

    cuff = add_patient(conn, unique_id)["blood_pressure"]
    reads: list[tuple[frozenset[str], object]] = []
    real = baselines.load_history

    def counting(c, patient_ids, metrics, since, until):  # type: ignore[no-untyped-def]
        reads.append((frozenset(metrics), since))
        return real(c, patient_ids, metrics, since, until)

    monkeypatch.setattr(baselines, "load_history", counting)
    t = now()
    with conn.transaction():
        apply_new_readings(conn, insert_readings(conn, [bp(cuff, t, 120, 80)], unique_id), now())
    assert reads == [(frozenset({"systolic", "diastolic", "pulse_rate"}), t - timedelta(days=30))], "read once"

    # A rule that looks further back than the twin's baselines: still one read, covering both.
    alerts.set_rule_override(conn, unique_id, "systolic_baseline_deviation", params={"window_days": 45}, by="dr.a")
    with conn.transaction():
        apply_new_readings(conn, insert_readings(conn, [bp(cuff, t, 121, 80)], unique_id), now())
    assert reads[1] == (frozenset({"systolic", "diastolic", "pulse_rate"}), t - timedelta(days=45))

    with conn.transaction():
        evaluate_readings(conn, insert_readings(conn, [bp(cuff, t, 122, 80)], unique_id), now())
    assert len(reads) == 3 and reads[2][0] == frozenset({"systolic", "diastolic"}), "the alerts alone read their own"
