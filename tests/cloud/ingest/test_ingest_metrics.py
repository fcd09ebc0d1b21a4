"""Ingest's Prometheus metrics on the health port: what a scrape says after real messages went
through a real broker into the database, for a worker in-process and for ``--workers 2``. Each test
has a mosquitto of its own: on the shared one, workers of tests running beside it would take part of
the traffic (one shared subscription) and the counts would not be this test's."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud.ingest.health import HealthServer
from cloud.ingest.metrics import DEAD_LETTER_REASONS, ingest_registry, reason_class
from cloud.settings import CloudSettings
from tests.cloud.ingest.ingest_traffic import Gateway, bp_reading
from tests.cloud.ingest.test_ingest_sessions import IngestService
from tests.gateway.private_broker import PrivateMosquitto
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def of(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels`` (e.g. every worker)."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    own = PrivateMosquitto(tmp_path).start()
    yield own
    own.stop()


@pytest.fixture
def gateway(broker: PrivateMosquitto, unique_id: str) -> Iterator[Gateway]:
    gw = Gateway(broker.host, broker.port, f"gw-{unique_id}")
    yield gw
    gw.close()


def test_a_scrape_counts_stored_readings_replays_and_dead_letters_by_reason(  # type: ignore[no-untyped-def]
    fresh_database_url, broker, start_worker, gateway
) -> None:
    worker = start_worker(CloudSettings(database_url=fresh_database_url, mqtt_url=broker.url, ingest_batch_ms=20))
    registry = ingest_registry(lambda: [(worker.client_id, worker.metric_values())])
    server = HealthServer("127.0.0.1", 0, live=worker.healthy, ready=worker.ready, metrics=registry).start()
    try:
        batches = [gateway.batch([bp_reading("ble:metrics:01")]) for _ in range(3)]
        for batch in batches:
            gateway.publish(batch)
        gateway.publish(batches[0])  # a replay: acked again, stored once
        gateway.publish(b"not json")
        wait_until(lambda: len(gateway.acks) >= 4, what="three batches and the replay acked")
        wait_until(lambda: worker.stats.dead_letters >= 1, what="the dead letter written")

        samples = scrape(server.port)
        worker_label = ("worker", worker.client_id)
        assert samples[("rpm_ingest_readings_stored_total", (worker_label,))] == 3
        assert samples[("rpm_ingest_duplicates_total", (worker_label,))] == 1
        assert samples[("rpm_ingest_messages_total", (worker_label,))] == 5
        assert of(samples, "rpm_ingest_dead_letters_total", reason="not_json") == 1
        assert of(samples, "rpm_ingest_dead_letters_total") == 1
        assert {dict(ls)["reason"] for (n, ls) in samples if n == "rpm_ingest_dead_letters_total"} == set(
            DEAD_LETTER_REASONS
        )
        commits = samples[("rpm_ingest_commit_seconds_count", (worker_label,))]
        assert commits == samples[("rpm_ingest_commits_total", (worker_label,))] >= 1
        assert samples[("rpm_ingest_commit_seconds_bucket", (("le", "+Inf"), worker_label))] == commits
        assert samples[("rpm_ingest_commit_seconds_sum", (worker_label,))] > 0
        assert samples[("rpm_ingest_worker_ready", (worker_label,))] == 1
        assert samples[("rpm_ingest_worker_healthy", (worker_label,))] == 1
        assert samples[("rpm_ingest_queue_depth", (worker_label,))] == 0
    finally:
        server.stop()


def test_the_service_scrape_shows_every_worker(fresh_database_url, broker, gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    service = IngestService(fresh_database_url, broker.url, tmp_path / "locks", "--workers", "2")
    try:
        service.wait_ready()
        batches = [gateway.batch([bp_reading("ble:metrics:svc")]) for _ in range(40)]
        for batch in batches:
            gateway.publish(batch)
        wait_until(
            lambda: {b.batch_id for b in batches} <= {a.batch_id for a in gateway.acks},
            timeout=30,
            what="every batch acked",
        )
        with psycopg.connect(fresh_database_url) as conn:
            stored = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        # Workers copy their counters every 0.2 s: wait for the scrape to catch up with the database.
        samples = wait_until(
            lambda: (s := scrape(service.health_port)) and of(s, "rpm_ingest_readings_stored_total") == stored and s,
            what="the scrape to show every stored reading",
        )
        workers = {dict(ls)["worker"] for (n, ls) in samples if n == "rpm_ingest_worker_ready"}
        assert len(workers) == 2 and all(w.endswith(("-0", "-1")) for w in workers)
        assert of(samples, "rpm_ingest_worker_ready") == 2
        assert of(samples, "rpm_ingest_commit_seconds_count") >= 1
        assert service.stop() == 0
    finally:
        if service.process.poll() is None:
            service.kill()


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("not JSON: Expecting value: line 1 column 1 (char 0)", "not_json"),
        ("readings[0] invalid: values.systolic: Field required", "invalid_reading"),
        ("invalid batch: readings: Field required", "invalid_batch"),
        ("batch gateway_id 'a' does not match the topic's gateway 'b'", "gateway_mismatch"),
        ("payload of 300000 bytes exceeds the contract's 262144 (first 4096 bytes kept)", "oversize"),
        ("invalid gateway status: uptime_s: Input should be greater than or equal to 0", "invalid_status"),
        ("not stored: DataError: value out of range", "not_stored"),
        ("something new", "other"),
    ],
)
def test_dead_letter_reasons_fall_into_a_bounded_set_of_labels(reason: str, label: str) -> None:
    assert reason_class(reason) == label
