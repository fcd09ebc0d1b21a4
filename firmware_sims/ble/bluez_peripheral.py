"""Our simulated peripherals served through real BlueZ: a GATT application, an advertisement and an
agent on one controller, over BlueZ's D-Bus API (``org.bluez.GattManager1``,
``org.bluez.LEAdvertisingManager1``, ``org.bluez.AgentManager1``; BlueZ doc/gatt-api.txt,
advertising-api.txt, agent-api.txt).

The device logic is the simulator's own (:mod:`firmware_sims.ble.peripherals`): the same objects, the
same frames byte for byte. This module only replaces the bleak side of :mod:`firmware_sims.ble.backend`
with BlueZ's server side: a central's connection becomes a :class:`~firmware_sims.ble.gatt.Link`,
``ReadValue``/``WriteValue``/``StartNotify`` call the peripheral, and a notification or indication is a
``PropertiesChanged`` on the characteristic's ``Value``. Security is per characteristic (BlueZ's
``encrypt-*`` and ``encrypt-authenticated-*`` flags), so the stack itself answers "insufficient
encryption/authentication" until the link is paired; the agent's IO capability picks Just Works
(``NoInputNoOutput``) or passkey entry (``DisplayOnly``: the passkey BlueZ asks it to show is written to
``--passkey-file``, where a test reads it as a person would read the meter's screen).

    python -m firmware_sims.ble.bluez_peripheral --scenario meter.json --adapter hci1 --ready ready.json

The scenario file is one peripheral entry as ``rpm-sim ble`` scenarios have them, plus three keys of
its own: ``security`` (``"encrypt"`` or ``"authenticated"`` for every characteristic of the profile's
service, or a map of characteristic UUID to level), ``later_records`` (records added when the process
gets SIGUSR1: the meter measured again) and ``capability``. On SIGTERM the process writes what it
sent (``--report``) and exits.
"""

# dbus-fast reads D-Bus signatures ("a{sv}", "ay", "o") from the annotations of exported methods.
# ruff: noqa: F722, F821, UP037

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method

from firmware_sims.ble.air import peripheral_from_json
from firmware_sims.ble.gatt import (
    ATT_PROCEDURE_ALREADY_IN_PROGRESS,
    Characteristic,
    GattError,
    Link,
    Peripheral,
)
from firmware_sims.ble.peripherals import GlucoseMeter, GlucoseRecord, _StoredRecordsDevice

log = logging.getLogger(__name__)

BLUEZ = "org.bluez"
APP_PATH = "/org/rpm/sim/app"
ADVERT_PATH = "/org/rpm/sim/advertisement0"
AGENT_PATH = "/org/rpm/sim/agent"
# btvirt delivers an advertisement only at the moment the central starts scanning; re-registering
# it this often until a central connects is what makes a scan that starts later hear it.
READVERTISE_S = 1.5
SECURITY_PREFIX = {"encrypt": "encrypt-", "authenticated": "encrypt-authenticated-"}
# BlueZ's GATT server batches notifications into one "multiple handle value notification" sent up to
# 10 ms later (src/shared/gatt-server.c, NFY_MULT_TIMEOUT) when the central supports it, as a BlueZ
# central says it does, but sends an indication at once: a RACP response indicated right after the
# records overtook them in the guest. A meter's own stack sends them in order; an indication waits
# this long after the last notification so they reach the air in the order the device sent them.
NOTIFY_BATCH_SETTLE_S = 0.1
CAPABILITIES = ("NoInputNoOutput", "DisplayOnly", "DisplayYesNo", "KeyboardOnly", "KeyboardDisplay")


class PeripheralSetupError(RuntimeError):
    """BlueZ refused part of the set-up (adapter, application, advertisement or agent)."""


def bluez_flags(characteristic: Characteristic, level: str | None) -> list[str]:
    """BlueZ's flags for one characteristic: its properties, each raised to ``level`` where set."""
    if level is None:
        return list(characteristic.properties)
    prefix = SECURITY_PREFIX[level]
    secured = {"read", "write", "notify", "indicate"}
    return [prefix + p if p in secured else p for p in characteristic.properties]


