"""The load generator against the real broker, PostgreSQL and an ingest worker: it reports exactly
what it sent and what the database holds."""

from __future__ import annotations

import pytest

from firmware_sims.load import LoadPlan, _batch_payload, _iso, _templates, run_load
from gateway.contract import Batch


@pytest.mark.unit
def test_templates_stamped_per_message_are_valid_contract_batches() -> None:
    device_uid, templates = _templates("load-x-0001")
    readings = [t % {"id": f"{i:032x}", "seq": 200 + i, "measured": _iso(1.7e9), "received": _iso(1.7e9 + 3)}
                for i, t in enumerate(templates)]
    batch = Batch.model_validate_json(_batch_payload("load-x-0001", "b1", readings))
    assert [r.sequence for r in batch.readings] == list(range(200, 200 + len(templates)))
    assert {r.device.uid for r in batch.readings} == {device_uid}
    assert batch.readings[0].received_at.timestamp() == pytest.approx(1.7e9 + 3)


def load_through_a_worker(database_url: str, mqtt_broker, unique_id: str, **plan: object) -> tuple[LoadPlan, dict]:  # type: ignore[no-untyped-def]
    """Run the load generator against one real ingest worker on the test broker and database."""
    if not mqtt_broker.supports_v5:
        pytest.skip("the load generator speaks MQTT v5")
    from cloud.ingest.consumer import IngestWorker
    from cloud.settings import CloudSettings

    settings = CloudSettings(database_url=database_url, mqtt_url=mqtt_broker.url, ingest_batch_ms=20)
    load = LoadPlan(run_id=unique_id, host=mqtt_broker.host, port=mqtt_broker.port, **plan)  # type: ignore[arg-type]
    with IngestWorker(settings, client_id=f"ingest-{unique_id}") as worker:
        worker.wait_ready()
        return load, run_load(load, database_url)


@pytest.mark.integration
def test_load_run_reports_every_reading_stored_once(fresh_database_url, mqtt_broker, unique_id) -> None:  # type: ignore[no-untyped-def]
    _, report = load_through_a_worker(fresh_database_url, mqtt_broker, unique_id, gateways=3, rate=300,
                                      duration_s=1.0, batch=5, processes=2, settle_s=15)
    assert report["publishers_reported"] == 2
    assert report["readings_sent"] == 300 and report["batches_sent"] == 60
    assert report["stored"] == 300 and report["lost"] == 0 and report["duplicate_rows"] == 0
    assert report["batches_acked"] == 60 and report["readings_accepted"] == 300
    assert report["publish_to_commit_ms"]["p99"] is not None and report["ack_latency_ms"]["p50"] is not None


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
