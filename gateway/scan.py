"""``rpm-gateway scan``: the health devices around (BLE) and plugged in (USB), and which are enrolled."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.config import GatewayConfig

log = logging.getLogger(__name__)


def _ble(config: GatewayConfig, seconds: float) -> tuple[list[dict[str, Any]], str | None]:
    if not config.ble.enabled:
        return [], "disabled in the config"
    try:
        from gateway.ble_discovery import ble_candidates

        return asyncio.run(ble_candidates(config, seconds)), None
    except Exception as err:  # no adapter, no BlueZ, no D-Bus: say so and still list USB
        return [], f"{type(err).__name__}: {err}"


def _usb(config: GatewayConfig) -> tuple[list[dict[str, Any]], str | None]:
    if not config.usb.enabled:
        return [], "disabled in the config"
    try:
        from gateway.usb_discovery import usb_candidates

        return usb_candidates(config.usb), None
    except Exception as err:
        return [], f"{type(err).__name__}: {err}"


def _row(candidate: dict[str, Any], keys: tuple[str, ...]) -> str:
    return "  ".join(f"{candidate.get(key)!s:<20}" for key in keys if key in candidate).rstrip()


def run_scan(config: GatewayConfig, seconds: float) -> int:
    print(f"BLE (listening {seconds:g} s):")
    ble, ble_error = _ble(config, seconds)
    if ble_error:
        print(f"  unavailable: {ble_error}")
    for candidate in ble:
        mark = "enrolled" if candidate.get("enrolled") else "not enrolled"
        print(f"  {_row(candidate, ('address', 'profile', 'name', 'rssi'))}  [{mark}]")
    if not ble and not ble_error:
        print("  no health device heard")
    print("USB serial:")
    usb, usb_error = _usb(config)
    if usb_error:
        print(f"  unavailable: {usb_error}")
    for candidate in usb:
        print(f"  {_row(candidate, ('port', 'device', 'profile', 'vid', 'pid', 'description'))}")
    if not usb and not usb_error:
        print("  no serial port")
    return 0
