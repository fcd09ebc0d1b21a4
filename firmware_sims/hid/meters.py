"""The ASTM glucose meter and the TaiDoc meter of :mod:`firmware_sims.serial`, plugged in over USB HID.

The meters are the serial simulators themselves (their ``serve()``: memory, frames, faults); what
changes is the cable. :class:`HidCable` puts a simulated HID device where the pty was (a real hidraw
node through ``/dev/uhid``, or a seqpacket socket pair on a host without one) and carries the meter's
bytes in that device's reports:

- :class:`HidAstmMeter`: a Contour Next USB (1a79:7410). Its reports are the Contour layout, and it
  speaks only when polled: a message the meter would send with no host report to answer is not sent
  (the pty meter offers ENQ unasked; over HID the host has to ask first).
- :class:`HidTaidoc`: a TaiDoc meter behind a CP2110 (10c4:ea80). The bridge's UART is off until the
  host enables it, and runs at the line the host configured: at any other than the meter's 19200 8N1
  both directions turn to garbage, as on the pty.
"""

from __future__ import annotations

import threading
import time
from typing import Literal, Protocol

from firmware_sims.hid.reports import ContourReports, Cp2110Bridge, HidFunction
from firmware_sims.hid.socket_node import SocketNode
from firmware_sims.hid.uhid import UhidNode
from firmware_sims.serial.astm_meter import PtyAstmMeter
from firmware_sims.serial.pty_device import CablePulled, PtyDevice, _garble
from firmware_sims.serial.taidoc import PtyTaidoc

Transport = Literal["uhid", "socket"]


class HidNode(Protocol):
    path: str | None
    opened: threading.Event
    error: BaseException | None

    def create(self, timeout: float = 5.0) -> str: ...

    def destroy(self) -> None: ...


class HidCable(PtyDevice):
    """A PtyDevice whose cable is a USB HID device. Mixed in front of a serial simulator."""

    vid: int = 0
    pid: int = 0
    product: str = ""

    def __init__(self, *args: object, transport: Transport = "uhid", usb_serial: str = "", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.transport = transport
        self.usb_serial = usb_serial
        self.node: UhidNode | SocketNode | None = None
        self.function: HidFunction | None = None
        self._from_host = bytearray()
        self._arrived = threading.Condition()

    def make_function(self) -> HidFunction:
        raise NotImplementedError

    @property
    def path(self) -> str:
        assert self.node is not None and self.node.path is not None, "not plugged in"
        return self.node.path

    @property
    def plugged_in(self) -> bool:
        return self.node is not None

    def _connect(self) -> None:
        self._from_host.clear()
        self.function = self.make_function()
        if self.transport == "uhid":
            node: UhidNode | SocketNode = UhidNode(
                self.function, vid=self.vid, pid=self.pid, name=self.product, serial=self.usb_serial
            )
        else:
            node = SocketNode(self.function)
        node.create()
        self.node = node

    def _close_fds(self) -> None:
        node, self.node = self.node, None
        if node is not None:
            node.destroy()

    def host_opened(self) -> bool:
        return self.node is not None and self.node.opened.is_set()

    def _from_host_bytes(self, data: bytes) -> None:
        """Called on the node's thread with what a host report carried."""
        with self._arrived:
            self._from_host.extend(data)
            self._arrived.notify_all()

    def receive(self, timeout: float) -> bytes:
        if self._inbox:
            data = bytes(self._inbox)
            self._inbox.clear()
            return data
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not self._from_host:
                if self._stop.is_set() or self.node is None:
                    raise CablePulled()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return b""
                # Short slices: a pulled cable must end the device thread at once.
                self._arrived.wait(min(0.05, remaining))
            data = bytes(self._from_host)
            self._from_host.clear()
        self.on_received(data)
        return data

    def on_received(self, data: bytes) -> None:
        """The device read ``data`` from the host."""

    def _check_plugged(self) -> None:
        if self.node is None or self._stop.is_set():
            raise CablePulled()


class ContourCable(HidCable):
    """Contour USB reports; the meter answers each host report once, and only then."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._polls = 0
        self._credit = 0
        self.unpolled = 0
        """Messages the meter had to say with no host report to answer (not sent)."""

    def make_function(self) -> HidFunction:
        self._polls = self._credit = 0
        return ContourReports(self._polled)

    def _polled(self, data: bytes) -> None:
        with self._arrived:
            self._polls += 1
            self._from_host.extend(data)
            self._arrived.notify_all()

    def receive(self, timeout: float) -> bytes:
        data = super().receive(timeout)
        with self._arrived:
            # The reports the meter has now read are the polls its next messages answer.
            self._credit += self._polls
            self._polls = 0
        return data

    def send(self, data: bytes) -> None:
        self._check_plugged()
        with self._arrived:
            if self._credit == 0:
                self.unpolled += 1
                return
            self._credit -= 1
        assert isinstance(self.function, ContourReports)
        self.sent.extend(data)
        try:
            self.function.send_message(data)
        except OSError as err:
            raise CablePulled() from err


class Cp2110Cable(HidCable):
    """A CP2110 bridge in front of the device's UART."""

    @property
    def bridge(self) -> Cp2110Bridge:
        assert isinstance(self.function, Cp2110Bridge)
        return self.function

    def make_function(self) -> HidFunction:
        return Cp2110Bridge(self._uart_bytes)

    def host_settings_match(self) -> bool:
        return self.function is not None and self.bridge.line_matches(self.baudrate, self.parity, self.bytesize)

    def host_opened(self) -> bool:
        return super().host_opened() and self.function is not None and self.bridge.enabled

    def _uart_bytes(self, data: bytes) -> None:
        self._from_host_bytes(data if self.host_settings_match() else _garble(data))

    def send(self, data: bytes) -> None:
        self._check_plugged()
        if not self.host_settings_match():
            data = _garble(data)
        try:
            if self.bridge.send_bytes(data):
                self.sent.extend(data)
        except OSError as err:
            raise CablePulled() from err


class HidAstmMeter(ContourCable, PtyAstmMeter):
    """A Contour Next USB meter uploading its memory in HID reports (``serve`` is the pty meter's)."""

    vid, pid, product = 0x1A79, 0x7410, "Ascensia Diabetes Care Contour Next USB"


class HidTaidoc(Cp2110Cable, PtyTaidoc):
    """A TaiDoc meter behind a CP2110 HID-to-UART bridge (``serve`` is the pty meter's)."""

    vid, pid, product = 0x10C4, 0xEA80, "TaiDoc TD-3128 CP2110 HID USB-to-UART"
