"""Webhooks signed per Standard Webhooks, checked with the reference implementation (the
``standardwebhooks`` package), never with our own signing code; the old header for one release."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from cloud.alerts import service
from cloud.alerts.channels import deliveries_of
from cloud.alerts.channels.webhooks import new_secret
from cloud.alerts.delivery import SIGNATURE_HEADER, Backoff, deliver_due, verify
from gateway.contract import Alert
from tests.cloud.alerts.channel_servers import HttpEndpoint
from tests.cloud.alerts.scripted_patient import add_patient, alerts_in, bp, ingest
from tests.cloud.alerts.webhook_receiver import FAST
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(fresh_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_database_url, autocommit=True) as connection:
        yield connection


def crisis(conn: psycopg.Connection, patient_id: str) -> str:
    cuff = add_patient(conn, patient_id)["blood_pressure"]
    [opened] = alerts_in(ingest(conn, [bp(cuff, datetime.now(UTC), 200, 110)], patient_id))
    return opened.alert_id


def deliver(conn: psycopg.Connection) -> int:
    with httpx.Client(timeout=2) as http:
        return deliver_due(conn, http=http, backoff=FAST).delivered


def test_whsec_secret_verifies_with_the_reference_implementation(conn, unique_id):
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    with HttpEndpoint([204]) as endpoint:
        service.add_webhook(conn, endpoint.url, secret)
        alert_id = crisis(conn, unique_id)
        assert deliver(conn) == 1
    [(headers, body)] = endpoint.received
    payload = Webhook(secret).verify(body, headers)
    assert (payload["alert_id"], payload["status"]) == (alert_id, "open")
    assert Alert.model_validate_json(body).rule == "bp_crisis"
    assert abs(int(headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 60
    # The old header still verifies (one release), keyed with the secret as written.
    assert verify(secret, body, headers[SIGNATURE_HEADER])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b'"open"', b'"resolved"'), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_a_secret_from_before_the_standard_is_the_key_as_raw_bytes(conn, unique_id):
    legacy = "an-old-secret-" + unique_id
    with HttpEndpoint([200]) as endpoint:
        service.add_webhook(conn, endpoint.url, legacy)
        crisis(conn, unique_id)
        assert deliver(conn) == 1
    [(headers, body)] = endpoint.received
    Webhook(legacy.encode()).verify(body, headers)
    assert verify(legacy, body, headers[SIGNATURE_HEADER])


def test_a_retry_keeps_the_webhook_id_and_signs_afresh(conn, unique_id):
    secret = new_secret()
    with HttpEndpoint([503, 204]) as endpoint:
        service.add_webhook(conn, endpoint.url, secret)
        alert_id = int(crisis(conn, unique_id))
        assert deliver(conn) == 0
        wait_until(lambda: deliver(conn) == 1, what="the retried webhook")
    first, second = endpoint.received
    assert first[0]["webhook-id"] == second[0]["webhook-id"]
    for headers, body in (first, second):
        Webhook(secret).verify(body, headers)
    [delivery] = deliveries_of(conn, alert_id)
    assert [(a["outcome"], a["error"]) for a in delivery["attempts"]] == [("failed", "http: HTTP 503"),
                                                                          ("sent", None)]
    assert delivery["status"] == "sent" and delivery["channel"] == "webhook"


def test_410_gone_stops_the_retries(conn, unique_id):
    with HttpEndpoint([410]) as endpoint:
        service.add_webhook(conn, endpoint.url, new_secret())
        alert_id = int(crisis(conn, unique_id))
        with httpx.Client(timeout=2) as http:
            report = deliver_due(conn, http=http, backoff=FAST)
    assert report.failed == 1 and len(endpoint.received) == 1
    assert deliveries_of(conn, alert_id)[0]["status"] == "failed"


def test_a_pass_slowed_past_half_its_lease_gives_the_rest_back_unsent(conn, unique_id):
    short = Backoff(base_s=0.05, max_s=0.2, max_attempts=5, lease_s=1.0)
    with HttpEndpoint([204], delay_s=0.6) as endpoint:
        service.add_webhook(conn, endpoint.url, new_secret())
        alert_ids = [int(crisis(conn, f"{unique_id}-{n}")) for n in range(3)]
        with httpx.Client(timeout=2) as http:
            first = deliver_due(conn, http=http, backoff=short)
            assert first.delivered == 1 and len(endpoint.received) == 1
            rows = conn.execute("SELECT attempts, next_attempt_at <= now() FROM alert_deliveries"
                                " WHERE delivered_at IS NULL ORDER BY id").fetchall()
            assert rows == [(0, True), (0, True)]  # given back as never tried, due at once
            assert conn.execute("SELECT count(*) FROM delivery_attempts").fetchone()[0] == 1
            wait_until(lambda: deliver_due(conn, http=http, backoff=short).delivered == 0
                       and len(endpoint.received) == 3, what="the rest sent by later passes")
    assert sorted(d["status"] for a in alert_ids for d in deliveries_of(conn, a)) == ["sent"] * 3
    assert len({h["webhook-id"] for h, _ in endpoint.received}) == 3
