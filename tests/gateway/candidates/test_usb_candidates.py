"""USB devices are proposed the same way (issue 19): a supported device plugged in is a candidate and its
port is not opened until it is confirmed; config entries are read at once unless they ask to be confirmed."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from firmware_sims.serial.astm_meter import GlucoseMeter, GlucoseResult, PtyAstmMeter
from gateway.discovery.enrolment import EnrolmentStore
from gateway.discovery.usb import UsbManager, propose_plugged_in
from gateway.discovery.usb_config import UsbConfig
from gateway.discovery.usb_devices import PortFacts
from gateway.drivers.device_state import DeviceStateStore

pytestmark = pytest.mark.unit


def test_a_supported_device_plugged_in_is_proposed_with_its_usb_strings(tmp_path) -> None:
    store = EnrolmentStore(tmp_path / "e.sqlite")
    ports = [PortFacts("/dev/ttyUSB0", vid=0x0FCF, pid=0x1009, serial_number="S1", manufacturer="Dynastream",
                       product="ANTUSB-m Stick"), PortFacts("/dev/ttyUSB1", vid=0x1234, pid=0x5678)]
    assert propose_plugged_in(UsbConfig(), store, ports) == 1
    [candidate] = store.candidates()
    assert (candidate.uid, candidate.transport, candidate.make, candidate.model, candidate.rssi) == (
        "usb:0fcf:1009:S1", "usb", "Dynastream", "ANTUSB-m Stick", None)
    store.confirm("usb:0fcf:1009:S1", source="pair")
    assert propose_plugged_in(UsbConfig(), store, ports) == 0


def test_a_meter_that_needs_confirmation_is_read_only_once_confirmed(tmp_path) -> None:
    link = str(tmp_path / "ttyMeter")
    config = UsbConfig(poll_interval_s=0.05, devices=[{"port": link, "profile": "serial.astm",
                                                       "needs_confirmation": True}])
    base = datetime(2026, 11, 21, 8, 0)
    sim = PtyAstmMeter(GlucoseMeter(results=[GlucoseResult(base + timedelta(hours=i), 100 + i) for i in range(3)]),
                       link_path=link)
    store = EnrolmentStore(tmp_path / "e.sqlite")
    state = DeviceStateStore(tmp_path / "state.db")
    got: list[object] = []

    async def sink(device, measurement, clock, **position) -> None:  # type: ignore[no-untyped-def]
        got.append(measurement)

    async def scenario() -> None:
        manager = UsbManager(config, sink, state, list_ports=list, enrolment=store)
        task = asyncio.create_task(manager.run())
        try:
            sim.plug_in()
            async with asyncio.timeout(10):
                while not store.candidates():  # noqa: ASYNC110 - the manager polls; no event to wait on
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            assert manager.sessions_started == 0 and got == []
            store.confirm(store.candidates()[0].uid, source="local")
            async with asyncio.timeout(10):
                while len(got) < 3:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            sim.pull_cable()

    asyncio.run(scenario())
    assert len(got) == 3 and store.candidates() == []
    state.close()
