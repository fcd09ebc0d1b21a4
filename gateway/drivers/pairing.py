"""Pairing (and bonding) a BLE health device through BlueZ, where the platform can.

Glucose meters put the Glucose service behind an encrypted, bonded link (GLS 1.0 section 2.5:
security mode 1 level 2 or higher), and most cuffs pair before they hand over their memory. Until
the link is encrypted the stack answers "insufficient authentication/encryption" (ATT errors 0x05,
0x0F), which BlueZ reports as ``org.bluez.Error.NotPermitted``.

bleak has no pairing-agent API, and BlueZ sends an agent request to the agent registered by the
D-Bus connection that called ``Device1.Pair`` (else to the system's default agent, which may belong
to anything else on the bus). So pairing runs on a D-Bus connection of its own: it registers an
``org.bluez.Agent1`` there (never as the default agent), calls ``Pair`` over the same connection and
unregisters the agent. The agent's IO capability picks the method: ``NoInputNoOutput`` is Just
Works; with a passkey source (a meter's fixed passkey from the configuration) it is
``KeyboardOnly``, passkey entry. A bonded device reconnects without pairing again (BlueZ keeps the
keys and encrypts the link itself); ``Paired`` is checked first so no new pairing is started.

Elsewhere (the simulator backend, another platform) pairing is bleak's own ``client.pair()``,
which the simulator implements as nothing to do.
"""

# dbus-fast reads D-Bus signatures ("o", "u", "q") from the annotations of exported methods.
# ruff: noqa: F821, UP037

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from bleak.backends.device import BLEDevice
from bleak.exc import BleakDBusError, BleakError

from gateway.drivers.base import DriverError

log = logging.getLogger(__name__)

BLUEZ = "org.bluez"
PAIRING_PROFILES = frozenset({"ble.glucose", "ble.blood_pressure"})
"""Profiles paired proactively on connect: their devices keep records behind an encrypted link."""

PasskeySource = Callable[[str], Awaitable[int]]
"""``await passkey(address)``: the 6-digit passkey to enter for a device (passkey entry pairing)."""

# BlueZ's D-Bus error for a request refused until the link is encrypted (src/gatt-client.c maps ATT
# 0x05, 0x0C and 0x0F to NotPermitted "Not paired"), and the ATT codes where an error shows them.
# NotAuthorized (ATT 0x08, insufficient authorization) is the application's refusal: pairing does
# not lift it.
_SECURITY_DBUS_ERRORS = ("org.bluez.Error.NotPermitted",)
_SECURITY_WORDS = ("paired", "authenticat", "encrypt")
_ATT_SECURITY_CODES = ("0x05", "0x0c", "0x0f")
_agent_numbers = itertools.count()


class PairingError(DriverError):
    """Pairing was refused, failed or timed out."""


def is_insufficient_security(err: BaseException) -> bool:
    """Whether a failed GATT operation says the link must be paired/encrypted first."""
    if isinstance(err, BleakDBusError):
        if err.dbus_error not in _SECURITY_DBUS_ERRORS:
            return False
        detail = (err.dbus_error_details or "").lower()
        # "Read not permitted" is a characteristic that is never readable: pairing would not help.
        return (
            not detail
            or any(word in detail for word in _SECURITY_WORDS)
            or any(code in detail for code in _ATT_SECURITY_CODES)
        )
    if isinstance(err, BleakError):
        text = str(err).lower()
        return "insufficient" in text and any(word in text for word in ("authentication", "encryption"))
    return False


def bluez_device_path(device: BLEDevice | str) -> str | None:
    """The BlueZ object path of a device heard by bleak's BlueZ scanner; None for anything else."""
    if not isinstance(device, BLEDevice) or not isinstance(device.details, dict):
        return None
    path = device.details.get("path")
    return path if isinstance(path, str) and path.startswith("/org/bluez/") else None


