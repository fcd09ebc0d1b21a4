"""The FHIR server surface: ``/fhir/metadata`` says exactly what the routes serve, and every error under
``/fhir`` is an ``OperationOutcome`` (fhir+json) while ``/v1`` keeps problem+json."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from cloud.api.app import create_app
from cloud.api.problems import FHIR_JSON, PROBLEM_SYSTEM
from cloud.settings import CloudSettings
from tests.cloud.api.conftest import DEV_KEY, World


@pytest.fixture(scope="module")
def shell() -> TestClient:
    # No lifespan, so no database: metadata and the OpenAPI document need none.
    return TestClient(create_app(CloudSettings(jwt_dev_key=DEV_KEY)))


def assert_outcome(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    outcome = OperationOutcome.model_validate(body)
    assert outcome.issue and all(issue.severity == ("fatal" if status >= 500 else "error") for issue in outcome.issue)
    assert outcome.issue[0].code == code, body
    assert outcome.issue[0].diagnostics
    assert response.headers["x-request-id"]
    return body


@pytest.mark.unit
def test_metadata_is_an_open_valid_capability_statement(shell: TestClient) -> None:
    response = shell.get("/fhir/metadata")  # no token: it holds no patient data
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    statement = CapabilityStatement.model_validate(response.json())
    assert statement.fhirVersion == "4.0.1" and statement.kind == "instance"
    assert set(statement.format) == {"json", FHIR_JSON}
    assert statement.implementation.url.endswith("/fhir")
    (rest,) = statement.rest
    assert rest.mode == "server"
    assert rest.security.service[0].coding[0].code == "OAuth" and "bearer" in rest.security.description


def _fhir_routes(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {path: item["get"] for path, item in document["paths"].items() if path.startswith("/fhir/")}


@pytest.mark.unit
def test_metadata_describes_exactly_the_routes(shell: TestClient) -> None:
    """Each interaction, operation and search parameter the statement names is served, and each FHIR route
    is named: a route added without its line in the statement (or the other way round) fails here."""
    rest = shell.get("/fhir/metadata").json()["rest"][0]
    routes = _fhir_routes(shell.get("/openapi.json").json())
    described = {"/fhir/metadata"}
    for resource in rest["resource"]:
        kind = resource["type"]
        for interaction in resource.get("interaction", []):
            path = {"read": f"/fhir/{kind}/{{{kind.lower()}_id}}", "search-type": f"/fhir/{kind}",
                    "create": f"/fhir/{kind}", "update": f"/fhir/{kind}/{{{kind.lower()}_id}}"}[interaction["code"]]
            assert path in routes, (kind, interaction)
            method = {"create": "post", "update": "put"}.get(interaction["code"], "get")
            assert method in shell.get("/openapi.json").json()["paths"][path], (kind, interaction)
            described.add(path)
            if interaction["code"] == "search-type":
                served = {p["name"] for p in routes[path].get("parameters", []) if p["in"] == "query"}
                assert {p["name"] for p in resource["searchParam"]} <= served, kind
        for operation in resource.get("operation", []):
            # An instance-level operation (Patient/{id}/$everything) or a type-level one (Patient/$export).
            paths = {f"/fhir/{kind}/{{{kind.lower()}_id}}/${operation['name']}", f"/fhir/{kind}/${operation['name']}"}
            assert paths & set(routes), (kind, operation)
            described |= paths & set(routes)
            if operation["name"] == "export":
                # The Bulk Data IG's status and file URLs are the server's own choice: an export names them.
                bulk = ("/fhir/$export-status/", "/fhir/$export-file/")
                described |= {path for path in routes if path.startswith(bulk)}
    assert set(routes) == described


@pytest.mark.unit
def test_fhir_errors_are_documented_as_operation_outcomes(shell: TestClient) -> None:
    document = shell.get("/openapi.json").json()
    for path, operation in _fhir_routes(document).items():
        for status, response in operation["responses"].items():
            if not status.startswith("2"):
                assert list(response["content"]) == [FHIR_JSON], (path, status)
    schema = document["components"]["schemas"]["OperationOutcome"]
    assert set(schema["required"]) == {"resourceType", "issue"}


@pytest.mark.integration
def test_fhir_errors_are_operation_outcomes(client: TestClient, world: World) -> None:
    clinician = world.headers["clinician"]
    assert_outcome(client.get(f"/fhir/Patient/{world.patients['consented']}"), 401, "login")
    assert_outcome(
        client.get(f"/fhir/Patient/{world.patients['own']}", headers=world.headers["gateway"]), 403, "forbidden"
    )
    missing = assert_outcome(client.get("/fhir/Patient/no-such-patient", headers=clinician), 404, "not-found")
    assert missing["issue"][0]["details"]["coding"] == [{"system": PROBLEM_SYSTEM, "code": "not-found"}]
    hidden = assert_outcome(client.get(f"/fhir/Patient/{world.patients['other']}", headers=clinician), 404, "not-found")
    assert hidden == missing  # a hidden patient answers like a missing one
    assert_outcome(client.get("/fhir/Nothing", headers=clinician), 404, "not-found")
    assert_outcome(client.post("/fhir/Observation", headers=clinician), 405, "not-supported")
    bad_date = client.get(
        "/fhir/Observation", params={"patient": world.patients["consented"], "date": "soon"}, headers=clinician
    )
    assert "soon" in assert_outcome(bad_date, 400, "invalid")["issue"][0]["diagnostics"]


@pytest.mark.integration
def test_a_validation_error_is_one_issue_per_field(client: TestClient, world: World) -> None:
    response = client.get("/fhir/Observation", params={"_count": "many"}, headers=world.headers["clinician"])
    body = assert_outcome(response, 422, "invalid")
    assert {tuple(issue["expression"]) for issue in body["issue"]} == {("patient",), ("_count",)}


@pytest.mark.integration
def test_v1_errors_stay_problem_json(client: TestClient, world: World) -> None:
    response = client.get(f"/v1/patients/{world.patients['other']}", headers=world.headers["clinician"])
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
