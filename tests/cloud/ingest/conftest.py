from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud.ingest.consumer import IngestWorker
from cloud.settings import CloudSettings
from tests.cloud.ingest.ingest_traffic import Gateway, deploy_queueing_section


@pytest.fixture
def ingest_settings(fresh_database_url: str, mqtt_broker) -> CloudSettings:  # type: ignore[no-untyped-def]
    return CloudSettings(database_url=fresh_database_url, mqtt_url=mqtt_broker.url, ingest_batch_ms=20)


@pytest.fixture
def start_worker(unique_id: str) -> Iterator[Callable[..., IngestWorker]]:
    """Start ingest workers that are stopped after the test."""
    started: list[IngestWorker] = []

    def start(settings: CloudSettings, **kwargs: object) -> IngestWorker:
        worker = IngestWorker(settings, client_id=f"ingest-{unique_id}-{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(worker)
        worker.start()
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop(drain_timeout_s=1)


@pytest.fixture
def gateway(mqtt_broker, unique_id: str) -> Iterator[Gateway]:  # type: ignore[no-untyped-def]
    gw = Gateway(mqtt_broker.host, mqtt_broker.port, f"gw-{unique_id}", v5=mqtt_broker.supports_v5)
    yield gw
    gw.close()


DEPLOY_MOSQUITTO = Path(__file__).resolve().parents[3] / "deploy" / "mosquitto"


@dataclass
class DeployBroker:
    host: str
    port: int
    passwords: dict[str, str]

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


@pytest.fixture
def deploy_broker(tmp_path: Path) -> Iterator[Callable[[list[str]], DeployBroker]]:
    """A private mosquitto run with deploy/mosquitto's ACL file and queueing section, password auth on
    a plain listener (TLS is left to the deployment), and these users (each password random)."""
    import secrets
    import shutil
    import subprocess

    from cloud.embedded import free_port, mosquitto_binary, wait_for_port

    binary, passwd_tool = mosquitto_binary(), shutil.which("mosquitto_passwd")
    if binary is None or passwd_tool is None:
        pytest.skip("needs the mosquitto and mosquitto_passwd binaries")
    processes: list[subprocess.Popen[bytes]] = []

    def start(users: list[str]) -> DeployBroker:
        passwords = {user: secrets.token_hex(8) for user in users}
        passwd = tmp_path / "passwd"
        for user, password in passwords.items():
            subprocess.run([passwd_tool, "-b", *(["-c"] if not passwd.exists() else []), str(passwd), user, password],
                           check=True, capture_output=True)
        port = free_port()
        config = tmp_path / "mosquitto.conf"
        # As root, mosquitto drops to user "mosquitto", who cannot read pytest's private tmp dir.
        run_as = "user root\n" if os.geteuid() == 0 else ""
        config.write_text(
            run_as + f"per_listener_settings false\nallow_anonymous false\npassword_file {passwd}\n"
            f"acl_file {DEPLOY_MOSQUITTO / 'acl'}\nlistener {port} 127.0.0.1\npersistence false\n"
            + deploy_queueing_section((DEPLOY_MOSQUITTO / "mosquitto.conf").read_text())
        )
        processes.append(subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        wait_for_port("127.0.0.1", port, 10, "mosquitto (deploy config)")
        return DeployBroker("127.0.0.1", port, passwords)

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)
