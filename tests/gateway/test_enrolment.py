"""Enrolment: durable, honours the config; the pairing window proposes what it hears (issue 19: nothing is
enrolled until confirmed), ``rpm-gateway pair`` confirms by number, ``unpair`` forgets."""

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
from gateway.discovery.scan import run_pair, run_unpair
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


def test_pairing_window_proposes_the_health_devices_it_hears_and_enrols_none(tmp_path: Path) -> None:
    AIR.add(BloodPressureCuff("AA:05:00:00:01:01"), GlucoseMeter("AA:05:00:00:01:02"),
            WeightScale("AA:05:00:00:01:03"), HeartRateStrap("AA:05:00:00:01:04"),
            GlucoseMeter("AA:05:00:00:01:05", advertising=False))
    store = EnrolmentStore(tmp_path / "e.sqlite")
    heard = asyncio.run(pair_window(BleConfig(backend="sim"), store, 0.2))
    assert sorted((c.uid, c.profile) for c in heard) == [
        ("ble:AA:05:00:00:01:01", "ble.blood_pressure"), ("ble:AA:05:00:00:01:02", "ble.glucose"),
        ("ble:AA:05:00:00:01:03", "ble.weight_scale"), ("ble:AA:05:00:00:01:04", "ble.heart_rate"),
    ]
    assert store.list() == []  # heard is not confirmed: nothing is read until someone says so
    assert not store.is_enrolled("AA:05:00:00:01:05") and store.candidate("AA:05:00:00:01:05") is None


def test_rpm_gateway_pair_lists_confirms_by_number_and_persists(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    AIR.add(GlucoseMeter("AA:05:00:00:02:01", name="Meter One", rssi=-50),
            WeightScale("AA:05:00:00:02:02", name="Next Door", rssi=-88))
    config = parse_config({"data_dir": str(tmp_path), "ble": {"backend": "sim"}, "usb": {"enabled": False}})
    assert run_pair(config, 0.2) == 0
    out = capsys.readouterr().out
    assert "1. Glucose meter Meter One (Bluetooth, strong signal (-50 dBm))  ble:AA:05:00:00:02:01" in out
    assert "2. Weighing scale Next Door (Bluetooth, weak (maybe a neighbour's) signal (-88 dBm))" in out
    assert not EnrolmentStore.for_config(config).is_enrolled("AA:05:00:00:02:01")
    assert run_pair(config, 0.1, confirm=["1"], ignore=["2"]) == 0
    out = capsys.readouterr().out
    assert "confirmed ble:AA:05:00:00:02:01: its readings will be sent" in out
    store = EnrolmentStore.for_config(config)
    assert store.is_enrolled("AA:05:00:00:02:01") and store.is_ignored("AA:05:00:00:02:02")
    assert run_pair(config, 0.1) == 0  # the neighbour's scale is heard again but not proposed again
    assert "no health device waiting to be confirmed" in capsys.readouterr().out
    assert run_pair(config, 0.0, confirm=["7"]) == 0  # nothing listed: nothing to pick from
    assert [d for _, _, d, _ in store.history("AA:05:00:00:02:01")] == ["confirmed"]


def test_rpm_gateway_pair_asks_in_a_terminal_and_unpair_forgets(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    AIR.add(BloodPressureCuff("AA:05:00:00:03:01", name="Cuff"), GlucoseMeter("AA:05:00:00:03:02"))
    config = parse_config({"data_dir": str(tmp_path), "ble": {"backend": "sim"}, "usb": {"enabled": False}})
    questions: list[str] = []
    listed = asyncio.run(pair_window(config.ble, EnrolmentStore.for_config(config), 0.2))
    cuff_number = 1 + [c.uid for c in EnrolmentStore.for_config(config).candidates()].index("ble:AA:05:00:00:03:01")
    assert len(listed) == 2
    assert run_pair(config, 0.0, ask=lambda q: questions.append(q) or f"{cuff_number}:2 i {3 - cuff_number}") == 0
    assert questions and "Confirm which?" in questions[0]
    store = EnrolmentStore.for_config(config)
    assert store.enrolled("ble:AA:05:00:00:03:01").user_index == 2
    assert store.is_ignored("ble:AA:05:00:00:03:02")
    capsys.readouterr()
    assert run_unpair(config, "ble:aa:05:00:00:03:01") == 0
    assert "the readings it gave stay in the record" in capsys.readouterr().out
    assert not store.is_enrolled("AA:05:00:00:03:01")
    assert [d for _, _, d, _ in store.history("ble:AA:05:00:00:03:01")] == ["confirmed", "forgotten"]
    assert run_unpair(config, "ble:AA:05:00:00:03:01") == 2
    assert "not a device this gateway remembers" in capsys.readouterr().err


def test_rpm_gateway_pair_with_a_bad_backend_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = parse_config({"data_dir": str(tmp_path), "ble": {"backend": "no_such_module.backend"}})
    assert run_pair(config, 0.1) == 2
    assert capsys.readouterr().err.startswith("error: ble.backend: cannot import")


def test_a_gateway_process_finds_the_scenario_devices_on_its_simulated_radio(tmp_path: Path) -> None:
    """``rpm-gateway pair`` as its own process, its BLE radio the scenario named in RPM_SIM_BLE_SCENARIO;
    its store in the configured data dir, not the directory it runs in."""
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps(example_scenario()))
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[ble]\nbackend = "sim"\n[usb]\nenabled = false\n')
    root = Path(__file__).parents[2]
    env = {**os.environ, SCENARIO_ENV: str(scenario), "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "pair", "--config", str(config), "--seconds", "0.3",
                           "--confirm", "ble:C0:FF:EE:00:00:02"], capture_output=True, text=True, env=env, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listed = [line.split()[-1] for line in done.stdout.splitlines() if line.startswith("  ")]
    assert sorted(listed) == [f"ble:C0:FF:EE:00:00:0{i}" for i in range(1, 5)]
    assert "confirmed ble:C0:FF:EE:00:00:02" in done.stdout
    store = EnrolmentStore(tmp_path / "data" / "enrolment.sqlite")
    assert [d.uid for d in store.list()] == ["ble:C0:FF:EE:00:00:02"]
    assert not (tmp_path / "enrolment.sqlite").exists() and not (tmp_path / "gateway-data").exists()


def test_rotating_ble_addresses_do_not_grow_the_write_throttle_without_bound(tmp_path: Path) -> None:
    from gateway.discovery import enrolment
    from gateway.discovery.enrolment import HeardDevice

    now = [0.0]
    store = EnrolmentStore(tmp_path / "e.sqlite", clock=lambda: now[0])
    for i in range(3 * enrolment.MAX_HEARD_TRACKED):
        now[0] += 1.0  # one new random address a second, each heard once
        store.heard(HeardDevice(uid=f"ble:02:00:00:00:{i // 256:02X}:{i % 256:02X}", transport="ble",
                                profile="ble.weight_scale"))
    assert len(store._heard_written) <= enrolment.MAX_HEARD_TRACKED + 1
    assert len(store.candidates()) > 0  # the newest are still proposed
