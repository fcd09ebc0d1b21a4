"""USB HID devices the kernel exposes as hidraw nodes, listed from sysfs like pyserial lists ttys.

Each ``/sys/class/hidraw/hidrawN/device/uevent`` names the HID device the node belongs to:
``HID_ID=<bus>:<vendor>:<product>`` (hex, bus 0003 for USB), ``HID_NAME`` (manufacturer and product
strings) and ``HID_UNIQ`` (the USB serial number string, where the device has one). Devices on other
buses (Bluetooth HID, I2C touchpads) are left out: the USB device table matches USB ids only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gateway.discovery.usb_devices import PortFacts

log = logging.getLogger(__name__)

SYSFS_HIDRAW = Path("/sys/class/hidraw")
BUS_USB = 0x0003


def parse_uevent(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def hidraw_port(node: str, uevent: str, dev_root: Path = Path("/dev")) -> PortFacts | None:
    """The port facts of one hidraw node from its HID device's uevent; None unless it is a USB device."""
    fields = parse_uevent(uevent)
    try:
        bus, vendor, product = (int(part, 16) for part in fields["HID_ID"].split(":"))
    except (KeyError, ValueError):
        log.debug("%s: no usable HID_ID in its uevent", node)
        return None
    if bus != BUS_USB:
        return None
    name = fields.get("HID_NAME") or None
    return PortFacts(
        device=str(dev_root / node),
        vid=vendor,
        pid=product,
        serial_number=fields.get("HID_UNIQ") or None,
        description=name,
        product=name,
        location=fields.get("HID_PHYS") or None,
        kind="hidraw",
    )


def list_hidraw_ports(sysfs: Path = SYSFS_HIDRAW, dev_root: Path = Path("/dev")) -> list[PortFacts]:
    """Every USB HID device's hidraw node (none where sysfs has no hidraw class: no such devices)."""
    try:
        nodes = sorted(sysfs.iterdir())
    except OSError:
        return []
    ports = []
    for entry in nodes:
        try:
            uevent = (entry / "device" / "uevent").read_text()
        except OSError:  # unplugged while we looked
            continue
        port = hidraw_port(entry.name, uevent, dev_root)
        if port is not None:
            ports.append(port)
    return ports
