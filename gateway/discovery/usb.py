"""USB serial hot-plug: watch ports come and go, run one driver session per supported port.

Ports are listed with pyserial's ``list_ports`` every ``[usb] poll_interval_s``; where ``pyudev`` is
importable, udev's tty events wake the watcher at once instead of at the next poll. Each port is
matched against the device table (:mod:`gateway.discovery.usb_devices`: config entries first, including fixed
``port`` paths, then the profile table's products). A matched port gets one session (the table's driver); a
session that ends because the cable was pulled is an unplug, not an error, and the next plug-in
starts a new session. A port the table's built-in products match is a *candidate* (in the enrolment
store, with its USB maker and product strings) and is not opened until someone confirms the device;
``[[usb.devices]]`` entries are the installer's decision and read at once unless they set
``needs_confirmation``.

A meter that tells its serial number in the session (ASTM, TaiDoc) files its readings under the uid it
was confirmed under (issue 19; :meth:`gateway.discovery.enrolment.EnrolmentStore.admit`): the port's
uid, when the meter was proposed before its serial was known. Once a confirmed meter of a kind is
known by its serial, a port of that kind that is not confirmed itself is opened to let the device say
who it is: the same meter on another port is read under its confirmed uid; another meter (a second
one of the same model) stops before any record is taken and is proposed under its own serial.

A session that ends normally (a meter finished its upload) is not restarted until the device is
plugged in again; one that failed is retried after ``retry_after_error_s``.

``on_status(uid, **fields)`` hears ``last_seen``, ``clock_offset_s``, ``battery``, ``error`` (None
when a session ended well) and ``state`` (``connected``, ``done``, ``unplugged``, ``failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from gateway.codecs.common import Measurement
from gateway.discovery.callbacks import report_status
from gateway.discovery.enrolment import EnrolmentStore, HeardDevice, device_type
from gateway.discovery.hidraw import list_hidraw_ports
from gateway.discovery.usb_config import UsbConfig
from gateway.discovery.usb_devices import DriverLoader, PortFacts, SupportedDevice, device_table, match_port
from gateway.drivers.base import (
    ClockCheck,
    DeviceDisconnectedError,
    DeviceInfo,
    DeviceNotAdmittedError,
    DriverError,
    MeasurementSink,
    SerialContext,
)
from gateway.drivers.device_state import DeviceStateStore
from gateway.drivers.device_strings import clean_device_string
from gateway.drivers.serial_port import usb_uid
from gateway.ops.problems import plain_words
from gateway.profiles import USB_PROFILES
from gateway.store.outbox import OutboxError

try:  # udev events where available (Linux with pyudev installed); polling works without
    import pyudev  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the host
    pyudev = None

log = logging.getLogger(__name__)

StatusCallback = Callable[..., Any]
# After a read fails with EIO, how long to watch for the device node to disappear before calling it
# an error rather than an unplug (udev removes the node shortly after the kernel reports the loss).
UNPLUG_GRACE_S = 1.0


def list_serial_ports() -> list[PortFacts]:
    """Every serial port pyserial sees, with its USB facts."""
    from serial.tools import list_ports

    return [
        PortFacts(
            device=p.device,
            vid=p.vid,
            pid=p.pid,
            serial_number=p.serial_number,
            description=p.description if p.description != "n/a" else None,
            manufacturer=p.manufacturer,
            product=p.product,
            location=p.location,
        )
        for p in list_ports.comports()
    ]


def list_usb_ports() -> list[PortFacts]:
    """Serial ports and USB HID (hidraw) nodes: a HID meter is matched and served like a serial one."""
    return list_serial_ports() + list_hidraw_ports()


def present_ports(config: UsbConfig, ports: list[PortFacts] | None = None) -> list[PortFacts]:
    """Listed ports plus the config's fixed port paths that exist right now."""
    listed = list_usb_ports() if ports is None else list(ports)
    known = {p.device for p in listed}
    for entry in config.devices:
        if entry.port and entry.port not in known and os.path.exists(entry.port):
            listed.append(PortFacts(device=entry.port, description=f"configured port for {entry.profile}"))
            known.add(entry.port)
    return listed


