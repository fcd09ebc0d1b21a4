"""The gateway's own disk, through real processes: ``rpm-gateway run`` on a real small filesystem (a
size-limited tmpfs, a loop-mounted ext4 image), simulated BLE devices in its radio (a glucose meter
that keeps its records, a heart-rate strap that does not), the machine's broker, the real
``rpm-cloud ingest`` and PostgreSQL as the judge.

- The disk fills during an outage: the meter's records stay on the meter, the strap's windows that
  cannot be kept are counted; when the cloud is back and acks free room, every record reaches the
  database exactly once, without a restart, and the status said what was wrong throughout.
- A read-only data directory stops the start with one line and exit 2; a card that goes read-only
  while running makes the gateway exit 2 after its grace, so systemd notices.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.gateway.mqtt_acker import TestAcker
from tests.gateway.process_harness import Ingest, LoggedProcess
from tests.gateway.test_storage_space import fail_card, loop_ext4, mounted_tmpfs
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

METER = "C0:FF:EE:15:00:01"
STRAP = "C0:FF:EE:15:00:02"
CADENCE_S = 0.5


def gateway_toml(path: Path, gateway_id: str, data_dir: Path, mqtt_url: str, outbox: str = "") -> Path:
    path.write_text(f"""
gateway_id = "{gateway_id}"
data_dir = "{data_dir}"
timezone = "UTC"
status_interval_s = 1
[mqtt]
url = "{mqtt_url}"
batch_max = 200
batch_ms = 50
ack_timeout_s = 3
reconnect_min_s = 0.2
reconnect_max_s = 1.0
[outbox]
{outbox}
[ble]
backend = "sim"
enrolled = [{{ address = "{METER}", profile = "ble.glucose" }}, {{ address = "{STRAP}", profile = "ble.heart_rate" }}]
heart_rate_cadence_s = {CADENCE_S}
session_cooldown_s = 0.5
retry_backoff_s = 0.3
retry_backoff_max_s = 1.0
[usb]
enabled = false
""")
    return path


def gateway(config: Path, scenario: Path | None = None) -> LoggedProcess:
    env = {"RPM_SIM_BLE_SCENARIO": str(scenario)} if scenario else {}
    return LoggedProcess([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)], env=env)


def in_cloud(database_url: str, gateway_id: str, kind: str) -> tuple[int, int, list[datetime]]:
    """(rows, distinct sequences, window starts) the cloud holds of this gateway's readings of ``kind``."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT sequence, measured_at FROM readings WHERE gateway_id = %s AND kind = %s",
                            (gateway_id, kind)).fetchall()
    return len(rows), len({r[0] for r in rows}), sorted(r[1] for r in rows)


