"""A private mosquitto run from ``deploy/mosquitto/mosquitto.conf`` itself, adapted only where a test
must: every listener moved to a free 127.0.0.1 port, TLS left out (identity and ACLs do not depend
on it), container paths mapped to a temp dir. Listener options (``use_username_as_clientid``, each
listener's password file and ACL), persistence and the queueing section are the deploy file's own.

Password files are made with the real ``mosquitto_passwd``: ``external`` users (gateways) go in the
file the gateway listener reads, ``internal`` users (ingest, api) in the services' one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import pytest

from cloud.embedded import free_port, mosquitto_binary, port_open, wait_for_port

DEPLOY_MOSQUITTO = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
CONTAINER_CONFIG = "/mosquitto/config/"
CONTAINER_DATA = "/mosquitto/data/"
TLS_OPTIONS = {"certfile", "keyfile", "cafile", "capath", "tls_version", "require_certificate", "ciphers"}
EXTERNAL_PORT, INTERNAL_PORT, LOCAL_PORT = 8883, 8884, 1883
"""The deploy file's listeners: gateways (client id = user name), cloud services, container loopback."""


@dataclass
class Listener:
    port: int
    options: dict[str, str] = field(default_factory=dict)


def parse_listeners(text: str) -> tuple[dict[str, str], list[Listener]]:
    """The config's global options and its listeners with the options that follow each one."""
    general: dict[str, str] = {}
    listeners: list[Listener] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key == "listener":
            listeners.append(Listener(int(value.split()[0])))
        elif listeners:
            listeners[-1].options[key] = value.strip()
        else:
            general[key] = value.strip()
    return general, listeners


def config_file_name(path: str) -> str:
    """``/mosquitto/config/acl`` -> ``acl`` (a file the deploy config names in its config dir)."""
    if not path.startswith(CONTAINER_CONFIG):
        raise AssertionError(f"{path!r} is not under {CONTAINER_CONFIG}")
    return path[len(CONTAINER_CONFIG):]


class MosquittoProcess:
    """The running part every private mosquitto of the tests shares: ``start()`` from ``self.config`` (waiting
    until every one of ``self.ports`` listens), ``stop()``, the log. Subclasses write the config and set
    ``binary``, ``host``, ``workdir``, ``ports`` (deploy port -> test port), ``config`` and ``log``."""

    what = "deploy config"
    """What the config is, for the messages of a failed start."""
    binary: str
    host: str
    workdir: Path
    ports: dict[int, int]
    config: Path
    log: Path
    _process: subprocess.Popen[bytes] | None

    @property
    def external_port(self) -> int:
        return self.ports[EXTERNAL_PORT]

    @property
    def internal_port(self) -> int:
        return self.ports[INTERNAL_PORT]

    def url(self, port: int) -> str:
        return f"mqtt://{self.host}:{port}"

    def start(self) -> Self:
        self._process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
        try:
            for port in self.ports.values():
                wait_for_port(self.host, port, 10, f"mosquitto ({self.what})")
        except Exception:
            self._process.kill()
            _, err = self._process.communicate(5)
            raise AssertionError(f"mosquitto refused the {self.what}: {err.decode(errors='replace')}") from None
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
            self._process = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class DeployMosquitto(MosquittoProcess):
    """``start()``, ``kill()`` (SIGKILL, like a crash), ``start()`` again on the same ports and data."""

    def __init__(self, workdir: Path, *, external: dict[str, str], internal: dict[str, str],
                 autosave_interval_s: int | None = None) -> None:
        """``autosave_interval_s``: save the persistence file this often instead of the deploy file's
        interval, so a crash test restarts from a saved state that is a moment old."""
        binary, passwd_tool = mosquitto_binary(), shutil.which("mosquitto_passwd")
        if binary is None or passwd_tool is None:
            pytest.skip("needs the mosquitto and mosquitto_passwd binaries (apt-get install mosquitto)")
        self.binary = binary
        self.host = "127.0.0.1"
        self.workdir = workdir
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        text = (DEPLOY_MOSQUITTO / "mosquitto.conf").read_text()
        _, listeners = parse_listeners(text)
        self.ports = {listener.port: free_port() for listener in listeners}
        if set(self.ports) != {EXTERNAL_PORT, INTERNAL_PORT, LOCAL_PORT}:
            raise AssertionError(f"deploy/mosquitto/mosquitto.conf listeners changed: {sorted(self.ports)}")
        by_port = {listener.port: listener for listener in listeners}
        files = {"external": by_port[EXTERNAL_PORT].options["password_file"],
                 "internal": by_port[INTERNAL_PORT].options["password_file"]}
        for kind, users in (("external", external), ("internal", internal)):
            passwd = workdir / config_file_name(files[kind])
            passwd.touch()
            for user, password in users.items():
                subprocess.run([passwd_tool, "-b", str(passwd), user, password], check=True, capture_output=True)
        self.passwords = {**external, **internal}
        self.config = workdir / "mosquitto.conf"
        self.autosave_interval_s = autosave_interval_s
        self.config.write_text(self._adapt(text))
        self.log = workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None

    def _adapt(self, text: str) -> str:
        lines = []
        # As root, mosquitto drops to user "mosquitto", who cannot read pytest's private tmp dir.
        if os.geteuid() == 0:
            lines.append("user root")
        for line in text.splitlines():
            key = line.strip().partition(" ")[0]
            if key in TLS_OPTIONS:
                continue
            if key == "listener":
                port = int(line.split()[1])
                line = f"listener {self.ports[port]} {self.host}"
            elif key in ("password_file", "acl_file", "persistence_location"):
                path = line.split(None, 1)[1].strip()
                if key == "acl_file":
                    line = f"acl_file {DEPLOY_MOSQUITTO / config_file_name(path)}"
                elif key == "password_file":
                    line = f"password_file {self.workdir / config_file_name(path)}"
                else:
                    line = f"persistence_location {self.workdir / 'data'}/"
            elif key == "autosave_interval" and self.autosave_interval_s is not None:
                line = f"autosave_interval {self.autosave_interval_s}"
            elif not line.lstrip().startswith("#") and (CONTAINER_CONFIG in line or CONTAINER_DATA in line):
                raise AssertionError(f"deploy config line needs a test mapping: {line!r}")
            lines.append(line)
        lines += [f"log_dest file {self.workdir / 'mosquitto.log'}", "log_type all" if os.environ.get(
            "RPM_TEST_MOSQUITTO_DEBUG") else "log_type information"]
        return "\n".join(lines) + "\n"

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients and no final save (only the last autosave survives)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)
            self._process = None
        for port in self.ports.values():
            for _ in range(100):
                if not port_open(self.host, port, 0.05):
                    break


def connected_clients(log: str) -> list[tuple[str, str]]:
    """(client id, user name) of each ``New client connected from … as <id> (…, u'<user>')`` log line."""
    return re.findall(r"New client connected from \S+ as (\S+) \([^)]*u'([^']*)'\)", log)
