"""The demo's simulated devices and how the week reaches them.

BLE devices live in the gateway process's simulated radio, described by a scenario file this module
rewrites each simulated day. USB devices run here, on pseudo-terminals behind stable link paths that
the gateway's config names, and are plugged in once a day for a download, as patients do.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cloud.demo import story
from cloud.demo.services import write_scenario
from firmware_sims.serial.astm_meter import GlucoseMeter, GlucoseResult, PtyAstmMeter
from firmware_sims.serial.taidoc import BP_MONITOR, BpRecord, PtyTaidoc, TaidocMeter

log = logging.getLogger(__name__)
DOWNLOAD_TIMEOUT_S = 20.0


def _anchor(path: Path, now: datetime) -> datetime:
    """The minute the story's week ends: now, or a minute after the last run's where a rerun on the same
    data starts within that minute. Meters keep minutes, so the same minute would replay the same
    records (the same reading ids): stored once already, they would open no alert."""
    anchor = now.replace(second=0, microsecond=0)
    try:
        previous = datetime.fromisoformat(path.read_text().strip())
    except (OSError, ValueError):
        previous = None
    if previous is not None and previous.tzinfo is None and anchor <= previous < anchor + timedelta(minutes=5):
        anchor = previous + timedelta(minutes=1)  # a minute ahead at most: within every clock tolerance
    path.write_text(anchor.isoformat())
    return anchor


class DemoWorld:
    def __init__(self, data_dir: Path, now: datetime) -> None:
        now = _anchor(data_dir / "story-anchor", now)
        self.plans = story.week(now)
        self.first_day_utc = (now - timedelta(days=story.DAYS + 1)).astimezone(UTC)
        self.scenario_path = data_dir / "ble-scenario.json"
        self.tty_dir = data_dir / "tty"
        self.tty_dir.mkdir(parents=True, exist_ok=True)
        self._bp: list[dict] = []
        self._weights: list[dict] = []
        self._spo2: list[dict] = []
        self._temperatures: list[dict] = []
        self.astm_meter = GlucoseMeter(serial=story.ASTM_SERIAL)
        self.taidoc_meter = TaidocMeter(BP_MONITOR, story.TAIDOC_SERIAL)
        # Per device key, the device-clock times of the records put in its memory so far: what "sent"
        # counts, and what the database is checked against (a reading's device_time).
        self._delivered: dict[str, set[datetime]] = {d.key: set() for d in story.devices()}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self._write_scenario()

    # ------------------------------------------------------------------ what the gateway is told

    def ble_addresses(self) -> list[str]:
        return [story.CUFF_ADDRESS, story.SCALE_ADDRESS, story.OXIMETER_ADDRESS, story.THERMOMETER_ADDRESS]

    def usb_ports(self) -> dict[str, str]:
        return {"serial.astm": str(self.tty_dir / "astm-meter"), "serial.taidoc": str(self.tty_dir / "taidoc-bp")}

    # ------------------------------------------------------------------ the week

    def deliver_day(self, day: int) -> None:
        """The day's measurements enter the devices' memories; USB meters are plugged in for a download."""
        plan = self.plans[day]
        with self._lock:
            self._bp.extend(plan.bp)
            self._weights.extend(plan.weight)
            for record in plan.bp:
                self._delivered["cuff" if record["user_id"] == 1 else "cuff-u2"].add(
                    datetime.fromisoformat(record["timestamp"]))
            self._delivered["scale"].update(datetime.fromisoformat(r["timestamp"]) for r in plan.weight)
            self._spo2.extend(plan.spo2)
            self._temperatures.extend(plan.temperature)
            self._delivered["oximeter"].update(datetime.fromisoformat(r["timestamp"]) for r in plan.spo2)
            self._delivered["thermometer"].update(datetime.fromisoformat(r["timestamp"]) for r in plan.temperature)
        self._write_scenario()
        for when, value in plan.astm:
            self.astm_meter.results.append(GlucoseResult(when, value))
        for when, systolic, diastolic, pulse in plan.taidoc:
            self.taidoc_meter.store(BpRecord(when, systolic=systolic, diastolic=diastolic, pulse=pulse))
        with self._lock:
            self._delivered["astm"].update(when for when, _ in plan.astm)
            self._delivered["taidoc"].update(record[0] for record in plan.taidoc)
        self._threads = [t for t in self._threads if t.is_alive()]
        if not self._threads:
            # A patient plugs the meters in once a day; a download still running skips the day's plug.
            for target in (self._download_astm, self._download_taidoc):
                thread = threading.Thread(target=target, daemon=True, name=target.__name__)
                thread.start()
                self._threads.append(thread)

    def sent(self) -> dict[str, int]:
        with self._lock:
            return {key: len(times) for key, times in self._delivered.items()}

    def delivered(self) -> dict[str, set[datetime]]:
        """Per device key, the device times of the records its memory has held in this run."""
        with self._lock:
            return {key: set(times) for key, times in self._delivered.items()}

    def close(self) -> None:
        self._closing.set()
        for thread in self._threads:
            thread.join(DOWNLOAD_TIMEOUT_S + 5)

    # ------------------------------------------------------------------ devices

    def _write_scenario(self) -> None:
        with self._lock:
            bp, weights = list(self._bp), list(self._weights)
            spo2, temperatures = list(self._spo2), list(self._temperatures)
        write_scenario(self.scenario_path, [
            {"type": "blood_pressure", "address": story.CUFF_ADDRESS, "name": "Demo BP cuff",
             "model": "SIM-BP2", "serial": "BP2-0001", "records": bp},
            {"type": "weight_scale", "address": story.SCALE_ADDRESS, "name": "Demo scale",
             "model": "SIM-SCALE", "serial": "SC-0001", "records": weights},
            {"type": "pulse_oximeter", "address": story.OXIMETER_ADDRESS, "name": "Demo oximeter",
             "model": "SIM-PLX", "serial": "PLX-0001", "records": spo2},
            {"type": "thermometer", "address": story.THERMOMETER_ADDRESS, "name": "Demo thermometer",
             "model": "SIM-THERMO", "serial": "HT-0001", "fahrenheit": True, "records": temperatures},
        ])

    def _download_astm(self) -> None:
        cable = PtyAstmMeter(self.astm_meter, link_path=self.usb_ports()["serial.astm"])
        cable.plug_in()
        try:
            self._wait(lambda: cable.finished, "ASTM meter download")
        finally:
            cable.pull_cable()

    def _download_taidoc(self) -> None:
        self.taidoc_meter.powered_off.clear()
        cable = PtyTaidoc(self.taidoc_meter, link_path=self.usb_ports()["serial.taidoc"])
        cable.plug_in()
        try:
            self._wait(self.taidoc_meter.powered_off.is_set, "TaiDoc download")
        finally:
            cable.pull_cable()

    def _wait(self, done, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = threading.Event()
        timer = threading.Timer(DOWNLOAD_TIMEOUT_S, deadline.set)
        timer.start()
        try:
            while not done() and not deadline.is_set() and not self._closing.is_set():
                self._closing.wait(0.1)
            if not done():
                log.warning("%s did not finish in %.0f s; the cable is pulled", what, DOWNLOAD_TIMEOUT_S)
        finally:
            timer.cancel()
