"""BleSession over bleak's BleakClient with the simulator backend: connection retries with backoff,
timeouts on every GATT operation, Device Information, battery, the clock check."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from firmware_sims.ble.air import AIR
from firmware_sims.ble.backend import SimBleakClient
from firmware_sims.ble.gatt import ATT_READ_NOT_PERMITTED, Faults, GattError
from firmware_sims.ble.peripherals import BloodPressureCuff, HeartRateStrap
from gateway.discovery.ble_config import BackendLoadError
from gateway.drivers.base import DeviceDisconnectedError, DeviceTimeoutError
from gateway.drivers.ble_session import (
    BATTERY_LEVEL,
    BleSession,
    DeviceConnectError,
    SessionTimeouts,
    backoff_delay,
)
from gateway.runtime import load_bleak_backends
from tests.gateway.ble_support import empty_air  # noqa: F401 (empty_air is an autouse fixture)

pytestmark = pytest.mark.unit

FAST = SessionTimeouts(connect_s=1.0, connect_attempts=3, op_s=0.3, idle_s=0.2, retry_base_s=0.01, retry_cap_s=0.05)




def test_backoff_grows_is_capped_and_jittered() -> None:
    assert backoff_delay(1, 1.0, 10.0, rng=lambda: 0.5) == 1.0
    assert backoff_delay(3, 1.0, 10.0, rng=lambda: 0.5) == 4.0
    assert backoff_delay(9, 1.0, 10.0, rng=lambda: 0.5) == 10.0
    assert backoff_delay(2, 1.0, 10.0, rng=lambda: 0.0) == 1.0
    assert backoff_delay(2, 1.0, 10.0, rng=lambda: 0.999) == pytest.approx(2.998)


def test_connect_retries_until_the_device_accepts() -> None:
    cuff = BloodPressureCuff("AA:04:00:00:00:01", faults=Faults(refuse_connections=2))
    AIR.add(cuff)

    async def run() -> int:
        async with BleSession("AA:04:00:00:00:01", client_backend=SimBleakClient, timeouts=FAST) as session:
            assert session.is_connected
            return session.connect_attempts_used

    assert asyncio.run(run()) == 3
    assert cuff.link is None  # closed on exit


def test_connect_gives_up_after_the_configured_attempts() -> None:
    AIR.add(BloodPressureCuff("AA:04:00:00:00:02", faults=Faults(refuse_connections=10)))

    async def run() -> None:
        async with BleSession("AA:04:00:00:00:02", client_backend=SimBleakClient, timeouts=FAST):
            pass

    with pytest.raises(DeviceConnectError, match="3 attempt"):
        asyncio.run(run())


def test_a_slow_connection_times_out() -> None:
    AIR.add(BloodPressureCuff("AA:04:00:00:00:03", faults=Faults(connect_delay_s=5)))
    timeouts = SessionTimeouts(connect_s=0.2, connect_attempts=1, op_s=0.3)

    async def run() -> None:
        async with BleSession("AA:04:00:00:00:03", client_backend=SimBleakClient, timeouts=timeouts):
            pass

    with pytest.raises(DeviceConnectError, match="timed out"):
        asyncio.run(run())


def test_every_gatt_operation_has_a_timeout() -> None:
    cuff = BloodPressureCuff("AA:04:00:00:00:04")
    AIR.add(cuff)

    async def run() -> None:
        async with BleSession("AA:04:00:00:00:04", client_backend=SimBleakClient, timeouts=FAST) as session:
            cuff.faults.response_delay_s = 5
            await session.read(BATTERY_LEVEL)

    with pytest.raises(DeviceTimeoutError, match=r"timed out after 0\.3 s"):
        asyncio.run(run())


def test_unreadable_battery_and_clock_do_not_end_the_session() -> None:
    class LockedCuff(BloodPressureCuff):
        def _read_current_time(self) -> bytes:
            raise GattError(ATT_READ_NOT_PERMITTED, "locked")

    cuff = LockedCuff("AA:04:00:00:00:08", battery=101)  # 101 % is not a battery level
    AIR.add(cuff)

    async def run():
        async with BleSession("AA:04:00:00:00:08", client_backend=SimBleakClient, timeouts=FAST) as session:
            return await session.battery(), await session.check_clock(), session.is_connected

    battery, clock, connected = asyncio.run(run())
    assert battery is None and clock.device_now is None and not clock.was_set and connected


def test_device_information_battery_and_clock() -> None:
    AIR.add(BloodPressureCuff("aa:04:00:00:00:05", manufacturer="Acme", model="BP-9", serial="S1", battery=41,
                              clock_offset=timedelta(minutes=-30)))

    async def run():
        async with BleSession("AA:04:00:00:00:05", client_backend=SimBleakClient, timeouts=FAST) as session:
            info = await session.device_info("ble.blood_pressure")
            return info, await session.battery(), await session.check_clock()

    info, battery, clock = asyncio.run(run())
    assert (info.uid, info.manufacturer, info.model, info.serial) == ("ble:AA:04:00:00:00:05", "Acme", "BP-9", "S1")
    assert battery == 41
    assert clock.was_set and not clock.unset
    assert abs(clock.offset + timedelta(minutes=30)) < timedelta(seconds=5)


def test_device_without_current_time_service_is_not_judged() -> None:
    AIR.add(HeartRateStrap("AA:04:00:00:00:06"))
    fixed = datetime(2026, 1, 1, tzinfo=UTC)

    async def run():
        async with BleSession("AA:04:00:00:00:06", client_backend=SimBleakClient, timeouts=FAST) as session:
            return await session.check_clock(now=lambda: fixed)

    clock = asyncio.run(run())
    assert clock.gateway_now == fixed and clock.device_now is None and not clock.was_set and not clock.unset


def test_operations_after_the_device_left_say_disconnected() -> None:
    cuff = BloodPressureCuff("AA:04:00:00:00:07")
    AIR.add(cuff)

    async def run() -> None:
        async with BleSession("AA:04:00:00:00:07", client_backend=SimBleakClient, timeouts=FAST) as session:
            assert cuff.link is not None
            cuff.link.drop()
            await asyncio.wait_for(session.disconnected.wait(), 1)
            await session.battery()

    with pytest.raises(DeviceDisconnectedError):
        asyncio.run(run())


def test_backend_is_loaded_lazily_by_name() -> None:
    assert load_bleak_backends(None) == (None, None)
    scanner, client = load_bleak_backends("sim")
    assert client is SimBleakClient and scanner.__name__ == "SimBleakScanner"
    with pytest.raises(BackendLoadError):
        load_bleak_backends("no.such.backend_module")
