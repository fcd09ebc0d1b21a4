"""One reading, end to end, through real processes: a simulated BLE cuff emits a real 0x2A35 frame →
``rpm-gateway run`` decodes it, commits it to its outbox, publishes a batch → the broker →
``rpm-cloud ingest`` stores it in PostgreSQL and acks → the gateway empties its outbox →
``rpm-cloud api`` returns it from ``GET /v1/patients/{id}/readings``.

Each stage is load-bearing: without the insert the API never shows the reading; without the ack (or
the outbox delete) the gateway's outbox never empties, which the retained status shows.
"""

from __future__ import annotations

import json
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest

from cloud.embedded import free_port
from gateway.contract import GatewayStatus, status_topic
from tests.e2e.processes import command, running, wait_for, write_gateway_config

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CUFF = "C0:FF:EE:0E:2E:01"
PATIENT = "p-e2e-skeleton"


class StatusWatcher:
    """Keeps the latest retained status the gateway published."""

    def __init__(self, host: str, port: int, gateway_id: str, v5: bool) -> None:
        self.latest: GatewayStatus | None = None
        self._lock = threading.Lock()
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol,
                                  client_id=f"{gateway_id}-status-watch")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(status_topic(gateway_id), qos=1)
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        status = GatewayStatus.model_validate_json(message.payload)
        with self._lock:
            self.latest = status

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_a_cuff_reading_travels_from_the_device_to_the_api(
    fresh_database_url: str, mqtt_broker, unique_id: str, tmp_path: Path
) -> None:
    gateway_id = f"gw-{unique_id}"
    measured = (datetime.now() - timedelta(hours=1)).replace(microsecond=0)
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"peripherals": [{
        "type": "blood_pressure", "address": CUFF, "name": "E2E cuff", "has_current_time": False,
        "records": [{"systolic": 152, "diastolic": 97, "mean_arterial": 115, "pulse": 71, "user_id": 1,
                     "timestamp": measured.isoformat()}],
    }]}))
    config = write_gateway_config(tmp_path / "gateway.toml", gateway_id, tmp_path / "gateway-data", mqtt_broker.url,
                                  [CUFF])
    api_port = free_port()
    env = {
        "RPM_DATABASE_URL": fresh_database_url,
        "RPM_MQTT_URL": mqtt_broker.url,
        "RPM_JWT_DEV_KEY": f"e2e-{unique_id}-dev-key-0123456789abcdef",
        "RPM_SIM_BLE_SCENARIO": str(scenario),
    }
    assign = subprocess.run(
        [*command("rpm-cloud"), "assign", f"ble:{CUFF}", PATIENT, "--user-index", "1", "--create-patient",
         "--from", "2000-01-01T00:00:00+00:00"],
        env={**__import__("os").environ, **env}, capture_output=True, text=True, timeout=60,
    )
    assert assign.returncode == 0, assign.stderr + assign.stdout
    token = subprocess.run(
        [*command("rpm-cloud"), "token", "--role", "patient", "--patient", PATIENT],
        env={**__import__("os").environ, **env}, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip().splitlines()[-1]

    logs = [tmp_path / "ingest.log", tmp_path / "api.log", tmp_path / "gateway.log"]
    watcher = StatusWatcher(mqtt_broker.host, mqtt_broker.port, gateway_id, mqtt_broker.supports_v5)
    try:
        with (
            running([*command("rpm-cloud"), "ingest", "--workers", "1"], env, logs[0]),
            running([*command("rpm-cloud"), "api", "--port", str(api_port)], env, logs[1]),
            running([*command("rpm-gateway"), "run", "--config", str(config)], env, logs[2]),
        ):
            url = f"http://127.0.0.1:{api_port}/v1/patients/{PATIENT}/readings"

            def readings() -> list[dict] | None:
                try:
                    response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=2)
                except httpx.TransportError:
                    return None
                if response.status_code != 200:
                    return None
                body = response.json()
                items = body["readings"]
                return items or None

            items = wait_for(readings, 60, "the reading in the API", logs)
            stored_at = datetime.now(UTC)
            assert len(items) == 1
            reading = items[0]
            assert reading["kind"] == "blood_pressure"
            values = reading["values"]
            assert values["systolic"]["value"] == 152 and values["systolic"]["unit"] == "mm[Hg]"
            assert values["diastolic"]["value"] == 97

            def drained() -> bool:
                status = watcher.latest
                return bool(status and status.at > stored_at and status.online and status.outbox_depth == 0)

            wait_for(drained, 30, "the gateway's outbox to empty after the cloud's ack", logs)
    finally:
        watcher.close()

    with psycopg.connect(fresh_database_url) as conn:
        rows = conn.execute(
            "SELECT patient_id, device_uid, user_index, measured_at FROM readings WHERE device_uid = %s",
            (f"ble:{CUFF}",),
        ).fetchall()
    assert len(rows) == 1
    patient_id, _, user_index, measured_at = rows[0]
    assert (patient_id, user_index) == (PATIENT, 1)
    assert abs(measured_at - measured.astimezone(UTC)) < timedelta(seconds=1)
