"""``rpm-sim ble``: scenarios for the simulated BLE radio.

A gateway process started with ``[ble] backend = "sim"`` and ``RPM_SIM_BLE_SCENARIO=/path/scenario.json``
finds the scenario's peripherals on its (simulated) radio.

    rpm-sim ble example --out scenario.json     # one device of each profile, with stored records
    rpm-sim ble show scenario.json              # what a scanner would hear
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from firmware_sims.ble.air import ScenarioError, load_scenario


def example_scenario(now: datetime | None = None, *, records: int = 5) -> dict[str, Any]:
    """A cuff (two users, kPa off), a glucose meter (with contexts, a clock an hour fast), a scale
    (imperial) and a heart-rate strap: the demo's home."""
    now = (now or datetime.now()).replace(microsecond=0)
    times = [now - timedelta(hours=8 * (records - i)) for i in range(records)]
    return {
        "peripherals": [
            {
                "type": "blood_pressure", "address": "C0:FF:EE:00:00:01", "name": "SIM-BP cuff",
                "records": [
                    {"systolic": 128 + i, "diastolic": 82, "mean_arterial": 97, "pulse": 66 + i,
                     "user_id": 1 + i % 2, "timestamp": t.isoformat()} for i, t in enumerate(times)
                ],
            },
            {
                "type": "glucose", "address": "C0:FF:EE:00:00:02", "name": "SIM-GLUCO meter",
                "clock_offset_s": 3600,
                "records": [
                    {"sequence": i + 1, "base_time": (t + timedelta(hours=1)).isoformat(),
                     "concentration": round((95 + 7 * i) / 100_000, 7), "unit": "kg/L",
                     **({"context": {"meal": 1}} if i % 2 == 0 else {})} for i, t in enumerate(times)
                ],
            },
            {
                "type": "weight_scale", "address": "C0:FF:EE:00:00:03", "name": "SIM-SCALE", "imperial": True,
                "records": [{"weight": 176.4 + i / 2, "user_id": 1, "timestamp": t.isoformat()}
                            for i, t in enumerate(times)],
            },
            {"type": "heart_rate", "address": "C0:FF:EE:00:00:04", "name": "SIM-HRM strap",
             "rates": [62, 64, 63, 66, 65], "hz": 4.0},
        ]
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ble_command", required=True)
    example = sub.add_parser("example", help="write an example scenario (one device per profile)")
    example.add_argument("--out", required=True, help="where to write the JSON")
    example.add_argument("--records", type=int, default=5, help="stored records per device")
    show = sub.add_parser("show", help="list the peripherals a scenario puts on the air")
    show.add_argument("scenario")


def main(args: argparse.Namespace) -> int:
    if args.ble_command == "example":
        Path(args.out).write_text(json.dumps(example_scenario(records=args.records), indent=2) + "\n")
        print(f"wrote {args.out}; run a gateway with [ble] backend = \"sim\" and RPM_SIM_BLE_SCENARIO={args.out}")
        return 0
    try:
        peripherals = load_scenario(args.scenario)
    except ScenarioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for peripheral in peripherals:
        info = peripheral.describe()
        stored = len(getattr(peripheral, "records", []) or [])
        print(f"{info['address']}  {info['profile']:<18} {info['name']!s:<20} stored records: {stored}")
    return 0
