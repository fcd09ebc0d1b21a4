"""Review is part of the alert lifecycle: a crisis that resolves inside one gateway sync stays pending
review until a person acknowledges it, and the database (not the code paths) holds that rule."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from cloud.alerts import AlertStateError, service
from cloud.twin import service as twin
from cloud.twin.fhir import flag_from_alert
from tests.cloud.alerts.scripted_patient import add_patient, alerts_in, bp, ingest, now

pytestmark = pytest.mark.integration


def _crisis_resolved_in_one_sync(conn: psycopg.Connection, patient_id: str) -> int:
    """A gateway that was offline uploads a crisis and the two normal readings after it in one batch."""
    cuff = add_patient(conn, patient_id)["blood_pressure"]
    t = now()
    sync = [bp(cuff, t - timedelta(minutes=30), 192, 118), bp(cuff, t - timedelta(minutes=25), 130, 80),
            bp(cuff, t - timedelta(minutes=20), 128, 79)]
    alerts = alerts_in(ingest(conn, sync, patient_id))
    crisis = [a for a in alerts if a.rule == "bp_crisis"]
    assert [a.status for a in crisis] == ["open", "resolved"]
    assert crisis[-1].review_state == "pending"
    return int(crisis[0].alert_id)


def test_crisis_resolved_within_one_sync_stays_pending_until_a_person_acknowledges_it(conn, unique_id):
    alert_id = _crisis_resolved_in_one_sync(conn, unique_id)
    row = service.get_alert(conn, alert_id)
    assert (row["status"], row["review_required"], row["review_state"], row["needs_review"]) == \
        ("resolved", True, "pending", True)
    assert [a["id"] for a in service.list_alerts(conn, patient_id=unique_id, review_state=["pending"])] == [alert_id]

    state = twin.get_twin(conn, unique_id)["state"]
    assert state["open_alerts"] == {} and state["needs_review"][str(alert_id)]["needs_review"] is True
    flag = flag_from_alert(row)
    assert flag["status"] == "active" and "period" in flag and flag["period"]["end"]

    reviewed = service.acknowledge(conn, alert_id, "nurse-ann", note="called the patient; fine now")
    assert (reviewed["status"], reviewed["review_state"], reviewed["reviewed_by"]) == \
        ("resolved", "reviewed", "nurse-ann")
    assert not reviewed["needs_review"] and reviewed["reviewed_at"] is not None
    events = [(e["event"], e["actor"]) for e in service.alert_history(conn, alert_id)]
    assert events[-1] == ("reviewed", "nurse-ann")
    assert twin.get_twin(conn, unique_id)["state"]["needs_review"] == {}
    assert flag_from_alert(reviewed)["status"] == "inactive"
    with pytest.raises(AlertStateError, match="needs no review"):
        service.acknowledge(conn, alert_id, "nurse-bob")


def test_a_warning_that_resolves_needs_no_review_and_acknowledging_an_open_one_reviews_it(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    t = now()
    [low] = alerts_in(ingest(conn, [bp(cuff, t - timedelta(minutes=30), 85, 60)], unique_id))
    assert (low.rule, low.severity, low.review_state) == ("bp_hypotension", "warning", "not_required")
    ingest(conn, [bp(cuff, t - timedelta(minutes=20 - m), 120, 75) for m in range(2)], unique_id)
    row = service.get_alert(conn, int(low.alert_id))
    assert (row["status"], row["review_state"], row["needs_review"]) == ("resolved", "not_required", False)
    with pytest.raises(AlertStateError):
        service.acknowledge(conn, int(low.alert_id), "nurse-ann")

    [crisis] = [a for a in alerts_in(ingest(conn, [bp(cuff, t - timedelta(minutes=5), 185, 100)], unique_id))
                if a.rule == "bp_crisis"]
    acked = service.acknowledge(conn, int(crisis.alert_id), "dr-kim")
    assert (acked["status"], acked["review_state"], acked["reviewed_by"]) == ("acknowledged", "reviewed", "dr-kim")


def test_the_database_refuses_to_drop_a_pending_review(conn, unique_id):
    alert_id = _crisis_resolved_in_one_sync(conn, unique_id)
    with pytest.raises(psycopg.errors.CheckViolation, match="needs a review"):
        conn.execute("UPDATE alerts SET review_required = false WHERE id = %s", (alert_id,))
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE alerts SET reviewed_at = now() WHERE id = %s", (alert_id,))  # who is missing
    # A warning alert written straight into the table still gets the rule: its severity is critical.
    row = conn.execute("INSERT INTO alerts (patient_id, rule_id, severity, status, message) VALUES"
                       " (%s, 'pulse_high', 'critical', 'resolved', 'x') RETURNING review_state",
                       (unique_id,)).fetchone()
    assert row == ("pending",)
    service.acknowledge(conn, alert_id, "nurse-ann")
    with pytest.raises(psycopg.errors.CheckViolation, match="only re-opening"):
        conn.execute("UPDATE alerts SET reviewed_at = NULL, reviewed_by = NULL WHERE id = %s", (alert_id,))


def test_a_rule_can_ask_for_review_below_critical_and_a_person_resolving_reviews(conn, unique_id):
    conn.execute("UPDATE alert_rules SET requires_review = true WHERE id = 'bp_hypotension'")
    try:
        cuff = add_patient(conn, unique_id)["blood_pressure"]
        [low] = alerts_in(ingest(conn, [bp(cuff, now() - timedelta(minutes=3), 84, 58)], unique_id))
        assert (low.severity, low.review_state) == ("warning", "pending")
        closed = service.resolve(conn, int(low.alert_id), "dr-kim", note="cuff too loose; re-measured")
        assert (closed["status"], closed["review_state"], closed["reviewed_by"]) == ("resolved", "reviewed", "dr-kim")
    finally:
        conn.execute("UPDATE alert_rules SET requires_review = false WHERE id = 'bp_hypotension'")


def test_reopening_a_reviewed_episode_needs_a_new_review(conn, unique_id):
    alert_id = _crisis_resolved_in_one_sync(conn, unique_id)
    service.acknowledge(conn, alert_id, "nurse-ann")
    cuff = f"ble:{unique_id}:blood_pressure"
    again = [a for a in alerts_in(ingest(conn, [bp(cuff, now(), 188, 100)], unique_id)) if a.rule == "bp_crisis"]
    assert [(int(a.alert_id), a.status, a.review_state) for a in again] == [(alert_id, "open", "pending")]
    row = service.get_alert(conn, alert_id)
    assert row["reviewed_at"] is None and row["reviewed_by"] is None
