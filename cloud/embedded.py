"""Embedded services for the one-command demo and for tests on a machine where none run.

- PostgreSQL from the binaries the ``pgserver`` wheel ships, on a free 127.0.0.1 port.
- An MQTT broker: a private ``mosquitto`` process on a free port where the binary exists (it speaks
  MQTT v5 and shared subscriptions), else the ``amqtt`` broker in-process (MQTT 3.1.1 only).

Nothing here is used in production, where ``RPM_DATABASE_URL`` / ``RPM_MQTT_URL`` name real services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.errors import CloudError

log = logging.getLogger(__name__)


class EmbeddedServiceError(CloudError, RuntimeError):
    """An embedded service could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port, 0.2):
            return
        time.sleep(0.05)
    raise EmbeddedServiceError(f"{what} did not listen on {host}:{port} within {timeout:.0f} s")


# --------------------------------------------------------------------------------------- PostgreSQL


@dataclass
class EmbeddedPostgres:
    """A private PostgreSQL server run from the ``pgserver`` wheel's binaries."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    _user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{name}"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        subprocess.run(
            [str(POSTGRES_BIN_PATH / tool), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self._user,
        )

    def start(self) -> EmbeddedPostgres:
        try:
            import pgserver  # noqa: F401  (the binaries come with it)
        except ImportError as err:
            raise EmbeddedServiceError("embedded PostgreSQL needs the pgserver wheel: pip install pgserver") from err
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # postgres refuses to run as root: run it as an unprivileged system user, as pgserver does.
            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            self._user = "pgserver"
            entry = ensure_user_exists(self._user)
            ensure_prefix_permissions(self.data_dir)
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid)
        pgdata = self.data_dir / "pgdata"
        if not (pgdata / "PG_VERSION").exists():
            self._run("initdb", "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-instructions")
        self.port = self.port or free_port(self.host)
        options = f"-h {self.host} -p {self.port} -k {pgdata} -c fsync=on -c max_connections=200"
        self._run("pg_ctl", "-D", str(pgdata), "-w", "-t", "60", "-o", options, "-l",
                  str(self.data_dir / "postgres.log"), "start", timeout=90)
        wait_for_port(self.host, self.port, 30, "embedded PostgreSQL")
        log.info("embedded PostgreSQL on %s:%s (data in %s)", self.host, self.port, pgdata)
        return self

    def stop(self) -> None:
        pgdata = self.data_dir / "pgdata"
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "-D", str(pgdata), "-w", "-m", "fast", "stop", timeout=60)


# --------------------------------------------------------------------------------------- MQTT


MOSQUITTO_CONFIG = """\
listener {port} {host}
allow_anonymous true
persistence false
# Mosquitto's default of 1000 drops QoS 1 messages to a slow subscriber in a burst.
max_queued_messages 1000000
max_inflight_messages 1000
max_packet_size 16777216
"""


@dataclass
class EmbeddedBroker:
    host: str
    port: int
    kind: str
    """``mosquitto`` (private process), ``amqtt`` (in-process) or ``external``."""
    supports_v5: bool
    _process: subprocess.Popen[bytes] | None = None
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _broker: Any = None
    _config_dir: Path | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._process = None
        if self._loop is not None and self._broker is not None:
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            with contextlib.suppress(Exception):
                future.result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self._loop = None
        if self._config_dir is not None:
            shutil.rmtree(self._config_dir, ignore_errors=True)
            self._config_dir = None


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def start_mosquitto(host: str = "127.0.0.1", port: int | None = None, extra_config: str = "") -> EmbeddedBroker:
    binary = mosquitto_binary()
    if binary is None:
        raise EmbeddedServiceError("the mosquitto binary is not installed")
    port = port or free_port(host)
    config_dir = Path(tempfile.mkdtemp(prefix="rpm-mosquitto-"))
    config = config_dir / "mosquitto.conf"
    config.write_text(MOSQUITTO_CONFIG.format(host=host, port=port) + extra_config)
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker = EmbeddedBroker(host, port, "mosquitto", True, _process=process, _config_dir=config_dir)
    try:
        wait_for_port(host, port, 10, "mosquitto")
    except EmbeddedServiceError:
        broker.stop()
        raise
    return broker


def start_amqtt(host: str = "127.0.0.1", port: int | None = None) -> EmbeddedBroker:
    """Run the amqtt broker on its own event loop in a daemon thread."""
    try:
        from amqtt.broker import Broker
    except ImportError as err:
        raise EmbeddedServiceError("the in-process broker needs amqtt: pip install amqtt") from err
    port = port or free_port(host)
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 2000}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            broker = Broker(config, loop=loop)
            await broker.start()
            holder["broker"] = broker

        try:
            loop.run_until_complete(boot())
        except Exception as err:  # reported to the starting thread below
            holder["error"] = err
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="amqtt-broker", daemon=True)
    thread.start()
    if not started.wait(15) or "error" in holder:
        raise EmbeddedServiceError(f"amqtt broker failed to start: {holder.get('error', 'timeout')}")
    # amqtt logs each refused MQTT v5 CONNECT (clients then fall back to 3.1.1) as a warning.
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return EmbeddedBroker(host, port, "amqtt", False, _thread=thread, _loop=loop, _broker=holder["broker"])


def start_broker(prefer: str = "mosquitto") -> EmbeddedBroker:
    """A private mosquitto if the binary exists (and ``prefer`` allows), else amqtt in-process."""
    if prefer == "mosquitto" and mosquitto_binary() is not None:
        return start_mosquitto()
    return start_amqtt()
