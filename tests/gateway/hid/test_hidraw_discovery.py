"""HID meters found like USB serial ones: hidraw nodes listed from sysfs, matched by ids and node kind,
each product's session given the link its reports need."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.discovery.hidraw import hidraw_port, list_hidraw_ports
from gateway.discovery.usb import UsbManager, _Port, usb_candidates
from gateway.discovery.usb_config import UsbConfig
from gateway.discovery.usb_devices import PortFacts, device_table, match_port
from gateway.drivers.device_state import DeviceStateStore
from gateway.drivers.hidraw import ContourHidLink, Cp2110Link

pytestmark = pytest.mark.unit

CONTOUR_UEVENT = """DRIVER=hid-generic
HID_ID=0003:00001A79:00007410
HID_NAME=Bayer HealthCare LLC Contour Next USB
HID_PHYS=usb-0000:00:14.0-2/input0
HID_UNIQ=
MODALIAS=hid:b0003g0001v00001A79p00007410
"""


def fake_sysfs(root: Path, nodes: dict[str, str]) -> Path:
    for name, uevent in nodes.items():
        device = root / name / "device"
        device.mkdir(parents=True)
        (device / "uevent").write_text(uevent)
    return root


def test_a_usb_hid_device_is_listed_with_its_ids_name_and_serial(tmp_path) -> None:
    cp2110 = CONTOUR_UEVENT.replace("00001A79:00007410", "000010C4:0000EA80").replace("HID_UNIQ=", "HID_UNIQ=0001")
    bluetooth = CONTOUR_UEVENT.replace("HID_ID=0003", "HID_ID=0005")
    sysfs = fake_sysfs(
        tmp_path / "hidraw",
        {"hidraw0": CONTOUR_UEVENT, "hidraw1": cp2110, "hidraw2": bluetooth, "hidraw3": "DRIVER=hid-generic\n"},
    )
    ports = list_hidraw_ports(sysfs, Path("/dev"))
    assert [(p.device, p.vid, p.pid, p.serial_number, p.kind) for p in ports] == [
        ("/dev/hidraw0", 0x1A79, 0x7410, None, "hidraw"),
        ("/dev/hidraw1", 0x10C4, 0xEA80, "0001", "hidraw"),
    ]
    assert ports[0].product == "Bayer HealthCare LLC Contour Next USB"


def test_no_hidraw_class_means_no_hid_ports(tmp_path) -> None:
    assert list_hidraw_ports(tmp_path / "absent") == []


def test_the_hidraw_node_gets_the_hid_product_and_the_tty_the_serial_one() -> None:
    table = device_table(UsbConfig())
    contour = match_port(hidraw_port("hidraw0", CONTOUR_UEVENT), table)
    assert contour is not None and contour.profile == "serial.astm" and contour.link is ContourHidLink
    taidoc = match_port(PortFacts("/dev/hidraw1", vid=0x10C4, pid=0xEA80, kind="hidraw"), table)
    assert taidoc is not None and taidoc.link is Cp2110Link and taidoc.baudrate == 19200
    serial = match_port(PortFacts("/dev/ttyACM0", vid=0x1A79, pid=0x7410), table)
    assert serial is not None and serial.link is None
    # An unknown HID device (a keyboard) matches nothing and is no candidate for `rpm-gateway scan`.
    keyboard = PortFacts("/dev/hidraw5", vid=0x046D, pid=0xC31C, kind="hidraw")
    assert match_port(keyboard, table) is None
    candidates = usb_candidates(UsbConfig(), [keyboard, hidraw_port("hidraw0", CONTOUR_UEVENT)])
    assert [c["port"] for c in candidates] == ["/dev/hidraw0"] and candidates[0]["profile"] == "serial.astm"


def test_the_session_of_a_hid_meter_opens_the_product_link(tmp_path) -> None:
    state = DeviceStateStore(tmp_path / "state.db")
    try:

        async def sink(*args, **kwargs) -> None:
            return None

        manager = UsbManager(UsbConfig(), sink, state)
        table = device_table(UsbConfig())
        facts = hidraw_port("hidraw0", CONTOUR_UEVENT)
        entry = match_port(facts, table)
        port = _Port(facts, entry, None)
        ctx = manager._context_for(port, manager._device_for(port))
        assert ctx.link_class is ContourHidLink and ctx.port_path == "/dev/hidraw0"
        assert ctx.device.uid == "usb:1a79:7410:/dev/hidraw0"
    finally:
        state.close()
