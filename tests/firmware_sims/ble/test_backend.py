"""The simulated peripherals through bleak's own BleakScanner and BleakClient with the sim backend.

Frames are compared with what the encoders produce (simulator side only); decoding them is the
gateway's job and is tested there.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError

from firmware_sims.ble import encoders as enc
from firmware_sims.ble.air import AIR, SCENARIO_ENV, ScenarioError, load_scenario
from firmware_sims.ble.backend import SimBleakClient, SimBleakScanner
from firmware_sims.ble.cli import example_scenario
from firmware_sims.ble.gatt import (
    BP_MEASUREMENT,
    CURRENT_TIME,
    GLUCOSE_MEASUREMENT,
    GLUCOSE_SERVICE,
    MODEL_NUMBER,
    RACP,
    SERIAL_NUMBER,
    Faults,
)
from firmware_sims.ble.peripherals import BloodPressureCuff, BpRecord, GlucoseMeter, GlucoseRecord, HeartRateStrap

pytestmark = pytest.mark.unit

T = datetime(2026, 3, 14, 7, 5, 9)


def meter(address: str, n: int = 5, **kwargs) -> GlucoseMeter:
    records = [GlucoseRecord(i, T + timedelta(minutes=i), 0.00090 + i / 100_000) for i in range(1, n + 1)]
    return GlucoseMeter(address, records, **kwargs)


async def racp_session(client: BleakClient, request: bytes) -> tuple[list[bytes], bytes]:
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    await client.start_notify(GLUCOSE_MEASUREMENT, lambda c, d: queue.put_nowait(("m", bytes(d))))
    await client.start_notify(RACP, lambda c, d: queue.put_nowait(("r", bytes(d))))
    await client.write_gatt_char(RACP, request, response=True)
    frames = []
    while True:
        kind, data = await asyncio.wait_for(queue.get(), 2)
        if kind == "r":
            return frames, data
        frames.append(data)


def test_scanner_hears_health_devices_filtered_by_service() -> None:
    AIR.add(meter("AA:00:00:00:01:01"), BloodPressureCuff("AA:00:00:00:01:02"), HeartRateStrap("AA:00:00:00:01:03"))

    async def scan() -> dict:
        return await BleakScanner.discover(0.2, return_adv=True, service_uuids=[GLUCOSE_SERVICE],
                                           backend=SimBleakScanner)

    found = asyncio.run(scan())
    assert list(found) == ["AA:00:00:00:01:01"]
    device, adv = found["AA:00:00:00:01:01"]
    assert adv.service_uuids == [GLUCOSE_SERVICE] and adv.local_name == device.name


def test_a_peripheral_that_is_not_advertising_is_not_heard() -> None:
    AIR.add(meter("AA:00:00:00:02:01", advertising=False))
    found = asyncio.run(BleakScanner.discover(0.1, backend=SimBleakScanner))
    assert found == []


def test_client_reads_device_information_and_gets_att_errors() -> None:
    AIR.add(meter("AA:00:00:00:03:01", serial="SN-42"))

    async def session() -> None:
        async with BleakClient("aa:00:00:00:03:01", backend=SimBleakClient) as client:
            assert await client.read_gatt_char(MODEL_NUMBER) == b"SIM-GLUCO"
            assert await client.read_gatt_char(SERIAL_NUMBER) == b"SN-42"
            with pytest.raises(BleakGATTProtocolError):
                await client.write_gatt_char(MODEL_NUMBER, b"x", response=True)
            with pytest.raises(BleakGATTProtocolError):
                await client.write_gatt_char(CURRENT_TIME, b"\x00\x01", response=True)

    asyncio.run(session())


def test_unknown_address_is_device_not_found() -> None:
    async def session() -> None:
        async with BleakClient("AA:00:00:00:04:01", backend=SimBleakClient):
            pass

    with pytest.raises(BleakDeviceNotFoundError):
        asyncio.run(session())


def test_racp_greater_or_equal_reports_those_records_then_success() -> None:
    device = meter("AA:00:00:00:05:01")
    AIR.add(device)

    async def session() -> tuple[list[bytes], bytes]:
        async with BleakClient("AA:00:00:00:05:01", backend=SimBleakClient) as client:
            return await racp_session(client, enc.encode_racp_report_greater_or_equal(4))

    frames, response = asyncio.run(session())
    assert frames == [r.encode() for r in device.records[3:]]
    assert response == enc.encode_racp_response(1, enc.RESPONSE_SUCCESS)


def test_racp_beyond_the_last_record_answers_no_records_found() -> None:
    AIR.add(meter("AA:00:00:00:06:01"))

    async def session() -> tuple[list[bytes], bytes]:
        async with BleakClient("AA:00:00:00:06:01", backend=SimBleakClient) as client:
            return await racp_session(client, enc.encode_racp_report_greater_or_equal(6))

    assert asyncio.run(session()) == ([], bytes.fromhex("06000106"))


def test_racp_number_of_records_and_unsupported_operator() -> None:
    AIR.add(meter("AA:00:00:00:07:01", n=3))

    async def session() -> tuple[bytes, bytes]:
        async with BleakClient("AA:00:00:00:07:01", backend=SimBleakClient) as client:
            _, count = await racp_session(client, bytes([enc.RACP_REPORT_NUMBER_OF_RECORDS, enc.OPERATOR_ALL]))
            _, bad = await racp_session(client, bytes([enc.RACP_REPORT_STORED_RECORDS, 9]))
            return count, bad

    count, bad = asyncio.run(session())
    assert count == enc.encode_racp_number_of_records(3)
    assert bad == enc.encode_racp_response(1, enc.RESPONSE_OPERATOR_NOT_SUPPORTED)


def test_racp_write_without_indications_enabled_is_refused() -> None:
    AIR.add(meter("AA:00:00:00:08:01"))

    async def session() -> None:
        async with BleakClient("AA:00:00:00:08:01", backend=SimBleakClient) as client:
            await client.write_gatt_char(RACP, enc.encode_racp_report_greater_or_equal(1), response=True)

    with pytest.raises(BleakGATTProtocolError) as err:
        asyncio.run(session())
    assert err.value.code == 0xFD


def test_drop_fault_ends_the_link_after_k_records_once() -> None:
    device = meter("AA:00:00:00:09:01", faults=Faults(drop_after_records=2))
    AIR.add(device)
    lost = []

    async def first() -> list[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        gone = asyncio.Event()
        client = BleakClient("AA:00:00:00:09:01", backend=SimBleakClient,
                             disconnected_callback=lambda c: (lost.append(c), gone.set()))
        await client.connect()
        await client.start_notify(GLUCOSE_MEASUREMENT, lambda c, d: queue.put_nowait(bytes(d)))
        await client.start_notify(RACP, lambda c, d: queue.put_nowait(bytes(d)))
        await client.write_gatt_char(RACP, enc.encode_racp_report_greater_or_equal(1), response=True)
        await asyncio.wait_for(gone.wait(), 2)
        assert not client.is_connected
        with pytest.raises(BleakError):
            await client.read_gatt_char(MODEL_NUMBER)
        return [queue.get_nowait() for _ in range(queue.qsize())]

    received = asyncio.run(first())
    assert received == [r.encode() for r in device.records[:2]] and len(lost) == 1

    async def second() -> list[bytes]:
        async with BleakClient("AA:00:00:00:09:01", backend=SimBleakClient) as client:
            frames, _ = await racp_session(client, enc.encode_racp_report_greater_or_equal(3))
            return frames

    assert asyncio.run(second()) == [r.encode() for r in device.records[2:]]


def test_cuff_indicates_its_memory_then_ends_the_link() -> None:
    cuff = BloodPressureCuff("AA:00:00:00:0A:01", [BpRecord(120, 80, 93, T, pulse=60, user_id=1),
                                                    BpRecord(18.9, 11.0, 15.9, None, user_id=2)], unit="kPa")
    AIR.add(cuff)

    async def session() -> list[bytes]:
        frames: list[bytes] = []
        gone = asyncio.Event()
        async with BleakClient("AA:00:00:00:0A:01", backend=SimBleakClient,
                               disconnected_callback=lambda c: gone.set()) as client:
            await client.start_notify(BP_MEASUREMENT, lambda c, d: frames.append(bytes(d)))
            await asyncio.wait_for(gone.wait(), 2)
        return frames

    assert asyncio.run(session()) == [r.encode("kPa") for r in cuff.records]


def test_current_time_write_sets_the_device_clock() -> None:
    device = meter("AA:00:00:00:0B:01", clock_unset=True)
    AIR.add(device)
    assert device.device_now().year == 2000
    target = datetime.now().replace(microsecond=0)

    async def session() -> None:
        async with BleakClient("AA:00:00:00:0B:01", backend=SimBleakClient) as client:
            await client.write_gatt_char(CURRENT_TIME, enc.encode_current_time(target), response=True)

    asyncio.run(session())
    assert device.clock_writes == [target]
    assert abs(device.device_now() - target) < timedelta(seconds=5)


def test_scenario_file_puts_peripherals_on_the_air(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(example_scenario(T)))
    monkeypatch.setenv(SCENARIO_ENV, str(path))
    found = asyncio.run(BleakScanner.discover(0.1, backend=SimBleakScanner))
    assert sorted(d.address for d in found) == [f"C0:FF:EE:00:00:0{i}" for i in range(1, 5)]
    assert len(load_scenario(path)[1].records) == 5


def test_bad_scenario_is_a_scenario_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"peripherals": [{"type": "toaster", "address": "AA"}]}))
    with pytest.raises(ScenarioError, match="toaster"):
        load_scenario(path)
    path.write_text("{")
    with pytest.raises(ScenarioError, match="not JSON"):
        load_scenario(path)
