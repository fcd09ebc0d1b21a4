"""Guest side of test_bluez_peripheral: find the simulated peripheral over real BlueZ (hci0), connect
through bleak's BlueZ backend and print what its Device Information service says, as JSON.

The connection is the gateway's ``BleSession`` (plain bleak over the same backend, plus the connect
retries and the wait for BlueZ's late-exported service objects that the slow guest needs)."""

from __future__ import annotations

import asyncio
import json
import sys

from bleak import BleakScanner

from gateway.drivers.base import DriverError
from gateway.drivers.ble_session import MODEL_NUMBER, SERIAL_NUMBER, BleSession, SessionTimeouts, uuid16

# bleak's "default adapter" is the first powered one in a set, so with two controllers it is either,
# by hash order: scanning from hci1 (the peripheral's own) hears nothing. Name the central's.
CENTRAL = {"adapter": "hci0"}
GLUCOSE_SERVICE = uuid16(0x1808)
TIMEOUTS = SessionTimeouts(connect_s=20, connect_attempts=4, op_s=10, retry_base_s=1.0, retry_cap_s=4.0)


async def main(address: str) -> int:
    attempts = []
    for _ in range(3):
        device = await BleakScanner.find_device_by_address(address, timeout=8, bluez=CENTRAL)
        if device is None:
            attempts.append("not heard")
            continue
        try:
            async with BleSession(device, timeouts=TIMEOUTS, required_services=(GLUCOSE_SERVICE,)) as session:
                model = (await session.read(MODEL_NUMBER)).decode()
                serial = (await session.read(SERIAL_NUMBER)).decode()
                services = sorted(s.uuid for s in session.client.services)
                attempts.append(f"connected after {session.connect_attempts_used} attempt(s)")
        except DriverError as err:
            attempts.append(str(err))
            continue
        print(json.dumps({"model": model, "serial": serial, "services": services, "attempts": attempts}))
        return 0
    print(json.dumps({"attempts": attempts}))
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