class GattCharacteristic(ServiceInterface):
    def __init__(
        self, server: BluezPeripheral, path: str, service_path: str, characteristic: Characteristic, level: str | None
    ) -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self.server = server
        self.path = path
        self.service_path = service_path
        self.characteristic = characteristic
        self.flags = bluez_flags(characteristic, level)
        self.value = b""
        self.notifying = False

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> "s":
        return self.characteristic.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Service(self) -> "o":
        return self.service_path

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> "as":
        return self.flags

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> "ay":
        return self.value

    @dbus_property(access=PropertyAccess.READ)
    def Notifying(self) -> "b":
        return self.notifying

    @method()
    async def ReadValue(self, options: "a{sv}") -> "ay":
        link = await self.server.link_for(options)
        return await self.server.call(link, self.server.peripheral.read(self.characteristic.uuid))

    @method()
    async def WriteValue(self, value: "ay", options: "a{sv}"):
        link = await self.server.link_for(options)
        await self.server.call(link, self.server.peripheral.write(self.characteristic.uuid, bytes(value)))

    @method()
    async def StartNotify(self):
        # bluetoothd calls StartNotify once, when the first central's CCC write enables the
        # characteristic, and keeps it on for a bonded central across its reconnections: the flag is
        # bluetoothd's, and a link attached later (or whose Connected signal comes after the CCC
        # write, as in the slow guest) is subscribed from it in ``_attach``.
        self.notifying = True
        link = self.server.link
        if link is not None and link.connected:
            await self.server.call(link, self.server.peripheral.subscribe(link, self.characteristic.uuid))

    @method()
    async def StopNotify(self):
        self.notifying = False
        link = self.server.link
        if link is not None:
            await self.server.peripheral.unsubscribe(link, self.characteristic.uuid)

    @method()
    def Confirm(self):
        self.server.confirmed(self.characteristic.uuid)

    def send(self, data: bytes) -> None:
        log.debug("value %s: %s", self.characteristic.uuid[4:8], data.hex())
        self.value = bytes(data)
        self.emit_properties_changed({"Value": self.value})


class GattService(ServiceInterface):
    def __init__(self, uuid: str) -> None:
        super().__init__("org.bluez.GattService1")
        self.uuid = uuid

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> "s":
        return self.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Primary(self) -> "b":
        return True


class Advertisement(ServiceInterface):
    def __init__(self, name: str, service_uuids: list[str]) -> None:
        super().__init__("org.bluez.LEAdvertisement1")  # ServiceInterface keeps the interface name in .name
        self.local_name = name
        self.service_uuids = service_uuids

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> "s":
        return "peripheral"

    @dbus_property(access=PropertyAccess.READ)
    def ServiceUUIDs(self) -> "as":
        return self.service_uuids

    @dbus_property(access=PropertyAccess.READ)
    def LocalName(self) -> "s":
        return self.local_name

    @dbus_property(access=PropertyAccess.READ)
    def Discoverable(self) -> "b":
        # Flags "LE General Discoverable": without them a central's discovery drops the advertisement.
        return True

    @method()
    def Release(self):
        pass

    def managed(self) -> dict[str, dict[str, Variant]]:
        return {
            "org.bluez.LEAdvertisement1": {
                "Type": Variant("s", "peripheral"),
                "ServiceUUIDs": Variant("as", self.service_uuids),
                "LocalName": Variant("s", self.local_name),
                "Discoverable": Variant("b", True),
            }
        }


class Agent(ServiceInterface):
    """The peripheral's agent: accepts pairing; shows (writes) the passkey where the capability displays one."""

    def __init__(self, passkey_file: Path | None) -> None:
        super().__init__("org.bluez.Agent1")
        self.passkey_file = passkey_file
        self.passkeys: list[int] = []

    @method()
    def Release(self):
        pass

    @method()
    def DisplayPasskey(self, device: "o", passkey: "u", entered: "q"):
        if passkey not in self.passkeys:
            self.passkeys.append(passkey)
            log.info("passkey for %s: %06d", device, passkey)
            if self.passkey_file is not None:
                staged = self.passkey_file.with_suffix(".tmp")
                staged.write_text(f"{passkey:06d}\n")
                staged.rename(self.passkey_file)

    @method()
    def RequestConfirmation(self, device: "o", passkey: "u"):
        pass

    @method()
    def RequestAuthorization(self, device: "o"):
        pass

    @method()
    def AuthorizeService(self, device: "o", uuid: "s"):
        pass

    @method()
    def Cancel(self):
        log.info("pairing cancelled")


