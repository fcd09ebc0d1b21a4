"""``rpm-cloud scheduler --metrics-port``: a real scheduler process, a webhook endpoint that is down and
an acknowledgement sent over the real broker, then what a Prometheus scrape says; and its logs carry a
UTC timestamp and the process name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud.alerts import service
from cloud.embedded import free_port
from tests.cloud.alerts.scripted_patient import add_patient, alerts_in, bp, ingest, now
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def scrape(port: int) -> dict[str, float] | None:
    """``/metrics`` as {sample name with its labels: value}; None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    return {
        s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_scrape_counts_passes_published_alerts_and_failed_webhooks(
    fresh_database_url,
    mqtt_broker,  # type: ignore[no-untyped-def]
    unique_id,
    tmp_path: Path,
) -> None:
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        cuff = add_patient(conn, unique_id)["blood_pressure"]
        service.add_webhook(conn, f"http://127.0.0.1:{free_port()}/hook", "s")  # nothing listens: down
        [opened] = alerts_in(ingest(conn, [bp(cuff, now(), 200, 110)], unique_id))
        service.acknowledge(conn, int(opened.alert_id), "nurse.joy")  # an MQTT message, from the outbox
    port = free_port()
    log = (tmp_path / "scheduler.log").open("w+")
    env = {
        **os.environ,
        "RPM_DATABASE_URL": fresh_database_url,
        "RPM_MQTT_URL": mqtt_broker.url,
        "RPM_LOG_FORMAT": "plain",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cloud.cli", "scheduler", "--metrics-port", str(port), "--deliver-every", "0.2"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def counted() -> dict[str, float] | None:
            samples = scrape(port)
            if (
                samples
                and samples.get("rpm_scheduler_alerts_published_total", 0) >= 1
                and samples.get("rpm_scheduler_webhook_failures_total", 0) >= 1
            ):
                return samples
            return None

        samples = wait_until(counted, timeout=30, what="the acknowledgement published and the webhook failed")
        assert samples["rpm_scheduler_runs_total{job=missing_data}"] == 1
        assert samples["rpm_scheduler_runs_total{job=delivery}"] >= 1
        assert samples["rpm_scheduler_webhook_attempts_total"] >= samples["rpm_scheduler_webhook_failures_total"]
        assert samples["rpm_scheduler_mqtt_failures_total"] == 0
        assert samples["rpm_scheduler_loop_seconds_count"] >= samples["rpm_scheduler_runs_total{job=delivery}"] - 1
    finally:
        process.terminate()
        process.wait(10)
    log.seek(0)
    output = log.read()
    # The structured line format: ISO-8601 UTC time, level, process name and pid, logger.
    assert re.search(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO +scheduler\[\d+\] cloud\.alerts\.scheduler: "
        r"metrics: http://127\.0\.0\.1:\d+/metrics$",
        output,
        re.MULTILINE,
    ), output
