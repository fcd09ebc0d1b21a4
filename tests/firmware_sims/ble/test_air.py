"""The simulated air follows its scenario file: a changed file is the world moving on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from firmware_sims.ble.air import SCENARIO_ENV, Air, ScenarioError

pytestmark = pytest.mark.unit


def write(path: Path, records: int, *, stamp: int) -> None:
    cuff = {"type": "blood_pressure", "address": "aa:00:00:00:00:01", "records": [
        {"systolic": 120 + i, "diastolic": 80, "mean_arterial": 93, "timestamp": f"2026-11-0{i + 1}T08:00:00"}
        for i in range(records)
    ]}
    path.write_text(json.dumps({"peripherals": [cuff]}))
    os.utime(path, ns=(stamp, stamp))


def test_a_changed_scenario_gives_the_same_peripheral_new_records(tmp_path: Path, monkeypatch) -> None:
    scenario = tmp_path / "scenario.json"
    write(scenario, 1, stamp=1_000_000_000)
    monkeypatch.setenv(SCENARIO_ENV, str(scenario))
    air = Air()
    cuff = air.get("AA:00:00:00:00:01")
    assert cuff is not None and len(cuff.records) == 1
    write(scenario, 3, stamp=2_000_000_000)
    again = air.get("AA:00:00:00:00:01")
    assert again is cuff
    assert [r.systolic for r in cuff.records] == [120, 121, 122]


def test_a_missing_scenario_file_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(SCENARIO_ENV, str(tmp_path / "nope.json"))
    with pytest.raises(ScenarioError, match="no such scenario file"):
        Air().peripherals()
