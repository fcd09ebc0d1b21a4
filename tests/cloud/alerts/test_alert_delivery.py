"""Delivery: webhooks signed with HMAC-SHA256 and retried from the outbox until the endpoint is back;
MQTT messages for changes made outside ingest (an acknowledgement) sent from the same outbox."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest

from cloud.alerts import service
from cloud.alerts.delivery import SIGNATURE_HEADER, Backoff, deliver_due, verify
from cloud.alerts.scheduler import mqtt_publisher
from gateway.contract import Alert, alerts_topic
from tests.cloud.alerts.scripted_patient import add_patient, alerts_in, bp, ingest, now
from tests.cloud.alerts.webhook_receiver import FAST, Receiver, free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(fresh_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_database_url, autocommit=True) as connection:
        yield connection


def test_webhook_endpoint_down_gets_the_alert_after_it_recovers(conn, unique_id):
    port = free_port()  # nothing listens here yet: the endpoint is down
    secret = "whsec-" + unique_id
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    service.add_webhook(conn, f"http://127.0.0.1:{port}/hook", secret)
    [opened] = alerts_in(ingest(conn, [bp(cuff, now(), 200, 110)], unique_id))

    with httpx.Client(timeout=2) as http:
        report = deliver_due(conn, http=http, backoff=FAST)
        assert (report.delivered, report.retrying) == (0, 1)
        row = conn.execute("SELECT attempts, last_error, delivered_at FROM alert_deliveries").fetchone()
        assert row[0] == 1 and "Connect" in row[1] and row[2] is None

        receiver = Receiver(port)
        try:
            wait_until(lambda: deliver_due(conn, http=http, backoff=FAST).delivered == 1)
            assert deliver_due(conn, http=http, backoff=FAST).delivered == 0  # sent once, not again
        finally:
            receiver.stop()
    [(headers, body)] = receiver.received
    assert verify(secret, body, headers[SIGNATURE_HEADER])
    assert not verify("wrong", body, headers[SIGNATURE_HEADER])
    alert = Alert.model_validate_json(body)
    assert (alert.alert_id, alert.status, alert.rule) == (opened.alert_id, "open", "bp_crisis")
    attempts, delivered = conn.execute("SELECT attempts, delivered_at FROM alert_deliveries").fetchone()
    assert attempts >= 2 and delivered is not None


def test_delivery_gives_up_after_the_last_attempt(conn, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    service.add_webhook(conn, f"http://127.0.0.1:{free_port()}/hook", "s")
    ingest(conn, [bp(cuff, now(), 200, 110)], unique_id)
    two = Backoff(base_s=0.01, max_s=0.01, max_attempts=2, lease_s=5)
    with httpx.Client(timeout=1) as http:
        assert deliver_due(conn, http=http, backoff=two).retrying == 1
        wait_until(lambda: deliver_due(conn, http=http, backoff=two).failed == 1)
    failed_at, attempts = conn.execute("SELECT failed_at, attempts FROM alert_deliveries").fetchone()
    assert failed_at is not None and attempts == 2


def test_acknowledgement_is_published_on_the_alerts_topic_from_the_outbox(conn, unique_id, mqtt_broker):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    [opened] = alerts_in(ingest(conn, [bp(cuff, now(), 200, 110)], unique_id))
    service.acknowledge(conn, int(opened.alert_id), "nurse.joy")

    got: list[bytes] = []
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(mqtt_broker.host, mqtt_broker.port)
    sub.loop_start()
    client = None
    try:
        sub.subscribe(alerts_topic(unique_id), qos=1)
        assert subscribed.wait(5)
        client, publish = mqtt_publisher(mqtt_broker.url, None, None)
        with httpx.Client() as http:
            assert deliver_due(conn, http=http, publish=publish, backoff=FAST).delivered == 1
        wait_until(lambda: len(got) == 1)
    finally:
        sub.loop_stop()
        sub.disconnect()
        if client is not None:
            client.loop_stop()
            client.disconnect()
    message = json.loads(got[0])
    assert (message["alert_id"], message["status"]) == (opened.alert_id, "acknowledged")
