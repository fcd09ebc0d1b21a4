"""Onboarding end to end with real processes (issue 19), once with passwords and once with client
certificates (the broker of deploy/mosquitto/mosquitto.certificates.conf). A fresh gateway with no broker
settings (its TOML names only the simulated radio and the pseudo-terminal its USB meter is on, the box's
hardware) polls the real ``rpm-cloud api``'s bootstrap endpoint, is claimed through the API with the code a
person types off the label, and gets a password the cloud wrote into the deploy mosquitto's gateway
password file (reloaded by SIGHUP), or a certificate the cloud signed for its CSR, and connects as itself.
The BLE cuff and the USB meter it hears are proposed in ``GET /v1/gateways/{id}/candidates``; the cuff is
confirmed (user 1) and the meter ignored through the API; the cuff's readings reach the patient's record
through ``rpm-cloud ingest``, the meter is never read. A remote config that breaks the uplink (a closed
broker port) is rolled back by the gateway, and the rejection shows in ``GET /v1/gateways/{id}``."""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from cloud.api.tokens import mint_token
from cloud.embedded import free_port
from cloud.settings import CloudSettings
from firmware_sims.serial.astm_meter import GlucoseMeter, GlucoseResult, PtyAstmMeter
from tests.deploy.deploy_broker import DeployMosquitto, connected_clients
from tests.e2e.certificate_broker import CertificateMosquitto
from tests.e2e.processes import command, identity_of, running, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.mosquitto]

CUFF = "C0:FF:EE:19:00:01"
PATIENT = "p-onboarding"
TEAM = "t-onboarding"


