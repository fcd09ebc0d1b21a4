"""Benchmark: reading -> alert committed, at 2 000 readings/s offered by two writer connections.

Measures the store + in-transaction hooks (twin and alerts) + commit path that ingest runs per batch,
on the real PostgreSQL, with a patient population that has 14 days of history (so the baseline and
average rules have data to read). Latency is from the moment a batch is due (its place in the
2 000/s schedule) to its commit, so falling behind shows up as latency. Ingest's MQTT and ack
round trips are not included (``rpm-sim load`` through the whole pipeline measures those).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import time
from datetime import timedelta

import numpy as np
import psycopg
import pytest

from tests.cloud.alerts.bench_writer import run_writer
from tests.cloud.alerts.scripted_patient import add_patient, bp, insert_readings, now

pytestmark = pytest.mark.bench

PATIENTS = 400
RATE = float(os.environ.get("RPM_BENCH_RATE", "2000"))
"""Offered readings/s (the issue asks for 2 000); lower it to find the latency below saturation."""
BATCH = 100
DURATION_S = 6.0
WRITERS = 2


@pytest.mark.timeout(900)
def test_reading_to_alert_committed_latency_at_2000_readings_per_second(fresh_database_url):
    rng = random.Random(7)
    t0 = now()
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        cuffs = {}
        for i in range(PATIENTS):
            pid = f"bench{i:04d}"
            cuffs[pid] = add_patient(conn, pid)["blood_pressure"]
        with conn.transaction():
            for pid, cuff in cuffs.items():  # 14 days of morning/evening history, no hooks needed
                insert_readings(conn, [bp(cuff, t0 - timedelta(days=d, hours=h), rng.gauss(125, 6), 80)
                                       for d in range(1, 15) for h in (2, 12)], pid)

    # Writers are processes, as ingest workers are (threads would share one GIL).
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    total_batches = int(DURATION_S * RATE / BATCH)
    start = time.time() + 3.0  # time for the processes to start
    # Each writer has its own patients (their gateways' messages), as the shared subscription splits them.
    shares = [{p: c for i, (p, c) in enumerate(sorted(cuffs.items())) if i % WRITERS == k} for k in range(WRITERS)]
    writers = [context.Process(target=run_writer, args=(fresh_database_url, shares[k], start,
                                                        list(range(k, total_batches, WRITERS)), BATCH, RATE, k,
                                                        results))
               for k in range(WRITERS)]
    for w in writers:
        w.start()
    latencies = []
    for _ in writers:
        try:
            latencies += results.get(timeout=300)
        except queue.Empty:
            raise AssertionError(f"a writer died: exit codes {[w.exitcode for w in writers]}") from None
    for w in writers:
        w.join(30)
    elapsed = time.time() - start
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        opened = conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
    ms = np.array(latencies) * 1000
    print(f"\nreading->alert committed: {len(latencies) * BATCH} readings in {elapsed:.1f} s"
          f" ({len(latencies) * BATCH / elapsed:.0f}/s offered {RATE}/s, batches of {BATCH},"
          f" {WRITERS} writer processes);"
          f" batch latency p50 {np.percentile(ms, 50):.0f} ms, p99 {np.percentile(ms, 99):.0f} ms,"
          f" max {ms.max():.0f} ms; alerts opened {opened}")
    assert len(latencies) == total_batches and opened > 0
