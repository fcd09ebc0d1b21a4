"""The simulated radio ("the air"): every peripheral in range, process-wide.

The bleak backend looks peripherals up here. A gateway started as its own process finds its air in
a scenario file named by ``RPM_SIM_BLE_SCENARIO`` (JSON; see :func:`peripheral_from_json`).
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from firmware_sims.ble.gatt import Faults, Peripheral
from firmware_sims.ble.oximeter import ContinuousSample, PulseOximeter, SpotCheckRecord
from firmware_sims.ble.peripherals import (
    BloodPressureCuff,
    BpRecord,
    GlucoseMeter,
    GlucoseRecord,
    HeartRateStrap,
    WeightRecord,
    WeightScale,
)
from firmware_sims.ble.thermometer import TemperatureRecord, Thermometer

SCENARIO_ENV = "RPM_SIM_BLE_SCENARIO"


class ScenarioError(ValueError):
    """A scenario file is missing or describes a peripheral the simulator cannot build."""


class Air:
    """Peripherals in range, by upper-case address."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peripherals: dict[str, Peripheral] = {}
        self.scenario_loaded: tuple[str, int] | None = None

    def add(self, *peripherals: Peripheral) -> None:
        with self._lock:
            for peripheral in peripherals:
                self._peripherals[peripheral.address] = peripheral

    def remove(self, address: str) -> None:
        with self._lock:
            self._peripherals.pop(address.upper(), None)

    def clear(self) -> None:
        with self._lock:
            self._peripherals.clear()
            self.scenario_loaded = None

    def get(self, address: str) -> Peripheral | None:
        self.load_env_scenario()
        with self._lock:
            return self._peripherals.get(address.upper())

    def peripherals(self) -> list[Peripheral]:
        self.load_env_scenario()
        with self._lock:
            return list(self._peripherals.values())

    def load_env_scenario(self) -> None:
        """Populate from ``$RPM_SIM_BLE_SCENARIO``, and again whenever the file changes.

        A changed file is the simulated world moving on: a peripheral already on the air keeps its
        identity and link state and takes the file's records as its memory (a cuff that measured
        again); new peripherals appear. The demo plays its week this way.
        """
        path = os.environ.get(SCENARIO_ENV)
        if not path:
            return
        try:
            stamp = (path, os.stat(path).st_mtime_ns)
        except FileNotFoundError:
            raise ScenarioError(f"{path}: no such scenario file") from None
        if self.scenario_loaded == stamp:
            return
        peripherals = load_scenario(path)
        with self._lock:
            if self.scenario_loaded == stamp:
                return
            for peripheral in peripherals:
                current = self._peripherals.get(peripheral.address)
                if current is None:
                    self._peripherals[peripheral.address] = peripheral
                elif hasattr(peripheral, "records"):
                    current.records = peripheral.records
            self.scenario_loaded = stamp


AIR = Air()


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def peripheral_from_json(spec: dict[str, Any]) -> Peripheral:
    """Build one peripheral from its scenario entry.

    ``{"type": "blood_pressure" | "glucose" | "weight_scale" | "heart_rate" | "pulse_oximeter" | "thermometer",
    "address": "...",
    "records": [...], "unit": "kPa", "imperial": true, "clock_offset_s": 3600, "clock_unset": true,
    "battery": 50, "faults": {"drop_after_records": 2, ...}, "name": ..., "model": ..., "serial": ...}``.
    Record fields are the keyword arguments of the encoders (times as ISO 8601).
    """
    spec = dict(spec)
    try:
        kind = spec.pop("type")
        address = spec.pop("address")
        records = spec.pop("records", [])
        common: dict[str, Any] = {
            key: spec.pop(key) for key in ("name", "manufacturer", "model", "serial", "firmware", "battery",
                                           "has_current_time", "clock_unset", "rssi", "advertising") if key in spec
        }
        if "clock_offset_s" in spec:
            common["clock_offset"] = timedelta(seconds=float(spec.pop("clock_offset_s")))
        if "faults" in spec:
            faults = dict(spec.pop("faults"))
            if "garbage_frame" in faults:
                faults["garbage_frame"] = bytes.fromhex(faults["garbage_frame"])
            common["faults"] = Faults(**faults)
        if kind == "blood_pressure":
            bp = [BpRecord(**{**r, "timestamp": _time(r.get("timestamp"))}) for r in records]
            return BloodPressureCuff(address, bp, unit=spec.pop("unit", "mmHg"), **common, **spec)
        if kind == "weight_scale":
            weights = [WeightRecord(**{**r, "timestamp": _time(r.get("timestamp"))}) for r in records]
            return WeightScale(address, weights, imperial=spec.pop("imperial", False), **common, **spec)
        if kind == "glucose":
            glucose = [GlucoseRecord(**{**r, "base_time": _time(r.get("base_time"))}) for r in records]
            return GlucoseMeter(address, glucose, **common, **spec)
        if kind == "heart_rate":
            return HeartRateStrap(address, spec.pop("rates", None), **common, **spec)
        if kind == "pulse_oximeter":
            spots = [SpotCheckRecord(**{**r, "timestamp": _time(r.get("timestamp"))}) for r in records]
            stream = [ContinuousSample(**s) for s in spec.pop("stream", [])]
            return PulseOximeter(address, spots, stream=stream, **common, **spec)
        if kind == "thermometer":
            temps = [TemperatureRecord(**{**r, "timestamp": _time(r.get("timestamp"))}) for r in records]
            return Thermometer(address, temps, **common, **spec)
    except (KeyError, TypeError, ValueError) as err:
        raise ScenarioError(f"peripheral {spec.get('address', '?')}: {err}") from None
    raise ScenarioError(f"unknown peripheral type {kind!r}")


def load_scenario(path: str | Path) -> list[Peripheral]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except json.JSONDecodeError as err:
        raise ScenarioError(f"{path}: not JSON: {err}") from None
    entries = data.get("peripherals") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ScenarioError(f"{path}: expected {{\"peripherals\": [...]}}")
    return [peripheral_from_json(entry) for entry in entries]
