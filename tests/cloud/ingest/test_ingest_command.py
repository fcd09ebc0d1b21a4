"""``rpm-cloud ingest --workers 2`` as real processes: both join the shared subscription, readings are
stored and acked, and SIGTERM stops the service cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.cloud.ingest.ingest_traffic import bp_reading
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def test_ingest_command_runs_workers_and_stops_on_sigterm(fresh_database_url, mqtt_broker, gateway,  # type: ignore[no-untyped-def]
                                                         unique_id) -> None:
    if not mqtt_broker.supports_v5:
        pytest.skip("several workers need a shared subscription (MQTT v5)")
    service = subprocess.Popen(
        [sys.executable, "-m", "cloud.cli", "ingest", "--workers", "2", "--client-id", f"svc-{unique_id}",
         "--database-url", fresh_database_url, "--mqtt-url", mqtt_broker.url],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        batches = []

        def everything_acked() -> bool:
            # Until both workers have subscribed, a batch may reach no one: publish another each round.
            batch = gateway.batch([bp_reading("ble:svc:01")])
            batches.append(batch)
            gateway.publish(batch)
            return len(gateway.acks) >= 10

        wait_until(everything_acked, timeout=30, what="the service acking")
        service.send_signal(signal.SIGTERM)
        output, _ = service.communicate(timeout=30)
        assert service.returncode == 0, output
        assert f"svc-{unique_id}-0" in output and f"svc-{unique_id}-1" in output
        acked = {a.batch_id for a in gateway.acks}
        with psycopg.connect(fresh_database_url) as conn:
            stored = {row[0] for row in conn.execute("SELECT batch_id FROM readings")}
        assert acked <= stored, "an ack went out for a batch that is not stored"
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(10)
