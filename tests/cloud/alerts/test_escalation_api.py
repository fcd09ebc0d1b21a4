"""The escalation API: a care team's members (and administrators) read and replace its policies,
contacts and on-call schedules, validated and audited; patients (or their care team) opt in and out of
messages. Real app (TestClient) on the session's PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cloud.alerts.escalation import run_escalations
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, now
from tests.cloud.alerts.test_escalation import NURSE_ROTA, PEOPLE, THREE_STEPS
from tests.cloud.api import conftest as api

pytestmark = pytest.mark.integration
api_settings, auth, client = api.api_settings, api.auth, api.client  # the API tests' fixtures
POLICY = {"name": "crisis first", "min_severity": "warning", "timezone": "Europe/Berlin", "quiet_start": "22:00",
          "quiet_end": "07:00", "repeat_every_minutes": 15, "repeat_max": 2, "steps": THREE_STEPS}


@pytest.fixture
def team(conn, unique_id):
    team = f"{unique_id}-team"
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Cardiology'), (%s, 'Other')", (team, f"{team}-x"))
    return team


def _set_up(client, headers, team):
    for part, body in (("contacts", {"contacts": PEOPLE}), ("on-call", {"schedules": [NURSE_ROTA]}),
                       ("policies", {"policies": [POLICY]})):
        response = client.put(f"/v1/care-teams/{team}/escalation/{part}", json=body, headers=headers)
        assert response.status_code == 200, response.text
    return response.json()


def test_a_team_member_replaces_policies_contacts_and_on_call_and_each_change_is_audited(client, auth, conn, team):
    nurse = auth("care_team", sub="nurse-ann", care_teams=(team,))
    setup = _set_up(client, nurse, team)
    [policy] = setup["policies"]
    assert (policy["name"], policy["quiet_start"], policy["created_by"]) == ("crisis first", "22:00:00", "nurse-ann")
    assert [(s["step"], s["target_type"], s["target"]) for s in policy["steps"]] == \
        [(0, "on_call", "nurse"), (1, "role", "physician"), (2, "person", "lead-lee")]
    [rota] = setup["schedules"]
    assert rota["on_call_now"] in (["nurse-ann"], ["nurse-bo"])
    assert sorted(c["subject"] for c in setup["contacts"]) == sorted(p["subject"] for p in PEOPLE)
    assert client.get(f"/v1/care-teams/{team}/escalation", headers=nurse).json() == setup

    renamed = client.put(f"/v1/care-teams/{team}/escalation/policies", headers=nurse,
                         json={"policies": [{**POLICY, "name": "renamed"}]}).json()["policies"][0]
    assert renamed["id"] != policy["id"] and renamed["applies_from"] == policy["applies_from"]
    rows = conn.execute("SELECT action, outcome, detail FROM audit_log WHERE subject = 'nurse-ann'"
                        " AND %s = ANY(care_teams) AND action LIKE 'PUT /v1/care-teams/%%' ORDER BY id",
                        (team,)).fetchall()
    assert [(r[0].rsplit("/", 1)[-1], r[1], r[2]["changed"]) for r in rows] == [
        ("contacts", "allowed", "contacts"), ("on-call", "allowed", "schedules"), ("policies", "allowed", "policies"),
        ("policies", "allowed", "policies")]
    last = rows[-1][2]
    assert last["before"][0]["name"] == "crisis first" and last["after"][0]["name"] == "renamed"


@pytest.mark.parametrize(("part", "body", "says"), [
    ("policies", {"policies": [{**POLICY, "timezone": "Mars/Olympus"}]}, "unknown time zone"),
    ("policies", {"policies": [{**POLICY, "steps": list(reversed(THREE_STEPS))}]}, "must not decrease"),
    ("policies", {"policies": [{**POLICY, "steps": [{**THREE_STEPS[0], "channels": ["pigeon"]}]}]}, "channels"),
    ("policies", {"policies": [{**POLICY, "escalate_to": "everyone"}]}, "escalate_to"),
    ("policies", {"policies": [{**POLICY, "steps": [{**THREE_STEPS[2], "target": "dr-who"}]}]}, "not a contact"),
    ("contacts", {"contacts": [{**PEOPLE[0], "phone": "0151 123"}]}, "phone"),
    ("contacts", {"contacts": [PEOPLE[0], PEOPLE[0]]}, "listed twice"),
    ("on-call", {"schedules": [{**NURSE_ROTA, "rotation": ["nurse-zed"]}]}, "not a contact"),
    ("on-call", {"schedules": [{**NURSE_ROTA, "rotation_start": "2026-01-05T08:00:00Z"}]}, "without an offset"),
    ("on-call", {"schedules": []}, "on call as nurse"),  # a policy step still needs the rota
    ("contacts", {"contacts": PEOPLE[:2]}, "lead-lee"),  # a policy step still names the team lead
])
def test_bad_escalation_input_is_a_422_problem_and_changes_nothing(client, auth, team, part, body, says):
    admin = auth("admin", sub="admin-1")
    before = _set_up(client, admin, team)
    response = client.put(f"/v1/care-teams/{team}/escalation/{part}", json=body, headers=admin)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert says in response.text
    assert client.get(f"/v1/care-teams/{team}/escalation", headers=admin).json()["policies"] == before["policies"]


def test_only_the_teams_members_and_administrators_see_or_change_its_escalation(client, auth, team):
    member = auth("clinician", sub="dr-kim", care_teams=(team,))
    assert client.get(f"/v1/care-teams/{team}/escalation", headers=member).status_code == 200
    outsider = auth("clinician", sub="dr-other", care_teams=(f"{team}-x",))
    patient = auth("patient", patient="p-somebody")
    for headers in (outsider, patient):
        assert client.get(f"/v1/care-teams/{team}/escalation", headers=headers).status_code == 403
        assert client.put(f"/v1/care-teams/{team}/escalation/contacts", json={"contacts": []},
                          headers=headers).status_code == 403
    admin = auth("admin", sub="admin-1")
    assert client.get(f"/v1/care-teams/{team}-none/escalation", headers=admin).status_code == 404
    assert client.get(f"/v1/care-teams/{team}/escalation").status_code == 401


def test_patients_opt_in_and_out_and_their_care_team_can_do_it_for_them(client, auth, conn, team, unique_id):
    patient_id = f"{unique_id}-p"
    add_patient(conn, patient_id)
    conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                 (patient_id, team, ["alerts"], patient_id))
    me = auth("patient", patient=patient_id)
    url = f"/v1/patients/{patient_id}/contacts"
    first = client.put(f"{url}/email", json={"address": "me@example.org"}, headers=me)
    assert first.status_code == 200 and first.json()["opted_in_by"] == patient_id
    assert client.put(f"{url}/email", json={"address": "me@example.org"}, headers=me).json()["id"] == first.json()["id"]
    moved = client.put(f"{url}/email", json={"address": "new@example.org"}, headers=me).json()
    nurse = auth("care_team", sub="nurse-ann", care_teams=(team,))
    sms = client.put(f"{url}/provider", json={"address": "+4915100000009"}, headers=nurse)
    assert sms.status_code == 200 and sms.json()["opted_in_by"] == "nurse-ann"
    assert client.put(f"{url}/provider", json={"address": "12345"}, headers=nurse).status_code == 422
    assert client.delete(f"{url}/email", headers=me).json()["opted_out_by"] == patient_id
    assert client.delete(f"{url}/email", headers=me).status_code == 404
    contacts = client.get(url, headers=nurse).json()["contacts"]
    assert [(c["address"], c["opted_out_at"] is None) for c in contacts] == [
        ("me@example.org", False), ("new@example.org", False), ("+4915100000009", True)]
    assert moved["address"] == "new@example.org"
    stranger = auth("clinician", sub="dr-other", care_teams=(f"{team}-x",))
    assert client.put(f"{url}/email", json={"address": "x@example.org"}, headers=stranger).status_code == 404
    refused = conn.execute("SELECT outcome, detail FROM audit_log WHERE %s = ANY(patient_ids) AND status = 422",
                           (patient_id,)).fetchall()
    assert refused == [("refused", {"patient_id": patient_id, "channel": "provider", "opted_in": "12345"})]


def test_an_alerts_escalations_are_visible_to_its_care_team(client, auth, conn, team, unique_id):
    nurse = auth("care_team", sub="nurse-ann", care_teams=(team,))
    _set_up(client, nurse, team)
    patient_id = f"{unique_id}-p"
    cuff = add_patient(conn, patient_id)["blood_pressure"]
    conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                 (patient_id, team, ["alerts"], patient_id))
    ingest(conn, [bp(cuff, now() - timedelta(minutes=1), 195, 100)], patient_id)
    alert_id = conn.execute("SELECT id FROM alerts WHERE patient_id = %s AND rule_id = 'bp_crisis'",
                            (patient_id,)).fetchone()[0]
    run_escalations(conn, now())
    body = client.get(f"/v1/alerts/{alert_id}/escalations", headers=nurse).json()
    [escalation] = body["escalations"]
    assert (escalation["care_team_id"], escalation["sent_step"], escalation["next_step"]) == (team, 0, 1)
    outsider = auth("clinician", sub="dr-other", care_teams=(f"{team}-x",))
    assert client.get(f"/v1/alerts/{alert_id}/escalations", headers=outsider).status_code == 404
