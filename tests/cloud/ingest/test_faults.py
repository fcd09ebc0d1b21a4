"""Ingest under faults, against real processes: the database stopped mid-stream, a broker burst, two
workers sharing one gateway's stream."""

from __future__ import annotations

import threading

import psycopg
import pytest

from cloud.settings import CloudSettings
from tests.cloud.ingest.ingest_traffic import Gateway, bp_reading
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def stored_ids(url: str, gateway_id: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM readings WHERE gateway_id = %s", (gateway_id,))]



def test_database_stopped_and_restarted_mid_stream_loses_nothing(private_postgres, mqtt_broker, start_worker,
                                                                 gateway) -> None:
    # A small queue: while the database is away the broker, not the worker, holds the stream.
    settings = CloudSettings(database_url=private_postgres.url, mqtt_url=mqtt_broker.url, ingest_batch_ms=10,
                             ingest_queue_max=50)
    worker = start_worker(settings)
    batches = [gateway.batch([bp_reading("ble:fault:01"), bp_reading("ble:fault:02")]) for _ in range(150)]
    before, during = batches[:50], batches[50:]
    for batch in before:
        gateway.publish(batch)
    wait_until(lambda: worker.stats.messages >= len(before), what="the first part stored")
    private_postgres.stop()
    for batch in during:  # each publish waits for the broker's PUBACK: the broker takes the stream
        gateway.publish(batch)
    wait_until(lambda: worker.stats.database_errors > 0, timeout=20, what="the worker noticing the outage")
    acked_during_outage = len({a.batch_id for a in gateway.acks})
    assert acked_during_outage < len(batches), "nothing is acked while the database is away"
    assert worker._queue.qsize() <= 50 and worker.subscribed.is_set(), "bounded, and still connected"
    private_postgres.start()
    wait_until(lambda: len({a.batch_id for a in gateway.acks}) == len(batches), timeout=30, what="every ack")

    expected = {r.id for b in batches for r in b.readings}
    ids = stored_ids(private_postgres.url, gateway.gateway_id)
    assert len(ids) == len(expected) and set(ids) == expected


def test_burst_of_20000_qos1_messages_is_stored_without_loss(ingest_settings, deploy_broker, start_worker,
                                                            unique_id) -> None:
    gateway_ids = [f"gw-{unique_id}-{i}" for i in range(4)]
    broker = deploy_broker(["ingest", *gateway_ids])
    settings = ingest_settings.model_copy(update={
        "mqtt_url": broker.url, "mqtt_username": "ingest", "mqtt_password": broker.passwords["ingest"]})
    worker = start_worker(settings)
    gateways = [Gateway(broker.host, broker.port, g, password=broker.passwords[g]) for g in gateway_ids]
    try:
        per_gateway = 5000
        # One reading per message, each its own id (model_copy skips re-validating 20 000 readings);
        # each gateway its own cuff (a device speaks through the one gateway it is bound to).
        payloads = {gw.gateway_id: [
            gw.batch([template.model_copy(update={"id": f"{n:04x}{i:028x}"})]).model_dump_json()
            for template in [bp_reading(f"ble:burst:{n}")] for i in range(per_gateway)]
            for n, gw in enumerate(gateways)}

        def burst(gw: Gateway) -> None:
            infos = [gw.client.publish(f"rpm/v1/gw/{gw.gateway_id}/readings", p, qos=1)
                     for p in payloads[gw.gateway_id]]
            for info in infos:
                info.wait_for_publish(60)

        threads = [threading.Thread(target=burst, args=(gw,)) for gw in gateways]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        wait_until(lambda: worker.stats.messages >= 4 * per_gateway, timeout=60, what="the whole burst")
        with psycopg.connect(settings.database_url) as conn:
            stored = conn.execute("SELECT count(DISTINCT id) FROM readings WHERE gateway_id = ANY(%s)",
                                  (gateway_ids,)).fetchone()[0]  # type: ignore[index]
        assert stored == 4 * per_gateway
        assert worker.stats.dead_letters == 0
    finally:
        for gw in gateways:
            gw.close()


def test_two_workers_on_one_interleaved_gateway_store_no_duplicates(ingest_settings, mqtt_broker, start_worker,
                                                                   gateway) -> None:
    if not mqtt_broker.supports_v5:
        pytest.skip("two workers need a shared subscription (MQTT v5)")
    first, second = start_worker(ingest_settings), start_worker(ingest_settings)
    readings = [bp_reading("ble:pair:01") for _ in range(400)]
    # Every reading goes out twice in different batches, so both workers see copies of the same ids.
    batches = [gateway.batch(readings[i:i + 20]) for i in range(0, 400, 20)]
    batches += [gateway.batch(list(reversed(readings[i:i + 20]))) for i in range(10, 390, 20)]
    for batch in batches:
        gateway.publish(batch)
    wait_until(lambda: len({a.batch_id for a in gateway.acks}) == len(batches), timeout=30, what="every ack")
    ids = stored_ids(ingest_settings.database_url, gateway.gateway_id)
    assert sorted(ids) == sorted(r.id for r in readings)
    with psycopg.connect(ingest_settings.database_url) as conn:
        per_reading = conn.execute("SELECT count(*) FROM observations WHERE reading_id = ANY(%s)",
                                   ([r.id for r in readings],)).fetchone()[0]  # type: ignore[index]
    assert per_reading == 3 * len(readings)
    assert first.stats.messages > 0 and second.stats.messages > 0, "the shared subscription split the load"