def _agent_interface(passkey: PasskeySource | None, address: str) -> Any:
    """The Agent1 object (built here so dbus-fast is imported only where BlueZ is used)."""
    from dbus_fast import DBusError
    from dbus_fast.service import ServiceInterface, method

    class Agent(ServiceInterface):
        def __init__(self) -> None:
            super().__init__("org.bluez.Agent1")

        @method()
        def Release(self):
            pass

        @method()
        async def RequestPasskey(self, device: "o") -> "u":
            if passkey is None:
                raise DBusError("org.bluez.Error.Rejected", "no passkey configured")
            return int(await passkey(address))

        @method()
        def RequestPinCode(self, device: "o") -> "s":
            raise DBusError("org.bluez.Error.Rejected", "PIN codes are BR/EDR; not supported")

        @method()
        def DisplayPasskey(self, device: "o", passkey: "u", entered: "q"):
            log.info("%s: passkey %06d", address, passkey)

        @method()
        def RequestConfirmation(self, device: "o", passkey: "u"):
            # Numeric comparison with a headless gateway: nobody could compare, the device decides.
            pass

        @method()
        def RequestAuthorization(self, device: "o"):
            pass

        @method()
        def AuthorizeService(self, device: "o", uuid: "s"):
            pass

        @method()
        def Cancel(self):
            log.info("%s: pairing cancelled by BlueZ", address)

    return Agent()


async def _bluez_pair(device_path: str, address: str, passkey: PasskeySource | None, timeout_s: float) -> bool:
    from dbus_fast import BusType, Message, MessageType, Variant
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()

    async def call(path: str, interface: str, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
        reply = await bus.call(
            Message(
                destination=BLUEZ, path=path, interface=interface, member=member, signature=signature, body=body or []
            )
        )
        if reply is None:
            raise PairingError(f"{address}: {interface}.{member}: no reply from BlueZ")
        if reply.message_type == MessageType.ERROR:
            return reply
        return reply.body

    def error(reply: Any) -> str | None:
        return getattr(reply, "error_name", None) if not isinstance(reply, list) else None

    try:
        paired = await call(
            device_path, "org.freedesktop.DBus.Properties", "Get", "ss", ["org.bluez.Device1", "Paired"]
        )
        if error(paired) is None and isinstance(paired[0], Variant) and paired[0].value:
            return False
        agent_path = f"/org/rpm/gateway/agent{os.getpid()}_{next(_agent_numbers)}"
        capability = "KeyboardOnly" if passkey is not None else "NoInputNoOutput"
        bus.export(agent_path, _agent_interface(passkey, address))
        registered = await call(
            "/org/bluez", "org.bluez.AgentManager1", "RegisterAgent", "os", [agent_path, capability]
        )
        if error(registered) is not None:
            raise PairingError(f"{address}: agent not registered: {error(registered)} {registered.body}")
        try:
            async with asyncio.timeout(timeout_s):
                reply = await call(device_path, "org.bluez.Device1", "Pair")
        except TimeoutError:
            await call(device_path, "org.bluez.Device1", "CancelPairing")
            raise PairingError(f"{address}: pairing timed out after {timeout_s:g} s") from None
        finally:
            await call("/org/bluez", "org.bluez.AgentManager1", "UnregisterAgent", "o", [agent_path])
        name = error(reply)
        if name == "org.bluez.Error.AlreadyExists":
            return False
        if name is not None:
            detail = reply.body[0] if reply.body else ""
            raise PairingError(f"{address}: pairing failed: {name.rsplit('.', 1)[-1]} {detail}".rstrip())
        # Trusted: BlueZ lets a bonded device reconnect and re-encrypt without asking an agent again.
        await call(
            device_path,
            "org.freedesktop.DBus.Properties",
            "Set",
            "ssv",
            ["org.bluez.Device1", "Trusted", Variant("b", True)],
        )
        return True
    finally:
        bus.disconnect()


async def pair(
    client: Any,
    device: BLEDevice | str,
    *,
    passkey: PasskeySource | None = None,
    timeout_s: float = 30.0,
) -> bool:
    """Pair (and bond) the connected ``client``'s device; True if it was paired now through BlueZ,
    False if it was already bonded or the pairing was left to bleak's own ``pair()`` (which does not
    say). Raises PairingError when pairing fails."""
    address = (device.address if isinstance(device, BLEDevice) else device).upper()
    path = bluez_device_path(device)
    if path is None:
        try:
            await client.pair()
        except (BleakError, NotImplementedError) as err:
            raise PairingError(f"{address}: pairing failed: {err}") from err
        return False
    try:
        return await _bluez_pair(path, address, passkey, timeout_s)
    except (OSError, ConnectionError) as err:  # no system bus: the stack is gone
        raise PairingError(f"{address}: pairing: D-Bus unavailable: {err}") from err
