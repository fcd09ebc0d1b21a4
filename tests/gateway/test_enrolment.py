"""Enrolment: durable, honours the config, and the pairing window enrols what it hears."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sims.ble.air import AIR, SCENARIO_ENV
from firmware_sims.ble.cli import example_scenario
from firmware_sims.ble.peripherals import BloodPressureCuff, GlucoseMeter, HeartRateStrap, WeightScale
from gateway.config import parse_config
from gateway.discovery.ble import pair_window
from gateway.discovery.ble_config import BleConfig, EnrolledBleDevice
from gateway.discovery.enrolment import EnrolmentStore
from gateway.discovery.scan import run_pair
from tests.gateway.ble_support import empty_air  # noqa: F401 (empty_air is an autouse fixture)

pytestmark = pytest.mark.unit




def test_enrolment_survives_reopening_the_store(tmp_path: Path) -> None:
    store = EnrolmentStore(tmp_path / "e.sqlite")
    assert store.enrol("aa:05:00:00:00:01", profile="ble.glucose", name="meter", source="pair")
    assert not store.enrol("AA:05:00:00:00:01")  # already enrolled: the first enrolment stands
    store.close()
    again = EnrolmentStore(tmp_path / "e.sqlite")
    assert again.is_enrolled("AA:05:00:00:00:01")
    assert again.profile_for("aa:05:00:00:00:01") == "ble.glucose"
    assert [(d.address, d.source) for d in again.list()] == [("AA:05:00:00:00:01", "pair")]
    assert again.remove("AA:05:00:00:00:01") and not again.is_enrolled("AA:05:00:00:00:01")


def test_config_enrolled_addresses_are_honoured(tmp_path: Path) -> None:
    store = EnrolmentStore(tmp_path / "e.sqlite", [EnrolledBleDevice(address="aa:05:00:00:00:02",
                                                                     profile="ble.weight_scale")])
    assert store.is_enrolled("AA:05:00:00:00:02")
    assert store.profile_for("AA:05:00:00:00:02") == "ble.weight_scale"
    assert not store.is_enrolled("AA:05:00:00:00:03")
    assert [(d.address, d.source) for d in store.list()] == [("AA:05:00:00:00:02", "config")]


def test_pairing_window_enrols_the_health_devices_it_hears(tmp_path: Path) -> None:
    AIR.add(BloodPressureCuff("AA:05:00:00:01:01"), GlucoseMeter("AA:05:00:00:01:02"),
            WeightScale("AA:05:00:00:01:03"), HeartRateStrap("AA:05:00:00:01:04"),
            GlucoseMeter("AA:05:00:00:01:05", advertising=False))
    store = EnrolmentStore(tmp_path / "e.sqlite")
    enrolled = asyncio.run(pair_window(BleConfig(backend="sim"), store, 0.2))
    assert sorted((d.address, d.profile) for d in enrolled) == [
        ("AA:05:00:00:01:01", "ble.blood_pressure"), ("AA:05:00:00:01:02", "ble.glucose"),
        ("AA:05:00:00:01:03", "ble.weight_scale"), ("AA:05:00:00:01:04", "ble.heart_rate"),
    ]
    assert not store.is_enrolled("AA:05:00:00:01:05")  # not advertising during the window


def test_rpm_gateway_pair_enrols_persists_and_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    AIR.add(GlucoseMeter("AA:05:00:00:02:01", name="Meter One"))
    config = parse_config({"data_dir": str(tmp_path), "ble": {"backend": "sim"}})
    assert run_pair(config, 0.2) == 0
    out = capsys.readouterr().out
    assert "enrolled AA:05:00:00:02:01 ble.glucose Meter One" in out
    assert EnrolmentStore.for_config(config).is_enrolled("AA:05:00:00:02:01")
    assert run_pair(config, 0.1) == 0
    assert "no new health device seen" in capsys.readouterr().out


def test_rpm_gateway_pair_with_a_bad_backend_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = parse_config({"data_dir": str(tmp_path), "ble": {"backend": "no_such_module.backend"}})
    assert run_pair(config, 0.1) == 2
    assert capsys.readouterr().err.startswith("error: ble.backend: cannot import")


def test_a_gateway_process_finds_the_scenario_devices_on_its_simulated_radio(tmp_path: Path) -> None:
    """``rpm-gateway pair`` as its own process, its BLE radio the scenario named in RPM_SIM_BLE_SCENARIO."""
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps(example_scenario()))
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[ble]\nbackend = "sim"\n')
    env = {**os.environ, SCENARIO_ENV: str(scenario)}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "pair", "--config", str(config), "--seconds", "0.3"],
                          capture_output=True, text=True, env=env, timeout=60, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert sorted(line.split()[1] for line in done.stdout.splitlines() if line.startswith("enrolled")) == [
        f"C0:FF:EE:00:00:0{i}" for i in range(1, 5)]
    store = EnrolmentStore(tmp_path / "data" / "enrolment.sqlite")
    assert store.profile_for("C0:FF:EE:00:00:02") == "ble.glucose"
