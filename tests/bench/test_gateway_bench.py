"""Gateway benchmarks (``-m bench``): print figures, assert only what makes the figures meaningful.

- Drain of a 100 000-reading backlog (``RPM_BENCH_BACKLOG``) through the real broker to a test acker,
  and to the real ``rpm-cloud ingest`` + PostgreSQL.
- RSS and CPU of ``rpm-gateway run`` with four simulated BLE devices (cuff, glucose meter, scale,
  heart-rate strap) for ``RPM_BENCH_GATEWAY_S`` seconds (default 30; the issue asks 600).

    .venv/bin/pytest -m bench tests/bench/test_gateway_bench.py -s
    RPM_BENCH_GATEWAY_S=600 .venv/bin/pytest -m bench tests/bench/test_gateway_bench.py -s -k rss
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway.config import MqttConfig
from gateway.store.outbox import Outbox
from gateway.store.uplink import Uplink
from tests.gateway.mqtt_acker import TestAcker
from tests.gateway.process_harness import Ingest
from tests.gateway.reading_factory import bp_reading

pytestmark = [pytest.mark.bench, pytest.mark.integration]

BACKLOG = int(os.environ.get("RPM_BENCH_BACKLOG", "100000"))
GATEWAY_S = float(os.environ.get("RPM_BENCH_GATEWAY_S", "30"))


async def drain_outbox(config: MqttConfig, gateway_id: str, box: Outbox, *, limit_s: float) -> float:
    """Run an uplink until the outbox is empty; the seconds it took from the first connection."""
    uplink = Uplink(config, gateway_id, box)
    task = asyncio.create_task(uplink.run())
    try:
        assert await uplink.wait_connected(15)
        began = time.perf_counter()
        while box.depth() > 0:
            if time.perf_counter() - began > limit_s:
                raise AssertionError(f"not drained in {limit_s:.0f} s: {box.depth()} left")
            await asyncio.sleep(0.05)
        return time.perf_counter() - began
    finally:
        await uplink.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.timeout(900)
def test_drain_a_backlog_through_the_real_broker(tmp_path: Path, mqtt_broker, unique_id: str) -> None:  # type: ignore[no-untyped-def]
    box = Outbox(tmp_path / "outbox.sqlite", max_readings=BACKLOG + 1000)
    readings = [bp_reading(i) for i in range(BACKLOG)]
    start = time.perf_counter()
    for chunk in range(0, BACKLOG, 5000):
        box.put_many(readings[chunk:chunk + 5000])
    fill_s = time.perf_counter() - start

    single = [bp_reading(BACKLOG + i) for i in range(200)]
    start = time.perf_counter()
    for reading in single:
        box.put(reading)  # one durable commit each, as a device session does
    put_ms = (time.perf_counter() - start) / len(single) * 1000

    start = time.perf_counter()
    probe = box.take_batch("probe", 500, 30)
    select_ms = (time.perf_counter() - start) * 1000
    assert probe is not None
    box.release(["probe"])

    total = BACKLOG + len(single)
    acker = TestAcker(mqtt_broker.host, mqtt_broker.port, unique_id, v5=mqtt_broker.supports_v5)
    config = MqttConfig(url=mqtt_broker.url, batch_max=500, batch_ms=50, ack_timeout_s=60)

    try:
        drain_s = asyncio.run(drain_outbox(config, unique_id, box, limit_s=600))
        assert len(acker.ids()) == total
    finally:
        acker.close()
        box.close()
    print(f"\n[gateway bench] broker={mqtt_broker.kind} backlog={total} readings")
    print(f"[gateway bench] fill (put_many, 5000/txn): {fill_s:.2f} s ({BACKLOG / fill_s:,.0f} readings/s)")
    print(f"[gateway bench] single durable put (synchronous=FULL): {put_ms:.2f} ms each")
    print(f"[gateway bench] select+mark one 500-reading batch from {total}: {select_ms:.1f} ms")
    print(f"[gateway bench] drain to acker: {drain_s:.2f} s ({total / drain_s:,.0f} readings/s), "
          f"{acker.batches} batches, {sum(acker.seen.values()) - total} re-sent")


@pytest.mark.timeout(900)
def test_drain_a_backlog_to_the_real_ingest(tmp_path: Path, mqtt_broker, fresh_database_url: str,  # type: ignore[no-untyped-def]
                                           unique_id: str) -> None:
    import psycopg

    box = Outbox(tmp_path / "outbox.sqlite", max_readings=BACKLOG + 1000)
    readings = [bp_reading(i, uid=f"ble:{unique_id}") for i in range(BACKLOG)]
    for chunk in range(0, BACKLOG, 5000):
        box.put_many(readings[chunk:chunk + 5000])
    ingest = Ingest(fresh_database_url, mqtt_broker.url, f"ingest-{unique_id}")
    config = MqttConfig(url=mqtt_broker.url, batch_max=500, batch_ms=50, ack_timeout_s=120)

    try:
        drain_s = asyncio.run(drain_outbox(config, unique_id, box, limit_s=800))
    finally:
        ingest.terminate()
        box.close()
    with psycopg.connect(fresh_database_url) as conn:
        stored = conn.execute("SELECT count(*) FROM readings WHERE gateway_id = %s", (unique_id,)).fetchone()[0]
    assert stored == BACKLOG
    print(f"\n[gateway bench] drain {BACKLOG} readings to rpm-cloud ingest --workers 1 + PostgreSQL "
          f"(broker={mqtt_broker.kind}): {drain_s:.2f} s ({BACKLOG / drain_s:,.0f} readings/s)")


def _proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds user+system, RSS kB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return cpu, rss


@pytest.mark.timeout(GATEWAY_S + 120)
def test_rss_and_cpu_of_rpm_gateway_run_with_four_simulated_devices(
        tmp_path: Path, mqtt_broker, unique_id: str) -> None:  # type: ignore[no-untyped-def]
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc for RSS and CPU figures")
    now = datetime.now().replace(microsecond=0)
    addresses = ["C0:00:00:00:00:01", "C0:00:00:00:00:02", "C0:00:00:00:00:03", "C0:00:00:00:00:04"]
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"peripherals": [
        {"type": "blood_pressure", "address": addresses[0], "has_current_time": False, "records": [
            {"systolic": 120 + i % 20, "diastolic": 80, "mean_arterial": 93, "pulse": 70,
             "timestamp": (now - timedelta(hours=i)).isoformat()} for i in range(30)]},
        {"type": "glucose", "address": addresses[1], "records": [
            {"sequence": i + 1, "base_time": (now - timedelta(hours=i)).isoformat(), "concentration": 0.0010 + i * 1e-5}
            for i in range(30)]},
        {"type": "weight_scale", "address": addresses[2], "records": [
            {"weight": 80.0 + i / 10, "timestamp": (now - timedelta(days=i)).isoformat()} for i in range(10)]},
        {"type": "heart_rate", "address": addresses[3], "rates": [62, 64, 66, 70, 68]},
    ]}))
    config = tmp_path / "gateway.toml"
    enrolled = ", ".join(f'{{ address = "{a}" }}' for a in addresses)
    config.write_text(f"""
