"""Health endpoints, Prometheus metrics, and RFC 9457 problem+json for every kind of error."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.cloud.api.conftest import World

pytestmark = pytest.mark.integration


def assert_problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["type"], str) and body["type"]
    assert body["instance"] == response.request.url.path
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    client.get("/v1/patients")
    text = client.get("/metrics").text
    assert 'rpm_api_requests_total{method="GET",route="/v1/patients",status="401"}' in text
    assert "rpm_api_request_seconds_bucket" in text


def test_missing_token_is_401_problem_with_challenge(client: TestClient) -> None:
    response = client.get("/v1/patients")
    body = assert_problem(response, 401)
    assert body["type"] == "/problems/unauthenticated"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_garbage_token_is_401_problem(client: TestClient) -> None:
    response = client.get("/v1/patients", headers={"Authorization": "Bearer not.a.jwt"})
    assert_problem(response, 401)


def test_validation_error_is_422_problem_listing_fields(client: TestClient, world: World) -> None:
    patient = world.patients["own"]
    response = client.get(f"/v1/patients/{patient}/readings", params={"limit": "many"},
                          headers=world.headers["patient"])
    body = assert_problem(response, 422)
    assert body["type"] == "/problems/validation"
    assert any(error["loc"][-1] == "limit" for error in body["errors"])


def test_unknown_route_is_404_problem(client: TestClient) -> None:
    assert_problem(client.get("/v1/nothing-here"), 404)


def test_request_id_is_echoed_when_given(client: TestClient) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.headers["server-timing"].startswith("app;dur=")


def test_gateway_token_is_403_problem(client: TestClient, world: World) -> None:
    assert_problem(client.get("/v1/patients", headers=world.headers["gateway"]), 403)


def test_alert_state_conflict_is_409_problem(client: TestClient, world: World) -> None:
    headers = world.headers["clinician"]
    alerts = client.get("/v1/alerts", params={"patient_id": world.patients["consented"], "status": "open"},
                        headers=headers).json()["alerts"]
    alert_id = alerts[0]["id"]
    assert client.post(f"/v1/alerts/{alert_id}/resolve", headers=headers).status_code == 200
    body = assert_problem(client.post(f"/v1/alerts/{alert_id}/acknowledge", headers=headers), 409)
    assert "resolved" in body["detail"]
