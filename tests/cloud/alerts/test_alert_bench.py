"""Benchmark: reading -> alert committed, at 2 000 readings/s offered by two writer connections.

Measures the store + in-transaction hooks (twin and alerts) + commit path that ingest runs per batch,
on the real PostgreSQL, with a patient population that has 14 days of history (so the baseline and
average rules have data to read). Latency is from the moment a batch is due (its place in the
2 000/s schedule) to its commit, so falling behind shows up as latency. Ingest's MQTT and ack
round trips are not included (``rpm-sim load`` through the whole pipeline measures those).
"""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta

import numpy as np
import psycopg
import pytest
from scripted_patient import add_patient, bp, insert_for_patients, insert_readings, now

from cloud.hooks import run_in_transaction_hooks

pytestmark = pytest.mark.bench

PATIENTS = 400
RATE = 2000
BATCH = 100
DURATION_S = 6.0
WRITERS = 2


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

    patients = list(cuffs)
    latencies: list[float] = []
    alerts_before = 0
    lock = threading.Lock()
    start = time.monotonic() + 0.5
    total_batches = int(DURATION_S * RATE / BATCH)

    def writer(k: int) -> None:
        local_rng = random.Random(k)
        with psycopg.connect(fresh_database_url) as conn:
            for b in range(k, total_batches, WRITERS):
                due = start + b * BATCH / RATE
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the offered load's schedule, not synchronisation
                chosen = local_rng.sample(patients, BATCH)
                readings = [(pid, bp(cuffs[pid], now(), 190 if local_rng.random() < 0.02 else
                                     local_rng.gauss(125, 8), 80)) for pid in chosen]
                with conn.transaction():
                    stored = insert_for_patients(conn, [(reading, pid) for pid, reading in readings])
                    run_in_transaction_hooks(conn, stored)
                with lock:
                    latencies.append(time.monotonic() - due)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(WRITERS)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - max(began, start)
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        opened = conn.execute("SELECT count(*) FROM alerts").fetchone()[0] - alerts_before
    ms = np.array(latencies) * 1000
    print(f"\nreading->alert committed: {len(latencies) * BATCH} readings in {elapsed:.1f} s"
          f" ({len(latencies) * BATCH / elapsed:.0f}/s offered {RATE}/s, batches of {BATCH}, {WRITERS} writers);"
          f" batch latency p50 {np.percentile(ms, 50):.0f} ms, p99 {np.percentile(ms, 99):.0f} ms,"
          f" max {ms.max():.0f} ms; alerts opened {opened}")
    assert len(latencies) == total_batches and opened > 0
