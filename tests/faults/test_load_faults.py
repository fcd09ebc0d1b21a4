"""``rpm-sim load`` under faults, every part real and private to this test: mosquitto run from the
deploy config (persistence on, gateways on the forced-id listener with a user each, ingest on the
services listener), PostgreSQL from the pgserver wheel, two ``rpm-cloud ingest`` worker processes
kept up by a supervisor loop (as systemd or compose would), and the load generator as a process.

While it publishes: the broker is SIGKILLed and restarted from its persistence file, one ingest
worker is SIGKILLed (and restarted by the supervisor with the same client id, so it resumes its
session), PostgreSQL is stopped with ``-m immediate`` and started again. The generator's report,
counted in the database by reading id, must say ``lost: 0, duplicates: 0``.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.deploy.deploy_broker import DeployMosquitto
from tests.gateway.process_harness import REPO, LoggedProcess
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto, pytest.mark.timeout(240)]

GATEWAYS, RATE, BATCH, DURATION_S, ACK_TIMEOUT_S = 6, 300, 3, 14, 4
OUTAGE_S = 1.5



def stop_postgres_immediately(server) -> None:  # type: ignore[no-untyped-def]
    """``pg_ctl stop -m immediate``: no checkpoint, so the next start runs crash recovery."""
    server._run("pg_ctl", "-D", str(server.data_dir / "pgdata"), "-w", "-m", "immediate", "stop", timeout=60)


class IngestSupervisor:
    """``rpm-cloud ingest --workers 1`` processes, each restarted (same client id) when it exits."""

    def __init__(self, workers: int, database_url: str, mqtt_url: str, password: str) -> None:
        self.database_url, self.mqtt_url, self.password = database_url, mqtt_url, password
        self.prefixes = [f"ingest-fault-{i}" for i in range(workers)]
        self.processes = [self._start(prefix) for prefix in self.prefixes]
        self.restarts = 0
        self.exits: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _start(self, prefix: str) -> LoggedProcess:
        # Stable client id (prefix-0) and a persistent session, explicitly: a restarted worker must
        # resume the session the broker kept queuing into for it.
        return LoggedProcess(
            [sys.executable, "-m", "cloud.cli", "ingest", "--workers", "1", "--client-id", prefix,
             "--session-expiry", "3600", "--database-url", self.database_url, "--mqtt-url", self.mqtt_url],
            env={"RPM_MQTT_USERNAME": "ingest", "RPM_MQTT_PASSWORD": self.password})

    def wait_consuming(self) -> None:
        for process in self.processes:
            wait_until(lambda p=process: p.saw("consuming with MQTT") or p.process.poll() is not None, 60,
                       "ingest consuming")
            assert process.process.poll() is None, process.tail()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            for i, process in enumerate(self.processes):
                code = process.process.poll()
                if code is not None:
                    self.exits.append(code)
                    time.sleep(0.5)  # a supervisor's restart delay
                    self.processes[i] = self._start(self.prefixes[i])
                    self.restarts += 1

    def kill(self, index: int) -> None:
        self.processes[index].process.send_signal(signal.SIGKILL)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for process in self.processes:
            process.terminate()


def stored_count(database_url: str, run_id: str) -> int:
    try:
        with psycopg.connect(database_url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM readings WHERE gateway_id LIKE %s",
                               (f"load-{run_id}-%",)).fetchone()
    except psycopg.OperationalError:
        return 0
    return int(row[0]) if row else 0


def test_load_through_broker_ingest_and_database_faults_loses_nothing(tmp_path: Path, private_postgres) -> None:  # type: ignore[no-untyped-def]
    run_id = f"f{secrets.token_hex(3)}"
    gateway_password, ingest_password = secrets.token_hex(8), secrets.token_hex(8)
    # The deploy listener makes each gateway's client id its user name: one user per simulated gateway.
    gateways = {f"load-{run_id}-{i:04d}": gateway_password for i in range(GATEWAYS)}
    broker = DeployMosquitto(tmp_path / "broker", external=gateways, internal={"ingest": ingest_password},
                             autosave_interval_s=2).start()
    database_url = private_postgres.url
    ingest = IngestSupervisor(2, database_url, broker.url(broker.internal_port), ingest_password)
    load: subprocess.Popen[str] | None = None
    errors = (tmp_path / "load.stderr").open("w")
    try:
        ingest.wait_consuming()
        command = [sys.executable, "-m", "firmware_sims.cli", "load", "--gateways", str(GATEWAYS),
                   "--rate", str(RATE), "--batch", str(BATCH), "--duration", str(DURATION_S), "--processes", "2",
                   "--ack-timeout", str(ACK_TIMEOUT_S), "--settle", "60", "--run-id", run_id,
                   "--mqtt-url", broker.url(broker.external_port), "--username", "{gateway_id}",
                   "--password", gateway_password, "--database-url", database_url]
        load = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=errors, text=True)
        wait_until(lambda: stored_count(database_url, run_id) > 0, 30, "the first readings stored", step=0.1)
        begun = time.monotonic()

        def at(second: float) -> None:
            wait_until(lambda: time.monotonic() - begun >= second, DURATION_S, f"{second} s into the run", step=0.05)

        # Each outage lasts OUTAGE_S: the sleeps are the faults themselves, not waits for a condition.
        at(2)
        broker.kill()  # a crash: whatever changed since the last autosave is gone
        time.sleep(OUTAGE_S)
        broker.start()
        at(5.5)
        ingest.kill(0)  # the supervisor restarts it under the same client id
        at(8)
        stop_postgres_immediately(private_postgres)
        assert time.monotonic() - begun < DURATION_S - OUTAGE_S, "the faults must land while the generator publishes"
        time.sleep(OUTAGE_S)
        private_postgres.start()

        stdout, _ = load.communicate(timeout=150)
        assert stdout, (tmp_path / "load.stderr").read_text()
        report = json.loads(stdout)
        print(f"\nLOAD UNDER FAULTS: {' '.join(command[1:])}\n{json.dumps(report)}")
        assert report["publisher_errors"] == [] and report["publishers_reported"] == 2
        assert report["readings_sent"] == RATE * DURATION_S
        assert report["lost"] == 0, report["lost_sample"]
        assert report["duplicates"] == 0 and report["unexpected"] == 0
        assert report["stored"] == report["readings_sent"]
        assert load.returncode == 0
        # The faults were felt: every gateway came back after the broker crash, the worker was restarted.
        assert report["reconnects"] >= GATEWAYS
        assert ingest.restarts >= 1
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.communicate(10)
        errors.close()
        ingest.close()
        broker.stop()
