"""Issue 19, item 2, with the cloud: a USB meter confirmed in the workspace reaches the patient's record,
also after it is plugged into the gateway's other socket, and a second meter of the same model that was
ignored never does.

Real processes, as the onboarding end-to-end test runs them (``tests/e2e``): the deploy mosquitto,
``rpm-cloud api`` and ``rpm-cloud ingest`` on a fresh database, ``rpm-gateway run`` with two
``[[usb.devices]]`` sockets on pseudo-terminals. The meter is proposed under its socket's uid (its serial
is not known before a session); the care team confirms that uid, which the cloud binds to the gateway and
assigns to the patient; the readings must carry exactly that uid for ingest to file them for the patient.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from firmware_sims.serial.astm_meter import GlucoseMeter, GlucoseResult, PtyAstmMeter
from tests.deploy.deploy_broker import DeployMosquitto
from tests.e2e.processes import command, identity_of, running, wait_for
from tests.e2e.test_onboarding_e2e import PATIENT, Api, seed

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.mosquitto]


def test_a_meter_confirmed_in_the_workspace_reaches_the_record_from_either_socket_and_an_ignored_one_never(
        fresh_database_url: str, tmp_path: Path) -> None:
    from cloud.embedded import free_port

    seed(fresh_database_url)
    data_dir = tmp_path / "var-lib-rpm-gateway"
    gateway_id, code = identity_of(data_dir)
    ingest_password, api_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    broker = DeployMosquitto(tmp_path / "broker", external={}, internal={"ingest": ingest_password,
                                                                          "api": api_password})
    broker.start()
    broker_env = {"RPM_GATEWAY_BROKER_URL": broker.url(broker.external_port),
                  "RPM_BROKER_PASSWORD_FILE": str(tmp_path / "broker" / "external.passwd"),
                  "RPM_BROKER_RELOAD_COMMAND": f"kill -HUP {broker._process.pid}"}  # type: ignore[union-attr]
    front, back = str(tmp_path / "ttyFront"), str(tmp_path / "ttyBack")
    base = (datetime.now() - timedelta(hours=6)).replace(second=0, microsecond=0)
    mine = GlucoseMeter(results=[GlucoseResult(base, 131), GlucoseResult(base + timedelta(hours=1), 132)],
                        serial="7390-2000001")
    neighbours = GlucoseMeter(results=[GlucoseResult(base, 231)], serial="7390-2000002")
    cables = {"mine-front": PtyAstmMeter(mine, link_path=front), "mine-back": PtyAstmMeter(mine, link_path=back),
              "other-front": PtyAstmMeter(neighbours, link_path=front)}
    hardware = tmp_path / "gateway.toml"
    hardware.write_text(f"""
[ble]
enabled = false
[usb]
poll_interval_s = 0.2
[[usb.devices]]
port = "{front}"
profile = "serial.astm"
needs_confirmation = true
[[usb.devices]]
port = "{back}"
profile = "serial.astm"
needs_confirmation = true
[provisioning]
poll_interval_cap_s = 1
""")
    api_port, key = free_port(), f"usb-identity-{secrets.token_hex(8)}-dev-key-0123456789"
    internal = broker.url(broker.internal_port)
    cloud_env = {"RPM_DATABASE_URL": fresh_database_url, "RPM_JWT_DEV_KEY": key}
    api_env = {**cloud_env, "RPM_MQTT_URL": internal, "RPM_MQTT_USERNAME": "api", "RPM_MQTT_PASSWORD": api_password,
               "RPM_BOOTSTRAP_RETRY_AFTER_S": "1", **broker_env}
    ingest_env = {**cloud_env, "RPM_MQTT_URL": internal, "RPM_MQTT_USERNAME": "ingest",
                  "RPM_MQTT_PASSWORD": ingest_password}
    logs = [tmp_path / "api.log", tmp_path / "ingest.log", tmp_path / "gateway.log"]
    api = Api(api_port, key)
    confirmed_uid, others_uid = f"usb:0000:0000:{front}", "usb:0000:0000:7390-2000002"
    path = f"/v1/gateways/{gateway_id}"
    cables["mine-front"].plug_in()
    try:
        with (running([*command("rpm-cloud"), "api", "--port", str(api_port)], api_env, logs[0]),
              running([*command("rpm-cloud"), "ingest", "--workers", "1"], ingest_env, logs[1]),
              running([*command("rpm-gateway"), "run", "--config", str(hardware), "--bootstrap-url",
                       f"{api.base}/bootstrap/v1/poll"], {"RPM_GATEWAY_DATA": str(data_dir)}, logs[2])):
            wait_for(lambda: api.get_json(path, api.admin), 60, "the gateway's first poll", logs)
            typed = code.lower().replace("-", " ")
            claimed = api.call("POST", "/v1/gateways/claim", api.nurse, json={"code": typed, "patient_id": PATIENT})
            assert claimed.status_code == 201, claimed.text
            assert api.call("PUT", f"{path}/config", api.nurse,
                            json={"config": {"status_interval_s": 1}}).status_code == 200

            def candidates(expected: str) -> list[dict[str, Any]] | None:
                got = api.get_json(f"{path}/candidates", api.nurse)
                items = got["candidates"] if got else []
                return items if [c["uid"] for c in items] == [expected] else None

            wait_for(lambda: candidates(confirmed_uid), 60, "the meter proposed under its socket", logs)
            confirmed = api.call("POST", f"{path}/devices/{confirmed_uid}/confirm", api.nurse, json={})
            assert confirmed.status_code == 200 and confirmed.json()["patient_id"] == PATIENT, confirmed.text

            def record(n: int) -> list[dict[str, Any]] | None:
                got = api.get_json(f"/v1/patients/{PATIENT}/readings", api.nurse)
                items = got["readings"] if got else []
                return items if len(items) >= n else None

            wait_for(lambda: record(2), 90, "the confirmed meter's readings in the patient's record", logs)

            # The other socket, with one new result; then a neighbour's meter in the first socket, ignored.
            cables["mine-front"].pull_cable()
            mine.results.append(GlucoseResult(base + timedelta(hours=2), 133))
            cables["mine-back"].plug_in()
            wait_for(lambda: record(3), 90, "the moved meter's new reading in the record", logs)
            cables["other-front"].plug_in()
            wait_for(lambda: candidates(others_uid), 60, "the neighbour's meter proposed under its serial", logs)
            ignored = api.call("POST", f"{path}/devices/{others_uid}/ignore", api.nurse)
            assert ignored.status_code == 200, ignored.text
            cables["other-front"].pull_cable()
            cables["other-front"].plug_in()
            wait_for(lambda: cables["other-front"].sent.endswith(b"\x04"), 30, "the ignored meter stopped", logs)
            items = record(3)
            assert items is not None and len(items) == 3
    finally:
        for cable in cables.values():
            if cable.plugged_in:
                cable.pull_cable()
        broker.stop()

    with psycopg.connect(fresh_database_url) as conn:
        stored = conn.execute("SELECT device_uid, patient_id FROM readings ORDER BY measured_at").fetchall()
        unassigned = conn.execute("SELECT count(*) FROM readings WHERE patient_id IS NULL").fetchone()
        bound = conn.execute("SELECT bound_gateway_id FROM devices WHERE uid = %s", (confirmed_uid,)).fetchone()
    assert stored == [(confirmed_uid, PATIENT)] * 3  # one device, the confirmed one, from both sockets
    assert unassigned == (0,) and bound == (gateway_id,)
    assert b"R|" not in cables["other-front"].sent  # the ignored meter's results were never asked for
    assert "Traceback" not in logs[2].read_text()
