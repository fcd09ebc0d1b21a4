"""Pulse oximetry and body temperature end to end, through real processes (issue 24): a simulated PLXS
oximeter with an overnight desaturation in its memory and a simulated °F thermometer with a fever →
``rpm-gateway run`` → the broker → ``rpm-cloud ingest`` (alerts in its transaction) → PostgreSQL.

The desaturation (SpO2 89-91 %, below the usual 94-98 % target) opens one ``spo2_low`` alert; the fever
(101.1 °F, 38.4 °C) opens one ``fever`` alert; a reading of 80 % flagged invalid by the oximeter is stored
but judged by no rule (it would open ``spo2_critical``). A second gateway run on a wiped data directory
(a replaced SD card) reads both memories again and sends every record again: the cloud acks them all
and stores nothing twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.e2e.processes import command, running, wait_for, write_gateway_config

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

OXIMETER = "0C:E2:E0:24:00:01"
THERMOMETER = "0C:E2:E0:24:00:02"
PATIENT = "p-e2e-oximetry"
INVALID = 1 << 15  # PLX Spot-Check Measurement Status bit 15: invalid measurement detected (PLXS 1.0 3.1.1.3)


def scenario(start: datetime) -> dict:
    night = [  # 23:00 to 06:00, every 30 min: 95 % falling to 89 % by 03:00, then recovering a little
        {"spo2": spo2, "pulse_rate": 72, "timestamp": (start + timedelta(minutes=30 * n)).isoformat()}
        for n, spo2 in enumerate([95, 94, 93, 92, 91, 90, 89, 89, 90, 90, 91, 91, 91, 91])
    ]
    night.append({"spo2": 80, "pulse_rate": 70, "status": INVALID,
                  "timestamp": (start + timedelta(hours=7, minutes=10)).isoformat()})
    return {"peripherals": [
        {"type": "pulse_oximeter", "address": OXIMETER, "name": "E2E oximeter", "records": night},
        {"type": "thermometer", "address": THERMOMETER, "name": "E2E thermometer", "fahrenheit": True,
         "records": [{"value": 98.4, "timestamp": (start + timedelta(hours=8)).isoformat(), "site": 2},
                     {"value": 101.1, "timestamp": (start + timedelta(hours=9)).isoformat(), "site": 2}]},
    ]}


def test_an_overnight_desaturation_and_a_fever_each_open_one_alert_and_a_second_download_adds_nothing(
    fresh_database_url: str, mqtt_broker, unique_id: str, tmp_path: Path
) -> None:
    gateway_id = f"gw-{unique_id}"
    start = (datetime.now() - timedelta(hours=12)).replace(second=0, microsecond=0)
    scenario_path = tmp_path / "scenario.json"
    scenario_path.write_text(json.dumps(scenario(start)))
    first_config, second_config = (
        write_gateway_config(tmp_path / name, gateway_id, tmp_path / data_dir, mqtt_broker.url, [OXIMETER, THERMOMETER])
        for name, data_dir in (("gateway.toml", "gateway-data"), ("gateway-again.toml", "gateway-data-again")))
    env = {"RPM_DATABASE_URL": fresh_database_url, "RPM_MQTT_URL": mqtt_broker.url,
           "RPM_SIM_BLE_SCENARIO": str(scenario_path)}
    for address, create in ((OXIMETER, ["--create-patient"]), (THERMOMETER, [])):
        assign = subprocess.run(
            [*command("rpm-cloud"), "assign", f"ble:{address}", PATIENT, *create,
             "--from", "2000-01-01T00:00:00+00:00"],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        )
        assert assign.returncode == 0, assign.stderr + assign.stdout

    def stored() -> list[tuple[str, str]]:
        with psycopg.connect(fresh_database_url) as conn:
            return conn.execute("SELECT device_uid, id FROM readings WHERE patient_id = %s", (PATIENT,)).fetchall()

    def delivered_again() -> bool:
        outbox = tmp_path / "gateway-data-again" / "outbox.sqlite"
        if not outbox.exists():
            return False
        with contextlib.closing(sqlite3.connect(outbox)) as db:
            try:
                return db.execute("SELECT count(*) FROM delivered").fetchone()[0] == 17
            except sqlite3.OperationalError:  # the gateway is still creating its tables
                return False

    logs = [tmp_path / "ingest.log", tmp_path / "gateway.log", tmp_path / "gateway-again.log"]
    with running([*command("rpm-cloud"), "ingest", "--workers", "1"], env, logs[0]):
        with running([*command("rpm-gateway"), "run", "--config", str(first_config)], env, logs[1]):
            wait_for(lambda: len(stored()) == 17, 90, "15 oximetry and 2 temperature readings stored", logs)
        first = sorted(stored())
        with running([*command("rpm-gateway"), "run", "--config", str(second_config)], env, logs[2]):
            wait_for(delivered_again, 90, "all 17 readings sent again and acked by the cloud", logs)
        assert sorted(stored()) == first

    with psycopg.connect(fresh_database_url) as conn:
        alerts = conn.execute(
            "SELECT rule_id, count(*) FROM alerts WHERE patient_id = %s GROUP BY rule_id ORDER BY rule_id", (PATIENT,)
        ).fetchall()
        sites = conn.execute(
            "SELECT DISTINCT body_site FROM readings WHERE patient_id = %s AND kind = 'body_temperature'", (PATIENT,)
        ).fetchall()
        temps = conn.execute(
            "SELECT o.value, o.unit FROM observations o JOIN readings r ON r.id = o.reading_id"
            " WHERE r.patient_id = %s AND o.metric = 'body_temperature' ORDER BY o.value", (PATIENT,)
        ).fetchall()
        invalid = conn.execute(
            "SELECT count(*) FROM readings WHERE patient_id = %s AND 'invalid_measurement' = ANY(flags)", (PATIENT,)
        ).fetchone()
    assert alerts == [("fever", 1), ("spo2_low", 1)], alerts
    assert [(round(float(v), 1), u) for v, u in temps] == [(36.9, "Cel"), (38.4, "Cel")]
    assert invalid == (1,)  # stored, but it opened no spo2_critical
    assert sites == [("body",)]  # HTS Temperature Type 2, from the frame: the FHIR Observation's bodySite