def test_disk_full_during_an_outage_every_meter_record_arrives_once_and_live_losses_are_counted(
        tmp_path: Path, fresh_database_url: str, mqtt_broker: Any, unique_id: str,
        processes: list[LoggedProcess]) -> None:
    records = 3500
    base = datetime(2026, 3, 1, 6, 0)
    scenario = tmp_path / "scenario.json"

    def play(meter_records: int) -> None:
        """The simulated world: the strap streams; the meter holds ``meter_records`` records."""
        scenario.write_text(json.dumps({"peripherals": [
            {"type": "glucose", "address": METER, "records": [
                {"sequence": i + 1, "base_time": (base + timedelta(minutes=5 * i)).isoformat(),
                 "concentration": 0.00095 + (i % 40) * 0.00001} for i in range(meter_records)]},
            {"type": "heart_rate", "address": STRAP, "rates": [64, 66, 71], "hz": 8},
        ]}))

    play(0)
    watcher = TestAcker(mqtt_broker.host, mqtt_broker.port, unique_id, v5=mqtt_broker.supports_v5)
    watcher.acking = False  # only watches the status: the cloud is down
    with mounted_tmpfs(tmp_path / "disk", "3m") as disk:
        config = gateway_toml(tmp_path / "gateway.toml", unique_id, disk / "data", mqtt_broker.url,
                              outbox="reserve_bytes = 131072")
        try:
            gw = gateway(config, scenario)
            processes.append(gw)

            def status() -> dict[str, Any]:
                return watcher.last_status() or {}

            def said_full() -> bool:
                s = status()
                return (s.get("storage_state") == "full" and s.get("outbox_full") is True
                        and s.get("readings_waiting_on_devices", 0) >= 1 and s.get("readings_lost", 0) >= 2
                        and str(s.get("storage_message", "")).startswith("Storage full: "))

            def strap_stored() -> bool:
                return any(d.get("uid") == f"ble:{STRAP}" and d.get("last_seen") for d in status().get("devices", []))

            # The strap's first windows are kept, so every later window it makes lies between two kept ones.
            wait_until(strap_stored, 30, "the strap's first readings stored")
            play(records)  # the meter measured: its memory now holds the records (the air reloads the file)
            wait_until(said_full, 60, "the status saying the storage is full, with refused and lost readings")
            full = status()
            assert "new readings cannot be saved" in full["storage_message"]
            assert full["outbox_depth"] < records, "the disk held every record: the test proves nothing"
            assert gw.process.poll() is None and gw.count("Traceback") <= 2
            ingest = Ingest(fresh_database_url, mqtt_broker.url, f"ingest-{unique_id}")
            processes.append(ingest)
            try:
                wait_until(lambda: in_cloud(fresh_database_url, unique_id, "glucose")[0] >= records, 90,
                           "every meter record in the cloud, without a restart")
            except AssertionError as err:
                files = {f.name: f.stat().st_size for f in (disk / "data").iterdir()}
                raise AssertionError(f"{err}; cloud {in_cloud(fresh_database_url, unique_id, 'glucose')[:2]}, "
                                     f"files {files}\n{gw.tail(60)}") from None
            # "low" rather than "ok" on so small a disk: what matters is that new readings are saved again.
            wait_until(lambda: status().get("storage_state") in ("ok", "low") and not status().get("outbox_full"),
                       20, "the status no longer saying full")
            room_again = datetime.now(UTC)
            wait_until(lambda: in_cloud(fresh_database_url, unique_id, "heart_rate")[2][-1] > room_again
                       + timedelta(seconds=1), 20, "the strap's readings stored again after the outage")
            assert gw.process.poll() is None, "the gateway restarted or died"
            assert gw.terminate() == 0
        finally:
            watcher.close()
    assert in_cloud(fresh_database_url, unique_id, "glucose")[:2] == (records, records)
    # Live windows are contiguous (cadence-aligned, 8 frames/s): every window between the first and the
    # last one stored was either stored or counted lost, exactly. A reading's time is its window's end
    # (cut short for the window flushed at the end of a session), so the end rounded up names the window.
    count, _, ends = in_cloud(fresh_database_url, unique_id, "heart_rate")
    indexes = sorted({math.ceil(end.timestamp() / CADENCE_S - 1e-6) for end in ends})
    assert len(indexes) == count
    windows = indexes[-1] - indexes[0] + 1
    final = watcher.last_status() or {}
    assert final.get("online") is False
    assert windows - count == final["readings_lost"] > 0
    # Tracebacks are logged once per kind of failure, not once per retry.
    assert gw.count("Traceback") <= 3, gw.tail(60)


def test_rpm_gateway_run_on_a_read_only_data_dir_exits_2_with_one_line(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "ro", "1m") as where:
        (where / "data").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        config = gateway_toml(tmp_path / "gateway.toml", "gw-ro", where / "data", "mqtt://127.0.0.1:9")
        result = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                                capture_output=True, text=True, timeout=30)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and str(where / "data") in lines[0], result.stderr
    assert "read-only" in lines[0].lower() or "not writable" in lines[0], lines[0]


def test_an_outbox_that_is_not_a_file_exits_2_naming_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "outbox.sqlite").mkdir(parents=True)
    config = gateway_toml(tmp_path / "gateway.toml", "gw-dir", data, "mqtt://127.0.0.1:9")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(data / "outbox.sqlite") in result.stderr and "not a regular file" in result.stderr


def test_a_card_gone_read_only_while_running_makes_the_gateway_exit_2(
        tmp_path: Path, mqtt_broker: Any, unique_id: str, processes: list[LoggedProcess]) -> None:
    watcher = TestAcker(mqtt_broker.host, mqtt_broker.port, unique_id, v5=mqtt_broker.supports_v5)
    try:
        with loop_ext4(tmp_path / "card") as card:
            config = gateway_toml(tmp_path / "gateway.toml", unique_id, card / "data", mqtt_broker.url,
                                  outbox="unwritable_grace_s = 1\nreserve_bytes = 65536")
            gw = gateway(config)
            processes.append(gw)
            wait_until(lambda: (watcher.last_status() or {}).get("online") is True, 20, "the gateway online")
            started = datetime.now(UTC)
            fail_card(card)
            code = gw.process.wait(20)
            took = (datetime.now(UTC) - started).total_seconds()
            gw.kill()
    finally:
        watcher.close()
    assert code == 2, gw.tail()
    assert took < 15
    assert gw.saw("gateway exits 2") and gw.saw(str(card / "data")), gw.tail()
    assert not gw.saw("Traceback"), gw.tail()
