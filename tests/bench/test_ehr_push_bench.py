"""Benchmark (``-m bench``): the EHR push of a care team's glucose readings (5-minute series, loaded with COPY)
to the test EHR (tests/ehr_server: @medplum/fhir-router over its in-memory store, SMART token endpoint).
Printed: readings and Observations pushed, Bundles sent, wall time and Observations per second, with the
queueing (watermark claim) timed apart and the push split into the time waiting on the EHR's answers and the
push's own time (database, building Bundles, signing): Observations per second of the push's own time is what
the push would reach against an EHR that answered at once. ``RPM_BENCH_EHR_PATIENTS`` (1) patients of
``RPM_BENCH_EHR_DAYS`` (1) days each.

The test EHR is slow, and slower as it fills: medplum's MemoryRepository answers each conditional create's
identifier search by scanning every stored resource of the type (twice: once resolving the Bundle's
identities, once creating), and its router takes at most 8 entries in a transaction with conditional creates,
so each Bundle carries the Patient, the meter, the gateway and 5 Observations.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import httpx
import psycopg
import pytest

from cloud.ehr_push.config import load_push_config
from cloud.ehr_push.worker import EhrPusher
from tests.cloud.api.bulk_seed import add_team_patients, load_glucose
from tests.cloud.ehr_push.conftest import TEAM, push_settings
from tests.ehr_server.server import EhrServer, ehr_server  # noqa: F401  (the session fixture)

pytestmark = [pytest.mark.bench, pytest.mark.timeout(900)]
PATIENTS = int(os.environ.get("RPM_BENCH_EHR_PATIENTS", "1"))
DAYS = float(os.environ.get("RPM_BENCH_EHR_DAYS", "1"))


class TimedTransport(httpx.HTTPTransport):
    """Adds up the time spent in requests (sending, the server working, reading the answer)."""

    spent = 0.0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = super().handle_request(request)
            response.read()
            return response
        finally:
            self.spent += time.perf_counter() - started


def test_ehr_push_throughput(fresh_database_url: str, ehr_server: EhrServer) -> None:  # noqa: F811
    ehr_server.reset()
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        devices = add_team_patients(conn, TEAM, [f"bench-{i:04d}" for i in range(PATIENTS)])
        conn.execute(
            "INSERT INTO gateways (id, last_seen) SELECT 'gw-' || p, now() FROM unnest(%s::text[]) p", (list(devices),)
        )
        readings = load_glucose(conn, devices, days=DAYS, end=datetime.now(UTC))
        # A generous timeout: the in-memory EHR slows down as it fills (a timeout would be retried, harmlessly).
        settings = push_settings(
            fresh_database_url, ehr_server, ehr_push_batch_size=500, ehr_push_timeout_s=60, ehr_push_lease_s=120
        )
        transport = TimedTransport()
        pusher = EhrPusher(settings, load_push_config(settings), transport=transport)
        try:
            started = time.perf_counter()
            queued = pusher.claim(conn)
            claimed = time.perf_counter()
            report = pusher.run(once=True)
            done = time.perf_counter()
        finally:
            pusher.close()
    observations = ehr_server.stats()["resources"]["Observation"]
    assert queued == readings and report.readings_sent == readings and observations == readings
    print(
        f"\nEHR push: {readings} readings, {observations} Observations in {report.batches_sent} Bundles;"
        f" queueing {claimed - started:.2f} s ({readings / (claimed - started):.0f} readings/s);"
        f" pushing {done - claimed:.1f} s = {observations / (done - claimed):.1f} Observations/s"
        f" ({report.batches_sent / (done - claimed):.1f} Bundles/s), of which {transport.spent:.1f} s waiting on"
        f" the EHR; the push's own time {done - claimed - transport.spent:.2f} s ="
        f" {observations / (done - claimed - transport.spent):.0f} Observations/s; retries {report.retries}"
    )
