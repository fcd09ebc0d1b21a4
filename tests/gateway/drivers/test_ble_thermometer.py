"""Thermometer sessions through bleak's BleakClient with the simulator backend: stored readings
indicated on connect, a Fahrenheit device, a fixed temperature type as the site, intermediate values
that keep the session open but never become readings, and a bad record quarantined."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from firmware_sims.ble.air import AIR
from firmware_sims.ble.backend import SimBleakClient
from firmware_sims.ble.gatt import Service
from firmware_sims.ble.thermometer import SITES, TEMPERATURE_TYPE, TemperatureRecord, Thermometer
from gateway.discovery.ble import run_device_session
from gateway.discovery.ble_config import BleConfig
from gateway.drivers.device_state import DeviceStateStore
from gateway.readings.intake import RecordIntake
from gateway.store.outbox import Outbox
from tests.gateway.ble_support import RecordingSink, empty_air  # noqa: F401 (empty_air is an autouse fixture)

pytestmark = pytest.mark.unit

CONFIG = BleConfig(backend="sim", op_timeout_s=1.0, idle_timeout_s=0.3, connect_timeout_s=1.0, connect_attempts=1)
MORNING = (datetime.now() - timedelta(hours=3)).replace(microsecond=0)


def session(address: str, sink, tmp_path: Path):
    return run_device_session(address, "ble.thermometer", config=CONFIG, sink=sink,
                              state=DeviceStateStore(tmp_path / "state.sqlite"), client_backend=SimBleakClient)


def test_stored_readings_are_taken_on_connect_with_their_site(tmp_path: Path) -> None:
    records = [TemperatureRecord(36.6, MORNING, SITES["mouth"]), TemperatureRecord(38.4, MORNING + timedelta(hours=1))]
    AIR.add(Thermometer("AA:1E:00:00:00:01", records, fixed_site=SITES["armpit"]))
    sink = RecordingSink()
    result = asyncio.run(session("AA:1E:00:00:00:01", sink, tmp_path))
    assert [r.values["body_temperature"].value for r in sink.readings] == [36.6, 38.4]
    assert {r.kind for r in sink.readings} == {"body_temperature"}
    # The frame's own site wins; the fixed Temperature Type names the site where the frame has none.
    assert [m.details["temperature_type"] for m in sink.measurements] == ["mouth", "armpit"]
    assert result.measurements == 2 and sink.readings[1].device_time == MORNING + timedelta(hours=1)


def test_fahrenheit_readings_are_stored_in_celsius_with_the_original(tmp_path: Path) -> None:
    AIR.add(Thermometer("AA:1E:00:00:00:02", [TemperatureRecord(100.4, MORNING)], fahrenheit=True))
    sink = RecordingSink()
    asyncio.run(session("AA:1E:00:00:00:02", sink, tmp_path))
    (value,) = [r.values["body_temperature"] for r in sink.readings]
    assert value.unit == "Cel" and value.value == pytest.approx(38.0)
    assert value.original_value == 100.4 and value.original_unit == "[degF]"


def test_intermediate_temperatures_keep_the_session_open_and_are_never_stored(tmp_path: Path) -> None:
    # Eight intermediates 0.1 s apart: longer in total than the 0.3 s idle timeout, so a session that
    # ignored them would end before the final reading.
    device = Thermometer("AA:1E:00:00:00:03", [], measuring=[35.1, 35.9, 36.4, 36.8, 37.0, 37.1, 37.2, 37.2],
                         measuring_interval_s=0.1)
    AIR.add(device)
    sink = RecordingSink()
    result = asyncio.run(session("AA:1E:00:00:00:03", sink, tmp_path))
    assert len(device.sent_intermediate) == 8
    assert [r.values["body_temperature"].value for r in sink.readings] == [37.2]
    assert all("intermediate" not in r.flags for r in sink.readings)
    assert any("8 intermediate" in note for note in result.notes)


def test_a_bad_record_is_quarantined_and_the_next_one_still_comes(tmp_path: Path) -> None:
    records = [TemperatureRecord(0, raw="00ffff7f"), TemperatureRecord(36.9, MORNING),
               TemperatureRecord(98.6, raw="00da0300ff")]  # a Fahrenheit number with the Celsius flag
    AIR.add(Thermometer("AA:1E:00:00:00:04", records))
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        asyncio.run(session("AA:1E:00:00:00:04", RecordIntake(outbox), tmp_path))
        quarantined = outbox.quarantined_records("ble:AA:1E:00:00:00:04")
        batch = outbox.take_batch("b1", 10, 30)
    finally:
        outbox.close()
    assert batch is not None and len(batch) == 1
    assert [q.raw for q in quarantined] == ["00ffff7f", "00da0300ff"]
    assert "body_temperature" in quarantined[1].reason


def test_a_temperature_type_that_does_not_decode_costs_the_site_not_the_readings(tmp_path: Path) -> None:
    class PaddedType(Thermometer):
        """A thermometer whose Temperature Type has a byte after the uint8 (HTS 3.2 allows none)."""

        def profile_services(self) -> list[Service]:
            services = super().profile_services()
            for characteristic in services[0].characteristics:
                if characteristic.uuid == TEMPERATURE_TYPE:
                    characteristic.value += b"\x00"
            return services

    AIR.add(PaddedType("AA:1E:00:00:00:05", [TemperatureRecord(36.7, MORNING)], fixed_site=SITES["armpit"]))
    sink = RecordingSink()
    result = asyncio.run(session("AA:1E:00:00:00:05", sink, tmp_path))
    assert [r.values["body_temperature"].value for r in sink.readings] == [36.7]
    assert "temperature_type" not in sink.measurements[0].details and result.measurements == 1
