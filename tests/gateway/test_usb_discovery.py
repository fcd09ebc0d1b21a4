"""USB hot-plug: the manager over real ptys behind stable links (as /dev/serial/by-id is), the device
table and the udev rules generated from it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_sims.serial.ad_scale import PtyScale, Weighing
from firmware_sims.serial.astm_meter import GlucoseMeter, GlucoseResult, PtyAstmMeter
from gateway.codecs.common import Measurement
from gateway.discovery.usb import UsbManager, usb_candidates
from gateway.discovery.usb_config import UsbConfig
from gateway.discovery.usb_devices import SUPPORTED_DEVICES, PortFacts, device_table, match_port, udev_rules
from gateway.drivers.base import ClockCheck, DeviceInfo
from gateway.drivers.device_state import DeviceStateStore
from gateway.profiles import USB_PROFILES
from gateway.readings.normalise import to_reading

pytestmark = pytest.mark.unit

UDEV_FILE = Path(__file__).resolve().parents[2] / "deploy" / "udev" / "60-rpm-gateway-usb.rules"


class Recorder:
    def __init__(self) -> None:
        self.items: list[tuple[DeviceInfo, Measurement, ClockCheck | None]] = []
        self.status: list[tuple[str, dict]] = []

    async def sink(self, device: DeviceInfo, measurement: Measurement, clock: ClockCheck | None) -> None:
        self.items.append((device, measurement, clock))

    def on_status(self, uid: str, **fields) -> None:
        self.status.append((uid, fields))

    def states(self) -> list[str]:
        return [f["state"] for _, f in self.status if "state" in f]

    def reading_ids(self) -> set[str]:
        now = datetime.now(UTC)
        return {to_reading(d, m, c, now).id for d, m, c in self.items}


async def until(condition, within: float = 10.0) -> None:
    """Poll a condition the simulators and the manager change from their own threads and tasks."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - the state lives in threads, not in an asyncio.Event
            await asyncio.sleep(0.02)


@pytest.fixture
def state(tmp_path):
    store = DeviceStateStore(tmp_path / "state.db")
    yield store
    store.close()


def meter_memory() -> list[GlucoseResult]:
    base = datetime(2026, 11, 21, 8, 0)
    return [GlucoseResult(base + timedelta(hours=5 * i), 100 + i) for i in range(6)]


def test_plug_unplug_plug_second_download_adds_no_reading(tmp_path, state) -> None:
    link = str(tmp_path / "ttyMeter")
    config = UsbConfig(poll_interval_s=0.05, devices=[{"port": link, "profile": "serial.astm"}])
    recorder = Recorder()
    meter = GlucoseMeter(results=meter_memory(), clock_offset=timedelta(minutes=12))
    sim = PtyAstmMeter(meter, link_path=link)

    async def scenario() -> UsbManager:
        manager = UsbManager(config, recorder.sink, state, on_status=recorder.on_status, list_ports=list)
        task = asyncio.create_task(manager.run())
        sim.plug_in()
        await until(lambda: "done" in recorder.states())
        first_ids = recorder.reading_ids()
        sim.pull_cable()
        await until(lambda: manager.sessions_started == 1 and not manager._ports)
        sim.plug_in()
        await until(lambda: recorder.states().count("done") == 2)
        sim.pull_cable()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert recorder.reading_ids() == first_ids
        return manager

    manager = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert manager.sessions_started == 2
    assert len(recorder.items) == 12 and len(recorder.reading_ids()) == 6
    done = [(uid, f) for uid, f in recorder.status if f.get("state") == "done"]
    assert done[0][0] == "usb:0000:0000:7390-1163170"
    assert done[0][1]["clock_offset_s"] == pytest.approx(720, abs=60)
    assert all(f.get("error") is None for _, f in recorder.status)
    assert {uid for uid, _ in recorder.status} == {"usb:0000:0000:7390-1163170"}  # never the provisional uid


def test_a_replug_between_two_polls_is_a_new_session(tmp_path, state) -> None:
    link = str(tmp_path / "ttyMeter")
    config = UsbConfig(poll_interval_s=0.3, devices=[{"port": link, "profile": "serial.astm"}])
    recorder = Recorder()
    sim = PtyAstmMeter(GlucoseMeter(results=meter_memory()), link_path=link)

    async def scenario() -> UsbManager:
        manager = UsbManager(config, recorder.sink, state, on_status=recorder.on_status, list_ports=list)
        task = asyncio.create_task(manager.run())
        sim.plug_in()
        await until(lambda: "done" in recorder.states())
        sim.pull_cable()
        sim.plug_in()  # same path at once: only the device node says it is a new plug-in
        await until(lambda: recorder.states().count("done") == 2)
        sim.pull_cable()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return manager

    manager = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert manager.sessions_started == 2 and len(recorder.reading_ids()) == 6


def test_unplugging_a_streaming_scale_ends_its_session_cleanly(tmp_path, state) -> None:
    link = str(tmp_path / "ttyScale")
    config = UsbConfig(poll_interval_s=0.05, devices=[{"port": link, "profile": "serial.ad_scale"}])
    recorder = Recorder()
    sim = PtyScale([Weighing(80.4)], link_path=link)

    async def scenario() -> None:
        manager = UsbManager(config, recorder.sink, state, on_status=recorder.on_status, list_ports=list)
        task = asyncio.create_task(manager.run())
        sim.plug_in()
        await until(lambda: len(recorder.items) == 1)
        sim.pull_cable()
        await until(lambda: "unplugged" in recorder.states())
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert recorder.states() == ["connected", "unplugged"]
    assert recorder.items[0][1].values["body_weight"].value == 80.4


