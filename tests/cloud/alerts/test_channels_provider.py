"""The generic SMS/voice provider channel against a real HTTP server: the templated body, the bearer
token, and non-2xx answers recorded with their status and the start of the body."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import psycopg
import pytest

from cloud.alerts.channels import ChannelError, MessageError, deliveries_of, queue_message
from cloud.alerts.channels.provider import Provider, ProviderConfig
from cloud.alerts.channels.render import SMS_MAX
from cloud.alerts.delivery import deliver_due
from cloud.settings import get_settings
from tests.cloud.alerts.channel_servers import HttpEndpoint
from tests.cloud.alerts.scripted_patient import add_patient, alerts_in, bp, ingest
from tests.cloud.alerts.webhook_receiver import FAST

pytestmark = pytest.mark.integration
TEMPLATE = '{"messages": [{"destination": {"number": "$to"}, "body": "$text", "tag": "$kind-$delivery_id"}]}'


@pytest.fixture
def conn(fresh_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_database_url, autocommit=True) as connection:
        yield connection


def crisis(conn: psycopg.Connection, patient_id: str, name: str) -> int:
    cuff = add_patient(conn, patient_id)["blood_pressure"]
    conn.execute("UPDATE patients SET display_name = %s WHERE id = %s", (name, patient_id))
    [opened] = alerts_in(ingest(conn, [bp(cuff, datetime.now(UTC), 186, 100)], patient_id))
    return int(opened.alert_id)


def queue_sms(conn, alert_id: int, *, audience: str = "care_team", kind: str = "alert", to: str = "+15550100",
              recipient: str = "dr.who") -> int:
    with conn.transaction():
        return queue_message(conn, channel="provider", address=to, alert=alert_id, recipient=recipient,
                             audience=audience, kind=kind, context={}, now=datetime.now(UTC),
                             public_url="https://rpm.example")


def deliver(conn, url: str, template: str = TEMPLATE, token: str | None = "tok-123"):
    with httpx.Client(timeout=2) as http:
        provider = Provider(ProviderConfig(url=url, token=token, template=template, timeout_s=2), http)
        return deliver_due(conn, http=http, backoff=FAST, provider=provider)


def test_the_provider_gets_the_templated_body_with_json_escaped_values(conn, unique_id):
    alert_id = crisis(conn, unique_id, 'Jo "JJ" O\'Neil\\')
    delivery_id = queue_sms(conn, alert_id)
    with HttpEndpoint([202]) as endpoint:
        assert deliver(conn, endpoint.url).delivered == 1
    [(headers, body)] = endpoint.received
    assert headers["Authorization"] == "Bearer tok-123"
    assert headers["Idempotency-Key"] == f"rpm-delivery-{delivery_id}"
    [message] = json.loads(body)["messages"]
    assert message["destination"] == {"number": "+15550100"}
    assert message["tag"] == f"alert-{delivery_id}"
    text = message["body"]
    assert 'Jo "JJ" O\'Neil\\' in text and "186/100 mmHg" in text and "mm[Hg]" not in text
    assert len(text) <= SMS_MAX and f"https://rpm.example/ui/#/alerts/{alert_id}?link=" in text
    assert deliveries_of(conn, alert_id)[0]["status"] == "sent"


def test_a_patient_text_goes_to_the_patient_without_a_link(conn, unique_id):
    alert_id = crisis(conn, unique_id, "Sam")
    queue_sms(conn, alert_id, audience="patient", kind="patient_repeat_reading", to="+15550199",
              recipient=f"patient:{unique_id}")
    with HttpEndpoint([200]) as endpoint:
        assert deliver(conn, endpoint.url, template='{"to": "$to", "text": "$text"}', token=None).delivered == 1
    [(headers, body)] = endpoint.received
    sent = json.loads(body)
    assert sent["to"] == "+15550199" and "repeat your blood pressure in 5 minutes" in sent["text"]
    assert "link=" not in sent["text"] and "Authorization" not in headers
    assert conn.execute("SELECT count(*) FROM alert_links").fetchone()[0] == 0
    [delivery] = deliveries_of(conn, alert_id)
    assert (delivery["audience"], delivery["recipient"], delivery["kind"]) == (
        "patient", f"patient:{unique_id}", "patient_repeat_reading")


def test_a_5xx_answer_is_recorded_with_status_and_body_excerpt_and_retried(conn, unique_id):
    alert_id = crisis(conn, unique_id, "Sam")
    queue_sms(conn, alert_id)
    with HttpEndpoint([503], body=b'{"error": "carrier   overloaded",\n "retry": true}' + b"x" * 500) as endpoint:
        report = deliver(conn, endpoint.url)
    assert (report.delivered, report.retrying) == (0, 1)
    [delivery] = deliveries_of(conn, alert_id)
    error = delivery["attempts"][0]["error"]
    assert error.startswith('http: provider answered HTTP 503: {"error": "carrier overloaded", "retry": true}')
    assert len(error) < 300 and delivery["status"] == "retrying"


def test_a_4xx_answer_gives_up_at_once(conn, unique_id):
    alert_id = crisis(conn, unique_id, "Sam")
    queue_sms(conn, alert_id)
    with HttpEndpoint([400], body=b'{"error": "invalid number"}') as endpoint:
        report = deliver(conn, endpoint.url)
    assert report.failed == 1
    assert "HTTP 400" in deliveries_of(conn, alert_id)[0]["last_error"]


def test_a_template_that_does_not_give_json_is_refused():
    with pytest.raises(ChannelError, match="does not give JSON"):
        ProviderConfig(url="http://127.0.0.1:9/", template='{"to": $to}')
    with pytest.raises(ChannelError, match=r"unknown placeholders \['phone'\]"):
        ProviderConfig(url="http://127.0.0.1:9/", template='{"to": "$phone"}')


@pytest.fixture
def environment(monkeypatch) -> Iterator[pytest.MonkeyPatch]:
    """Settings from the environment, as the scheduler reads them (``get_settings`` is cached)."""
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def test_a_broken_configured_template_fails_the_provider_rows_not_the_pass(conn, unique_id, environment):
    alert_id = crisis(conn, unique_id, "Sam")
    queue_sms(conn, alert_id)
    environment.setenv("RPM_PROVIDER_URL", "http://127.0.0.1:9/")
    environment.setenv("RPM_PROVIDER_TEMPLATE", '{"to": $to}')
    get_settings.cache_clear()
    with httpx.Client(timeout=2) as http:
        report = deliver_due(conn, http=http, backoff=FAST)
    assert report.failed == 1
    assert deliveries_of(conn, alert_id)[0]["last_error"].startswith("config: RPM_PROVIDER_TEMPLATE")


def test_bad_queue_requests_are_typed_errors(conn, unique_id):
    alert_id = crisis(conn, unique_id, "Sam")
    with pytest.raises(MessageError, match="not a message for the patient"):
        queue_sms(conn, alert_id, audience="patient", kind="alert")
    with pytest.raises(MessageError, match="no phone number"):
        queue_sms(conn, alert_id, to="  ")
    with pytest.raises(MessageError, match="does not exist"):
        queue_sms(conn, 10**12)
    with pytest.raises(MessageError, match="not one line"):
        queue_sms(conn, alert_id, to="+1555\r\nX-Injected: yes")
    with pytest.raises(MessageError, match="not an e-mail address"):
        queue_message(conn, channel="email", address="+15550100", alert=alert_id, recipient="r",
                      audience="care_team", kind="alert", context={}, now=datetime.now(UTC))
    with pytest.raises(MessageError, match="cannot carry"):
        queue_message(conn, channel="pigeon", address="x", alert=alert_id, recipient="r", audience="care_team",
                      kind="alert", context={}, now=datetime.now(UTC))
