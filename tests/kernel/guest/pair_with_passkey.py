"""Guest side of the passkey test: connect to the simulated meter with the gateway's BleSession,
pair by passkey entry (the gateway's agent is KeyboardOnly; the meter displays the passkey, which the
test reads from the file the meter's agent writes, as a person reads the meter's screen), then read
a characteristic that needs an authenticated (MITM-protected) link. Prints a JSON summary."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from bleak import BleakScanner

from gateway.drivers.base import DriverError
from gateway.drivers.ble_session import BleSession, SessionTimeouts, uuid16

CENTRAL = {"adapter": "hci0"}
GLUCOSE_SERVICE = uuid16(0x1808)
GLUCOSE_FEATURE = uuid16(0x2A51)
TIMEOUTS = SessionTimeouts(connect_s=20, connect_attempts=4, op_s=10, retry_base_s=1.0, retry_cap_s=4.0)


def _read_passkey(path: Path) -> int | None:
    return int(path.read_text().strip()) if path.exists() else None


async def main(address: str, passkey_file: Path) -> int:
    asked: list[str] = []

    async def passkey(device: str) -> int:
        asked.append(device)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            shown = await asyncio.to_thread(_read_passkey, passkey_file)
            if shown is not None:
                return shown
            await asyncio.sleep(0.1)
        raise TimeoutError("the meter showed no passkey")

    device = await BleakScanner.find_device_by_address(address, timeout=15, bluez=CENTRAL)
    if device is None:
        print(json.dumps({"error": "not heard"}))
        return 1
    try:
        async with BleSession(
            device, timeouts=TIMEOUTS, required_services=(GLUCOSE_SERVICE,), pair_on_connect=True, passkey=passkey
        ) as session:
            feature = (await session.read(GLUCOSE_FEATURE)).hex()
            paired = session.paired_now
    except DriverError as err:
        print(json.dumps({"error": str(err), "asked": asked}))
        return 1
    print(json.dumps({"paired_now": paired, "asked": asked, "feature": feature}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], Path(sys.argv[2]))))