class BluezPeripheral:
    """One simulated peripheral on one BlueZ controller."""

    def __init__(
        self,
        peripheral: Peripheral,
        *,
        adapter: str = "hci1",
        security: dict[str, str] | None = None,
        capability: str = "NoInputNoOutput",
        passkey_file: Path | None = None,
    ) -> None:
        if capability not in CAPABILITIES:
            raise PeripheralSetupError(f"agent capability {capability!r} is not one of {', '.join(CAPABILITIES)}")
        self.peripheral = peripheral
        self.adapter_path = f"/org/bluez/{adapter}"
        self.security = security or {}
        self.capability = capability
        self.agent = Agent(passkey_file)
        self.bus: MessageBus | None = None
        self.link: Link | None = None
        self.device_path: str | None = None
        self.address: str | None = None
        self.connections: list[str] = []
        self._chars: dict[str, GattCharacteristic] = {}
        self._advert: Advertisement | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connected = asyncio.Event()
        self._advertising: asyncio.Task[None] | None = None
        self._link_lock = asyncio.Lock()
        self._confirmations: dict[str, asyncio.Event] = {}
        self._outgoing: asyncio.Queue[tuple[GattCharacteristic, bytes]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._last_notification = 0.0

    # --- set-up ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.bus = bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        await self._set_adapter("Powered", Variant("b", True))
        await self._set_adapter("Alias", Variant("s", self.peripheral.name))
        await self._set_adapter("Pairable", Variant("b", True))
        self.address = (await self._get_adapter("Address")).value
        bus.add_message_handler(self._on_message)
        bus.export(AGENT_PATH, self.agent)
        await self._call(
            BLUEZ, "/org/bluez", "org.bluez.AgentManager1", "RegisterAgent", "os", [AGENT_PATH, self.capability]
        )
        # The default agent sets the controller's IO capability, which is what pairing it answers uses.
        await self._call(BLUEZ, "/org/bluez", "org.bluez.AgentManager1", "RequestDefaultAgent", "o", [AGENT_PATH])
        objects: dict[str, ServiceInterface] = {}
        for s_index, service in enumerate(self.peripheral.gatt_table()):
            service_path = f"{APP_PATH}/service{s_index}"
            objects[service_path] = GattService(service.uuid)
            for c_index, characteristic in enumerate(service.characteristics):
                path = f"{service_path}/char{c_index}"
                level = self._level(service.uuid, characteristic.uuid)
                char = GattCharacteristic(self, path, service_path, characteristic, level)
                objects[path] = char
                self._chars[characteristic.uuid] = char
        for path, interface in objects.items():
            bus.export(path, interface)
        # dbus-fast answers ObjectManager.GetManagedObjects itself, with the objects below the path: at the
        # application's root that is its services and characteristics, as RegisterApplication wants.
        await self._call(
            BLUEZ, self.adapter_path, "org.bluez.GattManager1", "RegisterApplication", "oa{sv}", [APP_PATH, {}]
        )
        self._advert = Advertisement(self.peripheral.name, self.peripheral.advertised_services())
        bus.export(ADVERT_PATH, self._advert)
        await self._call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "AddMatch",
            "s",
            [
                f"type='signal',sender='{BLUEZ}',interface='org.freedesktop.DBus.Properties',"
                f"member='PropertiesChanged',path_namespace='{self.adapter_path}'"
            ],
        )
        self._advertising = asyncio.get_running_loop().create_task(self._advertise())
        self._sender = asyncio.get_running_loop().create_task(self._send_in_order())

    def _level(self, service_uuid: str, char_uuid: str) -> str | None:
        level = self.security.get(char_uuid) or self.security.get(service_uuid)
        if level is not None and level not in SECURITY_PREFIX:
            raise PeripheralSetupError(f"security level {level!r} is not one of {', '.join(SECURITY_PREFIX)}")
        return level

    async def stop(self) -> None:
        for task in (self._advertising, self._sender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.bus is not None:
            self.bus.disconnect()

    # --- D-Bus plumbing ----------------------------------------------------------------------------

    async def _call(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
    ) -> Any:
        assert self.bus is not None
        reply = await self.bus.call(
            Message(
                destination=destination,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=body or [],
            )
        )
        if reply is None or reply.message_type == MessageType.ERROR:
            detail = reply.body if reply is not None else "no reply"
            raise PeripheralSetupError(f"{interface}.{member} on {path}: {reply and reply.error_name}: {detail}")
        return reply.body[0] if reply.body else None

    async def _set_adapter(self, name: str, value: Variant) -> None:
        await self._call(
            BLUEZ,
            self.adapter_path,
            "org.freedesktop.DBus.Properties",
            "Set",
            "ssv",
            ["org.bluez.Adapter1", name, value],
        )

    async def _get_adapter(self, name: str) -> Variant:
        return await self._call(
            BLUEZ, self.adapter_path, "org.freedesktop.DBus.Properties", "Get", "ss", ["org.bluez.Adapter1", name]
        )

    async def _advertise(self) -> None:
        manager = "org.bluez.LEAdvertisingManager1"
        while True:
            if not self._connected.is_set() and self.peripheral.advertising:
                with contextlib.suppress(PeripheralSetupError):
                    await self._call(BLUEZ, self.adapter_path, manager, "UnregisterAdvertisement", "o", [ADVERT_PATH])
                try:
                    await self._call(
                        BLUEZ, self.adapter_path, manager, "RegisterAdvertisement", "oa{sv}", [ADVERT_PATH, {}]
                    )
                except PeripheralSetupError as err:
                    log.warning("advertising: %s", err)
            await asyncio.sleep(READVERTISE_S)

    def _on_message(self, message: Message) -> Message | bool:
        if message.message_type == MessageType.METHOD_CALL:
            log.debug("call %s %s.%s", message.path, message.interface, message.member)
        if (
            message.message_type == MessageType.METHOD_CALL
            and message.path == ADVERT_PATH
            and message.member == "GetManagedObjects"
        ):
            # BlueZ reads an advertisement through an ObjectManager rooted at the advertisement itself;
            # dbus-fast's own answer lists only the objects below a path, which here is none.
            managed = {ADVERT_PATH: self._advert.managed()} if self._advert is not None else {}
            return Message.new_method_return(message, "a{oa{sa{sv}}}", [managed])
        return self._on_signal(message)

    def _on_signal(self, message: Message) -> bool:
        if (
            message.message_type != MessageType.SIGNAL
            or message.member != "PropertiesChanged"
            or not message.path
            or not message.path.startswith(self.adapter_path + "/dev_")
        ):
            return False
        interface, changed = message.body[0], message.body[1]
        if interface == "org.bluez.Device1" and "Connected" in changed:
            connected = changed["Connected"].value
            if connected:
                self._spawn(self._attach(message.path))
            else:
                self._detached(message.path)
        return False

    # --- the link ----------------------------------------------------------------------------------

    async def link_for(self, options: dict[str, Variant]) -> Link:
        """The link a request came over; attached here if the request beat BlueZ's Connected signal."""
        device = options.get("device")
        if self.link is not None and self.link.connected:
            return self.link
        if device is not None:
            link = await self._attach(device.value)
            if link is not None:
                return link
        raise DBusError("org.bluez.Error.Failed", "not connected")

    async def _attach(self, device_path: str) -> Link | None:
        async with self._link_lock:
            if self.link is not None and self.link.connected:
                return self.link if device_path == self.device_path else None
            link = Link(self.peripheral, self._deliver, lambda: self._drop(device_path))
            try:
                await self.peripheral.accept(link)
            except ConnectionRefusedError as err:
                log.info("refusing %s: %s", device_path, err)
                self._spawn(self._disconnect(device_path))
                return None
            self.link = link
            self.device_path = device_path
            self.connections.append(device_path)
            for char in self._chars.values():
                if char.notifying:
                    with contextlib.suppress(GattError):
                        await self.peripheral.subscribe(link, char.characteristic.uuid)
            self._connected.set()
            log.info("central connected: %s (session %d)", device_path, self.peripheral.sessions)
            return link

    def _detached(self, device_path: str) -> None:
        if device_path != self.device_path:
            return
        link, self.link = self.link, None
        if link is not None:
            link.close_by_central()
        self._connected.clear()
        log.info("central disconnected: %s", device_path)

    def _drop(self, device_path: str) -> None:
        """The peripheral ends the link (its memory is sent, or a fault): disconnect from this side."""
        self._spawn(self._disconnect(device_path))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _disconnect(self, device_path: str) -> None:
        try:
            await self._call(BLUEZ, device_path, "org.bluez.Device1", "Disconnect")
        except PeripheralSetupError as err:
            log.info("disconnect %s: %s", device_path, err)

    def _deliver(self, uuid: str, data: bytes) -> None:
        char = self._chars.get(uuid)
        if char is not None:
            self._outgoing.put_nowait((char, bytes(data)))

    async def _send_in_order(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            char, data = await self._outgoing.get()
            if "notify" in char.characteristic.properties:
                self._last_notification = loop.time()
            else:
                wait = self._last_notification + NOTIFY_BATCH_SETTLE_S - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            char.send(data)

    def confirmed(self, uuid: str) -> None:
        self._confirmations.setdefault(uuid, asyncio.Event()).set()

    async def call(self, link: Link, operation: Any) -> Any:
        """Run a peripheral operation for a GATT request; its ATT error becomes BlueZ's D-Bus error."""
        try:
            result = await operation
        except GattError as err:
            # BlueZ turns these D-Bus errors into ATT error responses (src/gatt-database.c).
            name = (
                "org.bluez.Error.InProgress"
                if err.code == ATT_PROCEDURE_ALREADY_IN_PROGRESS
                else ("org.bluez.Error.NotPermitted" if err.code in (0x02, 0x03) else "org.bluez.Error.Failed")
            )
            raise DBusError(name, f"0x{err.code:02x}") from None
        return bytes(result) if isinstance(result, bytes | bytearray) else result

    # --- what the process reports ------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        peripheral = self.peripheral
        report: dict[str, Any] = {
            "address": self.address,
            "sessions": peripheral.sessions,
            "connections": self.connections,
            "passkeys": [f"{p:06d}" for p in self.agent.passkeys],
        }
        if isinstance(peripheral, GlucoseMeter):
            report["sent_sequences"] = peripheral.sent_sequences
            report["requests"] = [r.hex() for r in peripheral.requests]
            report["stored_sequences"] = [r.sequence for r in peripheral.records]
        if isinstance(peripheral, _StoredRecordsDevice):
            report["sent_frames"] = [f.hex() for f in peripheral.sent_frames]
        sent = getattr(peripheral, "sent_frames", None)
        if sent is not None and "sent_frames" not in report:
            report["sent_frames"] = [f.hex() for f in sent]
        return report


def load_spec(path: Path) -> tuple[Peripheral, dict[str, Any]]:
    """The peripheral a scenario entry describes, and this module's own keys taken out of it."""
    spec = json.loads(path.read_text())
    extra = {key: spec.pop(key) for key in ("security", "later_records", "capability") if key in spec}
    return peripheral_from_json(spec), extra


def _security_map(peripheral: Peripheral, security: Any) -> dict[str, str]:
    if security is None:
        return {}
    if isinstance(security, str):
        return {peripheral.primary_service: security}
    return {str(k).lower(): str(v) for k, v in dict(security).items()}


def _write(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all: a test polls these files while the process runs."""
    staged = path.with_suffix(".tmp")
    staged.write_text(json.dumps(data, indent=1) + "\n")
    staged.rename(path)


async def serve(args: argparse.Namespace) -> int:
    peripheral, extra = load_spec(Path(args.scenario))
    server = BluezPeripheral(
        peripheral,
        adapter=args.adapter,
        security=_security_map(peripheral, extra.get("security")),
        capability=args.capability or extra.get("capability", "NoInputNoOutput"),
        passkey_file=Path(args.passkey_file) if args.passkey_file else None,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def measured_again() -> None:
        if isinstance(peripheral, GlucoseMeter):
            for record in extra.get("later_records", []):
                # The same shape as the scenario's records: times as ISO strings.
                base_time = record.get("base_time")
                parsed = datetime.fromisoformat(base_time) if isinstance(base_time, str) else base_time
                peripheral.add_record(GlucoseRecord(**{**record, "base_time": parsed}))
            log.info("records now %s", [r.sequence for r in peripheral.records])

    loop.add_signal_handler(signal.SIGUSR1, measured_again)
    await server.start()
    if args.ready:
        _write(Path(args.ready), {"address": server.address, "name": peripheral.name})
    log.info("serving %s (%s) on %s as %s", peripheral.name, peripheral.profile, args.adapter, server.address)
    try:
        await stop.wait()
    finally:
        if args.report:
            _write(Path(args.report), server.report())
        await server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware_sims.ble.bluez_peripheral", description=__doc__)
    parser.add_argument("--scenario", required=True, help="one peripheral entry (JSON), as in rpm-sim ble scenarios")
    parser.add_argument("--adapter", default="hci1")
    parser.add_argument("--capability", choices=CAPABILITIES, help="the agent's IO capability")
    parser.add_argument("--passkey-file", help="where a displayed passkey is written")
    parser.add_argument("--ready", help="written (address, name) once the peripheral is advertising")
    parser.add_argument("--report", help="written on exit: sessions, what was sent, requests received")
    parser.add_argument("--verbose", action="store_true", help="log every D-Bus call BlueZ makes")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s peripheral %(levelname)s %(message)s"
    )
    try:
        return asyncio.run(serve(args))
    except PeripheralSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
