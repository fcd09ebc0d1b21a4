"""Consent is the patient's (grant, revoke on the next request, expiry, scope) and every access to
patient data is audited, readable by the patient as "who accessed my record"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.cloud.api.conftest import TokenFactory, World

pytestmark = pytest.mark.integration


def test_grant_then_revoke_takes_effect_on_the_next_request(client: TestClient, world: World) -> None:
    patient, me, doctor = world.patients["own"], world.headers["patient"], world.headers["clinician"]
    readings = f"/v1/patients/{patient}/readings"
    assert client.get(readings, headers=doctor).status_code == 404
    granted = client.post(f"/v1/patients/{patient}/consents", headers=me,
                          json={"care_team_id": world.team, "scopes": ["readings"]})
    assert granted.status_code == 201 and granted.json()["active"] is True
    assert client.get(readings, headers=doctor).status_code == 200
    assert client.get(f"/v1/patients/{patient}/twin", headers=doctor).status_code == 404  # scope not granted
    revoked = client.delete(f"/v1/patients/{patient}/consents/{granted.json()['id']}", headers=me)
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    assert client.get(readings, headers=doctor).status_code == 404
    listed = client.get(f"/v1/patients/{patient}/consents", headers=me).json()["consents"]
    assert [c["revoked_by"] for c in listed if c["id"] == granted.json()["id"]] == [patient]


def test_expired_consent_no_longer_grants_access(client: TestClient, world: World, conn: psycopg.Connection) -> None:
    patient = world.patients["own"]
    past = datetime.now(UTC) - timedelta(days=2)
    conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by, granted_at, expires_at)"
                 " VALUES (%s, %s, '{readings}', %s, %s, %s)", (patient, world.team, patient, past,
                                                                past + timedelta(days=1)))
    assert client.get(f"/v1/patients/{patient}/readings", headers=world.headers["clinician"]).status_code == 404
    consents = client.get(f"/v1/patients/{patient}/consents", headers=world.headers["patient"]).json()["consents"]
    assert [c["active"] for c in consents] == [False]


def test_consent_request_is_validated(client: TestClient, world: World) -> None:
    patient, me = world.patients["own"], world.headers["patient"]
    url = f"/v1/patients/{patient}/consents"
    unknown_team = {"care_team_id": "no-such-team", "scopes": ["readings"]}
    assert client.post(url, headers=me, json=unknown_team).status_code == 422
    assert client.post(url, headers=me, json={"care_team_id": world.team, "scopes": ["everything"]}).status_code == 422
    assert client.post(url, headers=me, json={"care_team_id": world.team, "scopes": []}).status_code == 422
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert client.post(url, headers=me, json={"care_team_id": world.team, "scopes": ["twin"],
                                              "expires_at": yesterday}).status_code == 422
    # Someone else's consent cannot be revoked through my record.
    assert client.delete(f"{url}/999999999", headers=me).status_code == 404


def test_patient_sees_who_accessed_their_record(client: TestClient, world: World, auth: TokenFactory) -> None:
    patient = world.patients["consented"]
    response = client.get(f"/v1/patients/{patient}/readings", headers={**world.headers["clinician"],
                                                                        "X-Request-ID": "req-audit-1"})
    assert response.status_code == 200
    client.get(f"/v1/patients/{patient}/twin", headers=world.headers["care_team"])
    client.get(f"/v1/patients/{patient}/readings", headers=world.headers["admin"])  # denied: 404, still audited
    entries = client.get(f"/v1/patients/{patient}/audit", headers=auth("patient", patient=patient)).json()["entries"]
    first = {e["request_id"]: e for e in entries}["req-audit-1"]
    assert first["subject"].endswith("-dr") and first["role"] == "clinician" and first["care_teams"] == [world.team]
    assert first["action"] == "GET /v1/patients/{patient_id}/readings"
    assert first["outcome"] == "allowed" and first["status"] == 200
    outcomes = {(e["role"], e["action"], e["outcome"]) for e in entries}
    assert ("care_team", "GET /v1/patients/{patient_id}/twin", "allowed") in outcomes
    assert ("admin", "GET /v1/patients/{patient_id}/readings", "not_found") in outcomes


def test_panel_and_alert_list_audit_every_patient_they_show(client: TestClient, world: World,
                                                            conn: psycopg.Connection) -> None:
    response = client.get("/v1/patients", headers={**world.headers["clinician"], "X-Request-ID": "req-panel-1"})
    shown = {p["patient_id"] for p in response.json()["patients"]}
    assert shown == {world.patients["consented"], world.patients["readings_only"]}
    audited = {r[0] for r in conn.execute("SELECT unnest(patient_ids) FROM audit_log WHERE request_id = 'req-panel-1'")}
    assert audited == shown
    client.get("/v1/alerts", headers={**world.headers["clinician"], "X-Request-ID": "req-alerts-1"})
    audited = {r[0] for r in conn.execute("SELECT unnest(patient_ids) FROM audit_log"
                                          " WHERE request_id = 'req-alerts-1'")}
    assert audited == {world.patients["consented"]}  # readings_only did not grant alerts


def test_panel_is_sorted_for_triage_and_respects_scopes(client: TestClient, world: World) -> None:
    panel = client.get("/v1/patients", headers=world.headers["clinician"]).json()["patients"]
    first, second = panel
    assert first["patient_id"] == world.patients["consented"]  # an open critical alert comes first
    assert first["open_alerts"]["critical"] == 1
    assert first["latest"]["systolic"]["value"] == 190
    assert first["adherence"]["days_with_readings"] == 7
    assert second["open_alerts"] is None  # readings only: alert counts are not shown
    assert second["latest"]["body_weight"]["value"] == pytest.approx(80.1)  # the newest weigh-in
    assert second["categories"]["blood_pressure"] == "hypertensive_crisis"


def test_audit_log_is_append_only(conn: psycopg.Connection, client: TestClient, world: World) -> None:
    client.get(f"/v1/patients/{world.patients['own']}", headers=world.headers["patient"])
    with pytest.raises(psycopg.errors.RaiseException):
        conn.execute("DELETE FROM audit_log WHERE patient_ids @> ARRAY[%s]", (world.patients["own"],))
