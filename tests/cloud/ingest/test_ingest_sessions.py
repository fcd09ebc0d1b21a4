"""``rpm-cloud ingest`` as real processes on the real broker: client ids that never take each other's
session, a persistent session that keeps what was published while the only worker was down, a
worker that cannot go on exits non-zero, and the health endpoint says so."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from cloud.embedded import free_port
from cloud.ingest.health import HealthServer
from tests.cloud.ingest.ingest_traffic import bp_reading
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def http_status(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


class IngestService:
    """``rpm-cloud ingest`` with default client-id options (only the database, broker and lock dir
    are set), its output collected as it runs."""

    def __init__(self, database_url: str, mqtt_url: str, lock_dir: Path, *extra: str) -> None:
        self.health_port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RPM_INGEST_LOCK_DIR": str(lock_dir)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cloud.cli", "ingest", "--database-url", database_url, "--mqtt-url", mqtt_url,
             "--health-port", str(self.health_port), *extra],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self) -> None:
        wait_until(lambda: http_status(self.health_port, "/readyz") == 200, timeout=30,
                   what=f"/readyz 200\n{self.output}")
        assert http_status(self.health_port, "/healthz") == 200

    def client_id(self) -> str:
        found = re.search(r"(\S+): consuming with MQTT", self.output)
        assert found, self.output
        return found.group(1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self._reader.join(5)

    def stored_by_worker(self) -> int:
        found = re.search(r"stopped: IngestStats\(.*readings_stored=(\d+), duplicates=(\d+)", self.output)
        assert found, self.output
        return int(found.group(1)) + int(found.group(2))


@pytest.fixture
def services(fresh_database_url, mqtt_broker, tmp_path):  # type: ignore[no-untyped-def]
    if not mqtt_broker.supports_v5:
        pytest.skip("sessions with an expiry and shared subscriptions need MQTT v5")
    started: list[IngestService] = []

    def start(*extra: str) -> IngestService:
        service = IngestService(fresh_database_url, mqtt_broker.url, tmp_path / "locks", *extra)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.process.poll() is None:
            service.kill()


def publish_and_wait(gateway, n: int) -> list:  # type: ignore[no-untyped-def]
    batches = [gateway.batch([bp_reading("ble:sessions:01")]) for _ in range(n)]
    for batch in batches:
        gateway.publish(batch)
    wait_until(lambda: {b.batch_id for b in batches} <= {a.batch_id for a in gateway.acks}, timeout=30,
               what="every batch acked")
    return batches


def test_two_instances_with_default_options_never_take_each_others_session(services, gateway) -> None:
    first, second = services(), services()
    first.wait_ready()
    second.wait_ready()
    assert first.client_id() != second.client_id()
    publish_and_wait(gateway, 60)
    assert first.stop() == 0 and second.stop() == 0
    for service in (first, second):
        assert "disconnected from the broker" not in service.output, service.output
    assert first.stored_by_worker() > 0 and second.stored_by_worker() > 0, "both kept consuming"


def test_readings_published_while_the_only_worker_is_down_are_stored_after_its_restart(
        services, gateway, fresh_database_url) -> None:
    service = services()
    service.wait_ready()
    client_id = service.client_id()
    publish_and_wait(gateway, 2)
    service.kill()  # SIGKILL: no clean disconnect, the broker keeps the session and queues into it
    missed = [gateway.batch([bp_reading("ble:sessions:02")]) for _ in range(20)]
    for batch in missed:
        gateway.publish(batch)  # the broker's PUBACK: it holds them now
    restarted = services()
    restarted.wait_ready()
    assert restarted.client_id() == client_id, "the same id comes back for its session"
    wait_until(lambda: {b.batch_id for b in missed} <= {a.batch_id for a in gateway.acks}, timeout=30,
               what="what was published during the outage acked")
    with psycopg.connect(fresh_database_url) as conn:
        stored = conn.execute("SELECT count(*) FROM readings WHERE batch_id = ANY(%s)",
                              ([b.batch_id for b in missed],)).fetchone()
    assert stored == (20,)
    assert restarted.stop() == 0


def test_a_worker_that_cannot_write_a_dead_letter_exits_non_zero(services, gateway, fresh_database_url) -> None:
    # A broken schema: the one thing a bad message needs (its dead letter) cannot be written.
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE dead_letters RENAME TO dead_letters_gone")
    service = services()
    service.wait_ready()
    gateway.publish(b"not json")
    assert service.process.wait(30) == 1, service.output
    assert "FAILED, needs a restart" in service.output and "exiting with status 1" in service.output


def test_a_schema_fault_never_rejects_good_readings_it_fails_the_worker(services, gateway,
                                                                        fresh_database_url) -> None:
    # A deployment whose schema is behind the code (a migration not applied): every insert fails.
    # Rejecting would make the gateway quarantine good readings for good; the worker fails instead
    # and the message stays with the broker for the worker that comes back.
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE readings RENAME COLUMN content_sha TO content_sha_gone")
    service = services()
    service.wait_ready()
    batch = gateway.batch([bp_reading("ble:sessions:schema")])
    gateway.publish(batch)
    assert service.process.wait(30) == 1, service.output
    assert "schema refuses" in service.output
    assert all(a.batch_id != batch.batch_id for a in gateway.acks), "no ack: not rejected, not accepted"
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE readings RENAME COLUMN content_sha_gone TO content_sha")
        assert conn.execute("SELECT reason FROM dead_letters WHERE batch_id = %s", (batch.batch_id,)).fetchall() == []
    restarted = services()
    restarted.wait_ready()
    wait_until(lambda: any(a.batch_id == batch.batch_id and a.accepted for a in gateway.acks), timeout=30,
               what="the reading stored once the schema is right")
    assert restarted.stop() == 0


def test_health_endpoint_reports_a_failed_worker(ingest_settings, start_worker, gateway) -> None:
    worker = start_worker(ingest_settings)
    server = HealthServer("127.0.0.1", 0, live=worker.healthy, ready=worker.ready).start()
    try:
        assert http_status(server.port, "/readyz") == 200 and http_status(server.port, "/healthz") == 200

        def broken_observer(result: object) -> None:
            raise RuntimeError("observer bug")

        worker.on_commit = broken_observer  # an error after the commit, outside any one message
        gateway.publish(gateway.batch([bp_reading("ble:health:01")]))
        wait_until(lambda: worker.failure, what="the worker marking itself failed")
        assert "observer bug" in (worker.failure or "")
        assert not worker.healthy() and not worker.ready()
        assert http_status(server.port, "/readyz") == 503 and http_status(server.port, "/healthz") == 503
        assert http_status(server.port, "/nothing") == 404
    finally:
        server.stop()
