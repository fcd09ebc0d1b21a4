"""The channels in the API: a message's deep link opens the alert once for a signed-in care-team
member (never acknowledging it), and the alert detail lists every delivery with its attempts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from cloud.alerts.channels import links, queue_message
from cloud.alerts.channels.email import Mailer, SmtpConfig
from cloud.alerts.delivery import deliver_due
from cloud.api.app import create_app
from cloud.api.tokens import mint_token
from cloud.settings import CloudSettings
from tests.cloud.alerts.webhook_receiver import FAST, free_port
from tests.cloud.api.conftest import DEV_KEY, World, build_world

pytestmark = pytest.mark.integration
PUBLIC = "https://rpm.example"


@pytest.fixture
def settings(fresh_database_url: str) -> CloudSettings:
    # A database of its own: the delivery pass below takes every due row it finds.
    return CloudSettings(database_url=fresh_database_url, jwt_dev_key=DEV_KEY, api_pool_max=2)


@pytest.fixture
def client(settings: CloudSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def conn(fresh_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def world(conn: psycopg.Connection, unique_id: str, settings: CloudSettings) -> World:
    def auth(role: str, sub: str | None = None, care_teams: tuple[str, ...] = (), patient: str | None = None,
             ttl_s: int = 600) -> dict[str, str]:
        token = mint_token(settings, role=role, sub=sub or patient or f"{role}-user", care_teams=care_teams,
                           patient=patient, ttl_s=ttl_s)
        return {"Authorization": f"Bearer {token}"}

    w = build_world(conn, unique_id, auth)
    w.headers["other_team"] = auth("care_team", sub=f"{unique_id}-elsewhere", care_teams=(w.other_team,))
    return w


def alert_of(conn: psycopg.Connection, patient_id: str) -> int:
    return conn.execute("SELECT id FROM alerts WHERE patient_id = %s AND rule_id = 'bp_crisis'",
                        (patient_id,)).fetchone()[0]


def token_of(url: str) -> str:
    return url.rsplit("?link=", 1)[1]


def open_link(client: TestClient, token: str, headers: dict[str, str] | None):
    return client.post(f"/v1/alert-links/{token}/open", headers=headers or {})


def test_a_link_opens_once_and_never_acknowledges(client, conn, world, unique_id):
    patient = world.patients["consented"]
    alert_id = alert_of(conn, patient)
    url = links.create_link(conn, alert_id, f"{unique_id}-nurse", public_url=PUBLIC, now=datetime.now(UTC))
    assert url.startswith(f"{PUBLIC}/ui/#/alerts/{alert_id}?link=")
    token = token_of(url)

    first = open_link(client, token, world.headers["care_team"])
    assert first.status_code == 200, first.text
    assert first.json() == {"alert_id": alert_id, "patient_id": patient}
    second = open_link(client, token, world.headers["care_team"])
    assert second.status_code == 410 and second.headers["content-type"].startswith("application/problem+json")
    assert "used" in second.json()["detail"]
    status, acknowledged_at = conn.execute("SELECT status, acknowledged_at FROM alerts WHERE id = %s",
                                           (alert_id,)).fetchone()
    assert (status, acknowledged_at) == ("open", None)
    used_by = conn.execute("SELECT used_by FROM alert_links WHERE alert_id = %s", (alert_id,)).fetchone()[0]
    assert used_by == f"{unique_id}-nurse"
    audit = conn.execute("SELECT outcome, status, patient_ids, detail->>'alert_id' FROM audit_log"
                         " WHERE action = 'POST /v1/alert-links/{token}/open' AND subject = %s ORDER BY id",
                         (f"{unique_id}-nurse",)).fetchall()
    assert audit == [("allowed", 200, [patient], str(alert_id)), ("refused", 410, [patient], str(alert_id))]


def test_an_expired_link_is_gone(client, conn, world, unique_id):
    alert_id = alert_of(conn, world.patients["consented"])
    url = links.create_link(conn, alert_id, "nurse", public_url=PUBLIC,
                            now=datetime.now(UTC) - timedelta(hours=25))
    response = open_link(client, token_of(url), world.headers["clinician"])
    assert response.status_code == 410 and "expired" in response.json()["detail"]


def test_another_teams_member_cannot_open_or_use_up_the_link(client, conn, world, unique_id):
    alert_id = alert_of(conn, world.patients["consented"])
    token = token_of(links.create_link(conn, alert_id, "nurse", public_url=PUBLIC, now=datetime.now(UTC)))
    assert open_link(client, token, world.headers["other_team"]).status_code == 404
    assert open_link(client, token, world.headers["admin"]).status_code == 404
    assert open_link(client, token, world.headers["clinician"]).status_code == 200


def test_a_link_needs_a_signed_in_care_team_member(client, conn, world, unique_id):
    own = world.patients["own"]
    token = token_of(links.create_link(conn, alert_of(conn, own), "nurse", public_url=PUBLIC, now=datetime.now(UTC)))
    assert open_link(client, token, None).status_code == 401
    assert open_link(client, token, world.headers["patient"]).status_code == 403  # their own alert, not their link
    assert open_link(client, "x" * 43, world.headers["care_team"]).status_code == 404
    assert open_link(client, "not a token!", world.headers["care_team"]).status_code in (404, 422)
    assert conn.execute("SELECT used_at FROM alert_links").fetchone()[0] is None


def test_the_alert_detail_lists_each_delivery_with_its_attempts(client, conn, world, unique_id):
    alert_id = alert_of(conn, world.patients["consented"])
    with conn.transaction():
        delivery_id = queue_message(conn, channel="email", address="nurse@clinic.example", alert=alert_id,
                                    recipient=f"{unique_id}-nurse", audience="care_team", kind="alert", context={},
                                    now=datetime.now(UTC), public_url=PUBLIC)
    dead = Mailer(SmtpConfig(host="127.0.0.1", port=free_port(), security="none", timeout_s=2))
    with httpx.Client(timeout=2) as http:
        assert deliver_due(conn, http=http, backoff=FAST, mailer=dead).retrying == 1

    response = client.get(f"/v1/alerts/{alert_id}", headers=world.headers["care_team"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["history"] and body["id"] == alert_id
    [delivery] = [d for d in body["deliveries"] if d["id"] == delivery_id]
    assert (delivery["channel"], delivery["recipient"], delivery["address"], delivery["kind"]) == (
        "email", f"{unique_id}-nurse", "nurse@clinic.example", "alert")
    assert (delivery["status"], delivery["attempt_count"]) == ("retrying", 1)
    assert delivery["last_error"].startswith("refused: ")
    [attempt] = delivery["attempts"]
    assert attempt["attempt"] == 1 and attempt["outcome"] == "failed" and attempt["error"] == delivery["last_error"]
    assert attempt["duration_ms"] >= 0 and datetime.fromisoformat(attempt["at"])


@pytest.mark.parametrize("token", ["", " ", "a" * 5000, "%00", "..%2F..%2Fetc", "' OR 1=1 --", "😀", "A" * 19,
                                   "A" * 101, "null"])
def test_a_hostile_token_is_a_clear_4xx(client, settings, token):
    bearer = mint_token(settings, role="care_team", sub="nurse", care_teams=("some-team",))
    response = client.post(f"/v1/alert-links/{token}/open", headers={"Authorization": f"Bearer {bearer}"})
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
