"""The issue's faults, end to end through real processes: a gateway process (the real runtime fed by a
simulated device), the real broker, the real ``rpm-cloud ingest`` and PostgreSQL. The cloud's
``readings`` table (keyed by reading id) is the judge: every reading the device delivered, once.
"""

from __future__ import annotations

import signal
from pathlib import Path

import psycopg
import pytest

from tests.gateway.mqtt_acker import TestAcker
from tests.gateway.private_broker import PrivateMosquitto
from tests.gateway.process_harness import GatewayProcess, Ingest, LoggedProcess
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def write_config(path: Path, gateway_id: str, mqtt_url: str, **mqtt: object) -> Path:
    settings = {"keepalive_s": 5, "batch_max": 100, "batch_ms": 50, "ack_timeout_s": 3, "reconnect_min_s": 0.2,
                "reconnect_max_s": 1.0, "drain_timeout_s": 2, **mqtt}
    mqtt_lines = "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in settings.items())
    path.write_text(f"""
gateway_id = "{gateway_id}"
data_dir = "{path.parent / 'data'}"
timezone = "UTC"
status_interval_s = 1
[mqtt]
url = "{mqtt_url}"
{mqtt_lines}
[ble]
enabled = false
[usb]
enabled = false
""")
    return path


def stored_in_cloud(database_url: str, gateway_id: str) -> tuple[int, int]:
    """(rows, distinct sequences) the cloud holds for this gateway."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT sequence) FROM readings WHERE gateway_id = %s",
                           (gateway_id,)).fetchone()
    return int(row[0]), int(row[1])


def test_broker_restarted_without_persistence_mid_stream_loses_nothing(
        tmp_path: Path, fresh_database_url: str, unique_id: str, processes: list[LoggedProcess]) -> None:
    broker = PrivateMosquitto(tmp_path).start()
    try:
        processes.append(Ingest(fresh_database_url, broker.url, f"ingest-{unique_id}"))
        config = write_config(tmp_path / "gateway.toml", unique_id, broker.url)
        gateway = GatewayProcess(config, 0, 300, rate=100)
        processes.append(gateway)
        wait_until(lambda: gateway.stored() >= 100, 15, "a third of the readings stored")
        broker.stop()  # killed: every session, queued message and in-flight batch is gone
        wait_until(lambda: gateway.stored() >= 150, 15, "devices keep reading while the broker is down")
        broker.start()
        wait_until(lambda: gateway.saw("fed"), 20, "all readings stored by the gateway")
        wait_until(lambda: stored_in_cloud(fresh_database_url, unique_id)[0] >= 300, 20,
                   "every reading in the cloud")
        assert stored_in_cloud(fresh_database_url, unique_id) == (300, 300)
        assert gateway.terminate() == 0
    finally:
        broker.stop()


def test_gateway_sigkilled_mid_batch_and_restarted_delivers_every_reading_once(
        tmp_path: Path, fresh_database_url: str, mqtt_broker, unique_id: str,  # type: ignore[no-untyped-def]
        processes: list[LoggedProcess]) -> None:
    processes.append(Ingest(fresh_database_url, mqtt_broker.url, f"ingest-{unique_id}"))
    config = write_config(tmp_path / "gateway.toml", unique_id, mqtt_broker.url, batch_max=200)
    first = GatewayProcess(config, 0, 2000, rate=0)
    processes.append(first)
    wait_until(lambda: first.stored() >= 600, 20, "readings flowing")
    first.process.send_signal(signal.SIGKILL)
    first.kill()
    killed_at = first.stored()
    assert killed_at < 2000, "the gateway finished before the kill: the test proves nothing"
    rows_at_kill = stored_in_cloud(fresh_database_url, unique_id)[0]
    # The device still holds all its records and hands them over again after the restart.
    second = GatewayProcess(config, 0, 2000, rate=0)
    processes.append(second)
    wait_until(lambda: second.saw("fed"), 30, "the restarted gateway took every record")
    wait_until(lambda: stored_in_cloud(fresh_database_url, unique_id)[0] >= 2000, 20, "every reading in the cloud")
    assert stored_in_cloud(fresh_database_url, unique_id) == (2000, 2000)
    assert second.terminate() == 0
    assert rows_at_kill < 2000


def test_ingest_stopped_outbox_grows_then_drains_and_status_shows_depth_and_age(
        tmp_path: Path, fresh_database_url: str, mqtt_broker, unique_id: str,  # type: ignore[no-untyped-def]
        processes: list[LoggedProcess]) -> None:
    watcher = TestAcker(mqtt_broker.host, mqtt_broker.port, unique_id, v5=mqtt_broker.supports_v5)
    watcher.acking = False  # it only watches the status; the cloud is down
    try:
        config = write_config(tmp_path / "gateway.toml", unique_id, mqtt_broker.url)
        gateway = GatewayProcess(config, 0, 120, rate=0)
        processes.append(gateway)
        wait_until(lambda: gateway.saw("fed"), 15, "readings stored")

        def backlog_shown() -> bool:
            status = watcher.last_status() or {}
            return status.get("outbox_depth") == 120 and (status.get("outbox_oldest_age_s") or 0) >= 1.0

        wait_until(backlog_shown, 10, "status shows the backlog and its age")
        ingest = Ingest(fresh_database_url, mqtt_broker.url, f"ingest-{unique_id}")
        processes.append(ingest)
        wait_until(lambda: stored_in_cloud(fresh_database_url, unique_id)[0] >= 120, 20, "backlog in the cloud")
        wait_until(lambda: (watcher.last_status() or {}).get("outbox_depth") == 0, 10, "status shows it drained")
        assert stored_in_cloud(fresh_database_url, unique_id) == (120, 120)
        assert gateway.terminate() == 0
    finally:
        watcher.close()
