"""Runs inside the UML guest (``python -m tests.kernel.hid_guest OUT.json``): HID meters made real by
``/dev/uhid``, read by the gateway's USB manager through ``/dev/hidrawN`` exactly as plugged-in meters
are: found in sysfs by VID/PID, matched in the profile table, the product's link and driver run.

Every scenario writes what the gateway produced (readings as the wire contract has them, status
states, what the simulated device saw) to the JSON file; tests/kernel/test_hidraw.py asserts on it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from firmware_sims.hid.meters import HidAstmMeter, HidCable, HidTaidoc
from firmware_sims.serial.astm_meter import AstmFaults, GlucoseMeter, GlucoseResult
from firmware_sims.serial.taidoc import BpRecord, Faults, TaidocMeter
from gateway.codecs.common import Measurement
from gateway.discovery.hidraw import list_hidraw_ports
from gateway.discovery.usb import UsbManager
from gateway.discovery.usb_config import UsbConfig
from gateway.drivers.base import ClockCheck, DeviceInfo
from gateway.drivers.device_state import DeviceStateStore
from gateway.readings.normalise import to_reading

GLUCOSE_BASE = datetime(2026, 11, 20, 7, 30)
TAIDOC_SERIAL = "3128A0B1C2D3E4F5"


class Gateway:
    """The USB manager with a sink that keeps each reading as the contract serialises it."""

    def __init__(self, state: DeviceStateStore) -> None:
        self.readings: list[dict[str, Any]] = []
        self.states: list[tuple[str, str]] = []
        self.errors: list[str] = []
        config = UsbConfig(poll_interval_s=0.2, retry_after_error_s=0.5)
        self.manager = UsbManager(config, self.sink, state, on_status=self.on_status)

    async def sink(self, device: DeviceInfo, measurement: Measurement, clock: ClockCheck | None, **_: int) -> None:
        self.readings.append(to_reading(device, measurement, clock, datetime.now(UTC)).model_dump(mode="json"))

    def on_status(self, uid: str, **fields: Any) -> None:
        if "state" in fields:
            self.states.append((uid, fields["state"]))
        if fields.get("error"):
            self.errors.append(str(fields["error"]))


async def until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


async def session_of(gateway: Gateway, sim: HidCable, end_state: str, within: float = 60) -> dict[str, Any]:
    """Plug ``sim`` in, let the manager find and read it until ``end_state``, pull the cable."""
    seen = len(gateway.states)
    started = time.monotonic()
    node = sim.plug_in()
    ports = [(p.device, f"{p.vid:04x}:{p.pid:04x}") for p in list_hidraw_ports()]
    try:
        await until(lambda: any(s == end_state for _, s in gateway.states[seen:]), within, f"state {end_state}")
    finally:
        if sim.plugged_in:
            sim.pull_cable()
    if sim.error is not None:
        raise sim.error
    return {
        "node": node,
        "hidraw": ports,
        "seconds": round(time.monotonic() - started, 2),
        "states": [s for _, s in gateway.states[seen:]],
    }


def glucose_results(n: int) -> list[GlucoseResult]:
    return [
        GlucoseResult(GLUCOSE_BASE + timedelta(hours=6 * i), 90 + 7 * i, flags=("B",) if i % 2 else ())
        for i in range(n)
    ]


def bp(minutes_ago: int, systolic: int) -> BpRecord:
    when = (datetime.now() - timedelta(minutes=minutes_ago)).replace(second=0, microsecond=0)
    return BpRecord(when=when, systolic=systolic, diastolic=systolic - 45, pulse=60 + minutes_ago // 10)


async def contour(state: DeviceStateStore) -> dict[str, Any]:
    gateway = Gateway(state)
    task = asyncio.create_task(gateway.manager.run())
    meter = GlucoseMeter(results=glucose_results(6), clock_offset=timedelta(minutes=-47))
    try:
        first = await session_of(gateway, HidAstmMeter(meter), "done")
        count = len(gateway.readings)
        second = await session_of(gateway, HidAstmMeter(meter), "done")
        # Unplugged after header, patient and two results: those two are kept, the rest come next time.
        unplug_meter = GlucoseMeter(results=glucose_results(5), serial="7390-2222222")
        cut = await session_of(gateway, HidAstmMeter(unplug_meter, AstmFaults(pull_after_frames=4)), "unplugged")
        kept = len(gateway.readings)
        resumed = await session_of(gateway, HidAstmMeter(unplug_meter), "done")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {
        "first": first,
        "second": second,
        "cut": cut,
        "resumed": resumed,
        "after_first": count,
        "after_cut": kept,
        "readings": gateway.readings,
        "errors": gateway.errors,
        "meter_offset_s": -47 * 60,
    }


async def taidoc(state: DeviceStateStore) -> dict[str, Any]:
    gateway = Gateway(state)
    task = asyncio.create_task(gateway.manager.run())
    meter = TaidocMeter(serial=TAIDOC_SERIAL)
    for record in (bp(50, 121), bp(40, 132), bp(30, 143)):
        meter.store(record)
    bridges = []
    try:
        sim = HidTaidoc(meter, usb_serial="0001")
        first = await session_of(gateway, sim, "done")
        bridges.append(_bridge(sim))
        count = len(gateway.readings)
        meter.store(bp(5, 150))
        sim = HidTaidoc(meter, Faults(unplug_after_replies=9), usb_serial="0001")
        cut = await session_of(gateway, sim, "unplugged")
        meter.store(bp(1, 155))
        sim = HidTaidoc(meter, usb_serial="0001")
        resumed = await session_of(gateway, sim, "done")
        bridges.append(_bridge(sim))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    records = [
        {"when": r.when.isoformat(), "systolic": r.systolic, "diastolic": r.diastolic, "pulse": r.pulse}
        for r in reversed(meter.records)
    ]
    return {
        "first": first,
        "cut": cut,
        "resumed": resumed,
        "after_first": count,
        "readings": gateway.readings,
        "records": records,
        "bridges": bridges,
        "errors": gateway.errors,
    }


def _bridge(sim: HidTaidoc) -> dict[str, Any]:
    bridge = sim.bridge
    return {
        "enabled": bridge.enabled,
        "purges": bridge.purges,
        "configs": [[c.baudrate, c.parity, c.data_bits, c.stop_bits, c.flow_control] for c in bridge.config_writes],
    }


async def main(out: Path) -> None:
    results: dict[str, Any] = {}
    for name, scenario in (("contour", contour), ("taidoc", taidoc)):
        state = DeviceStateStore(Path(f"/tmp/{name}-state.db"))
        started = time.monotonic()
        try:
            results[name] = await scenario(state)
        except Exception as err:  # reported to the host test with its reason, the other scenario still runs
            results[name] = {"failed": f"{type(err).__name__}: {err}"}
        finally:
            state.close()
        results[name]["scenario_s"] = round(time.monotonic() - started, 2)
    await asyncio.to_thread(out.write_text, json.dumps(results, indent=1))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
