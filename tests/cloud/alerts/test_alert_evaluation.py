"""Rules evaluated in ingest's transaction on a real PostgreSQL: thresholds with hysteresis, device
flags, rate of change, the patient's own baseline, late readings, episodes, overrides."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from cloud.alerts import AlertStateError, InvalidOverride, RuleNotFound, service
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


def open_alerts(conn: psycopg.Connection, patient_id: str) -> list[dict]:
    return service.list_alerts(conn, patient_id=patient_id, status=["open", "acknowledged"])


def test_bp_crisis_opens_once_updates_while_high_and_resolves_after_normal_readings(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    t = now()
    assert alerts_in(ingest(conn, normal_week(cuff, t), unique_id)) == []

    first = alerts_in(ingest(conn, [bp(cuff, t - timedelta(minutes=30), 186, 112)], unique_id))
    assert [(a.rule, a.status, a.severity, a.value) for a in first] == [("bp_crisis", "open", "critical", 186.0)]
    assert "systolic 186 mmHg" in first[0].message and not first[0].late
    assert "mm[Hg]" not in first[0].message  # people read these texts: units as people write them

    more = alerts_in(ingest(conn, [bp(cuff, t - timedelta(minutes=20), 192, 125)], unique_id))
    assert [(a.alert_id, a.status, a.value) for a in more] == [(first[0].alert_id, "updated", 192.0)]
    [alert] = open_alerts(conn, unique_id)
    assert alert["trigger_count"] == 2 and alert["status"] == "open"

    # 175 is under 180 but inside the 10 mmHg hysteresis band: neither trigger nor normal.
    assert alerts_in(ingest(conn, [bp(cuff, t - timedelta(minutes=15), 175, 100)], unique_id)) == []
    assert alerts_in(ingest(conn, [bp(cuff, t - timedelta(minutes=10), 135, 85)], unique_id)) == []
    assert open_alerts(conn, unique_id), "one normal reading is not enough (resolve_after = 2)"
    resolved = alerts_in(ingest(conn, [bp(cuff, t - timedelta(minutes=5), 128, 82)], unique_id))
    assert [(a.alert_id, a.status) for a in resolved] == [(first[0].alert_id, "resolved")]
    assert open_alerts(conn, unique_id) == []
    events = [e["event"] for e in service.alert_history(conn, int(first[0].alert_id))]
    assert events == ["opened", "updated", "resolved"]


def test_second_alert_for_same_rule_is_refused_by_the_database(conn, unique_id):
    add_patient(conn, unique_id)
    conn.execute("INSERT INTO alerts (patient_id, rule_id, severity, status, message) VALUES (%s, 'bp_crisis',"
                 " 'critical', 'open', 'x')", (unique_id,))
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO alerts (patient_id, rule_id, severity, status, message) VALUES (%s, 'bp_crisis',"
                     " 'critical', 'acknowledged', 'y')", (unique_id,))
    # A resolved one does not count.
    conn.execute("INSERT INTO alerts (patient_id, rule_id, severity, status, message) VALUES (%s, 'bp_crisis',"
                 " 'critical', 'resolved', 'z')", (unique_id,))


def test_quality_flags_are_said_in_the_alert_and_unsuccessful_or_control_readings_fire_nothing(conn, unique_id):
    devices = add_patient(conn, unique_id, kinds=("blood_pressure", "glucose"))
    t = now()
    unsuccessful = make_reading(devices["blood_pressure"], "blood_pressure", t - timedelta(minutes=9), {},
                                ["measurement_unsuccessful"])
    control = make_reading(devices["glucose"], "glucose", t - timedelta(minutes=8), {"glucose": 40},
                           ["control_solution"])
    assert alerts_in(ingest(conn, [unsuccessful, control], unique_id)) == []
    assert "glucose" not in twin.get_twin(conn, unique_id)["state"]["latest"]

    flagged = alerts_in(ingest(conn, [bp(devices["blood_pressure"], t, 184, 100, flags=["irregular_pulse",
                                                                                         "cuff_too_loose"])],
                               unique_id))
    assert [a.rule for a in flagged] == ["bp_crisis"]
    assert "irregular pulse" in flagged[0].message and "cuff too loose" in flagged[0].message
    assert set(flagged[0].flags) == {"irregular_pulse", "cuff_too_loose"}


def test_glucose_levels_open_the_rules_of_the_spec(conn, unique_id):
    meter = add_patient(conn, unique_id, kinds=("glucose",))["glucose"]
    got = alerts_in(ingest(conn, [make_reading(meter, "glucose", now(), {"glucose": 50})], unique_id))
    assert sorted((a.rule, a.severity) for a in got) == [("glucose_hypo", "warning"),
                                                           ("glucose_level2_hypo", "critical")]


def test_weight_gain_over_seven_days_opens_a_rate_alert_but_not_the_24_hour_one(conn, unique_id):
    scale = add_patient(conn, unique_id, kinds=("body_weight",))["body_weight"]
    t = now()
    # +0.4 kg a day: never 0.9 kg in 24 h, but 2.4 kg over 6 days.
    days = [weight(scale, t - timedelta(days=6 - d), 80 + 0.4 * d) for d in range(6)]
    got = alerts_in(ingest(conn, days, unique_id))
    assert [a.rule for a in got] == []
    got = alerts_in(ingest(conn, [weight(scale, t, 82.4)], unique_id))
    assert [(a.rule, a.status) for a in got] == [("weight_gain_7d", "open")]
    assert "up 2.40" in got[0].message


def test_weight_gain_in_one_day(conn, unique_id):
    scale = add_patient(conn, unique_id, kinds=("body_weight",))["body_weight"]
    t = now()
    got = alerts_in(ingest(conn, [weight(scale, t - timedelta(hours=20), 80.0), weight(scale, t, 81.0)], unique_id))
    assert sorted(a.rule for a in got) == ["weight_gain_24h"]


def test_three_readings_are_not_a_baseline(conn, unique_id):
    meter = add_patient(conn, unique_id, kinds=("glucose",))["glucose"]
    t = now()
    readings = [make_reading(meter, "glucose", t - timedelta(days=20 - 5 * i), {"glucose": 100}) for i in range(3)]
    readings.append(make_reading(meter, "glucose", t, {"glucose": 240}))  # far from 100, but no baseline yet
    assert [a.rule for a in alerts_in(ingest(conn, readings, unique_id))] == []
    assert "glucose" not in twin.get_twin(conn, unique_id)["state"]["baselines"]


def test_deviation_from_own_baseline_once_enough_history_exists(conn, unique_id):
    meter = add_patient(conn, unique_id, kinds=("glucose",))["glucose"]
    t = now()
    history = [make_reading(meter, "glucose", t - timedelta(days=20) + timedelta(hours=12 * i),
                            {"glucose": 100 + (i % 5) * 3}) for i in range(40)]
    assert alerts_in(ingest(conn, history, unique_id)) == []
    baseline = twin.get_twin(conn, unique_id)["state"]["baselines"]["glucose"]
    assert baseline["median"] == 106 and baseline["n"] == 40
    got = alerts_in(ingest(conn, [make_reading(meter, "glucose", t, {"glucose": 175})], unique_id))
    assert [a.rule for a in got] == ["glucose_baseline_deviation"]
    assert "own median 106" in got[0].message


def test_late_reading_is_evaluated_marked_late_and_not_paged(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    service.add_webhook(conn, "http://127.0.0.1:9/never", "s3cret", patient_id=unique_id)
    got = alerts_in(ingest(conn, [bp(cuff, now() - timedelta(days=3), 190, 100)], unique_id, late=True))
    assert [(a.rule, a.late, a.status) for a in got] == [("bp_crisis", True, "open")]
    assert "[late: measured" in got[0].message
    pages = conn.execute("SELECT count(*) FROM alert_deliveries WHERE alert_id = %s AND channel = 'webhook'",
                         (int(got[0].alert_id),)).fetchone()[0]
    assert pages == 0


def test_late_normal_reading_does_not_resolve_a_newer_alert(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    t = now()
    ingest(conn, [bp(cuff, t, 185, 100)], unique_id)
    old = [bp(cuff, t - timedelta(days=2, minutes=m), 120, 75) for m in range(3)]
    assert alerts_in(ingest(conn, old, unique_id, late=True)) == []
    assert len(open_alerts(conn, unique_id)) == 1


def test_firing_again_within_the_suppression_window_reopens_the_same_episode(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    t = now()
    [opened] = alerts_in(ingest(conn, [bp(cuff, t - timedelta(minutes=30), 185, 100)], unique_id))
    ingest(conn, [bp(cuff, t - timedelta(minutes=20 - m), 120, 75) for m in range(2)], unique_id)
    assert open_alerts(conn, unique_id) == []
    got = alerts_in(ingest(conn, [bp(cuff, t, 188, 100)], unique_id))
    # Four readings in 7 days averaging 153 mmHg also open the stage-2 review rule: a different alert.
    assert sorted(a.rule for a in got) == ["bp_crisis", "bp_stage2_average"]
    [again] = [a for a in got if a.rule == "bp_crisis"]
    assert (again.alert_id, again.status) == (opened.alert_id, "open")
    row = service.get_alert(conn, int(opened.alert_id))
    assert row["reopen_count"] == 1 and row["trigger_count"] == 2


def test_acknowledge_keeps_who_and_when_and_a_resolved_alert_cannot_be_acknowledged(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    [opened] = alerts_in(ingest(conn, [bp(cuff, now(), 185, 100)], unique_id))
    row = service.acknowledge(conn, int(opened.alert_id), "dr.house", note="called the patient")
    assert row["status"] == "acknowledged" and row["acknowledged_by"] == "dr.house" and row["acknowledged_at"]
    # Still the one open alert of its rule: a new high updates it.
    [updated] = alerts_in(ingest(conn, [bp(cuff, now(), 190, 100)], unique_id))
    assert (updated.alert_id, updated.status) == (opened.alert_id, "updated")
    service.comment(conn, int(opened.alert_id), "dr.house", "booked a visit")
    service.resolve(conn, int(opened.alert_id), "dr.house")
    with pytest.raises(AlertStateError):
        service.acknowledge(conn, int(opened.alert_id), "nurse")
    events = [(e["event"], e["actor"]) for e in service.alert_history(conn, int(opened.alert_id))]
    assert events == [("opened", "system"), ("acknowledged", "dr.house"), ("updated", "system"),
                      ("comment", "dr.house"), ("resolved", "dr.house")]
    outbox = conn.execute("SELECT status FROM alert_deliveries WHERE alert_id = %s AND channel = 'mqtt' ORDER BY id",
                          (int(opened.alert_id),)).fetchall()
    assert [s for (s,) in outbox] == ["acknowledged", "resolved"]


def test_care_team_override_changes_the_threshold_for_one_patient_only(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    other = f"{unique_id}b"
    other_cuff = add_patient(conn, other)["blood_pressure"]
    rule = service.set_rule_override(conn, unique_id, "bp_crisis", thresholds={"systolic": 165}, by="dr.who")
    assert rule.overridden and {c.metric: c.value for c in rule.conditions} == {"systolic": 165, "diastolic": 120}
    assert [a.rule for a in alerts_in(ingest(conn, [bp(cuff, now(), 170, 95)], unique_id))] == ["bp_crisis"]
    assert alerts_in(ingest(conn, [bp(other_cuff, now(), 170, 95)], other)) == []
    state = twin.get_twin(conn, unique_id)["state"]
    assert state["thresholds"]["bp_crisis"]["conditions"][0]["value"] == 165
    with pytest.raises(InvalidOverride):
        service.set_rule_override(conn, unique_id, "bp_crisis", thresholds={"glucose": 3}, by="dr.who")
    with pytest.raises(RuleNotFound):
        service.set_rule_override(conn, unique_id, "no_such_rule", enabled=False, by="dr.who")
    service.set_rule_override(conn, unique_id, "bp_crisis", enabled=False, by="dr.who")
    assert alerts_in(ingest(conn, [bp(cuff, now(), 200, 130)], unique_id)) == []


def test_unassigned_readings_fire_nothing(conn, unique_id):
    add_patient(conn, unique_id)
    assert alerts_in(ingest(conn, [bp(f"ble:{unique_id}:loose", now(), 200, 130)], None)) == []
