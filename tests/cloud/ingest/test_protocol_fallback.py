"""Brokers that differ: one that refuses MQTT v5 (amqtt, some managed brokers), where ingest falls back
to 3.1.1 on the plain topic filter and still stores and acks; one that enforces its Receive Maximum."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import psycopg
import pytest

from cloud.settings import CloudSettings
from gateway.contract import Batch, readings_topic
from tests.cloud.ingest.ingest_traffic import Gateway, bp_reading
from tests.strict_broker import StrictBroker
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def test_ingest_falls_back_to_311_where_v5_is_refused(fresh_database_url: str, start_worker, unique_id) -> None:  # type: ignore[no-untyped-def]
    from cloud.embedded import EmbeddedServiceError, start_amqtt

    try:
        broker = start_amqtt()
    except EmbeddedServiceError as err:
        pytest.skip(str(err))
    try:
        settings = CloudSettings(database_url=fresh_database_url, mqtt_url=broker.url, ingest_batch_ms=10)
        worker = start_worker(settings)
        assert worker.protocol == "3.1.1"
        gateway = Gateway(broker.host, broker.port, f"gw-{unique_id}", v5=False)
        try:
            batch = gateway.batch([bp_reading("ble:amqtt:01")])
            gateway.publish(batch)
            [ack] = wait_until(lambda: gateway.acks_for(batch.batch_id), what="the ack over 3.1.1")
            assert ack.accepted == [batch.readings[0].id]
        finally:
            gateway.close()
        with psycopg.connect(fresh_database_url) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone() == (1,)
    finally:
        broker.stop()


def test_ingest_acks_in_flight_stay_within_the_brokers_receive_maximum(  # type: ignore[no-untyped-def]
        fresh_database_url: str, start_worker, unique_id) -> None:
    """The broker never confirms an ack here, so every ack the worker sends stays in flight: it must
    stop at the Receive Maximum the broker advertised and keep the rest queued, not break the rule."""
    broker = StrictBroker(receive_maximum=4)
    try:
        settings = CloudSettings(database_url=fresh_database_url, mqtt_url=broker.url, ingest_batch_ms=10)
        worker = start_worker(settings)
        assert worker.protocol == "5"
        assert broker.subscribed.wait(10)
        gateway_id = f"gw-{unique_id}"
        for i in range(12):
            batch = Batch(gateway_id=gateway_id, batch_id=f"b-{i}", sent_at=datetime.now(UTC),
                          readings=[bp_reading(f"ble:strict:{i:02d}")])
            broker.deliver(readings_topic(gateway_id), batch.model_dump_json().encode())

        def stored() -> int:
            with psycopg.connect(fresh_database_url) as conn:
                return conn.execute("SELECT count(*) FROM readings").fetchone()[0]

        wait_until(lambda: stored() == 12, what="all twelve batches stored")
        wait_until(lambda: broker.received >= 4, what="the first acks")
        time.sleep(0.5)
        assert broker.received == 4
        assert broker.violations == []
    finally:
        broker.close()
