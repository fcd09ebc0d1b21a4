"""Benchmark (``-m bench``): a FHIR Bulk Data export of a care team with 5-minute glucose for 30 days,
100 patients by default (864 000 Observations; ``RPM_BENCH_BULK_PATIENTS=1000`` for the issue's 8.64 million),
loaded with COPY into a database of its own.

The export runs where it runs in production: in a worker thread of a real ``rpm-cloud api`` process,
kicked off and polled over HTTP. Printed: wall time from kick-off to the manifest, Observations per second,
the API process's resident memory sampled from ``/proc`` while it exports (VmRSS at 25, 50 and 100 % of the
Observations, and its peak, VmHWM: what ``ru_maxrss`` reports), then ``ru_maxrss`` of the process after it
exited (``RUSAGE_CHILDREN``), and the download of the Observation file. Memory must stay flat: rows are
streamed from a server-side cursor and written out as they come, so the peak may not grow with the export.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from cloud.api.tokens import mint_token
from cloud.settings import CloudSettings
from tests.cloud.api.bulk_seed import add_team_patients, load_glucose
from tests.conftest import _own_database
from tests.e2e.processes import command, running, wait_for

pytestmark = pytest.mark.bench
PATIENTS = int(os.environ.get("RPM_BENCH_BULK_PATIENTS", "100"))
DAYS = 30
FLAT_RSS_MB = 64
"""How much the API's memory may grow from 25 % to 100 % of the export (a leak of one batch per patient or
rows kept in memory would grow it by hundreds of MB)."""
_PROGRESS = re.compile(r"^Observation (\d+)%")


@pytest.fixture(scope="module")
def bench_db(pg_admin_url: str, _migrated_template: str) -> Iterator[str]:
    """One migrated database for the module's measurements (the session's clone, made and dropped once)."""
    with _own_database(pg_admin_url, _migrated_template) as url:
        yield url


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB: its resident memory now and its peak so far."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


@pytest.mark.timeout(4 * 3600)  # the 1 000 patients: minutes to load and to export
def test_bulk_export_streams_with_flat_memory(bench_db: str, tmp_path: Path) -> None:
    team = "bench-team"
    started = time.perf_counter()
    with psycopg.connect(bench_db, autocommit=True) as conn:
        devices = add_team_patients(conn, team, [f"bench-p{i:04d}" for i in range(PATIENTS)])
        readings = load_glucose(conn, devices, days=DAYS)
    load_s = time.perf_counter() - started
    print(f"\nloaded {readings:,} readings ({PATIENTS} patients x {DAYS} days x 288/day) with COPY in {load_s:.1f} s")

    key = "bench-bulk-dev-key-0123456789abcdef0123"
    token = mint_token(CloudSettings(jwt_dev_key=key), role="clinician", sub="bench-dr", care_teams=(team,),
                       patient=None, ttl_s=7200)
    headers = {"Authorization": f"Bearer {token}"}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"RPM_DATABASE_URL": bench_db, "RPM_JWT_DEV_KEY": key, "RPM_BULK_EXPORT_DIR": str(tmp_path / "exports"),
           "RPM_LOG_LEVEL": "WARNING"}
    log = tmp_path / "api.log"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    with running([*command("rpm-cloud"), "api", "--port", str(port)], env, log) as api:
        wait_for(up, 30, "the API", [log])
        idle_rss, _ = _memory_mb(api.pid)
        kicked = time.perf_counter()
        kick = httpx.get(f"{base}/fhir/Group/{team}/$export", headers={**headers, "Prefer": "respond-async"})
        assert kick.status_code == 202, kick.text
        status_url = kick.headers["content-location"]
        at_share: dict[int, float] = {}
        samples: list[tuple[float, float, str]] = []
        while True:
            response = httpx.get(status_url, headers=headers, timeout=10)
            rss, _ = _memory_mb(api.pid)
            if response.status_code == 200:
                manifest = response.json()
                at_share.setdefault(100, rss)
                break
            assert response.status_code == 202, response.text
            progress = response.headers["x-progress"]
            samples.append((time.perf_counter() - kicked, rss, progress))
            match = _PROGRESS.match(progress)
            if match:
                share = int(match.group(1))
                for mark in (25, 50):
                    if share >= mark:
                        at_share.setdefault(mark, rss)
            assert time.perf_counter() - kicked < 4 * 3600, "the export took over four hours"
            time.sleep(0.25)
        export_s = time.perf_counter() - kicked
        rss_end, peak_end = _memory_mb(api.pid)
        counts = {o["type"]: o["count"] for o in manifest["output"]}
        assert counts["Observation"] == readings and counts["Patient"] == PATIENTS

        observation_url = next(o["url"] for o in manifest["output"] if o["type"] == "Observation")
        fetched = time.perf_counter()
        lines = size = 0
        with httpx.stream("GET", observation_url, headers=headers, timeout=600) as download:
            assert download.status_code == 200
            for chunk in download.iter_bytes():
                lines += chunk.count(b"\n")
                size += len(chunk)
        download_s = time.perf_counter() - fetched
        assert lines == readings
        api.send_signal(signal.SIGTERM)
        api.wait(30)
    child_maxrss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    shutil.rmtree(tmp_path / "exports")  # 0.8 GB a hundred patients: pytest keeps its temporary folders

    total = sum(counts.values())
    print(f"export of {total:,} resources ({counts}) in {export_s:.1f} s wall (kick-off to manifest): "
          f"{counts['Observation'] / export_s:,.0f} Observations/s, {total / export_s:,.0f} resources/s")
    print(f"API process RSS: idle {idle_rss:.0f} MB; at 25 % {at_share.get(25, float('nan')):.0f} MB, "
          f"50 % {at_share.get(50, float('nan')):.0f} MB, 100 % {at_share.get(100, rss_end):.0f} MB; "
          f"peak (VmHWM) {peak_end:.0f} MB; ru_maxrss of the exited child processes {child_maxrss_mb:.0f} MB")
    print(f"download of Observation.ndjson: {size / 1e6:,.0f} MB, {lines:,} lines in {download_s:.1f} s "
          f"({lines / download_s:,.0f} lines/s)")
    print("samples (s, RSS MB, X-Progress): " + "; ".join(f"{t:.0f}s {r:.0f}MB {p}" for t, r, p in samples[::max(
        1, len(samples) // 12)]))
    assert 25 in at_share and 50 in at_share, f"progress never reported those shares: {samples[-3:]}"
    assert at_share[100] - at_share[25] < FLAT_RSS_MB, at_share
