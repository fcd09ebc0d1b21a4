"""Pairing decisions of gateway.drivers.pairing and BleSession's pair-then-retry, on the simulator backend.

Real pairing and bonding through BlueZ is shown in tests/kernel/test_bluez_gateway.py; here the
simulator stands in for a device whose stack refuses a read until the link is encrypted (BlueZ's
``org.bluez.Error.NotPermitted``), which the simulator itself has no notion of."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bleak.backends.device import BLEDevice
from bleak.exc import BleakDBusError

from firmware_sims.ble.air import AIR
from firmware_sims.ble.backend import SimBleakClient
from firmware_sims.ble.peripherals import BloodPressureCuff
from gateway.drivers.base import DriverError
from gateway.drivers.ble_session import MODEL_NUMBER, BleSession, SessionTimeouts
from gateway.drivers.pairing import PAIRING_PROFILES, bluez_device_path, is_insufficient_security, pair
from tests.gateway.ble_support import empty_air  # noqa: F401 (empty_air is an autouse fixture)

pytestmark = pytest.mark.unit

FAST = SessionTimeouts(connect_s=1.0, connect_attempts=2, op_s=0.3, idle_s=0.2, retry_base_s=0.01, retry_cap_s=0.05)


@pytest.mark.parametrize(
    ("error", "needs_pairing"),
    [
        (BleakDBusError("org.bluez.Error.NotPermitted", ["Not paired"]), True),
        # Insufficient authorization (ATT 0x08) is the application's refusal, not the link's.
        (BleakDBusError("org.bluez.Error.NotAuthorized", ["Operation Not Authorized"]), False),
        (BleakDBusError("org.bluez.Error.NotPermitted", ["Insufficient Encryption (0x0f)"]), True),
        (BleakDBusError("org.bluez.Error.NotPermitted", []), True),
        # A characteristic that is never readable: pairing would not change the answer.
        (BleakDBusError("org.bluez.Error.NotPermitted", ["Read not permitted"]), False),
        (BleakDBusError("org.bluez.Error.Failed", ["Not paired"]), False),
        (ValueError("Not paired"), False),
    ],
)
def test_which_refusals_call_for_pairing(error: BaseException, needs_pairing: bool) -> None:
    assert is_insufficient_security(error) is needs_pairing


def test_only_devices_bluez_heard_have_a_bluez_path() -> None:
    heard = BLEDevice("AA:BB:CC:00:00:01", "meter", {"path": "/org/bluez/hci0/dev_AA_BB_CC_00_00_01", "props": {}})
    assert bluez_device_path(heard) == "/org/bluez/hci0/dev_AA_BB_CC_00_00_01"
    assert bluez_device_path("AA:BB:CC:00:00:01") is None
    assert bluez_device_path(BLEDevice("AA:BB:CC:00:00:01", "sim", object())) is None


def test_the_glucose_meter_and_cuff_pair_on_connect() -> None:
    assert {"ble.glucose", "ble.blood_pressure"} <= PAIRING_PROFILES
    assert "ble.heart_rate" not in PAIRING_PROFILES


class _LockedUntilPaired(SimBleakClient):
    """A device whose stack answers Device Information reads with BlueZ's "Not paired" until paired."""

    pairings = 0

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        type(self).pairings += 1

    async def read_gatt_char(self, characteristic: Any, **kwargs: Any) -> bytearray:
        if type(self).pairings == 0:
            raise BleakDBusError("org.bluez.Error.NotPermitted", ["Not paired"])
        return await super().read_gatt_char(characteristic, **kwargs)


class _NeverPairs(_LockedUntilPaired):
    async def pair(self, *args: Any, **kwargs: Any) -> None:
        type(self).pairings += 1

    async def read_gatt_char(self, characteristic: Any, **kwargs: Any) -> bytearray:
        raise BleakDBusError("org.bluez.Error.NotPermitted", ["Not paired"])


def test_a_read_refused_for_want_of_encryption_pairs_once_then_succeeds() -> None:
    AIR.add(BloodPressureCuff("AA:05:00:00:00:01", model="SIM-BP"))
    _LockedUntilPaired.pairings = 0

    async def run() -> bytes:
        async with BleSession("AA:05:00:00:00:01", client_backend=_LockedUntilPaired, timeouts=FAST) as session:
            return await session.read(MODEL_NUMBER)

    assert asyncio.run(run()) == b"SIM-BP"
    assert _LockedUntilPaired.pairings == 1


def test_a_device_still_refusing_after_pairing_fails_with_a_clear_error() -> None:
    AIR.add(BloodPressureCuff("AA:05:00:00:00:02"))
    _NeverPairs.pairings = 0

    async def run() -> None:
        async with BleSession("AA:05:00:00:00:02", client_backend=_NeverPairs, timeouts=FAST) as session:
            await session.read(MODEL_NUMBER)

    with pytest.raises(DriverError, match=r"read 2a24: .*Not paired"):
        asyncio.run(run())
    assert _NeverPairs.pairings == 1  # paired once, not in a loop


def test_pairing_on_the_simulator_is_a_no_op() -> None:
    AIR.add(BloodPressureCuff("AA:05:00:00:00:03"))

    async def run() -> tuple[bool, bool]:
        async with BleSession(
            "AA:05:00:00:00:03", client_backend=SimBleakClient, timeouts=FAST, pair_on_connect=True
        ) as session:
            return await pair(session.client, session.device), session.paired_now

    assert asyncio.run(run()) == (False, False)
