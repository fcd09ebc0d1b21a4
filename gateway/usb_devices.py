"""The table of supported USB serial devices: how a port is recognised and which driver runs it.

A port matches an entry by USB vendor/product id, by a description pattern where a bridge chip's ids
are shared by many products (FTDI, Silicon Labs), or by a fixed port path. Users extend the table
with ``[[usb.devices]]`` entries in the config; those are tried first. ``deploy/udev/`` is generated
from this table (``python -m gateway.usb_devices --udev``) and a test keeps the two consistent.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.usb_config import UsbConfig, UsbDeviceMatch

UDEV_GROUP = "rpm-gateway"


@dataclass(frozen=True, slots=True)
class SupportedDevice:
    name: str
    profile: str
    driver: str
    """``module:Class`` of a :class:`~gateway.drivers.serial_port.SerialDriver`."""
    vid: int | None = None
    pid: int | None = None
    description: str | None = None
    """A case-insensitive regular expression searched in the port's description/product/manufacturer."""
    port: str | None = None
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    options: dict[str, Any] = field(default_factory=dict)

    def matches(self, port: PortFacts) -> bool:
        if self.port is not None:
            return port.device == self.port
        if self.vid is not None and port.vid != self.vid:
            return False
        if self.pid is not None and port.pid != self.pid:
            return False
        if self.description is not None:
            text = " ".join(filter(None, (port.description, port.product, port.manufacturer)))
            if not re.search(self.description, text, re.IGNORECASE):
                return False
        return self.vid is not None or self.description is not None

    def driver_options(self) -> dict[str, Any]:
        return {"bytesize": self.bytesize, "parity": self.parity, "stopbits": self.stopbits, **self.options}


@dataclass(frozen=True, slots=True)
class PortFacts:
    """What pyserial's ``list_ports`` (or a fixed config path) tells about one port."""

    device: str
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    description: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    location: str | None = None


# Drivers by profile, for config entries that name only a profile.
DRIVERS: dict[str, str] = {
    "serial.astm": "gateway.drivers.astm_meter:AstmMeterDriver",
    "serial.ad_scale": "gateway.drivers.serial_scale:SerialScaleDriver",
    "serial.ant_hrm": "gateway.drivers.ant_heart_rate:AntHeartRateDriver",
}

SUPPORTED_DEVICES: tuple[SupportedDevice, ...] = (
    # Ascensia (Bayer) Contour meters with a USB serial (CDC) interface and Bayer's serial cables:
    # ASTM E1381/E1394 at 9600 8N1 (CDC ignores the rate). Meters that enumerate as HID only are not
    # serial ports and never show up here.
    SupportedDevice("Ascensia/Bayer Contour (serial)", "serial.astm", DRIVERS["serial.astm"], vid=0x1A79),
    # A&D weighing indicators and scales behind an FTDI FT232R bridge: the ids are FTDI's, shared with
    # thousands of products, so the USB product string must name A&D. 2400 baud 7E1 is A&D's default.
    SupportedDevice(
        "A&D scale (FTDI bridge)", "serial.ad_scale", DRIVERS["serial.ad_scale"],
        vid=0x0403, pid=0x6001, description=r"\bA ?& ?D\b|\bAND\b|A&D", baudrate=2400, bytesize=7, parity="E",
    ),
    # Garmin/Dynastream ANT USB sticks. The ANTUSB2 and ANTUSB-m are bound by Linux's usb-serial-simple
    # driver (ttyUSBn) at 115200; the original ANTUSB stick is a CP210x bridge at 57600.
    SupportedDevice("Dynastream ANTUSB2", "serial.ant_hrm", DRIVERS["serial.ant_hrm"], vid=0x0FCF, pid=0x1008,
                    baudrate=115200),
    SupportedDevice("Dynastream ANTUSB-m", "serial.ant_hrm", DRIVERS["serial.ant_hrm"], vid=0x0FCF, pid=0x1009,
                    baudrate=115200),
    SupportedDevice("Dynastream ANTUSB (CP210x)", "serial.ant_hrm", DRIVERS["serial.ant_hrm"], vid=0x0FCF,
                    pid=0x1004, baudrate=57600),
    # TaiDoc (FORA) BP monitors and 2-in-1 meters: Silicon Labs CP2110 bridge at 19200 8N1. The
    # driver asks for the model first and reads nothing from a device it does not know.
    SupportedDevice("TaiDoc/FORA meter (CP2110)", "serial.taidoc", "gateway.drivers.taidoc:TaidocDriver",
                    vid=0x10C4, pid=0xEA80, baudrate=19200),
)