def usb_candidates(config: UsbConfig, ports: list[PortFacts] | None = None) -> list[dict[str, Any]]:
    """For ``rpm-gateway scan``: every USB serial port (and configured port), and what it matches."""
    table = device_table(config)
    candidates = []
    for port in present_ports(config, ports):
        entry = match_port(port, table)
        if entry is None and (port.vid is None or port.kind == "hidraw"):
            # A built-in UART or a pty nobody configured, or a keyboard's or mouse's hidraw node.
            continue
        candidates.append(
            {
                "transport": "usb",
                "port": port.device,
                "vid": None if port.vid is None else f"{port.vid:04x}",
                "pid": None if port.pid is None else f"{port.pid:04x}",
                "serial": port.serial_number,
                "description": port.description,
                "supported": entry is not None,
                "profile": entry.profile if entry else None,
                "name": entry.name if entry else None,
                "uid": usb_uid(port.vid, port.pid, port.serial_number or port.device),
            }
        )
    return candidates


def device_for(facts: PortFacts, entry: SupportedDevice) -> DeviceInfo:
    # USB descriptor strings are the firmware's: cleaned like every device string, or a NUL in a
    # serial number would make a uid the contract refuses and cost every reading of the device.
    serial = clean_device_string(facts.serial_number)
    return DeviceInfo(
        uid=usb_uid(facts.vid, facts.pid, serial or facts.device),
        transport="usb",
        profile=entry.profile,
        model=clean_device_string(facts.product) or entry.name,
        serial=serial,
        manufacturer=clean_device_string(facts.manufacturer),
    )


def heard_usb_device(facts: PortFacts, entry: SupportedDevice) -> HeardDevice:
    device = device_for(facts, entry)
    return HeardDevice(uid=device.uid, transport="usb", profile=entry.profile, type=device_type(entry.profile),
                       make=device.manufacturer, model=device.model, name=entry.name)


def propose_plugged_in(config: UsbConfig, enrolment: EnrolmentStore, ports: list[PortFacts] | None = None) -> int:
    """``rpm-gateway pair``: every supported device plugged in now that needs confirmation and has none
    becomes a candidate (as the running USB manager does at each poll). Returns how many are waiting."""
    table = device_table(config)
    waiting = 0
    for facts in present_ports(config, ports):
        entry = match_port(facts, table)
        if entry is None or not entry.needs_confirmation:
            continue
        heard = heard_usb_device(facts, entry)
        if enrolment.is_enrolled(heard.uid):
            continue
        if not enrolment.is_ignored(heard.uid) and enrolment.knows_meters_like(heard.uid, entry.profile):
            continue  # maybe a confirmed meter on another port: the running service lets it say who it is
        enrolment.heard(heard)
        waiting += 1
    return waiting


@dataclass
class _Port:
    facts: PortFacts
    entry: SupportedDevice
    node: tuple[int, int] | None
    """(inode, ctime) of the device node when the port appeared."""
    task: asyncio.Task[None] | None = None
    finished: bool = False
    """A session ended well (or unrecoverably): wait for the device to be plugged in again."""
    retry_at: float | None = None
    ending: bool = False
    """The session saw the link go and is checking whether the device was unplugged."""
    removed: bool = False
    problem: str | None = None
    """The plain-words failure last said for this port (issue 19): the same one again is not repeated."""
    probing: bool = False
    """Opened though the port is not confirmed itself, to let a meter of a known kind say who it is."""
    admitted: str | None = None
    """The uid the running session's records carry, once the device said who it is."""
    refused: str | None = None
    """The identity a device here reported that may not be read (a candidate, or ignored): the port is
    opened again once that identity is confirmed."""


def _node_identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_ctime_ns


