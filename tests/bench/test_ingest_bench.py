"""Ingest benchmarks (``pytest -m bench tests/bench/test_ingest_bench.py -s``): real mosquitto with the
deploy queueing config, real PostgreSQL, ``rpm-cloud ingest --workers N`` as real processes, and
``rpm-sim load`` publishers; each scenario prints the load generator's JSON report.

Durations default to 10 s to keep a run short; ``RPM_BENCH_DURATION=60`` runs the issue's 60 s.
Loss and duplicates are asserted (correctness); throughput and latency are printed, not asserted,
because they depend on the machine and on whatever else runs on it. So is the CPU each component spent
per stored reading (``cpu_us_per_reading``: ingest, its PostgreSQL backends, the broker, the load
generator; see ``tests/bench/cpu_cost.py``), the figure that carries to another machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from firmware_sims.load import LoadPlan, assign_patients, run_load
from tests.bench import plain_consumer
from tests.bench.cpu_cost import INGEST_APPLICATION, CpuMeter, postgres_finders, process_tree, with_application_name

_REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800)]
DURATION = float(os.environ.get("RPM_BENCH_DURATION", "10"))


class BenchBroker(NamedTuple):
    host: str
    port: int
    pid: int
    """The mosquitto process, whose CPU is the broker's share."""


@pytest.fixture(scope="module")
def bench_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchBroker]:
    from cloud.embedded import free_port, mosquitto_binary, wait_for_port

    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("needs the mosquitto binary")
    deploy = (_REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    queueing = deploy[deploy.index("# --- queueing") : deploy.index("# --- end queueing")]
    port = free_port()
    config = tmp_path_factory.mktemp("bench-mosquitto") / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        + ("user root\n" if os.geteuid() == 0 else "")
        + queueing
    )
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, 10, "bench mosquitto")
    yield BenchBroker("127.0.0.1", port, process.pid)
    process.terminate()
    process.wait(10)


