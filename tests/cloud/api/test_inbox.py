"""The alert inbox across patients and assignment (contract D): what needs a human, most severe then newest,
paged, counted, filtered, consent-scoped like /v1/alerts, audited; ``POST /v1/alerts/{id}/assign``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, now
from tests.cloud.api.conftest import TokenFactory, grant

ALL = ["readings", "alerts", "twin"]


@dataclass
class Clinic:
    ids: dict[str, str]
    alerts: dict[str, int]
    headers: dict[str, dict[str, str]]


def _alert(conn: psycopg.Connection, patient_id: str, rule_id: str, status: str, minutes_ago: int,
           **extra: Any) -> int:
    at = now() - timedelta(minutes=minutes_ago)
    columns = ["patient_id", "rule_id", "severity", "status", "message", "opened_at", *extra]
    values = [patient_id, rule_id, None, status, f"{rule_id} for {patient_id}", at, *extra.values()]
    row = conn.execute(
        f"INSERT INTO alerts ({', '.join(columns)}) SELECT %s, %s, coalesce(%s, r.severity),"
        f" {', '.join(['%s'] * (len(columns) - 3))} FROM alert_rules r WHERE r.id = %s RETURNING id",
        (*values, rule_id)).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def clinic(conn: psycopg.Connection, unique_id: str, auth: TokenFactory) -> Clinic:
    team, other = f"{unique_id}-team", f"{unique_id}-other"
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Clinic'), (%s, 'Elsewhere')", (team, other))
    ids = {n: f"{unique_id}-{n}" for n in ("ana", "ben", "readings_only", "stranger")}
    for n, patient_id in ids.items():
        add_patient(conn, patient_id)
        conn.execute("UPDATE patients SET display_name = %s WHERE id = %s", (f"{n.title()} Example", patient_id))
    grant(conn, ids["ana"], team, ALL)
    grant(conn, ids["ben"], team, ALL)
    grant(conn, ids["readings_only"], team, ["readings"])
    grant(conn, ids["stranger"], other, ALL)
    reviewed = {"acknowledged_at": now(), "acknowledged_by": "dr", "reviewed_at": now(), "reviewed_by": "dr"}
    alerts = {
        "ana_crisis": _alert(conn, ids["ana"], "bp_crisis", "open", 10),
        "ana_hypo": _alert(conn, ids["ana"], "glucose_hypo", "open", 5),
        "ana_acknowledged": _alert(conn, ids["ana"], "missing_blood_pressure", "acknowledged", 3, **reviewed),
        "ben_device": _alert(conn, ids["ben"], "device_unreadable_records", "open", 1),
        # Opened after Ana's crisis and already over: it comes after the crisis that is still going on.
        "ben_unreviewed": _alert(conn, ids["ben"], "glucose_level2_hypo", "resolved", 8, resolved_at=now(),
                                 resolved_by="system"),
        "ben_resolved": _alert(conn, ids["ben"], "bp_hypotension", "resolved", 20, resolved_at=now(),
                               resolved_by="system"),
        "ben_adherence": _alert(conn, ids["ben"], "adherence_16_days", "open", 2),
        "hidden_crisis": _alert(conn, ids["readings_only"], "bp_crisis", "open", 0),
        "stranger_crisis": _alert(conn, ids["stranger"], "bp_crisis", "open", 0),
    }
    headers = {"nurse": auth("care_team", sub=f"{unique_id}-nurse", care_teams=(team,)),
               "dr": auth("clinician", sub=f"{unique_id}-dr", care_teams=(team,)),
               "ana": auth("patient", patient=ids["ana"]), "admin": auth("admin", sub=f"{unique_id}-admin")}
    return Clinic(ids, alerts, headers)


IN_ORDER = ["ana_crisis", "ben_unreviewed", "ben_device", "ana_hypo", "ben_adherence"]


def _inbox(client: TestClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.get("/v1/inbox", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def _names(c: Clinic, body: dict[str, Any]) -> list[str]:
    by_id = {v: k for k, v in c.alerts.items()}
    return [by_id[a["id"]] for a in body["alerts"]]


def test_what_needs_a_human_most_severe_first_then_ongoing_then_newest(client: TestClient, clinic: Clinic) -> None:
    body = _inbox(client, clinic.headers["nurse"])
    assert _names(clinic, body) == IN_ORDER
    assert body["total"] == 5 and body["next_before"] is None
    assert body["counts"] == {"all": 5, "critical": 2, "warning": 2, "info": 1, "needs_review": 1,
                              "unassigned": 5, "assigned_to_me": 0}
    unreviewed = body["alerts"][1]
    assert (unreviewed["status"], unreviewed["review_state"], unreviewed["needs_review"]) == ("resolved", "pending",
                                                                                            True)
    first = body["alerts"][0]
    assert first["patient_display_name"] == "Ana Example" and first["assigned_to"] is None
    assert first["rule_title"] == "Hypertensive crisis" and body["alerts"][3]["rule_title"] == "Level 1 hypoglycaemia"
    assert first["review_required"] is True and first["category"] == "clinical"
    assert body["alerts"][2]["category"] == "technical"


def test_pages_follow_the_same_order_and_reach_every_alert_once(client: TestClient, clinic: Clinic) -> None:
    seen, before = [], None
    while True:
        body = _inbox(client, clinic.headers["nurse"], limit=2, **({"before": before} if before else {}))
        assert body["total"] == 5
        seen += _names(clinic, body)
        before = body["next_before"]
        if before is None:
            break
    assert seen == IN_ORDER


def test_filters_by_severity_category_and_assignment(client: TestClient, clinic: Clinic) -> None:
    nurse = clinic.headers["nurse"]
    critical = _inbox(client, nurse, severity="critical")
    assert _names(clinic, critical) == ["ana_crisis", "ben_unreviewed"] and critical["total"] == 2
    assert critical["counts"]["all"] == 5  # counts stay those of the whole inbox
    assert _names(clinic, _inbox(client, nurse, severity=["warning", "info"], category="clinical")) == [
        "ana_hypo", "ben_adherence"]
    assert _names(clinic, _inbox(client, nurse, category="technical")) == ["ben_device"]
    assert client.post(f"/v1/alerts/{clinic.alerts['ana_hypo']}/assign", json={"to": "me"},
                       headers=nurse).status_code == 200
    assert _names(clinic, _inbox(client, nurse, assigned="me")) == ["ana_hypo"]
    assert _inbox(client, clinic.headers["dr"], assigned="me")["total"] == 0
    assert "ana_hypo" not in _names(clinic, _inbox(client, nurse, assigned="unassigned"))
    counts = _inbox(client, nurse)["counts"]
    assert (counts["assigned_to_me"], counts["unassigned"]) == (1, 4)


def test_consent_decides_like_for_alerts(client: TestClient, clinic: Clinic) -> None:
    own = _inbox(client, clinic.headers["ana"])
    assert _names(clinic, own) == ["ana_crisis", "ana_hypo"]
    response = client.get("/v1/inbox", headers=clinic.headers["admin"])
    assert response.status_code == 403
    assert client.get("/v1/inbox").status_code == 401


def test_every_patient_on_the_page_is_audited(client: TestClient, conn: psycopg.Connection, clinic: Clinic) -> None:
    response = client.get("/v1/inbox", params={"limit": 1}, headers=clinic.headers["nurse"])
    rows = conn.execute("SELECT action, patient_ids FROM audit_log WHERE request_id = %s",
                        (response.headers["x-request-id"],)).fetchall()
    assert rows == [("GET /v1/inbox", [clinic.ids["ana"]])]


def test_a_crisis_that_resolved_before_review_stays_until_acknowledged(client: TestClient, conn: psycopg.Connection,
                                                                        unique_id: str, auth: TokenFactory) -> None:
    team, patient = f"{unique_id}-ward", f"{unique_id}-crisis"
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Ward')", (team,))
    cuff = add_patient(conn, patient)["blood_pressure"]
    grant(conn, patient, team, ALL)
    ingest(conn, [bp(cuff, now() - timedelta(minutes=30), 192, 124)], patient)
    ingest(conn, [bp(cuff, now() - timedelta(minutes=m), 128, 80) for m in (20, 10)], patient)
    headers = auth("clinician", sub=f"{unique_id}-dr", care_teams=(team,))
    crisis = [a for a in _inbox(client, headers)["alerts"] if a["rule_id"] == "bp_crisis"]
    assert len(crisis) == 1 and crisis[0]["status"] == "resolved" and crisis[0]["needs_review"] is True
    assert client.post(f"/v1/alerts/{crisis[0]['id']}/acknowledge", headers=headers).status_code == 200
    assert all(a["rule_id"] != "bp_crisis" for a in _inbox(client, headers)["alerts"])


def test_assign_to_me_then_to_nobody_with_history(client: TestClient, conn: psycopg.Connection,
                                                  clinic: Clinic, unique_id: str) -> None:
    alert_id, nurse = clinic.alerts["ana_crisis"], clinic.headers["nurse"]
    taken = client.post(f"/v1/alerts/{alert_id}/assign", json={"to": "me"}, headers=nurse)
    assert taken.status_code == 200, taken.text
    assert taken.json()["assigned_to"] == f"{unique_id}-nurse" and taken.json()["assigned_at"] is not None
    assert taken.json()["patient_display_name"] == "Ana Example"
    again = client.post(f"/v1/alerts/{alert_id}/assign", json={"to": "me"}, headers=nurse)
    assert again.json()["assigned_to"] == f"{unique_id}-nurse"
    cleared = client.post(f"/v1/alerts/{alert_id}/assign", json={"to": None}, headers=clinic.headers["dr"])
    assert cleared.status_code == 200 and cleared.json()["assigned_to"] is None
    history = client.get(f"/v1/alerts/{alert_id}", headers=nurse).json()["history"]
    assigned = [(e["event"], e["actor"], e["detail"]["assigned_to"]) for e in history if "assigned_to" in e["detail"]]
    # The second "me" changed nothing and left no event.
    assert assigned == [("comment", f"{unique_id}-nurse", f"{unique_id}-nurse"), ("comment", f"{unique_id}-dr", None)]
    audit = conn.execute("SELECT action, outcome, detail FROM audit_log WHERE request_id = %s",
                         (taken.headers["x-request-id"],)).fetchone()
    assert audit == ("POST /v1/alerts/{alert_id}/assign", "allowed",
                     {"alert_id": alert_id, "assigned_to": f"{unique_id}-nurse"})


def test_an_alert_that_needs_nobody_cannot_be_assigned(client: TestClient, clinic: Clinic) -> None:
    nurse = clinic.headers["nurse"]
    response = client.post(f"/v1/alerts/{clinic.alerts['ben_resolved']}/assign", json={"to": "me"}, headers=nurse)
    assert response.status_code == 409 and response.headers["content-type"].startswith("application/problem")
    unreviewed = client.post(f"/v1/alerts/{clinic.alerts['ben_unreviewed']}/assign", json={"to": "me"}, headers=nurse)
    assert unreviewed.status_code == 200  # resolved, still pending review: somebody must look
    assert client.post(f"/v1/alerts/{clinic.alerts['ben_unreviewed']}/acknowledge", headers=nurse).status_code == 200
    reviewed = client.post(f"/v1/alerts/{clinic.alerts['ben_unreviewed']}/assign", json={"to": None}, headers=nurse)
    assert reviewed.status_code == 409


def test_assigning_is_for_the_care_team_with_alert_consent(client: TestClient, clinic: Clinic) -> None:
    nurse = clinic.headers["nurse"]
    for name in ("hidden_crisis", "stranger_crisis"):
        assert client.post(f"/v1/alerts/{clinic.alerts[name]}/assign", json={"to": "me"},
                           headers=nurse).status_code == 404
    assert client.post("/v1/alerts/999999999999/assign", json={"to": "me"}, headers=nurse).status_code == 404
    assert client.post(f"/v1/alerts/{clinic.alerts['ana_crisis']}/assign", json={"to": "me"},
                       headers=clinic.headers["ana"]).status_code == 403
    assert client.post(f"/v1/alerts/{clinic.alerts['ana_crisis']}/assign", json={"to": "someone-else"},
                       headers=nurse).status_code == 422
    assert client.post(f"/v1/alerts/{clinic.alerts['ana_crisis']}/assign", json={},
                       headers=nurse).status_code == 422