def test_a_failing_session_is_reported_and_retried(tmp_path, state) -> None:
    link = str(tmp_path / "ttyScale")
    # The scale speaks 2400 7E1; the config says 9600: garbage, a clear error, a retry.
    config = UsbConfig(poll_interval_s=0.05, retry_after_error_s=0.2,
                       devices=[{"port": link, "profile": "serial.ad_scale", "baudrate": 9600}])
    recorder = Recorder()
    sim = PtyScale([Weighing(80.4)] * 20, link_path=link)

    async def scenario() -> UsbManager:
        manager = UsbManager(config, recorder.sink, state, on_status=recorder.on_status, list_ports=list)
        task = asyncio.create_task(manager.run())
        sim.plug_in()
        await until(lambda: recorder.states().count("failed") >= 2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return manager

    manager = asyncio.run(asyncio.wait_for(scenario(), 20))
    sim.pull_cable()
    errors = [f["error"] for _, f in recorder.status if f.get("state") == "failed"]
    assert "wrong baud rate or parity" in errors[0]  # said by the port or the driver
    assert manager.sessions_started >= 2 and recorder.items == []


def test_table_matches_ids_and_shared_ids_need_the_description() -> None:
    table = device_table(UsbConfig())
    ant = match_port(PortFacts("/dev/ttyUSB0", vid=0x0FCF, pid=0x1008, serial_number="123"), table)
    assert ant is not None and ant.profile == "serial.ant_hrm" and ant.baudrate == 115200
    plain_ftdi = PortFacts("/dev/ttyUSB1", vid=0x0403, pid=0x6001, description="FT232R USB UART")
    assert match_port(plain_ftdi, table) is None
    scale = PortFacts("/dev/ttyUSB1", vid=0x0403, pid=0x6001, product="A&D AD-4406", description="AD-4406")
    assert match_port(scale, table).profile == "serial.ad_scale"


def test_config_entries_extend_the_table_and_come_first() -> None:
    config = UsbConfig(devices=[
        {"vid": "0403", "pid": "6001", "profile": "serial.ad_scale", "baudrate": 9600, "bytesize": 8,
         "parity": "N"},
    ])
    entry = match_port(PortFacts("/dev/ttyUSB1", vid=0x0403, pid=0x6001), device_table(config))
    assert (entry.baudrate, entry.bytesize, entry.parity) == (9600, 8, "N")
    assert entry.driver is USB_PROFILES["serial.ad_scale"].driver


def test_scan_lists_usb_candidates(tmp_path) -> None:
    link = tmp_path / "ttyMeter"
    link.touch()
    config = UsbConfig(devices=[{"port": str(link), "profile": "serial.astm"}])
    ports = [
        PortFacts("/dev/ttyUSB0", vid=0x0FCF, pid=0x1009, serial_number="S1", description="ANTUSB-m"),
        PortFacts("/dev/ttyUSB1", vid=0x1234, pid=0x5678, description="something else"),
        PortFacts("/dev/ttyS0"),
    ]
    found = {c["port"]: c for c in usb_candidates(config, ports)}
    assert set(found) == {"/dev/ttyUSB0", "/dev/ttyUSB1", str(link)}
    assert found["/dev/ttyUSB0"]["profile"] == "serial.ant_hrm" and found["/dev/ttyUSB0"]["uid"] == "usb:0fcf:1009:S1"
    assert found["/dev/ttyUSB1"]["supported"] is False
    assert found[str(link)]["profile"] == "serial.astm"


def test_udev_rules_are_generated_from_the_table() -> None:
    assert UDEV_FILE.read_text() == udev_rules(), "regenerate: python -m gateway.discovery.usb_devices --udev"
    for device in SUPPORTED_DEVICES:
        if device.vid is not None:
            assert f'ATTRS{{idVendor}}=="{device.vid:04x}"' in UDEV_FILE.read_text()


@pytest.mark.integration
def test_meter_readings_reach_the_running_gateways_outbox_once(tmp_path, mqtt_broker, unique_id) -> None:
    """The real runtime (outbox, uplink to the real broker, status) with the USB manager it starts."""
    from gateway.config import parse_config
    from gateway.runtime import Gateway

    link = str(tmp_path / "ttyMeter")
    config = parse_config({
        "gateway_id": unique_id, "data_dir": str(tmp_path / "gw"),
        "mqtt": {"url": mqtt_broker.url, "drain_timeout_s": 0.5},
        "ble": {"enabled": False},
        "usb": {"poll_interval_s": 0.05, "devices": [{"port": link, "profile": "serial.astm"}]},
    })
    sim = PtyAstmMeter(GlucoseMeter(results=meter_memory(), clock_offset=timedelta(minutes=-30)), link_path=link)

    async def scenario() -> tuple[int, object]:
        gateway = Gateway(config)
        await gateway.start()
        try:
            sim.plug_in()
            await until(lambda: sim.finished and gateway.outbox.depth() == 6)
            sim.pull_cable()
            sim.plug_in()
            await until(lambda: sim.finished and sim.transfers == 2)
            await until(lambda: any(d.uid == "usb:0000:0000:7390-1163170" and d.clock_offset_s is not None
                                    for d in gateway.status().devices))
            return gateway.outbox.depth(), gateway.status()
        finally:
            sim.pull_cable()
            await gateway.stop()

    depth, status = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert depth == 6  # the second full-memory download added nothing
    device = next(d for d in status.devices if d.uid == "usb:0000:0000:7390-1163170")
    assert device.clock_offset_s == pytest.approx(-1800, abs=90) and device.error is None
