"""What the local page shows, gathered from the running gateway in one go (on its event loop), and the
actions it can take. The page never reaches into the gateway any other way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.contract import Candidate, DeviceStatus, GatewayStatus
from gateway.discovery.enrolment import EnrolledDevice, EnrolmentStore, device_type


@dataclass(frozen=True)
class DeviceLine:
    uid: str
    title: str
    """What it is and its name ("Blood pressure monitor — SIM-BP 00:01")."""
    battery: int | None
    last_reading: Any
    """When its last reading arrived (a datetime), or None."""
    error: str | None
    transport: str
    user_index: int | None
    from_config: bool
    """Listed in the TOML: removed there, not on the page."""


@dataclass(frozen=True)
class PageFacts:
    status: GatewayStatus
    connected: bool
    devices: list[DeviceLine]
    candidates: list[Candidate]
    window_remaining_s: float
    waiting_for_claim: bool
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(what is wrong, what to do), in plain words."""


def device_title(profile: str | None, model: str | None, name: str | None) -> str:
    kind = device_type(profile) or "Health device"
    label = model or name
    return f"{kind} — {label}" if label else kind


def gather(gateway: Any, store: EnrolmentStore) -> PageFacts:
    """Runs on the gateway's event loop (the status board and the store are the loop's)."""
    status: GatewayStatus = gateway.status()
    uplink = getattr(gateway, "uplink", None)
    connected = bool(uplink is not None and uplink.state.connected)
    by_uid: dict[str, DeviceStatus] = {d.uid: d for d in status.devices}
    lines = [_line(device, by_uid.get(device.uid)) for device in store.list()]
    config = status.config
    waiting = config is not None and config.provisioning == "waiting_for_claim"
    facts = PageFacts(status=status, connected=connected, devices=lines, candidates=store.candidates(),
                      window_remaining_s=store.window_remaining_s(), waiting_for_claim=waiting)
    facts.problems.extend(problems(facts))
    return facts


def _line(device: EnrolledDevice, seen: DeviceStatus | None) -> DeviceLine:
    return DeviceLine(uid=device.uid, title=device_title(device.profile or (seen.profile if seen else None),
                                                         device.model, device.name),
                      battery=seen.battery if seen else None, last_reading=seen.last_seen if seen else None,
                      error=seen.error if seen else None, transport=device.transport, user_index=device.user_index,
                      from_config=device.source == "config" and device.enrolled_at is None)


COMPONENTS = {"ble-manager": "Bluetooth devices", "ble": "Bluetooth devices", "usb-manager": "USB devices",
              "usb": "USB devices", "uplink": "Connection to your care team", "storage": "Storage",
              "status": "Status reports", "provisioning": "Setting up"}


def problems(facts: PageFacts) -> list[tuple[str, str]]:
    """Each thing that is wrong, and what a patient or installer can do about it."""
    status = facts.status
    found: list[tuple[str, str]] = []
    if not facts.connected and not facts.waiting_for_claim:
        found.append(("The gateway cannot reach your care team's service"
                      + (f" ({status.uplink_error})." if status.uplink_error else "."),
                      "Check that your internet router is switched on and that the gateway's cable or Wi-Fi is "
                      "connected. Readings are kept safely on the gateway and sent when the connection is back."))
    if facts.waiting_for_claim:
        found.append(("This gateway is not linked to a patient yet.",
                      "Give your care team the code printed on the gateway (or on its box). Readings are kept "
                      "safely until they have linked it."))
    if status.storage_state != "ok" and status.storage_message:
        found.append((status.storage_message, "Keep the gateway connected to the internet so it can send what it "
                      "holds; if this stays, call your care team's technical support."))
    for component, message in sorted(status.component_errors.items()):
        if component == "uplink" and not facts.connected:
            continue  # said above, in the words for a patient
        found.append((f"{COMPONENTS.get(component, component)}: {message}",
                      "If it does not clear within a few minutes, unplug the gateway for ten seconds and plug it "
                      "in again; if it comes back, tell your care team's technical support."))
    for line in facts.devices:
        if line.error:
            found.append((f"{line.title}: the last transfer failed ({line.error}).",
                          "Bring the device next to the gateway and take a new measurement. If this keeps "
                          "happening, replace the device's batteries."))
        elif line.battery is not None and line.battery <= 20:
            found.append((f"{line.title}: battery low ({line.battery} %).", "Replace its batteries soon."))
    if status.config is not None and status.config.rejected is not None:
        rejected = status.config.rejected
        found.append((f"A settings change from your care team (version {rejected.version}) could not be used and "
                      f"was undone: {rejected.reason}", "Nothing to do here: your care team sees this too."))
    return found
