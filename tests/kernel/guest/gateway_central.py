"""Guest side of the gateway tests: the gateway's own BLE discovery (``BleManager``) over bleak's real
BlueZ backend on hci0, one enrolled device, until it has had ``--sessions`` good sessions.

The guest has no network (no MQTT broker), so readings go to a sink that appends each record, as
JSON, to ``--readings`` before it returns (what the outbox's durability means to a driver); the
device-state store is a real one on disk (``follows_acks`` false: downloads resume from the cursor).
Run twice against the same ``--state`` folder, it is the gateway restarted. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from gateway.codecs.common import Measurement
from gateway.discovery.ble import BleManager
from gateway.discovery.ble_config import BleConfig, EnrolledBleDevice
from gateway.discovery.enrolment import EnrolmentStore
from gateway.drivers.base import ClockCheck, DeviceInfo, DeviceRecord
from gateway.drivers.device_state import DeviceStateStore

WINDOW_DETAILS = ("window_start", "window_end", "samples")


def record_json(device: DeviceInfo, record: DeviceRecord) -> dict[str, Any]:
    if isinstance(record, Measurement):
        return {
            "uid": device.uid,
            "kind": record.kind,
            "sequence": record.sequence,
            "user": record.user_index,
            "time": record.device_time.isoformat() if record.device_time else None,
            "values": {name: [quantity.value, quantity.unit] for name, quantity in record.values.items()},
            "raw": record.raw.hex(),
            "flags": list(record.flags),
            # A live window's bounds and sample count (heart rate): what "nothing doubled" is checked on.
            "details": {key: value for key, value in (record.details or {}).items() if key in WINDOW_DETAILS},
        }
    return {"uid": device.uid, "unreadable": repr(record)}


async def main(args: argparse.Namespace) -> int:
    state_dir = Path(args.state)
    readings = Path(args.readings)
    config = BleConfig(
        adapter="hci0",
        enrolled=[EnrolledBleDevice(address=args.address, profile=args.profile)],
        session_cooldown_s=args.cooldown,
        heart_rate_cadence_s=args.cadence,
        retry_backoff_s=1.0,
        retry_backoff_max_s=4.0,
        connect_timeout_s=20,
        op_timeout_s=15,
        connect_attempts=4,
    )

    def append(line: str) -> None:
        with open(readings, "a") as out:
            out.write(line)
            out.flush()

    async def sink(device: DeviceInfo, record: DeviceRecord, clock: ClockCheck | None) -> None:
        await asyncio.to_thread(append, json.dumps(record_json(device, record)) + "\n")

    state = DeviceStateStore(state_dir / "device_state.sqlite")
    enrolment = EnrolmentStore(state_dir / "enrolment.sqlite", config.enrolled)
    manager = BleManager(config, sink, state, enrolment)
    address = args.address.upper()
    errors: list[str] = []
    started = time.monotonic()
    task = asyncio.get_running_loop().create_task(manager.run())
    good = 0
    last: object = None
    cursor_key = (f"ble:{address}", "glucose_last_sequence")
    try:
        while time.monotonic() - started < args.timeout:
            if address in manager.errors and (not errors or errors[-1] != manager.errors[address]):
                errors.append(manager.errors[address])
            result = manager.results.get(address)
            if result is not None and result is not last:
                last = result
                good += 1
                (Path(args.state) / f"session{good}.done").write_text(json.dumps(result.notes) + "\n")
                # --until-cursor: keep running (a gateway left on) until a good session has ended with
                # the meter's cursor there.
                if args.until_cursor is None or (state.get(*cursor_key) or 0) >= args.until_cursor:
                    break
            await asyncio.sleep(0.2)
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    result = manager.results.get(address)
    print(
        json.dumps(
            {
                "ok": good >= 1,
                "good_sessions": good,
                "sessions_started": manager.sessions_started.get(address, 0),
                "measurements": result.measurements if result else None,
                "notes": result.notes if result else None,
                "errors": errors,
                "cursor": state.get(*cursor_key),
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )
    return 0 if good else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--readings", required=True)
    parser.add_argument("--timeout", type=float, default=90)
    parser.add_argument("--cooldown", type=float, default=3600, help="session_cooldown_s")
    parser.add_argument("--cadence", type=float, default=60, help="heart_rate_cadence_s")
    parser.add_argument("--until-cursor", type=int, help="run until the glucose cursor reaches this")
    parser.add_argument("--debug", action="store_true", help="log bleak's D-Bus traffic too")
    arguments = parser.parse_args()
    Path(arguments.state).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s central %(name)s %(levelname)s %(message)s")
    if arguments.debug:
        logging.getLogger("bleak").setLevel(logging.DEBUG)
    sys.exit(asyncio.run(main(arguments)))
