"""The table of supported USB serial devices: how a port is recognised and which driver runs it.

A port matches an entry by USB vendor/product id, by a description pattern where a bridge chip's ids
are shared by many products (FTDI, Silicon Labs), or by a fixed port path. The built-in entries are
the USB products of the profile table (:mod:`gateway.profiles`). Users extend the table with
``[[usb.devices]]`` entries in the config; those are tried first. ``deploy/udev/`` is generated
from this table (``python -m gateway.discovery.usb_devices --udev``) and a test keeps the two consistent.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.discovery.usb_config import UsbConfig, UsbDeviceMatch
from gateway.drivers.base import DriverError, SerialContext, SessionDriver, SessionResult
from gateway.drivers.serial_port import SerialLink
from gateway.errors import GatewayError
from gateway.profiles import USB_PROFILES, DeviceProfile, UsbProduct

UDEV_GROUP = "rpm-gateway"


@dataclass(frozen=True, slots=True)
class SupportedDevice:
    name: str
    profile: str
    driver: SessionDriver[SerialContext]
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
    needs_confirmation: bool = True
    """A port it matches is a candidate until someone confirms the device; config entries are read at
    once unless they ask for confirmation (the installer wrote them)."""
    link: type[SerialLink] | None = None
    """What the driver opens: a HID report link on a hidraw node, or (None) its own serial port."""

    def matches(self, port: PortFacts) -> bool:
        if self.port is not None:
            return port.device == self.port
        if port.kind != self.node_kind:
            return False  # a hidraw node is never a tty, whatever its ids
        if self.vid is not None and port.vid != self.vid:
            return False
        if self.pid is not None and port.pid != self.pid:
            return False
        if self.description is not None:
            text = " ".join(filter(None, (port.description, port.product, port.manufacturer)))
            if not re.search(self.description, text, re.IGNORECASE):
                return False
        return self.vid is not None or self.description is not None

    @property
    def node_kind(self) -> str:
        return (self.link or SerialLink).node_kind

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
    kind: str = "tty"
    """The node's kind: ``tty`` (pyserial's list) or ``hidraw`` (:mod:`gateway.discovery.hidraw`)."""


def _product_entry(profile: DeviceProfile, product: UsbProduct) -> SupportedDevice:
    return SupportedDevice(
        product.name,
        profile.name,
        profile.driver,
        vid=product.vid,
        pid=product.pid,
        description=product.description,
        baudrate=product.baudrate,
        bytesize=product.bytesize,
        parity=product.parity,
        stopbits=product.stopbits,
        link=product.link,
    )


SUPPORTED_DEVICES: tuple[SupportedDevice, ...] = tuple(
    _product_entry(profile, product) for profile in USB_PROFILES.values() for product in profile.usb_products
)
DRIVERS: Mapping[str, SessionDriver[SerialContext]] = {name: p.driver for name, p in USB_PROFILES.items()}
"""Drivers by profile, for config entries that name only a profile."""
DriverLoader = Callable[[str], SessionDriver[SerialContext]]
"""Turns a config entry's ``driver = "module:Class"`` into a driver (the runtime's loader)."""


class UnknownDeviceProfileError(GatewayError, ValueError):
    """A ``[[usb.devices]]`` entry names a profile no driver handles."""


def _not_loaded(spec: str) -> SessionDriver[SerialContext]:
    async def run_session(ctx: SerialContext) -> SessionResult:
        raise DriverError(
            f"usb.devices: driver {spec!r} was not loaded (rpm-gateway run loads the drivers a config names)"
        )

    return run_session


def from_config_entry(entry: UsbDeviceMatch, load_driver: DriverLoader | None = None) -> SupportedDevice:
    """The table entry for a ``[[usb.devices]]`` entry; a ``driver`` it names comes from ``load_driver``."""
    profile = USB_PROFILES.get(entry.profile)
    if entry.driver is not None:
        driver = load_driver(entry.driver) if load_driver is not None else _not_loaded(entry.driver)
    elif profile is not None:
        driver = profile.driver
    else:
        raise UnknownDeviceProfileError(
            f"usb.devices: unknown profile {entry.profile!r}; known: {', '.join(sorted(USB_PROFILES))}"
        )
    builtin = profile.usb_products[0] if profile is not None else None
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
        needs_confirmation=entry.needs_confirmation,
    )


def device_table(config: UsbConfig, load_driver: DriverLoader | None = None) -> list[SupportedDevice]:
    """Config entries first (a user's entry overrides a built-in one for the same port), then built-ins."""
    return [from_config_entry(e, load_driver) for e in config.devices] + list(SUPPORTED_DEVICES)


def match_port(port: PortFacts, table: Sequence[SupportedDevice]) -> SupportedDevice | None:
    return next((entry for entry in table if entry.matches(port)), None)


def udev_rules(devices: Iterable[SupportedDevice] = SUPPORTED_DEVICES) -> str:
    """Rules giving the gateway's group access to the table's ports (ids only: udev cannot see our regexes)."""
    lines = [
        "# Generated by `python -m gateway.discovery.usb_devices --udev` from gateway/discovery/usb_devices.py;"
        " do not edit.",
        f"# Gives the {UDEV_GROUP} group read/write access to the USB serial and HID devices the gateway supports.",
        "",
    ]
    seen: set[tuple[str, int, int | None]] = set()
    for device in devices:
        subsystem = device.node_kind
        if device.vid is None or (subsystem, device.vid, device.pid) in seen:
            continue
        seen.add((subsystem, device.vid, device.pid))
        match = f'SUBSYSTEM=="{subsystem}", ATTRS{{idVendor}}=="{device.vid:04x}"'
        if device.pid is not None:
            match += f', ATTRS{{idProduct}}=="{device.pid:04x}"'
        lines.append(f"# {device.name} ({device.profile})")
        symlink = "rpm-" + device.profile.replace(".", "-") + ("-hid" if subsystem == "hidraw" else "") + "-%n"
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
