"""The load generator against the real broker, PostgreSQL and an ingest worker: it reports exactly
what it sent and what the database holds, and it delivers like a gateway (what the cloud never acked
is sent again, byte for byte)."""

from __future__ import annotations

import threading

import pytest

from firmware_sims.load import LoadPlan, _batch_payload, _iso, _SimulatedGateway, _templates, reading_ids, run_load
from gateway.contract import Batch, readings_topic


@pytest.mark.unit
def test_templates_stamped_per_message_are_valid_contract_batches() -> None:
    device_uid, templates = _templates("load-x-0001")
    readings = [t % {"id": f"{i:032x}", "seq": 200 + i, "measured": _iso(1.7e9), "received": _iso(1.7e9 + 3)}
                for i, t in enumerate(templates)]
    batch = Batch.model_validate_json(_batch_payload("load-x-0001", "b1", readings))
    assert [r.sequence for r in batch.readings] == list(range(200, 200 + len(templates)))
    assert {r.device.uid for r in batch.readings} == {device_uid}
    assert batch.readings[0].received_at.timestamp() == pytest.approx(1.7e9 + 3)


@pytest.mark.unit
def test_a_resent_batch_carries_the_very_readings_first_sent_and_ids_are_known_in_advance() -> None:
    plan = LoadPlan("x", "127.0.0.1", 1883, gateways=1, rate=1, duration_s=1, batch=5, processes=1, settle_s=0)
    gateway = _SimulatedGateway(plan, 0)
    first = gateway.readings(1, 5, 1.7e9)
    # Same id with other content would be an id conflict at ingest, not a harmless repeat.
    assert gateway.readings(1, 5, 1.7e9) == first
    batch = Batch.model_validate_json(_batch_payload(gateway.gateway_id, "b1", first))
    assert [r.id for r in batch.readings] == reading_ids(gateway.gateway_id, 5)
    assert len(set(reading_ids(gateway.gateway_id, 1000))) == 1000


@pytest.mark.unit
def test_each_simulated_gateway_can_log_in_as_itself() -> None:
    plan = LoadPlan("r1", "h", 1, gateways=2, rate=1, duration_s=1, batch=1, processes=1, settle_s=0,
                    username="{gateway_id}")
    assert plan.username_for(plan.gateway_id(1)) == "load-r1-0001"
    assert LoadPlan("r1", "h", 1, 1, 1, 1, 1, 1, 0, username="svc").username_for("load-r1-0000") == "svc"


def _ingest_settings(database_url: str, mqtt_broker):  # type: ignore[no-untyped-def]
    from cloud.settings import CloudSettings

    return CloudSettings(database_url=database_url, mqtt_url=mqtt_broker.url, ingest_batch_ms=20)


def load_through_a_worker(database_url: str, mqtt_broker, unique_id: str, **plan: object) -> tuple[LoadPlan, dict]:  # type: ignore[no-untyped-def]
    """Run the load generator against one real ingest worker on the test broker and database (either MQTT
    version: the generator asks the broker, as ingest does)."""
    from cloud.ingest.consumer import IngestWorker

    load = LoadPlan(run_id=unique_id, host=mqtt_broker.host, port=mqtt_broker.port, **plan)  # type: ignore[arg-type]
    with IngestWorker(_ingest_settings(database_url, mqtt_broker), client_id=f"ingest-{unique_id}") as worker:
        worker.wait_ready()
        return load, run_load(load, database_url)


@pytest.mark.integration
def test_load_run_reports_every_reading_stored_once(fresh_database_url, mqtt_broker, unique_id) -> None:  # type: ignore[no-untyped-def]
    _, report = load_through_a_worker(fresh_database_url, mqtt_broker, unique_id, gateways=3, rate=300,
                                      duration_s=1.0, batch=5, processes=2, settle_s=15)
    assert report["publishers_reported"] == 2
    assert report["readings_sent"] == 300 and report["batches_sent"] == 60
    assert report["stored"] == 300 and report["lost"] == 0 and report["duplicates"] == 0
    assert report["unexpected"] == 0 and report["lost_sample"] == []
    assert report["batches_acked"] == 60 and report["readings_accepted"] == 300 and report["readings_unacked"] == 0
    # Nothing went wrong, so nothing was sent twice: a re-send is a reaction to a fault, not load.
    assert report["resent"] == 0 and report["reconnects"] == 0
    assert report["publish_to_commit_ms"]["p99"] is not None and report["ack_latency_ms"]["p50"] is not None


