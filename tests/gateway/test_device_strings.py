"""Device strings are cleaned at the gateway (issue 14, item 3): NUL, control and format characters,
invalid UTF-8, whitespace and length, in one function every driver uses; a device whose Model Number
String has a NUL and invalid UTF-8 inside still gets its readings into the outbox, with a clean model."""

from __future__ import annotations

import asyncio
import unicodedata
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sims.ble.air import AIR
from firmware_sims.ble.backend import SimBleakClient
from firmware_sims.ble.gatt import MODEL_NUMBER, SERIAL_NUMBER, Service
from firmware_sims.ble.peripherals import BloodPressureCuff, BpRecord
from firmware_sims.serial.astm_meter import GlucoseMeter, GlucoseResult, PtyAstmMeter
from gateway.contract import Reading
from gateway.discovery.ble import run_device_session
from gateway.discovery.ble_config import BleConfig
from gateway.drivers.astm_meter import AstmMeterDriver
from gateway.drivers.base import DeviceInfo
from gateway.drivers.device_state import DeviceStateStore
from gateway.drivers.device_strings import MAX_DEVICE_STRING, clean_device_string
from gateway.readings.intake import RecordIntake
from gateway.store.outbox import Outbox
from tests.gateway.ble_support import empty_air  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.unit

BLE = BleConfig(backend="sim", op_timeout_s=1.0, idle_timeout_s=0.3, connect_timeout_s=1.0, connect_attempts=1)


@pytest.mark.parametrize(("raw", "clean"), [
    (b"UA-651\x00\xff\xfeBLE\x07 ", "UA-651\ufffd\ufffdBLE"),
    (b"SIM-BP\x00\x00\x00\x00", "SIM-BP"),
    (b"\x00\x00\x00", None),
    (b"  \t\r\n ", None),
    (b"", None),
    ("A\tB\n\nC", "A B C"),
    ("Omron\u202eLB\u200b", "OmronLB"),  # a bidirectional override and a zero-width space
    ("x" * 200, "x" * MAX_DEVICE_STRING),
    ("e\u0301", "\u00e9"),  # one NFC form, so two spellings of a name compare equal
    (None, None),
])
def test_device_strings_are_cleaned(raw: bytes | str | None, clean: str | None) -> None:
    assert clean_device_string(raw) == clean


@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
@settings(max_examples=200, deadline=None)
def test_a_cleaned_string_is_printable_bounded_trimmed_and_stable(raw: bytes | str) -> None:
    cleaned = clean_device_string(raw)
    if cleaned is None:
        return
    assert 0 < len(cleaned) <= MAX_DEVICE_STRING and cleaned == cleaned.strip()
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in cleaned)
    assert "  " not in cleaned and cleaned.encode("utf-8")  # encodable: no lone surrogates
    assert clean_device_string(cleaned) == cleaned


class CuffWithRawStrings(BloodPressureCuff):
    """A cuff whose Device Information characteristics hold bytes as some devices really send them."""

    def __init__(self, address: str, records: list[BpRecord], raw_strings: dict[str, bytes]) -> None:
        super().__init__(address, records)
        self.raw_strings = raw_strings

    def services(self) -> list[Service]:
        table = super().services()
        for service in table:
            for characteristic in service.characteristics:
                if characteristic.uuid in self.raw_strings:
                    characteristic.value = self.raw_strings[characteristic.uuid]
        return table


def test_a_model_string_with_a_nul_and_invalid_utf8_still_brings_its_readings_with_a_clean_model(
        tmp_path: Path) -> None:
    address = "AA:0D:00:00:00:01"
    when = (datetime.now() - timedelta(hours=2)).replace(microsecond=0)
    AIR.add(CuffWithRawStrings(address, [BpRecord(121, 79, 93, when), BpRecord(124, 81, 95, when + timedelta(1))],
                               {MODEL_NUMBER: b"UA-651\x00\xff\xfeBLE\x07", SERIAL_NUMBER: b"\x00" * 8}))
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        intake = RecordIntake(outbox)
        asyncio.run(run_device_session(address, "ble.blood_pressure", config=BLE, sink=intake,
                                       state=DeviceStateStore(tmp_path / "state.sqlite"),
                                       client_backend=SimBleakClient))
        batch = outbox.take_batch("b1", 10, 30)
        assert batch is not None and len(batch) == 2
        for payload in batch.payloads:
            assert "\\u0000" not in payload and "\\u0007" not in payload
        assert outbox.quarantined_records() == []
    finally:
        outbox.close()
    readings = [Reading.model_validate_json(p) for p in batch.payloads]
    assert {r.device.model for r in readings} == {"UA-651\ufffd\ufffdBLE"}
    assert {r.device.serial for r in readings} == {None}  # all NULs: no serial rather than an empty one


def test_an_astm_header_with_control_characters_and_a_long_name_gives_a_clean_uid_and_model(tmp_path: Path) -> None:
    # DEL passes the frame's control-character check (it is above 0x1f) and reaches the header.
    meter = GlucoseMeter(results=[GlucoseResult(datetime.now().replace(second=0, microsecond=0), 101)],
                         serial="7390-1163170\x7f", model="Contour\x7f" + "X" * 100)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        with PtyAstmMeter(meter) as sim:
            device = DeviceInfo(uid=f"usb:0000:0000:{sim.path}", transport="usb", profile="serial.astm")
            driver = AstmMeterDriver(sim.path, device, RecordIntake(outbox), DeviceStateStore(tmp_path / "s.db"))
            asyncio.run(asyncio.wait_for(driver.run(), 15))
        assert driver.device.uid == "usb:0000:0000:7390-1163170"
        batch = outbox.take_batch("b1", 10, 30)
        assert batch is not None and len(batch) == 1
    finally:
        outbox.close()
    reading = Reading.model_validate_json(batch.payloads[0])
    assert reading.device.serial == "7390-1163170"
    assert reading.device.model == ("Contour" + "X" * 100)[:MAX_DEVICE_STRING]
