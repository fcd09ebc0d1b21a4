"""FHIR R4 endpoints validated with fhir.resources (R4B models: Bundle, Patient, Observation and Flag
are the same in R4 and R4B for what we emit)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient

from tests.cloud.alerts.scripted_patient import add_patient, ingest, make_reading
from tests.cloud.api.conftest import World

pytestmark = pytest.mark.integration


def _search(client: TestClient, world: World, **params: object) -> dict:
    response = client.get("/fhir/Observation", params={"patient": f"Patient/{world.patients['consented']}", **params},
                          headers=world.headers["clinician"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    Bundle.model_validate(body)
    return body


def _codes(resource: dict) -> set[str]:
    return {c["code"] for c in resource["code"]["coding"]}


def test_patient_resource_validates(client: TestClient, world: World) -> None:
    patient_id = world.patients["consented"]
    body = client.get(f"/fhir/Patient/{patient_id}", headers=world.headers["clinician"]).json()
    patient = Patient.model_validate(body)
    assert patient.identifier[0].value == patient_id and patient.gender == "female"


def test_observation_search_by_code_is_a_valid_searchset(client: TestClient, world: World) -> None:
    panels = _search(client, world, code="85354-9")
    assert panels["type"] == "searchset" and panels["total"] == 7
    for entry in panels["entry"]:
        observation = Observation.model_validate(entry["resource"])
        assert {c.code.coding[0].code for c in observation.component} >= {"8480-6", "8462-4"}
        assert entry["fullUrl"].endswith(f"/fhir/Observation/{entry['resource']['id']}")
        assert entry["search"]["mode"] == "match"
    glucose = _search(client, world, code="http://loinc.org|41653-7")
    assert glucose["total"] == 6 and all("41653-7" in _codes(e["resource"]) for e in glucose["entry"])
    pulses = _search(client, world, code="8867-4")
    assert pulses["total"] == 7  # the pulse of each cuff reading, its own heart-rate Observation
    both = _search(client, world, code="41653-7,29463-7")
    assert both["total"] == 12


def test_observation_search_by_date_prefixes(client: TestClient, world: World) -> None:
    now = datetime.now(UTC)
    recent = _search(client, world, date=f"ge{(now - timedelta(minutes=30)).isoformat()}")
    # Only the crisis cuff reading: its panel and its pulse.
    assert recent["total"] == 2
    day = (now - timedelta(days=3, hours=2)).date().isoformat()
    on_day = _search(client, world, code="29463-7", date=f"eq{day}")
    assert on_day["total"] >= 1
    assert all(e["resource"]["effectiveDateTime"][:10] == day for e in on_day["entry"])
    window = _search(client, world, date=["gt2000-01", "lt2000-02"])
    assert window["total"] == 0


def test_bad_search_parameters_are_400_operation_outcomes(client: TestClient, world: World) -> None:
    headers = world.headers["clinician"]
    patient = f"Patient/{world.patients['consented']}"
    for params in ({"date": "yesterday"}, {"date": "ne2020-01-01"}, {"code": "http://snomed.info/sct|123"},
                   {"date": "2020-13-01"}):
        response = client.get("/fhir/Observation", params={"patient": patient, **params}, headers=headers)
        assert response.status_code == 400, params
        assert response.headers["content-type"].startswith("application/fhir+json")
        assert OperationOutcome.model_validate(response.json()).issue[0].code == "invalid"
    assert client.get("/fhir/Observation", headers=headers).status_code == 422  # patient is required


def test_everything_holds_patient_devices_observations_and_flags(client: TestClient, world: World) -> None:
    patient_id = world.patients["consented"]
    body = client.get(f"/fhir/Patient/{patient_id}/$everything", headers=world.headers["clinician"]).json()
    bundle = Bundle.model_validate(body)
    kinds = [e.resource.__resource_type__ for e in bundle.entry]
    assert kinds[0] == "Patient"
    # Cuff, scale and meter, and the gateway that relayed their readings (each Observation's gatewayDevice).
    assert kinds.count("Device") == 4
    assert kinds.count("Observation") == 7 * 2 + 6 + 6  # panel + pulse per cuff reading, weights, glucose
    flags = [e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == "Flag"]
    assert len(flags) == 1 and Flag.model_validate(flags[0]).status == "active"


def test_everything_pages_through_observations_by_link_next(client: TestClient, world: World) -> None:
    patient_id = world.patients["consented"]
    headers = world.headers["clinician"]
    whole = client.get(f"/fhir/Patient/{patient_id}/$everything", headers=headers).json()
    expected = [e["resource"]["id"] for e in whole["entry"] if e["resource"]["resourceType"] == "Observation"]
    url: str | None = f"/fhir/Patient/{patient_id}/$everything?_count=5"
    pages, seen = [], []
    while url:
        response = client.get(url, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        Bundle.model_validate(body)
        pages.append(body)
        resources = [e["resource"] for e in body["entry"]]
        observations = [r for r in resources if r["resourceType"] == "Observation"]
        assert len(observations) <= 5 + 5  # five measurements, and at most one coincident timestamp each
        seen += [r["id"] for r in observations]
        # Every gateway an Observation names is in the same page.
        devices = {f"Device/{r['id']}" for r in resources if r["resourceType"] == "Device"}
        for observation in observations:
            for extension in observation.get("extension", []):
                if extension["url"].endswith("observation-gatewayDevice"):
                    assert extension["valueReference"]["reference"] in devices
        url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
        assert ("total" in body) == (len(pages) == 1 and url is None)
    assert len(pages) == -(-len(expected) // 5)  # 26 Observations: 6 pages
    assert seen == expected  # newest first, each exactly once, nothing left out
    kinds = [[e["resource"]["resourceType"] for e in page["entry"]] for page in pages]
    assert kinds[0][0] == "Patient" and "Flag" in kinds[0]
    assert all("Patient" not in k and "Flag" not in k for k in kinds[1:])
    bad = client.get(f"/fhir/Patient/{patient_id}/$everything?_cursor=nonsense", headers=headers)
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


def test_everything_leaves_out_flags_without_the_alerts_scope(client: TestClient, world: World) -> None:
    patient_id = world.patients["readings_only"]
    body = client.get(f"/fhir/Patient/{patient_id}/$everything", headers=world.headers["clinician"]).json()
    assert {e["resource"]["resourceType"] for e in body["entry"]} == {"Patient", "Device", "Observation"}


def test_a_thermometers_site_is_the_observations_body_site(client: TestClient, world: World,
                                                           conn: psycopg.Connection) -> None:
    patient = world.patients["own"]
    with conn.transaction():
        devices = add_patient(conn, f"{patient}-thermo", kinds=("body_temperature",))
        conn.execute("UPDATE device_assignments SET patient_id = %s WHERE device_uid = %s",
                     (patient, devices["body_temperature"]))
    at = datetime.now(UTC) - timedelta(hours=1)
    ear = make_reading(devices["body_temperature"], "body_temperature", at, {"body_temperature": 37.4})
    ingest(conn, [ear.model_copy(update={"body_site": "ear"})], patient)
    response = client.get("/fhir/Observation", params={"patient": f"Patient/{patient}", "code": "8310-5"},
                          headers=world.headers["patient"])
    assert response.status_code == 200, response.text
    (entry,) = response.json()["entry"]
    observation = Observation.model_validate(entry["resource"])
    assert observation.bodySite.coding[0].code == "117590005" and observation.bodySite.text == "ear"
