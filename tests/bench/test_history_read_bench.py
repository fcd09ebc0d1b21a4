"""What the baselines' history read costs per value (issue 23: 129 µs of every reading on the alert path).

100 patients with 14 days of 5-minute blood pressure (four metrics: 1.6 M values) are read as one
batch's window, the way ingest's effects read it: the committed ``load_history`` (aggregated unordered,
sorted in numpy) beside the former statement that sorted every series three times in SQL, same data,
same run, alternating, median of five.

    .venv/bin/pytest -m bench -s -p no:cacheprovider tests/bench/test_history_read_bench.py
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from cloud.twin.baselines import load_history
from gateway.metrics import EXCLUDED_FLAGS

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800)]

PATIENTS, DAYS, METRICS = 100, 14, ("systolic", "diastolic", "mean_arterial", "pulse_rate")
SORTED_IN_SQL = """
    SELECT o.patient_id, o.metric,
           array_agg(extract(epoch FROM o.measured_at)::float8 ORDER BY o.measured_at, o.reading_id),
           array_agg(o.value ORDER BY o.measured_at, o.reading_id),
           array_agg(o.reading_id ORDER BY o.measured_at, o.reading_id)
      FROM observations o
     WHERE o.patient_id = ANY(%s) AND o.metric = ANY(%s) AND o.measured_at >= %s AND o.measured_at <= %s
       AND o.value IS NOT NULL AND NOT (o.flags && %s::text[])
     GROUP BY o.patient_id, o.metric"""


def test_history_read_per_value(fresh_database_url: str) -> None:
    end = datetime.now(UTC).replace(microsecond=0)
    since = end - timedelta(days=DAYS)
    patients = [f"hist-{p}" for p in range(PATIENTS)]
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO observations (reading_id, patient_id, kind, metric, measured_at, value, unit)
               SELECT md5(p || '-' || i), p, 'blood_pressure', m, %s - make_interval(mins => 5 * i),
                      100 + (i * 7) %% 60, 'mm[Hg]'
                 FROM unnest(%s::text[]) p, generate_series(0, %s) i, unnest(%s::text[]) m""",
            (end, patients, DAYS * 288 - 1, list(METRICS)))
        conn.execute("VACUUM ANALYZE observations")
        values = PATIENTS * DAYS * 288 * len(METRICS)
        timings: dict[str, list[float]] = {"load_history": [], "sorted_in_sql": []}
        for _ in range(5):
            began = time.perf_counter()
            history = load_history(conn, patients, METRICS, since, end)
            timings["load_history"].append(time.perf_counter() - began)
            began = time.perf_counter()
            with conn.cursor(binary=True) as cur:
                rows = cur.execute(SORTED_IN_SQL, (patients, list(METRICS), since, end,
                                                   sorted(EXCLUDED_FLAGS))).fetchall()
            reference = {(r[0], r[1]): (np.asarray(r[2], dtype=float), np.asarray(r[3], dtype=float), r[4])
                         for r in rows}
            timings["sorted_in_sql"].append(time.perf_counter() - began)
        assert sum(len(s.t) for s in history.values()) == values
        for key, (t, v, ids) in reference.items():
            assert np.array_equal(history[key].t, t) and np.array_equal(history[key].v, v)
            assert list(history[key].ids) == list(ids)
        medians = {k: statistics.median(v) for k, v in timings.items()}
        report = {"values": values, **{f"{k}_ms": round(m * 1000, 1) for k, m in medians.items()},
                  **{f"{k}_us_per_value": round(m * 1e6 / values, 3) for k, m in medians.items()},
                  "ratio": round(medians["load_history"] / medians["sorted_in_sql"], 2)}
        print(f"\nBENCH history read: {json.dumps(report)}")
