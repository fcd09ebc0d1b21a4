"""Consent writes through FHIR (issue 22): the patient grants a care team access with ``POST /fhir/Consent``
and revokes it with ``PUT /fhir/Consent/{id}`` (status inactive), under the same rules as
``/v1/patients/{id}/consents``; the care team's next request sees the difference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.consent import Consent

from cloud.twin import fhir
from tests.cloud.api.conftest import World

pytestmark = pytest.mark.integration
FHIR = {"Content-Type": "application/fhir+json"}


def _grant(patient: str, team: str, scopes: list[str], **provision: Any) -> dict[str, Any]:
    """A Consent as a FHIR client would write it (the shape GET /fhir/Consent gives back, without ids)."""
    return {
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{fhir.fhir_id(patient)}"},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {"type": "permit",
                      "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                                      "code": "IRCP"}]},
                                 "reference": {"identifier": {"system": fhir.CARE_TEAM_SYSTEM, "value": team}}}],
                      "provision": [{"type": "permit", "code": [{"coding": [{"system": fhir.CONSENT_SCOPE_SYSTEM,
                                                                            "code": s}]}]} for s in scopes],
                      **provision},
    }


def _observations(client: TestClient, world: World, patient: str) -> int:
    response = client.get("/fhir/Observation", params={"patient": patient}, headers=world.headers["clinician"])
    assert response.status_code == 200, response.text
    return len(response.json()["entry"])


def test_a_patient_grants_and_revokes_through_fhir(client: TestClient, world: World) -> None:
    patient = world.patients["own"]
    mine = {**world.headers["patient"], **FHIR}
    assert _observations(client, world, patient) == 0  # no consent to the team yet
    end = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    created = client.post("/fhir/Consent", json=_grant(patient, world.team, ["readings", "alerts"],
                                                       period={"end": end.isoformat()}), headers=mine)
    assert created.status_code == 201, created.text
    consent = Consent.model_validate(created.json())
    assert consent.status == "active" and consent.provision.period.end == end
    assert created.headers["Location"].endswith(f"/fhir/Consent/{consent.id}")
    assert sorted(p.code[0].coding[0].code for p in consent.provision.provision) == ["alerts", "readings"]
    listed = client.get(f"/v1/patients/{patient}/consents", headers=world.headers["patient"]).json()["consents"]
    assert any(c["care_team_id"] == world.team and c["scopes"] == ["alerts", "readings"] for c in listed)
    assert _observations(client, world, patient) > 0  # the care team's next request sees the readings

    # Read-modify-write, as FHIR clients update: the resource as read, with status inactive.
    read = client.get(f"/fhir/Consent/{consent.id}", headers=world.headers["patient"]).json()
    revoked = client.put(f"/fhir/Consent/{consent.id}", json={**read, "status": "inactive"}, headers=mine)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "inactive" and "end" in revoked.json()["provision"]["period"]
    assert _observations(client, world, patient) == 0
    again = client.put(f"/fhir/Consent/{consent.id}", json={**read, "status": "inactive"}, headers=mine)
    assert again.json()["provision"]["period"]["end"] == revoked.json()["provision"]["period"]["end"]  # first kept


def test_what_the_consent_rules_refuse_is_an_operation_outcome(client: TestClient, world: World) -> None:
    patient = world.patients["own"]
    mine = {**world.headers["patient"], **FHIR}
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    refused = [
        (_grant(patient, world.team, ["readings"]), world.headers["clinician"], 404),  # not the patient's own
        (_grant(world.patients["other"], world.team, ["readings"]), mine, 404),  # someone else's record
        (_grant(patient, "no-such-team", ["readings"]), mine, 422),
        (_grant(patient, world.team, []), mine, 422),
        (_grant(patient, world.team, ["everything"]), mine, 422),
        (_grant(patient, world.team, ["readings"], period={"end": past}), mine, 422),
        (_grant(patient, world.team, ["readings"], period={"start": later}), mine, 422),
        ({**_grant(patient, world.team, ["readings"]), "status": "inactive"}, mine, 422),
        ({**_grant(patient, world.team, ["readings"]), "status": "maybe"}, mine, 422),
        ({**_grant(patient, world.team, ["readings"]), "patient": "Patient/x"}, mine, 400),  # not R4: a string
        ({"resourceType": "Patient"}, mine, 400),
        ([1, 2], mine, 400),
    ]
    for body, headers, status in refused:
        response = client.post("/fhir/Consent", json=body, headers={**headers, **FHIR})
        assert response.status_code == status, (body, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
    two_teams = _grant(patient, world.team, ["readings"])
    two_teams["organization"] = [{"identifier": {"system": fhir.CARE_TEAM_SYSTEM, "value": world.other_team}}]
    assert client.post("/fhir/Consent", json=two_teams, headers=mine).status_code == 422
    # Updating: only revocation, only one's own.
    created = client.post("/fhir/Consent", json=_grant(patient, world.team, ["twin"]), headers=mine).json()
    assert client.put(f"/fhir/Consent/{created['id']}", json=created, headers=mine).status_code == 422  # still active
    assert client.put(f"/fhir/Consent/{created['id']}", json={**created, "id": "consent-1", "status": "inactive"},
                      headers=mine).status_code == 400
    assert client.put("/fhir/Consent/consent-999999999", json={**created, "status": "inactive"},
                      headers=mine).status_code == 404
    other = {**world.headers["clinician"], **FHIR}
    assert client.put(f"/fhir/Consent/{created['id']}", json={**created, "status": "inactive"},
                      headers=other).status_code == 404