gateway_id = "{unique_id}"
data_dir = "{tmp_path / 'data'}"
status_interval_s = 10
[mqtt]
url = "{mqtt_broker.url}"
[ble]
backend = "sim"
heart_rate_cadence_s = 5
enrolled = [{enrolled}]
[usb]
enabled = false
[log]
level = "WARNING"
""")
    acker = TestAcker(mqtt_broker.host, mqtt_broker.port, unique_id, v5=mqtt_broker.supports_v5)
    log_path = tmp_path / "gateway.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                                   stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, "RPM_SIM_BLE_SCENARIO": str(scenario)})
    samples: list[tuple[float, float, int]] = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < GATEWAY_S:
            if process.poll() is not None:
                raise AssertionError(f"rpm-gateway run exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
            cpu, rss = _proc_stat(process.pid)
            samples.append((time.monotonic() - started, cpu, rss))
            time.sleep(1.0)
        process.terminate()
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        acker.close()
    elapsed = samples[-1][0] - samples[0][0]
    cpu_used = samples[-1][1] - samples[0][1]
    rss_values = [s[2] for s in samples]
    # Steady state: after the stored records were read (the first 20 % of the run).
    steady = [s for s in samples if s[0] >= 0.2 * GATEWAY_S]
    steady_cpu = (steady[-1][1] - steady[0][1]) / max(1e-9, steady[-1][0] - steady[0][0]) * 100
    print(f"\n[gateway bench] rpm-gateway run, 4 simulated BLE devices, {GATEWAY_S:.0f} s, broker={mqtt_broker.kind}")
    early = next(s[2] for s in samples if s[0] >= 2)
    print(f"[gateway bench] RSS: after 2 s {early / 1024:.1f} MiB, max {max(rss_values) / 1024:.1f} MiB, "
          f"end {rss_values[-1] / 1024:.1f} MiB")
    print(f"[gateway bench] CPU: {cpu_used:.2f} s over {elapsed:.0f} s = {cpu_used / elapsed * 100:.1f} % of one core "
          f"(steady state {steady_cpu:.1f} %)")
    print(f"[gateway bench] readings acked by the test acker: {len(acker.ids())} "
          f"(kinds seen via the sim: cuff 30, glucose 30, scale 10 stored + live heart rate)")
    assert acker.ids(), f"no reading reached the broker:\n{log_path.read_text()[-3000:]}"
