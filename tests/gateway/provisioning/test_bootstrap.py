"""A fresh gateway with no TOML is claimed, provisioned through the signed bootstrap poll and connects
to the deploy-config mosquitto as itself (real ``rpm-gateway run`` process, real broker with the deploy
ACLs and password file, a real HTTP server that checks the poll as the contract says the cloud must)."""

from __future__ import annotations

import json
import secrets
import stat
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.contract import GatewayStatus, status_topic
from tests.deploy.deploy_broker import DeployMosquitto, connected_clients
from tests.e2e.processes import command, identity_of, running, wait_for
from tests.gateway.provisioning.bootstrap_server import BootstrapServer, code_hash

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


class StatusWatcher:
    """The retained status of one gateway, read as the API's broker user on the services listener."""

    def __init__(self, port: int, password: str, gateway_id: str) -> None:
        self.latest: GatewayStatus | None = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{secrets.token_hex(4)}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set("api", password)
        self.client.on_connect = lambda c, *_: c.subscribe(status_topic(gateway_id), qos=1)
        self.client.on_message = lambda c, u, m: setattr(self, "latest", GatewayStatus.model_validate_json(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_a_fresh_gateway_is_claimed_provisioned_and_connects_as_itself(tmp_path: Path) -> None:
    data_dir = tmp_path / "var-lib-rpm-gateway"
    gateway_id, code = identity_of(data_dir)
    assert gateway_id.startswith("gw-") and len(gateway_id) == 19
    password, api_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    broker = DeployMosquitto(tmp_path / "broker", external={gateway_id: password}, internal={"api": api_password})
    broker.start()
    log = tmp_path / "gateway.log"
    watcher = StatusWatcher(broker.internal_port, api_password, gateway_id)
    try:
        with BootstrapServer(retry_after_s=1) as cloud, running(
                [*command("rpm-gateway"), "run", "--bootstrap-url", cloud.url],
                {"RPM_GATEWAY_DATA": str(data_dir)}, log):
            wait_for(lambda: len(cloud.polls) >= 2, 30, "two unclaimed polls", [log])
            assert not (data_dir / "credentials.json").exists()
            # The claim, as a person types the code off the label: lower case, O for 0, no dashes.
            typed = code.lower().replace("-", " ").replace("0", "o")
            assert cloud.claim(typed, {
                "patient_id": "p-bootstrap", "config_version": 1, "config": {"status_interval_s": 1},
                "mqtt": {"url": broker.url(broker.external_port), "username": gateway_id, "password": password},
            }) == gateway_id

            def provisioned() -> GatewayStatus | None:
                status = watcher.latest
                return status if status and status.online and status.config and status.config.version == 1 else None

            status = wait_for(provisioned, 40, "the provisioned gateway's status on the broker", [log])
            assert status.config is not None and status.config.provisioning == "provisioned"
            assert status.uplink_error is None
    finally:
        watcher.close()
        broker.stop()

    poll = cloud.polls[0]
    assert poll["claim_code_sha256"] == code_hash(code) and poll["gateway_id"] == gateway_id
    assert poll["software_version"] and poll["config_version"] is None
    csr = x509.load_pem_x509_csr(poll["csr"].encode())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == gateway_id
    assert cloud.refusals == []
    assert len({p["nonce"] for p in cloud.polls}) == len(cloud.polls)
    # Logged in as itself: the deploy listener made its user name its client id.
    assert (gateway_id, gateway_id) in connected_clients(broker.log_text())
    for name in ("identity.key", "claim_secret", "credentials.json", "mqtt-client.key", "remote_config.json"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
    stored = json.loads((data_dir / "credentials.json").read_text())
    assert stored["mqtt"]["password"] == password and stored["patient_id"] == "p-bootstrap"
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert text.count("waits to be claimed") == 1


def test_an_unreachable_bootstrap_endpoint_is_one_sentence_then_quiet_retries(tmp_path: Path) -> None:
    from cloud.embedded import free_port

    closed = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[ble]\nenabled = false\n[usb]\nenabled = false\n'
                      f'[provisioning]\nbootstrap_url = "http://127.0.0.1:{closed}/bootstrap/v1/poll"\n'
                      "poll_interval_cap_s = 0.2\n[log]\nlevel = \"DEBUG\"\n")
    log = tmp_path / "gateway.log"
    with running([*command("rpm-gateway"), "run", "--config", str(config), ], {}, log):
        wait_for(lambda: "cannot reach the cloud's bootstrap endpoint" in log.read_text(), 20, "the sentence", [log])
        # Five more tries (at the cap, 0.2 s apart), each only at debug level.
        wait_for(lambda: "(again, 5 times)" in log.read_text(), 20, "five quiet retries", [log])
    text = log.read_text()
    said = [line for line in text.splitlines() if "cannot reach the cloud's bootstrap endpoint" in line
            and " DEBUG " not in line]
    assert len(said) == 1, text
    assert "Traceback" not in text