@pytest.fixture
def ingest_service(
    bench_broker: BenchBroker, fresh_database_url: str
) -> Iterator[Callable[[int], subprocess.Popen[bytes]]]:
    """Start ``rpm-cloud ingest --workers N`` and wait until it answers a probe batch. Its database
    connections carry ``INGEST_APPLICATION``, so the CPU meter can tell its backends from the benchmark's."""
    started: list[subprocess.Popen[bytes]] = []
    host, port = bench_broker.host, bench_broker.port
    ingest_url = with_application_name(fresh_database_url, INGEST_APPLICATION)

    def start(workers: int) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "cloud.cli",
            "ingest",
            "--workers",
            str(workers),
            "--client-id",
            f"bench-{uuid.uuid4().hex[:6]}",
            "--database-url",
            ingest_url,
            "--mqtt-url",
            f"mqtt://{host}:{port}",
        ]
        started.append(subprocess.Popen(command, cwd=_REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until_storing(bench_broker, fresh_database_url, workers, "ingest")
        return started[-1]

    yield start
    for process in started:
        process.terminate()
        process.wait(30)


def wait_until_storing(bench_broker: BenchBroker, url: str, workers: int, what: str) -> None:
    """Ready when every worker has subscribed: probe until a run of 20 messages is all stored."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        probe = LoadPlan(
            uuid.uuid4().hex[:6],
            bench_broker.host,
            bench_broker.port,
            gateways=1,
            rate=40 * workers,
            duration_s=0.5,
            batch=1,
            processes=1,
            settle_s=2,
        )
        if run_load(probe, url).get("lost") == 0:
            return
    raise AssertionError(f"{what} did not come up")


def run(
    bench_broker: BenchBroker,
    url: str,
    ingest: subprocess.Popen[bytes],
    label: str,
    *,
    gateways: int,
    rate: float,
    batch: int,
    processes: int,
    patients: bool = False,
    application: str = INGEST_APPLICATION,
) -> dict:
    """One measured load run against the consumer ``ingest`` (its database connections named
    ``application``), readings counted in ``url``; prints and returns the report."""
    plan = LoadPlan(
        uuid.uuid4().hex[:8],
        bench_broker.host,
        bench_broker.port,
        gateways=gateways,
        rate=rate,
        duration_s=DURATION,
        batch=batch,
        processes=processes,
        settle_s=120,
        patients=patients,
        # Offered far past what ingest stores, acks come tens of seconds after the commit:
        # a gateway-like 30 s timeout would re-send a quarter of the run and measure that.
        ack_timeout_s=120,
    )
    if patients:
        # Before the CPU window: the assignment is set-up, and its process would count as the load generator's.
        assign_patients(url, plan)
        plan = replace(plan, patients=False)
    report = measured_load(plan, url, ingest.pid, bench_broker.pid, application)
    report["scenario"] = label
    print(f"\nBENCH {label}: {json.dumps(report)}")
    assert report["publishers_reported"] == processes
    assert report["cpu_processes"]["ingest"] >= 1 and report["cpu_processes"]["postgres_ingest"] >= 1
    assert report["lost"] == 0 and report["duplicate_rows"] == 0
    return report


def measured_load(plan: LoadPlan, url: str, ingest_pid: int, broker_pid: int, application: str) -> dict:
    """``run_load`` with the CPU each component spent per stored reading added to its report."""
    postgres_ingest, postgres_other, close = postgres_finders(url, application)
    meter = CpuMeter(
        {
            "ingest": lambda: process_tree(ingest_pid),
            "postgres_ingest": postgres_ingest,
            "postgres_other": postgres_other,
            "broker": lambda: [broker_pid],
        }
    )
    try:
        meter.start()
        try:
            report = run_load(plan, url)
        finally:
            meter.stop()
    finally:
        close()
    report.update(meter.report(report.get("stored") or 0, last_commit(url, plan)))
    return report


def last_commit(url: str, plan: LoadPlan) -> float | None:
    """When the run's last reading was stored (epoch seconds), where ``run_load`` counted it."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(stored_at)) FROM readings WHERE gateway_id LIKE %s",
            (f"load-{plan.run_id}-%",),
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


@pytest.mark.parametrize("workers", [1, 2])
def test_single_reading_messages_throughput(bench_broker, ingest_service, fresh_database_url, workers) -> None:  # type: ignore[no-untyped-def]
    ingest = ingest_service(workers)
    rate = float(os.environ.get("RPM_BENCH_SINGLE_RATE", "20000"))
    label = f"single-reading messages, target {rate:.0f}/s, {workers} worker(s)"
    run(bench_broker, fresh_database_url, ingest, label, gateways=40, rate=rate, batch=1, processes=3)


def test_batched_messages_throughput(bench_broker, ingest_service, fresh_database_url) -> None:  # type: ignore[no-untyped-def]
    ingest = ingest_service(int(os.environ.get("RPM_BENCH_WORKERS", "1")))
    rate = float(os.environ.get("RPM_BENCH_BATCHED_RATE", "100000"))
    label = f"batched messages (50), target {rate:.0f} readings/s"
    run(bench_broker, fresh_database_url, ingest, label, gateways=40, rate=rate, batch=50, processes=2)


def test_latency_at_a_steady_rate(bench_broker, ingest_service, fresh_database_url) -> None:  # type: ignore[no-untyped-def]
    ingest = ingest_service(int(os.environ.get("RPM_BENCH_WORKERS", "1")))
    rate = float(os.environ.get("RPM_BENCH_LATENCY_RATE", "5000"))
    label = f"latency at {rate:.0f} readings/s (single-reading messages)"
    run(bench_broker, fresh_database_url, ingest, label, gateways=40, rate=rate, batch=1, processes=2)


def test_reading_to_alert_committed_through_ingest(bench_broker, ingest_service, fresh_database_url) -> None:  # type: ignore[no-untyped-def]
    """The alerts issue's figure as it asks for it: ``rpm-sim load`` with every cuff assigned to a patient,
    so each reading's commit includes the twin and the alert rules (publish -> commit is reading -> alert
    committed). Patients start without history: baseline rules stay quiet, thresholds and averages run."""
    ingest = ingest_service(int(os.environ.get("RPM_BENCH_WORKERS", "2")))
    rate = float(os.environ.get("RPM_BENCH_ALERT_RATE", "2000"))
    label = f"reading -> alert committed through ingest at {rate:.0f} readings/s, 200 patients"
    run(bench_broker, fresh_database_url, ingest, label, gateways=200, rate=rate, batch=1, processes=2, patients=True)


def test_side_by_side_with_a_straightforward_consumer(bench_broker, ingest_service, fresh_database_url) -> None:  # type: ignore[no-untyped-def]
    """Issue 23, item 8: the same load (single-reading messages at a steady rate) first through
    ``tests/bench/plain_consumer.py`` (paho + psycopg, its own schema), then through ``rpm-cloud ingest``
    (1 worker), each run's CPU per reading printed, then both side by side. In that order: the plain
    consumer's session ends with it, while ingest's outlives its process and would take a share."""
    rate = float(os.environ.get("RPM_BENCH_SIDE_RATE", "2000"))
    plain_application = "rpm-bench-plain"
    same_load: dict[str, Any] = {"gateways": 40, "rate": rate, "batch": 1, "processes": 2}
    plain_consumer.create_schema(fresh_database_url)
    plain_url = plain_consumer.schema_url(fresh_database_url)
    command = [
        sys.executable,
        "-m",
        "tests.bench.plain_consumer",
        "--mqtt-url",
        f"mqtt://{bench_broker.host}:{bench_broker.port}",
        "--database-url",
        with_application_name(plain_url, plain_application),
    ]
    plain = subprocess.Popen(command, cwd=_REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_storing(bench_broker, plain_url, 1, "the plain consumer")
        label = f"straightforward consumer (paho + psycopg) at {rate:.0f} readings/s"
        theirs = run(bench_broker, plain_url, plain, label, application=plain_application, **same_load)
    finally:
        plain.terminate()
        plain.wait(30)
    ingest = ingest_service(1)
    label = f"rpm-cloud ingest, 1 worker, at {rate:.0f} readings/s (beside the straightforward consumer)"
    ours = run(bench_broker, fresh_database_url, ingest, label, **same_load)
    side = {
        component: {
            "ours": ours["cpu_us_per_reading"][component],
            "straightforward": theirs["cpu_us_per_reading"][component],
            "ratio": round(ours["cpu_us_per_reading"][component] / theirs["cpu_us_per_reading"][component], 2)
            if theirs["cpu_us_per_reading"][component]
            else None,
        }
        for component in ("ingest", "postgres_ingest", "broker")
    }
    print(f"\nBENCH side by side, CPU us per reading at {rate:.0f} readings/s: {json.dumps(side)}")
