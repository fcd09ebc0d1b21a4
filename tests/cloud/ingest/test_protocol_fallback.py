"""A broker that refuses MQTT v5 (amqtt, some managed brokers): ingest falls back to 3.1.1 on the plain
topic filter and still stores and acks."""

from __future__ import annotations

import psycopg
import pytest

from cloud.settings import CloudSettings
from tests.cloud.ingest.ingest_traffic import Gateway, bp_reading, wait_until

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