class UsbManager:
    def __init__(
        self,
        config: UsbConfig,
        sink: MeasurementSink,
        state: DeviceStateStore,
        *,
        on_status: StatusCallback | None = None,
        local_tz: tzinfo | None = None,
        list_ports: Callable[[], list[PortFacts]] | None = None,
        load_driver: DriverLoader | None = None,
        enrolment: EnrolmentStore | None = None,
    ) -> None:
        """``load_driver`` turns a ``driver = "module:Class"`` named in ``[[usb.devices]]`` into a driver;
        the runtime passes its loader (importing what a config names is the runtime's job). ``enrolment``:
        where candidates go and confirmations come from; without one every matched port is read."""
        self.config = config
        self.sink = sink
        self.state = state
        self.on_status = on_status
        self.local_tz = local_tz
        self._list_ports = list_ports
        self._load_driver = load_driver
        self.enrolment = enrolment
        self._ports: dict[str, _Port] = {}
        self._wake = asyncio.Event()
        self.sessions_started = 0

    async def run(self) -> None:
        """Watch and serve until cancelled; cancelling ends every session (each closes its port)."""
        table = device_table(self.config, self._load_driver)
        loop = asyncio.get_running_loop()
        monitor = self._start_udev(loop)
        try:
            while True:
                present = await asyncio.to_thread(self._scan)
                self._reconcile(present, table, loop.time())
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_interval_s)
        finally:
            if monitor is not None:
                loop.remove_reader(monitor.fileno())
            tasks = [p.task for p in self._ports.values() if p.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _start_udev(self, loop: asyncio.AbstractEventLoop) -> Any:
        if pyudev is None:
            return None
        try:
            monitor = pyudev.Monitor.from_netlink(pyudev.Context())
            monitor.filter_by("tty")
            monitor.filter_by("hidraw")
            monitor.start()
        except Exception as err:  # no netlink in a container, no permission: polling still works
            log.info("udev events unavailable (%s); polling every %s s", err, self.config.poll_interval_s)
            return None

        def _on_event() -> None:
            while monitor.poll(timeout=0) is not None:
                pass
            self._wake.set()

        loop.add_reader(monitor.fileno(), _on_event)
        return monitor

    def _scan(self) -> dict[str, tuple[PortFacts, tuple[int, int] | None]]:
        """Present ports with their device node's identity (blocking: runs on a thread)."""
        listed = (self._list_ports or list_usb_ports)()
        return {p.device: (p, _node_identity(p.device)) for p in present_ports(self.config, listed)}

    def _reconcile(
        self, present: dict[str, tuple[PortFacts, tuple[int, int] | None]], table: list[SupportedDevice], now: float
    ) -> None:
        for path in list(self._ports):
            # A device unplugged and plugged back between two polls gets the same path but a new node.
            if path not in present or present[path][1] != self._ports[path].node:
                port = self._ports.pop(path)
                port.removed = True
                if port.task is not None and not port.task.done() and not port.ending:
                    port.task.cancel()  # the node is gone but the driver has not noticed (a quiet device)
        for path, (facts, node) in present.items():
            port = self._ports.get(path)
            if port is None:
                entry = match_port(facts, table)
                if entry is None:
                    continue
                port = self._ports[path] = _Port(facts, entry, node)
            if port.task is not None:
                if not port.task.done() and not self._still_allowed(port):
                    port.task.cancel()  # unpaired while its session runs: stop reading it now
                continue
            if port.refused is not None and self._admits(port.refused):
                # The meter it found was confirmed since: open it again (a meter that pushes its memory
                # once per plug-in may need its transfer started again; the session waits for it).
                port.finished, port.refused = False, None
            if port.finished or not self._confirmed(port):
                continue
            if port.retry_at is not None and now < port.retry_at:
                continue
            port.retry_at = None
            port.task = asyncio.create_task(self._session(port), name=f"usb session {path}")

    def _confirmed(self, port: _Port) -> bool:
        """May this port be opened? A device that needs confirmation and has none is offered as a candidate,
        unless it may be a confirmed meter on another port (then it is opened to say who it is)."""
        if self.enrolment is None or not port.entry.needs_confirmation:
            return True
        heard = heard_usb_device(port.facts, port.entry)
        if self.enrolment.is_enrolled(heard.uid):
            port.probing = False
            return True
        if port.refused is not None:
            return False  # the device here said who it is and nobody confirmed that yet
        if not self.enrolment.is_ignored(heard.uid) and self.enrolment.knows_meters_like(heard.uid, port.entry.profile):
            port.probing = True
            return True
        self.enrolment.heard(heard)
        return False

    def _admits(self, uid: str) -> bool:
        return self.enrolment is None or self.enrolment.admits(uid)

    def _still_allowed(self, port: _Port) -> bool:
        if port.refused is not None:
            return True  # the session refused its device itself and is ending (an ASTM meter gets its EOT)
        if port.admitted is not None and port.entry.needs_confirmation:
            return self._admits(port.admitted)
        return self._confirmed(port)

    def _check_identity(self, port: _Port, reported: DeviceInfo) -> DeviceInfo:
        """The device the session's records are filed under, once the meter reported ``reported`` (its own
        serial); DeviceNotAdmittedError before any record of a meter nobody confirmed is taken."""
        if self.enrolment is None or not port.entry.needs_confirmation:
            return reported  # an installer's [[usb.devices]] entry: read under the meter's own uid
        port_uid = heard_usb_device(port.facts, port.entry).uid
        admission = self.enrolment.admit(reported.uid, via=port_uid, profile=reported.profile,
                                         serial=reported.serial, model=reported.model)
        if port.probing and admission.uid != port_uid:
            # Proposed under its port before a meter of its kind was known by serial: now it is known.
            self.enrolment.withdraw_candidate(port_uid)
        if admission.uid is not None:
            port.admitted = admission.uid
            if admission.uid != reported.uid:
                log.info("%s: the meter on %s reports %s; its readings carry the uid it was confirmed under",
                         admission.uid, port.facts.device, reported.uid)
            return dataclasses.replace(reported, uid=admission.uid)
        port.refused = reported.uid
        if admission.reason == "candidate":
            self.enrolment.heard(HeardDevice(
                uid=reported.uid, transport="usb", profile=reported.profile, type=device_type(reported.profile),
                make=reported.manufacturer, model=reported.model, name=port.entry.name))
        raise DeviceNotAdmittedError(
            f"{port.facts.device}: {reported.uid} is {'ignored' if admission.reason == 'ignored' else 'not confirmed'}"
            "; nothing read from it", uid=reported.uid, reason=admission.reason)

    def _device_for(self, port: _Port) -> DeviceInfo:
        return device_for(port.facts, port.entry)

    def _context_for(self, port: _Port, device: DeviceInfo) -> SerialContext:
        options = port.entry.driver_options()
        profile = USB_PROFILES.get(port.entry.profile)
        if profile is not None and profile.needs_ant_network_key:
            options.setdefault("network_key", self.config.ant_network_key)

        async def announce(device: DeviceInfo) -> None:
            await self._status(device.uid, profile=device.profile, state="connected", last_seen=datetime.now(UTC))

        return SerialContext(
            port_path=port.facts.device,
            device=device,
            sink=self._sink_for(port),
            state=self.state,
            baudrate=port.entry.baudrate,
            local_tz=self.local_tz,
            options=options,
            announce=announce,
            check_identity=lambda reported: self._check_identity(port, reported),
            link_class=port.entry.link,
        )

    def _sink_for(self, port: _Port) -> MeasurementSink:
        async def sink(device: DeviceInfo, measurement: Measurement, clock: ClockCheck | None, **position: int) -> None:
            if port.probing and port.admitted is None:
                # A port opened only to learn who is there: a record before the meter said so (a header
                # without a serial number) is not taken; the meter keeps it, and the port is proposed.
                port.refused = device.uid
                if self.enrolment is not None:
                    self.enrolment.heard(heard_usb_device(port.facts, port.entry))
                raise DeviceNotAdmittedError(f"{port.facts.device}: the device did not say who it is; nothing read",
                                             uid=device.uid, reason="unidentified")
            await self.sink(device, measurement, clock, **position)
            await self._status(device.uid, profile=device.profile, last_seen=datetime.now(UTC), error=None)

        return sink

    async def _session(self, port: _Port) -> None:
        device = self._device_for(port)
        path = port.facts.device
        port.admitted = None
        self.sessions_started += 1
        ctx = self._context_for(port, device)
        try:
            log.info("%s: %s session on %s", device.uid, port.entry.profile, path)
            result = await port.entry.driver(ctx)
        except asyncio.CancelledError:
            port.task = None
            if port.removed:
                uid = ctx.device.uid
                log.info("%s: unplugged from %s", uid, path)
                await self._port_status(port, uid, profile=device.profile, state="unplugged", error=None)
            raise
        except DeviceNotAdmittedError as err:
            # Not a failure: a candidate (or an ignored meter) is not read; it waits for a person, or for
            # its confirmation (then the port is opened again), not for a retry timer.
            log.info("%s", err)
            port.finished = True
        except DeviceDisconnectedError as err:
            uid = ctx.device.uid
            port.ending = True
            if await self._vanished(path, port.node):
                log.info("%s: unplugged from %s", uid, path)
                await self._port_status(port, uid, profile=device.profile, state="unplugged", error=None)
                port.finished = True
            else:
                self._failed(port, uid, err)
                await self._port_status(port, uid, profile=device.profile, state="failed", error=str(err))
            port.ending = False
        except (DriverError, OutboxError) as err:
            # OutboxError: storage full or unwritable; the record stays on the device, the storage
            # state is in the status, and the session is tried again later: no traceback.
            uid = ctx.device.uid
            self._failed(port, uid, err)
            await self._port_status(port, uid, profile=device.profile, state="failed",
                               error=plain_words(err) or f"{type(err).__name__}: {err}")
        except Exception as err:  # a driver bug or a bad table entry: report it, keep the other ports going
            uid = ctx.device.uid
            log.exception("%s: session on %s crashed", uid, path)
            self._failed(port, uid, err)
            await self._port_status(port, uid, profile=device.profile, state="failed",
                                    error=f"{type(err).__name__}: {err}")
        else:
            uid = ctx.device.uid
            offset = result.clock.offset if result.clock is not None else None
            log.info(
                "%s: session done, %d measurement(s)%s",
                uid,
                result.measurements,
                "".join(f"; {n}" for n in result.notes),
            )
            await self._status(
                uid,
                profile=device.profile,
                state="done",
                error=None,
                last_seen=datetime.now(UTC),
                clock_offset_s=None if offset is None else round(offset.total_seconds(), 3),
                battery=result.battery,
            )
            port.finished = True
        port.task = None

    def _failed(self, port: _Port, uid: str, err: BaseException) -> None:
        # A known fact (no permission on the port) is said once in plain words; retries after it are quiet.
        plain = plain_words(err)
        if plain is None:
            log.warning("%s: session on %s failed: %s", uid, port.facts.device, err)
        else:
            log.log(logging.WARNING if plain != port.problem else logging.DEBUG, "%s: %s", uid, plain)
        port.problem = plain
        port.retry_at = asyncio.get_running_loop().time() + self.config.retry_after_error_s

    async def _vanished(self, path: str, node: tuple[int, int] | None) -> bool:
        """Did the device go (its node is gone, or is a new node: unplugged and plugged in again)?"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UNPLUG_GRACE_S
        while True:
            if await asyncio.to_thread(_node_identity, path) != node:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def _status(self, uid: str, **fields: Any) -> None:
        await report_status(self.on_status, uid, **fields)

    async def _port_status(self, port: _Port, uid: str, **fields: Any) -> None:
        # A port opened only to learn who is there shows nothing until its meter is admitted: a candidate
        # is on the candidates list, and a meter nobody confirmed is no device of this gateway's status.
        if port.probing and port.admitted is None:
            return
        await self._status(uid, **fields)
