"""The parts the demo runs: embedded (or configured) PostgreSQL and broker, the cloud services and the
gateway as child processes, and the USB devices on ptys the gateway opens like real ports."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from cloud.embedded import EmbeddedBroker, EmbeddedPostgres, start_amqtt, start_mosquitto

log = logging.getLogger(__name__)
BIN = Path(sys.executable).parent
DATABASE = "rpm"


@dataclass
class Endpoints:
    database_url: str
    mqtt_url: str
    database_kind: str
    broker_kind: str

    def lines(self) -> str:
        """What the demo runs on, with the URLs other commands (``rpm-sim load``, ``rpm-cloud``) take: for
        embedded services only (a configured URL is the user's own, and may hold a password)."""
        database = "" if self.database_kind == "configured" else f"\n          RPM_DATABASE_URL={self.database_url}"
        broker = "" if self.broker_kind == "configured" else f"\n          RPM_MQTT_URL={self.mqtt_url}"
        return f"database: {self.database_kind}{database}\nbroker:   {self.broker_kind}{broker}"


def dev_key(data_dir: Path, name: str = "dev_jwt_key") -> str:
    """A development signing key of this data directory, made once, so tokens survive a restart."""
    path = data_dir / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _ensure_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def start_backing_services(stack: ExitStack, data_dir: Path, broker: str) -> Endpoints:
    """PostgreSQL and MQTT: ``RPM_DATABASE_URL`` / ``RPM_MQTT_URL`` when set, else embedded ones."""
    database_url = os.environ.get("RPM_DATABASE_URL")
    database_kind = "configured"
    if not database_url:
        server = EmbeddedPostgres(data_dir / "postgres").start()
        stack.callback(server.stop)
        _ensure_database(server.url, DATABASE)
        database_url = server.database_url(DATABASE)
        database_kind = f"embedded PostgreSQL (pgserver) on 127.0.0.1:{server.port}"
    mqtt_url = os.environ.get("RPM_MQTT_URL")
    broker_kind = "configured"
    if not mqtt_url:
        embedded: EmbeddedBroker = start_mosquitto() if broker == "mosquitto" else start_amqtt()
        stack.callback(embedded.stop)
        mqtt_url = embedded.url
        broker_kind = f"{'private mosquitto' if embedded.kind == 'mosquitto' else 'in-process amqtt'} on " \
                      f"127.0.0.1:{embedded.port}"
    return Endpoints(database_url, mqtt_url, database_kind, broker_kind)


@dataclass
class Children:
    """Child processes with their logs; stopped in reverse order with SIGTERM, then SIGKILL."""

    log_dir: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_dir / f"{name}.log", "ab")
        process = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            env={**os.environ, **self.env, **(extra_env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops the children in order
        )
        log_file.close()
        self.processes[name] = process
        return process

    def dead(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in reversed(list(self.processes.items())):
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                process.kill()
                process.wait(5)


def gateway_config(data_dir: Path, mqtt_url: str, ble_addresses: list[str], usb_ports: dict[str, str]) -> Path:
    """The demo gateway's TOML: simulated BLE radio, USB devices at fixed pty link paths."""
    usb_devices = "".join(
        f'\n[[usb.devices]]\nport = "{path}"\nprofile = "{profile}"\n' for profile, path in usb_ports.items()
    )
    enrolled = ", ".join(f'{{ address = "{address}" }}' for address in ble_addresses)
    text = f"""# Written by rpm-demo.
gateway_id = "gw-demo-home"
data_dir = "{data_dir / 'gateway'}"
status_interval_s = 5

[mqtt]
url = "{mqtt_url}"
batch_ms = 100
ack_timeout_s = 10

[ble]
backend = "sim"
enrolled = [{enrolled}]
session_cooldown_s = 3

[usb]
poll_interval_s = 0.5
{usb_devices}"""
    path = data_dir / "gateway.toml"
    path.write_text(text)
    return path


def write_scenario(path: Path, peripherals: list[dict]) -> None:
    """The simulated radio's world; the gateway's simulator backend reloads it when it changes."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"peripherals": peripherals}, indent=1))
    os.replace(tmp, path)


def reset(data_dir: Path) -> None:
    if data_dir.exists():
        shutil.rmtree(data_dir)
