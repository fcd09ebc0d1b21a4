"""A scripted patient through the real pipeline: a gateway publishes batches on the real broker, the
real ingest worker stores them and runs the hooks, the alert is published on rpm/v1/alerts/{patient}
after commit and POSTed to a real local webhook endpoint from the delivery outbox.

normal week -> BP crisis -> one alert (MQTT + webhook) -> more highs -> same alert updated -> normal
readings -> resolved.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest

from cloud.alerts import service
from cloud.alerts.delivery import SIGNATURE_HEADER, deliver_due, verify
from cloud.ingest.consumer import IngestWorker
from cloud.settings import CloudSettings
from gateway.contract import Alert, Batch, Reading, alerts_topic, readings_topic
from tests.cloud.alerts.scripted_patient import add_patient, bp, normal_week, now
from tests.cloud.alerts.webhook_receiver import FAST, Receiver, free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


class AlertListener:
    def __init__(self, host: str, port: int, topic: str) -> None:
        self.alerts: list[Alert] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"care-{uuid.uuid4().hex[:8]}")
        self.client.on_message = lambda c, u, m: self.alerts.append(Alert.model_validate_json(m.payload))
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class GatewayPublisher:
    def __init__(self, host: str, port: int, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{gateway_id}-pub")
        self.client.connect(host, port)
        self.client.loop_start()

    def send(self, readings: list[Reading]) -> None:
        batch = Batch(gateway_id=self.gateway_id, batch_id=uuid.uuid4().hex[:16], sent_at=now(), readings=readings)
        self.client.publish(readings_topic(self.gateway_id), batch.model_dump_json(), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def conn(fresh_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_database_url, autocommit=True) as connection:
        yield connection


def test_scripted_patient_alerted_once_updated_and_resolved_through_the_real_pipeline(
        conn, fresh_database_url, mqtt_broker, unique_id):
    cuff = add_patient(conn, unique_id)["blood_pressure"]
    secret = f"whsec-{unique_id}"
    port = free_port()
    service.add_webhook(conn, f"http://127.0.0.1:{port}/rpm", secret, patient_id=unique_id)
    receiver = Receiver(port)
    listener = AlertListener(mqtt_broker.host, mqtt_broker.port, alerts_topic(unique_id))
    gateway = GatewayPublisher(mqtt_broker.host, mqtt_broker.port, f"gw-{unique_id}")
    settings = CloudSettings(database_url=fresh_database_url, mqtt_url=mqtt_broker.url, ingest_batch_ms=20)
    worker = IngestWorker(settings, client_id=f"ingest-{unique_id}")
    http = httpx.Client(timeout=2)

    def stored(readings: list[Reading]) -> bool:
        ids = [r.id for r in readings]
        return conn.execute("SELECT count(*) FROM readings WHERE id = ANY(%s)", (ids,)).fetchone()[0] == len(ids)

    def send(readings: list[Reading]) -> None:
        gateway.send(readings)
        wait_until(lambda: stored(readings))

    try:
        worker.start()
        worker.wait_ready()
        t = now()
        week = normal_week(cuff, t)
        send(week)
        assert service.list_alerts(conn, patient_id=unique_id) == [] and listener.alerts == []

        send([bp(cuff, t - timedelta(minutes=30), 188, 118)])
        wait_until(lambda: len(listener.alerts) == 1)
        [opened] = listener.alerts
        assert (opened.rule, opened.status, opened.severity, opened.value) == ("bp_crisis", "open", "critical", 188)
        wait_until(lambda: deliver_due(conn, http=http, backoff=FAST).delivered == 1)
        [(headers, body)] = receiver.received
        assert verify(secret, body, headers[SIGNATURE_HEADER])
        assert Alert.model_validate_json(body).alert_id == opened.alert_id

        send([bp(cuff, t - timedelta(minutes=20), 195, 124), bp(cuff, t - timedelta(minutes=15), 186, 110)])
        wait_until(lambda: len(listener.alerts) >= 3)
        assert {(a.alert_id, a.status) for a in listener.alerts[1:]} == {(opened.alert_id, "updated")}
        [row] = service.list_alerts(conn, patient_id=unique_id)
        assert row["trigger_count"] == 3 and row["status"] == "open"

        send([bp(cuff, t - timedelta(minutes=10), 126, 80)])
        send([bp(cuff, t - timedelta(minutes=5), 122, 78)])
        wait_until(lambda: listener.alerts[-1].status == "resolved")
        assert listener.alerts[-1].alert_id == opened.alert_id
        assert [a.status for a in listener.alerts].count("open") == 1, "the care team heard about it once"
        wait_until(lambda: deliver_due(conn, http=http, backoff=FAST).delivered == 1)
        statuses = [Alert.model_validate_json(b).status for _, b in receiver.received]
        assert statuses == ["open", "resolved"]
    finally:
        worker.stop(drain_timeout_s=1)
        gateway.close()
        listener.close()
        receiver.stop()
        http.close()
