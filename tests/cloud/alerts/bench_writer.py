"""One benchmark writer process: stores its share of the scheduled batches and applies the effects, as
an ingest worker does, and reports each batch's latency (from when it was due to its commit)."""

from __future__ import annotations

import random
import time
from typing import Any

import psycopg

from cloud.effects import apply_new_readings
from tests.cloud.alerts.scripted_patient import bp, insert_for_patients, now


def run_writer(database_url: str, cuffs: dict[str, str], start: float, batches: list[int], batch_size: int,
               rate: float, seed: int, results: Any) -> None:
    rng = random.Random(seed)
    patients = sorted(cuffs)
    latencies = []
    with psycopg.connect(database_url) as conn:
        for b in batches:
            due = start + b * batch_size / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)  # the offered load's schedule, not synchronisation
            chosen = rng.sample(patients, batch_size)
            pairs = [(bp(cuffs[p], now(), 190 if rng.random() < 0.02 else rng.gauss(125, 8), 80), p) for p in chosen]
            with conn.transaction():
                apply_new_readings(conn, insert_for_patients(conn, pairs), now())
            latencies.append(time.time() - due)
    results.put(latencies)
