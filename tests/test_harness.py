"""The harness itself: the services it hands out are real and isolated."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import psycopg
import pytest

pytestmark = pytest.mark.integration


def test_database_is_migrated_and_private(database_url: str, fresh_database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions and versions[0] == "0001"
    with psycopg.connect(fresh_database_url) as fresh:
        fresh.execute("INSERT INTO patients (id) VALUES ('only-here')")
        fresh.commit()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM patients WHERE id = 'only-here'").fetchone() == (0,)


def test_broker_delivers_qos1(mqtt_broker, unique_id: str) -> None:
    topic = f"rpm/v1/gw/{unique_id}/readings"
    received = threading.Event()
    protocol = mqtt.MQTTv5 if mqtt_broker.supports_v5 else mqtt.MQTTv311

    def on_message(client, userdata, message):  # type: ignore[no-untyped-def]
        if message.payload == b"hello":
            received.set()

    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol, client_id=f"{unique_id}-s")
    subscriber.on_message = on_message
    subscriber.connect(mqtt_broker.host, mqtt_broker.port)
    subscriber.subscribe(topic, qos=1)
    subscriber.loop_start()
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol, client_id=f"{unique_id}-p")
    publisher.connect(mqtt_broker.host, mqtt_broker.port)
    publisher.loop_start()
    try:
        deadline = threading.Event()
        for _ in range(50):  # the subscription may not be active on the first publish
            publisher.publish(topic, b"hello", qos=1).wait_for_publish(5)
            if received.wait(0.1) or deadline.is_set():
                break
        assert received.is_set()
    finally:
        publisher.loop_stop()
        subscriber.loop_stop()
        publisher.disconnect()
        subscriber.disconnect()