class UnknownDeviceProfileError(ValueError):
    """A ``[[usb.devices]]`` entry names a profile no driver handles."""


def from_config_entry(entry: UsbDeviceMatch) -> SupportedDevice:
    driver = entry.driver or DRIVERS.get(entry.profile) or next(
        (d.driver for d in SUPPORTED_DEVICES if d.profile == entry.profile), None
    )
    if driver is None:
        known = sorted({*DRIVERS, *(d.profile for d in SUPPORTED_DEVICES)})
        raise UnknownDeviceProfileError(f"usb.devices: unknown profile {entry.profile!r}; known: {', '.join(known)}")
    builtin = next((d for d in SUPPORTED_DEVICES if d.profile == entry.profile), None)
    return SupportedDevice(
        name=f"config: {entry.profile} {entry.port or ''}".strip(),
        profile=entry.profile,
        driver=driver,
        vid=entry.vid,
        pid=entry.pid,
        description=entry.description,
        port=entry.port,
        baudrate=entry.baudrate or (builtin.baudrate if builtin else 9600),
        bytesize=entry.bytesize or (builtin.bytesize if builtin else 8),
        parity=entry.parity or (builtin.parity if builtin else "N"),
        stopbits=entry.stopbits or (builtin.stopbits if builtin else 1),
        options=dict(entry.options),
    )


def device_table(config: UsbConfig) -> list[SupportedDevice]:
    """Config entries first (a user's entry overrides a built-in one for the same port), then built-ins."""
    return [from_config_entry(e) for e in config.devices] + list(SUPPORTED_DEVICES)


def match_port(port: PortFacts, table: Sequence[SupportedDevice]) -> SupportedDevice | None:
    return next((entry for entry in table if entry.matches(port)), None)


def udev_rules(devices: Iterable[SupportedDevice] = SUPPORTED_DEVICES) -> str:
    """Rules giving the gateway's group access to the table's ports (ids only: udev cannot see our regexes)."""
    lines = [
        "# Generated by `python -m gateway.usb_devices --udev` from gateway/usb_devices.py; do not edit.",
        f"# Gives the {UDEV_GROUP} group read/write access to the USB serial devices the gateway supports.",
        "",
    ]
    seen: set[tuple[int, int | None]] = set()
    for device in devices:
        if device.vid is None or (device.vid, device.pid) in seen:
            continue
        seen.add((device.vid, device.pid))
        match = f'SUBSYSTEM=="tty", ATTRS{{idVendor}}=="{device.vid:04x}"'
        if device.pid is not None:
            match += f', ATTRS{{idProduct}}=="{device.pid:04x}"'
        lines.append(f"# {device.name} ({device.profile})")
        symlink = "rpm-" + device.profile.replace(".", "-") + "-%n"
        lines.append(f'{match}, GROUP="{UDEV_GROUP}", MODE="0660", SYMLINK+="{symlink}"')
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--udev"]:
        sys.stdout.write(udev_rules())
    else:
        for entry in SUPPORTED_DEVICES:
            ids = f"{entry.vid or 0:04x}:{entry.pid or 0:04x}"
            line = f"{entry.baudrate} {entry.bytesize}{entry.parity}{entry.stopbits}"
            print(f"{ids}  {entry.profile:16} {line:>12}  {entry.name}")