class Api:
    def __init__(self, port: int, key: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        settings = CloudSettings(jwt_dev_key=key)
        self.nurse = {"Authorization": "Bearer " + mint_token(settings, role="care_team", sub="nurse-ida",
                                                              care_teams=(TEAM,), patient=None, ttl_s=3600)}
        self.admin = {"Authorization": "Bearer " + mint_token(settings, role="admin", sub="admin-olu",
                                                              care_teams=(), patient=None, ttl_s=3600)}

    def call(self, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.base + path, headers=headers, timeout=15, **kwargs)

    def get_json(self, path: str, headers: dict[str, str]) -> Any:
        try:
            response = self.call("GET", path, headers)
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None


def seed(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Hypertension clinic')", (TEAM,))
        conn.execute("INSERT INTO patients (id, display_name) VALUES (%s, 'Ana')", (PATIENT,))
        conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES"
                     " (%s, %s, '{readings,alerts,twin}', %s)", (PATIENT, TEAM, PATIENT))


@pytest.mark.parametrize("credentials", ["password", "certificate"])
def test_a_fresh_gateway_is_claimed_provisioned_and_its_confirmed_device_reaches_the_record(
        fresh_database_url: str, tmp_path: Path, credentials: str) -> None:
    seed(fresh_database_url)
    data_dir = tmp_path / "var-lib-rpm-gateway"
    gateway_id, code = identity_of(data_dir)
    ingest_password, api_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    services = {"ingest": ingest_password, "api": api_password}
    broker: DeployMosquitto | CertificateMosquitto
    if credentials == "password":
        broker = DeployMosquitto(tmp_path / "broker", external={}, internal=services)
        broker.start()
        broker_env = {"RPM_GATEWAY_BROKER_URL": broker.url(broker.external_port),
                      "RPM_BROKER_PASSWORD_FILE": str(tmp_path / "broker" / "external.passwd"),
                      "RPM_BROKER_RELOAD_COMMAND": f"kill -HUP {broker._process.pid}"}  # type: ignore[union-attr]
        closed_url = f"mqtt://127.0.0.1:{free_port()}"
    else:
        broker = CertificateMosquitto(tmp_path / "broker", internal=services)
        broker.start()
        broker_env = {"RPM_GATEWAY_CREDENTIALS": "certificate", "RPM_GATEWAY_BROKER_URL": broker.gateway_url(),
                      "RPM_GATEWAY_BROKER_CA_FILE": str(broker.ca_cert), "RPM_GATEWAY_CA_CERT": str(broker.ca_cert),
                      "RPM_GATEWAY_CA_KEY": str(broker.ca_key)}
        closed_url = f"mqtts://127.0.0.1:{free_port()}"
    measured = (datetime.now() - timedelta(hours=2)).replace(microsecond=0)
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"peripherals": [{
        "type": "blood_pressure", "address": CUFF, "name": "A&D UA-651BLE", "has_current_time": False,
        "records": [{"systolic": 138, "diastolic": 86, "mean_arterial": 103, "pulse": 66, "user_id": 1,
                     "timestamp": measured.isoformat()},
                    {"systolic": 121, "diastolic": 79, "mean_arterial": 93, "pulse": 70, "user_id": 1,
                     "timestamp": (measured + timedelta(minutes=30)).isoformat()}],
    }]}))
    meter_link = str(tmp_path / "ttyMeter")
    meter = PtyAstmMeter(GlucoseMeter(results=[GlucoseResult(measured - timedelta(hours=i), 140 + i)
                                               for i in range(3)]), link_path=meter_link)
    # The box's hardware, not its cloud: no gateway id, no broker, no credentials.
    hardware = tmp_path / "gateway.toml"
    hardware.write_text(f"""
[ble]
backend = "sim"
[[usb.devices]]
port = "{meter_link}"
profile = "serial.astm"
needs_confirmation = true
[provisioning]
poll_interval_cap_s = 1
config_apply_timeout_s = 8
""")
    api_port, key = free_port(), f"onboarding-{secrets.token_hex(8)}-dev-key-0123456789"
    internal = broker.url(broker.internal_port)
    cloud_env = {"RPM_DATABASE_URL": fresh_database_url, "RPM_JWT_DEV_KEY": key}
    api_env = {**cloud_env, "RPM_MQTT_URL": internal, "RPM_MQTT_USERNAME": "api", "RPM_MQTT_PASSWORD": api_password,
               "RPM_BOOTSTRAP_RETRY_AFTER_S": "1", **broker_env}
    ingest_env = {**cloud_env, "RPM_MQTT_URL": internal, "RPM_MQTT_USERNAME": "ingest",
                  "RPM_MQTT_PASSWORD": ingest_password}
    logs = [tmp_path / "api.log", tmp_path / "ingest.log", tmp_path / "gateway.log"]
    api = Api(api_port, key)
    meter.plug_in()
    try:
        with (running([*command("rpm-cloud"), "api", "--port", str(api_port)], api_env, logs[0]),
              running([*command("rpm-cloud"), "ingest", "--workers", "1"], ingest_env, logs[1]),
              running([*command("rpm-gateway"), "run", "--config", str(hardware), "--bootstrap-url",
                       f"{api.base}/bootstrap/v1/poll"],
                      {"RPM_GATEWAY_DATA": str(data_dir), "RPM_SIM_BLE_SCENARIO": str(scenario)}, logs[2])):
            path = f"/v1/gateways/{gateway_id}"
            # Polling, unclaimed: the administrators' fleet view knows it; the care team does not yet.
            wait_for(lambda: api.get_json(path, api.admin), 60, "the gateway's first poll", logs)
            assert api.call("GET", path, api.nurse).status_code == 404
            assert not (data_dir / "credentials.json").exists()

            typed = code.lower().replace("-", " ").replace("0", "o")
            claimed = api.call("POST", "/v1/gateways/claim", api.nurse, json={"code": typed, "patient_id": PATIENT})
            assert claimed.status_code == 201, claimed.text
            first = api.call("PUT", f"{path}/config", api.nurse, json={"config": {"status_interval_s": 1}})
            assert first.status_code == 200 and first.json()["version"] == 1, first.text

            def online_on_version(version: int) -> dict[str, Any] | None:
                got = api.get_json(path, api.nurse)
                return got if got and got["online"] and got["config"]["running_version"] == version else None

            view = wait_for(lambda: online_on_version(1), 60, "the provisioned gateway online on config 1", logs)
            assert view["patient_id"] == PATIENT and view["credentials"]["delivered_at"] is not None
            assert view["credentials"]["kind"] == credentials

            def both_candidates() -> list[dict[str, Any]] | None:
                got = api.get_json(f"{path}/candidates", api.nurse)
                items = got["candidates"] if got else []
                kinds = {c["transport"] for c in items}
                return items if kinds == {"ble", "usb"} else None

            candidates = wait_for(both_candidates, 60, "the cuff and the meter as candidates", logs)
            cuff = next(c for c in candidates if c["transport"] == "ble")
            usb = next(c for c in candidates if c["transport"] == "usb")
            assert cuff["uid"].upper() == f"BLE:{CUFF}" and cuff["profile"] == "ble.blood_pressure"
            assert usb["profile"] == "serial.astm" and meter_link in usb["uid"]
            confirmed = api.call("POST", f"{path}/devices/{cuff['uid']}/confirm", api.nurse, json={"user_index": 1})
            assert confirmed.status_code == 200, confirmed.text
            assert confirmed.json()["patient_id"] == PATIENT and confirmed.json()["published"] is True
            ignored = api.call("POST", f"{path}/devices/{usb['uid']}/ignore", api.nurse)
            assert ignored.status_code == 200, ignored.text

            def readings() -> list[dict[str, Any]] | None:
                got = api.get_json(f"/v1/patients/{PATIENT}/readings", api.nurse)
                items = got["readings"] if got else []
                return items if len(items) >= 2 else None

            items = wait_for(readings, 90, "the confirmed cuff's readings in the patient's record", logs)
            assert {r["values"]["systolic"]["value"] for r in items} == {138, 121}
            assert {r["kind"] for r in items} == {"blood_pressure"}
            wait_for(lambda: (got := api.get_json(f"{path}/candidates", api.nurse)) and got["candidates"] == [],
                     30, "no candidates left once both are decided", logs)

            # A config that breaks the uplink: applied, not connected within 8 s, rolled back, reported.
            broken = api.call("PUT", f"{path}/config", api.nurse, json={"config": {
                "status_interval_s": 1, "mqtt": {"url": closed_url}}, "reason": "wrong port"})
            assert broken.status_code == 200 and broken.json()["version"] == 4, broken.text

            def rejected() -> dict[str, Any] | None:
                got = api.get_json(path, api.nurse)
                return got if got and (got["config"]["rejected"] or {}).get("version") == 4 else None

            view = wait_for(rejected, 90, "the rolled-back config reported in the fleet view", logs)
            assert "rolled back" in view["config"]["rejected"]["reason"]
            assert view["config"]["running_version"] == 3 and view["config"]["latest_version"] == 4
            assert "config_rejected" in view["problems"]
            assert wait_for(lambda: online_on_version(3), 30, "online again on config 3", logs)
            answer = api.get_json(f"{path}/config", api.nurse)
            assert answer["rejected"]["version"] == 4 and answer["acknowledged"] is False

            if credentials == "password":
                # Rotation: the broker drops the old password's session at once; the refused gateway asks again
                # (at most once a minute), gets the new one, and its status marks the old one revoked.
                before = api.get_json(path, api.nurse)["credentials"]["delivered_at"]
                rotated = api.call("POST", f"{path}/credentials/rotate", api.nurse)
                assert rotated.status_code == 200 and rotated.json()["issued"] is True, rotated.text

                def renewed() -> dict[str, Any] | None:
                    got = api.get_json(path, api.nurse)
                    fresh = got and got["online"] and got["credentials"]["delivered_at"] not in (None, before)
                    return got if fresh else None

                wait_for(renewed, 120, "the gateway back online with its rotated password", logs)
    finally:
        meter.pull_cable()
        broker.stop()

    # Logged in as itself: with the password the cloud wrote (no mosquitto_passwd ran for it), or with the
    # certificate the cloud signed for its CSR (CN = user name = client id).
    assert (gateway_id, gateway_id) in connected_clients(broker.log_text())
    with psycopg.connect(fresh_database_url) as conn:
        stored = conn.execute("SELECT device_uid, patient_id, user_index FROM readings ORDER BY measured_at").fetchall()
        bound = conn.execute("SELECT bound_gateway_id FROM devices WHERE upper(uid) = upper(%s)",
                             (f"ble:{CUFF}",)).fetchone()
        plain = conn.execute("SELECT count(*) FROM gateway_credentials WHERE pending_password IS NOT NULL").fetchone()
        kinds = conn.execute("SELECT revoked_at, delivered_at FROM gateway_credentials ORDER BY id").fetchall()
        audited = {r[0] for r in conn.execute("SELECT action FROM audit_log WHERE %s = ANY(patient_ids)", (PATIENT,))}
    assert len(stored) == 2 and {(p, u) for _, p, u in stored} == {(PATIENT, 1)}
    assert all(uid.startswith("ble:") for uid, _, _ in stored), "the ignored meter was never read"
    assert bound == (gateway_id,)
    assert plain == (0,), "the plain password is dropped once the gateway used it"
    if credentials == "password":
        assert [(r is not None, d is not None) for r, d in kinds] == [(True, True), (False, True)]
        assert "credentials renewed" in logs[2].read_text()
    else:
        assert [(r is not None, d is not None) for r, d in kinds] == [(False, True)]
    assert {"POST /v1/gateways/claim", "PUT /v1/gateways/{gateway_id}/config",
            "POST /v1/gateways/{gateway_id}/devices/{uid:path}/confirm"} <= audited
    text = logs[2].read_text()
    assert "Traceback" not in text, text[-3000:]
