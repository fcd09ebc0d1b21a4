"""The cloud's own mosquitto password lines work in the real broker (the deploy config, its gateway
listener and ACLs): a password the cloud hashed logs a gateway in after a reload, a wrong one does not,
and a rotated password drops the session that used the old one (mosquitto re-checks connected clients on
SIGHUP), which is what makes the gateway ask the bootstrap endpoint again."""

from __future__ import annotations

import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from cloud.fleet import FleetError
from cloud.fleet.broker_passwords import check_mosquitto_hash, mosquitto_hash, reload_broker, update_password_file
from tests.deploy.deploy_broker import DeployMosquitto

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


class Login:
    def __init__(self, port: int, username: str, password: str) -> None:
        self.result: Any = None
        self.connected = threading.Event()
        self.dropped = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"x-{secrets.token_hex(4)}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            self.result = reason
            self.connected.set()

        def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            self.dropped.set()
        self.client.on_connect, self.client.on_disconnect = on_connect, on_disconnect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"

    @property
    def ok(self) -> bool:
        return not self.result.is_failure

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_the_hash_matches_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    passwd = tmp_path / "p"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "gw-x", "s3cret"], check=True, capture_output=True)
    written = passwd.read_text().strip().split(":", 1)[1]
    assert check_mosquitto_hash("s3cret", written) and not check_mosquitto_hash("s3creT", written)
    _, _, iterations, salt, _ = written.split("$")
    import base64
    assert mosquitto_hash("s3cret", salt=base64.b64decode(salt), iterations=int(iterations)) == written


def test_a_password_the_cloud_wrote_logs_the_gateway_in_and_a_rotation_drops_the_old_session(tmp_path: Path) -> None:
    broker = DeployMosquitto(tmp_path / "broker", external={"gw-other": "other-pass"}, internal={})
    broker.start()
    passwd = tmp_path / "broker" / "external.passwd"
    reload = f"kill -HUP {broker._process.pid}"  # type: ignore[union-attr]
    logins: list[Login] = []
    try:
        first = secrets.token_urlsafe(24)
        update_password_file(passwd, "gw-fleet-1", mosquitto_hash(first))
        reload_broker(reload, None)
        time.sleep(0.5)  # SIGHUP is asynchronous; mosquitto re-reads on its next loop
        logins.append(old := Login(broker.external_port, "gw-fleet-1", first))
        assert old.ok, old.result
        logins.append(wrong := Login(broker.external_port, "gw-fleet-1", first + "x"))
        assert not wrong.ok
        logins.append(other := Login(broker.external_port, "gw-other", "other-pass"))
        assert other.ok, "the line mosquitto_passwd wrote is kept"
        # Rotation: the new hash replaces the line; the session of the old password is dropped at reload.
        second = secrets.token_urlsafe(24)
        update_password_file(passwd, "gw-fleet-1", mosquitto_hash(second))
        reload_broker(reload, None)
        assert old.dropped.wait(10), "the old password's session survived the reload"
        old.client.loop_stop()
        logins.append(again := Login(broker.external_port, "gw-fleet-1", first))
        assert not again.ok
        logins.append(new := Login(broker.external_port, "gw-fleet-1", second))
        assert new.ok
        assert not other.dropped.is_set()
        # Removing the user (claim released) refuses it.
        update_password_file(passwd, "gw-fleet-1", None)
        reload_broker(reload, None)
        assert new.dropped.wait(10)
        assert passwd.read_text().count("\n") == 1 and passwd.read_text().startswith("gw-other:")
    finally:
        for login in logins:
            login.close()
        broker.stop()


def test_a_hung_or_failing_reload_is_a_503_not_a_500(tmp_path: Path) -> None:
    with pytest.raises(FleetError) as hung:
        reload_broker("sleep 5", None, timeout_s=0.2)
    assert hung.value.status == 503 and hung.value.slug == "broker-reload-failed"
    with pytest.raises(FleetError) as failed:
        reload_broker("exit 3", None)
    assert failed.value.status == 503
    with pytest.raises(FleetError) as no_pid:
        reload_broker(None, tmp_path / "missing.pid")
    assert no_pid.value.status == 503