@pytest.mark.integration
def test_load_run_against_the_demos_mqtt_3_broker(fresh_database_url, unique_id) -> None:  # type: ignore[no-untyped-def]
    """``rpm-sim load`` pointed at a running ``rpm-demo`` meets amqtt, which refuses MQTT v5: the
    generator falls back to 3.1.1 (it once sent nothing: every gateway waited for a CONNACK)."""
    from cloud.embedded import start_amqtt

    broker = start_amqtt()
    try:
        _, report = load_through_a_worker(fresh_database_url, broker, unique_id, gateways=2, rate=100,
                                             duration_s=1.0, batch=1, processes=1, settle_s=15)
    finally:
        broker.stop()
    assert report["publisher_errors"] == [] and report["readings_sent"] == 100
    assert report["stored"] == 100 and report["lost"] == 0 and report["duplicates"] == 0
    assert report["batches_acked"] == 100


@pytest.mark.integration
def test_readings_the_broker_dropped_are_sent_again_and_stored_once(fresh_database_url, mqtt_broker,  # type: ignore[no-untyped-def]
                                                                    unique_id) -> None:
    if not mqtt_broker.supports_v5:
        pytest.skip("the load generator speaks MQTT v5")
    import paho.mqtt.client as mqtt

    from cloud.ingest.consumer import IngestWorker

    plan = LoadPlan(run_id=unique_id, host=mqtt_broker.host, port=mqtt_broker.port, gateways=2, rate=100,
                    duration_s=2.0, batch=2, processes=1, settle_s=30, ack_timeout_s=1.5)
    # No ingest yet: the broker PUBACKs every batch and, with no session in the shared group, drops it.
    publishing = threading.Event()
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{unique_id}", protocol=mqtt.MQTTv5)
    watcher.on_message = lambda *_: publishing.set()
    watcher.connect(mqtt_broker.host, mqtt_broker.port, 30)
    watcher.subscribe(readings_topic(plan.gateway_id(0)), qos=0)
    watcher.loop_start()
    report: dict = {}
    runner = threading.Thread(target=lambda: report.update(run_load(plan, fresh_database_url)), daemon=True)
    try:
        runner.start()
        assert publishing.wait(30), "the load generator never published"
        with IngestWorker(_ingest_settings(fresh_database_url, mqtt_broker), client_id=f"ingest-{unique_id}") as w:
            w.wait_ready()
            runner.join(90)
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    assert report, "the load run did not finish"
    assert report["readings_sent"] == 200 and report["stored"] == 200
    assert report["lost"] == 0 and report["duplicates"] == 0 and report["readings_unacked"] == 0
    assert report["resent"] > 0, "what the broker dropped came back only because it was sent again"


@pytest.mark.integration
def test_load_run_with_patients_goes_through_the_twin_and_alert_hooks(fresh_database_url, mqtt_broker,  # type: ignore[no-untyped-def]
                                                                      unique_id) -> None:
    import psycopg

    plan, report = load_through_a_worker(fresh_database_url, mqtt_broker, unique_id, gateways=2, rate=100,
                                         duration_s=1.0, batch=1, processes=1, settle_s=15, patients=True)
    assert report["stored"] == 100 and report["lost"] == 0
    with psycopg.connect(fresh_database_url) as conn:
        per_patient = dict(conn.execute("SELECT patient_id, count(*) FROM readings GROUP BY 1").fetchall())
        events = dict(conn.execute("SELECT patient_id, count(*) FROM twin_events WHERE event_type = 'reading_added'"
                                   " GROUP BY 1").fetchall())
    assert per_patient == {plan.gateway_id(0): 50, plan.gateway_id(1): 50}
    assert events == per_patient  # every reading reached its patient's twin in ingest's transaction
