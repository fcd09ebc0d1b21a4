"""``rpm-gateway scan``: the health devices around (BLE) and plugged in (USB), and which are enrolled;
``rpm-gateway pair``: enrol the BLE health devices heard in a window."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from gateway.config import GatewayConfig
from gateway.discovery.ble_config import BackendLoadError
from gateway.discovery.enrolment import EnrolmentStore

log = logging.getLogger(__name__)


def _ble(config: GatewayConfig, seconds: float) -> tuple[list[dict[str, Any]], str | None]:
    if not config.ble.enabled:
        return [], "disabled in the config"
    try:
        from gateway.discovery.ble import ble_candidates
        from gateway.runtime import load_bleak_backends

        return asyncio.run(ble_candidates(config, seconds, load_bleak_backends(config.ble.backend))), None
    except Exception as err:  # no adapter, no BlueZ, no D-Bus: say so and still list USB
        return [], f"{type(err).__name__}: {err}"


def _usb(config: GatewayConfig) -> tuple[list[dict[str, Any]], str | None]:
    if not config.usb.enabled:
        return [], "disabled in the config"
    try:
        from gateway.discovery.usb import usb_candidates

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


def run_pair(config: GatewayConfig, seconds: float) -> int:
    """``rpm-gateway pair --seconds N``: enrol every health device that advertises during the window."""
    from gateway.discovery.ble import pair_window
    from gateway.runtime import load_bleak_backends

    store = EnrolmentStore.for_config(config)
    print(f"pairing window open for {seconds:g} s: put each device in pairing mode (or take a measurement)")
    try:
        enrolled = asyncio.run(pair_window(config.ble, store, seconds, load_bleak_backends(config.ble.backend)))
    except BackendLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # bleak raises platform-specific errors when there is no adapter
        print(f"error: ble: cannot scan: {err}", file=sys.stderr)
        return 2
    finally:
        store.close()
    if not enrolled:
        print("no new health device seen")
    for device in enrolled:
        print(f"enrolled {device.address} {device.profile or '?'} {device.name or ''}".rstrip())
    return 0
