"""deploy/mosquitto's ACLs on a real mosquitto: a gateway publishes only under its own id and reads only
its own acks; the ingest user reads the shared subscription and answers every gateway."""

from __future__ import annotations

import threading

import psycopg
import pytest

from gateway.contract import acks_topic, readings_topic
from tests.cloud.ingest.ingest_traffic import Gateway, bp_reading
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


def test_gateway_cannot_publish_or_read_acks_under_another_id(deploy_broker, ingest_settings, start_worker,
                                                             unique_id) -> None:
    mine, other = f"gw-{unique_id}-a", f"gw-{unique_id}-b"
    broker = deploy_broker(["ingest", mine, other])
    settings = ingest_settings.model_copy(update={
        "mqtt_url": broker.url, "mqtt_username": "ingest", "mqtt_password": broker.passwords["ingest"]})
    worker = start_worker(settings)
    gateway = Gateway(broker.host, broker.port, mine, password=broker.passwords[mine])
    try:
        # Mosquitto grants the subscription and enforces "read" on every delivery: A must not get B's ack.
        snooped: list[bytes] = []
        gateway.client.message_callback_add(acks_topic(other), lambda c, u, m: snooped.append(m.payload))
        subscribed = threading.Event()
        gateway.client.on_subscribe = lambda *a: subscribed.set()
        gateway.client.subscribe(acks_topic(other), qos=1)
        assert subscribed.wait(10)
        honest_other = Gateway(broker.host, broker.port, other, password=broker.passwords[other])
        try:
            theirs = honest_other.batch([bp_reading("ble:acl:00")])
            honest_other.publish(theirs)
            wait_until(lambda: honest_other.acks_for(theirs.batch_id), what="the other gateway's own ack")
        finally:
            honest_other.close()

        impostor = gateway.batch([bp_reading("ble:acl:01")])
        impostor = impostor.model_copy(update={"gateway_id": other})
        gateway.publish(impostor, topic=readings_topic(other))
        honest = gateway.batch([bp_reading("ble:acl:02")])
        gateway.publish(honest)
        wait_until(lambda: gateway.acks_for(honest.batch_id), what="the honest batch's ack")
        with psycopg.connect(settings.database_url) as conn:
            rows = conn.execute("SELECT gateway_id FROM readings ORDER BY gateway_id").fetchall()
            dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        assert rows == [(mine,), (other,)] and dead == (0,), "the broker dropped the impostor before ingest saw it"
        assert worker.stats.messages == 2
        assert snooped == [], "a gateway read another gateway's ack"
    finally:
        gateway.close()


def test_anonymous_clients_are_refused(deploy_broker) -> None:
    import paho.mqtt.client as mqtt

    broker = deploy_broker(["ingest"])
    result: list[bool] = []
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_connect(client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        result.append(reason_code.is_failure)
        done.set()

    client.on_connect = on_connect
    client.connect(broker.host, broker.port, 10)
    client.loop_start()
    try:
        assert done.wait(10)
    finally:
        client.loop_stop()
    assert result == [True]
