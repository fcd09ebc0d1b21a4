"""Ingest benchmarks (``pytest -m bench tests/bench/test_ingest_bench.py -s``): real mosquitto with the
deploy queueing config, real PostgreSQL, ``rpm-cloud ingest --workers N`` as real processes, and
``rpm-sim load`` publishers; each scenario prints the load generator's JSON report.

Durations default to 10 s to keep a run short; ``RPM_BENCH_DURATION=60`` runs the issue's 60 s.
Loss and duplicates are asserted (correctness); throughput and latency are printed, not asserted,
because they depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from firmware_sims.load import LoadPlan, run_load

_REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800)]
DURATION = float(os.environ.get("RPM_BENCH_DURATION", "10"))


@pytest.fixture(scope="module")
def bench_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    from cloud.embedded import free_port, mosquitto_binary, wait_for_port

    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("needs the mosquitto binary")
    deploy = (_REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    queueing = deploy[deploy.index("# --- queueing"):deploy.index("# --- end queueing")]
    port = free_port()
    config = tmp_path_factory.mktemp("bench-mosquitto") / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                      + ("user root\n" if os.geteuid() == 0 else "") + queueing)
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, 10, "bench mosquitto")
    yield "127.0.0.1", port
    process.terminate()
    process.wait(10)


@pytest.fixture
def ingest_service(bench_broker, fresh_database_url: str) -> Iterator[Callable[[int], None]]:  # type: ignore[no-untyped-def]
    """Start ``rpm-cloud ingest --workers N`` and wait until it answers a probe batch."""
    started: list[subprocess.Popen[bytes]] = []
    host, port = bench_broker

    def start(workers: int) -> None:
        command = [sys.executable, "-m", "cloud.cli", "ingest", "--workers", str(workers),
                   "--client-id", f"bench-{uuid.uuid4().hex[:6]}", "--database-url", fresh_database_url,
                   "--mqtt-url", f"mqtt://{host}:{port}"]
        started.append(subprocess.Popen(command, cwd=_REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # Ready when every worker has subscribed: probe until a run of 20 messages is all stored.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            probe = LoadPlan(uuid.uuid4().hex[:6], host, port, gateways=1, rate=40 * workers, duration_s=0.5,
                             batch=1, processes=1, settle_s=2)
            if run_load(probe, fresh_database_url).get("lost") == 0:
                return
        raise AssertionError("ingest did not come up")

    yield start
    for process in started:
        process.terminate()
        process.wait(30)


def run(bench_broker, url: str, *, gateways: int, rate: float, batch: int, processes: int,  # type: ignore[no-untyped-def]
        label: str, patients: bool = False) -> dict:
    host, port = bench_broker
    plan = LoadPlan(uuid.uuid4().hex[:8], host, port, gateways=gateways, rate=rate, duration_s=DURATION,
                    batch=batch, processes=processes, settle_s=120, patients=patients,
                    # Offered far past what ingest stores, acks come tens of seconds after the commit:
                    # a gateway-like 30 s timeout would re-send a quarter of the run and measure that.
                    ack_timeout_s=120)
    report = run_load(plan, url)
    report["scenario"] = label
    print(f"\nBENCH {label}: {json.dumps(report)}")
    assert report["publishers_reported"] == processes
    assert report["lost"] == 0 and report["duplicate_rows"] == 0
    return report


@pytest.mark.parametrize("workers", [1, 2])
def test_single_reading_messages_throughput(bench_broker, ingest_service, fresh_database_url, workers) -> None:  # type: ignore[no-untyped-def]
    ingest_service(workers)
    rate = float(os.environ.get("RPM_BENCH_SINGLE_RATE", "20000"))
    run(bench_broker, fresh_database_url, gateways=40, rate=rate, batch=1, processes=3,
        label=f"single-reading messages, target {rate:.0f}/s, {workers} worker(s)")


def test_batched_messages_throughput(bench_broker, ingest_service, fresh_database_url) -> None:  # type: ignore[no-untyped-def]
    ingest_service(int(os.environ.get("RPM_BENCH_WORKERS", "1")))
    rate = float(os.environ.get("RPM_BENCH_BATCHED_RATE", "100000"))
    run(bench_broker, fresh_database_url, gateways=40, rate=rate, batch=50, processes=2,
        label=f"batched messages (50), target {rate:.0f} readings/s")


def test_latency_at_a_steady_rate(bench_broker, ingest_service, fresh_database_url) -> None:  # type: ignore[no-untyped-def]
    ingest_service(int(os.environ.get("RPM_BENCH_WORKERS", "1")))
    rate = float(os.environ.get("RPM_BENCH_LATENCY_RATE", "5000"))
    run(bench_broker, fresh_database_url, gateways=40, rate=rate, batch=1, processes=2,
        label=f"latency at {rate:.0f} readings/s (single-reading messages)")


def test_reading_to_alert_committed_through_ingest(bench_broker, ingest_service, fresh_database_url) -> None:  # type: ignore[no-untyped-def]
    """The alerts issue's figure as it asks for it: ``rpm-sim load`` with every cuff assigned to a patient,
    so each reading's commit includes the twin and the alert rules (publish -> commit is reading -> alert
    committed). Patients start without history: baseline rules stay quiet, thresholds and averages run."""
    ingest_service(int(os.environ.get("RPM_BENCH_WORKERS", "2")))
    rate = float(os.environ.get("RPM_BENCH_ALERT_RATE", "2000"))
    run(bench_broker, fresh_database_url, gateways=200, rate=rate, batch=1, processes=2, patients=True,
        label=f"reading -> alert committed through ingest at {rate:.0f} readings/s, 200 patients")
