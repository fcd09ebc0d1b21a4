"""A simulated USB serial device on a real pseudo-terminal.

The gateway opens the pty's slave path with pyserial exactly as it opens ``/dev/ttyUSB0``. The device
side (this module) owns the master. Plugging in creates a pty (and, optionally, a stable symlink, as
``/dev/serial/by-id/...`` is for a real device); pulling the cable closes the master, which the
gateway sees as EIO on its next read, and removes the symlink.

Wrong line settings are simulated honestly: the device reads the terminal's baud rate (which the host
set through pyserial) and, if it differs from its own, both directions turn to garbage, as on a real
UART. A 7-bit device sends its parity bit in bit 7, which a host reading 8N1 sees and a host set to
7 data bits masks off (:class:`gateway.drivers.serial_port.SerialLink` does, as a UART would).
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import threading
import time
import tty
from abc import ABC, abstractmethod

_BAUD_CONSTANTS = {
    getattr(termios, f"B{rate}"): rate
    for rate in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
    if hasattr(termios, f"B{rate}")
}


class CablePulled(Exception):
    """Raised inside the device thread when the cable is pulled (the master is closed)."""


class PtyDevice(ABC):
    """One simulated device. ``plug_in()`` starts it on a fresh pty; ``pull_cable()`` ends it."""

    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"

    def __init__(self, *, link_path: str | None = None, baudrate: int | None = None,
                 bytesize: int | None = None, parity: str | None = None) -> None:
        self.link_path = link_path
        self.baudrate = baudrate or self.baudrate
        self.bytesize = bytesize or self.bytesize
        self.parity = (parity or self.parity).upper()
        self._master: int | None = None
        self._slave: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._inbox = bytearray()
        self.slave_path: str | None = None
        self.error: BaseException | None = None
        self.sent = bytearray()
        """Everything the device wrote during the current plug-in (tests read it)."""

    # --- life cycle -------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The path the host opens: the stable link if there is one, else the pty slave."""
        if self.link_path is not None:
            return self.link_path
        assert self.slave_path is not None, "not plugged in"
        return self.slave_path

    @property
    def plugged_in(self) -> bool:
        return self._master is not None

    def plug_in(self) -> str:
        if self.plugged_in:
            raise RuntimeError("already plugged in")
        self._inbox.clear()
        self.sent.clear()
        self._stop.clear()
        self.error = None
        self._connect()
        self.on_plug_in()
        self._thread = threading.Thread(target=self._run, name=f"sim {type(self).__name__}", daemon=True)
        self._thread.start()
        return self.path

    def _connect(self) -> None:
        """Make the cable: a fresh pty (a HID cable makes a HID device here instead)."""
        master, slave = os.openpty()
        tty.setraw(slave)
        # The device keeps its slave end open so that the terminal (and its settings) exists before
        # and between host opens, as a real USB serial device's tty does while it is plugged in.
        self._master, self._slave = master, slave
        self.slave_path = os.ttyname(slave)
        if self.link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link_path)
            os.symlink(self.slave_path, self.link_path)

    def pull_cable(self, wait: bool = True) -> None:
        """Unplug: the host's next read fails. Safe to call from the device thread itself."""
        self._stop.set()
        if self.link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link_path)
        if threading.current_thread() is self._thread:
            self._close_fds()
            raise CablePulled()
        if wait and self._thread is not None:
            self._thread.join(5)
        self._close_fds()

    close = pull_cable

    def _close_fds(self) -> None:
        master, slave, self._master, self._slave = self._master, self._slave, None, None
        for fd in (master, slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __enter__(self) -> PtyDevice:
        self.plug_in()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pull_cable()

    def _run(self) -> None:
        try:
            self.serve()
        except CablePulled:
            pass
        except OSError as err:
            if not self._stop.is_set():
                self.error = err
        except Exception as err:  # a simulator bug must show up in the test, not vanish with the thread
            self.error = err
            raise

    # --- for subclasses ---------------------------------------------------------------------------

    def on_plug_in(self) -> None:
        """Reset per-cable state (frame counters, fault counters)."""
        return None

    @abstractmethod
    def serve(self) -> None:
        """Speak the protocol until ``self.stopped``; use ``send`` / ``receive``."""

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def host_settings_match(self) -> bool:
        """Does the host's baud rate (kept by the pty; the host set it through pyserial) match ours?

        Linux ptys force CS8 and no parity whatever the host asks for, so character framing cannot be
        compared here; :meth:`send` puts 7E1/7O1 parity in bit 7 instead, as an 8-bit receiver sees it.
        """
        if self._slave is None:
            return False
        try:
            speed = termios.tcgetattr(self._slave)[5]
        except termios.error:
            return False
        return _BAUD_CONSTANTS.get(speed) == self.baudrate

    def host_opened(self) -> bool:
        """Has a host configured the port? pyserial always sets CLOCAL, which ``tty.setraw`` leaves clear."""
        if self._slave is None:
            return False
        try:
            return bool(termios.tcgetattr(self._slave)[2] & termios.CLOCAL)
        except termios.error:
            return False

    def wait_for_host(self, timeout: float) -> bool:
        """Wait until a host opened and configured the port (then a moment for its input flush)."""
        deadline = time.monotonic() + timeout
        while not self.host_opened():
            if time.monotonic() > deadline:
                return False
            self.sleep(0.01)
        self.sleep(0.05)
        return True

    def send(self, data: bytes) -> None:
        if self._master is None or self._stop.is_set():
            raise CablePulled()
        if self.bytesize == 7:
            data = _with_parity_bit(data, self.parity)
        if not self.host_settings_match():
            data = _garble(data)
        self.sent.extend(data)
        view = memoryview(data)
        while view:
            written = os.write(self._master, view)
            view = view[written:]

    def receive(self, timeout: float) -> bytes:
        """Whatever the host sent within ``timeout`` seconds (maybe nothing)."""
        if self._inbox:
            data = bytes(self._inbox)
            self._inbox.clear()
            return data
        deadline = time.monotonic() + timeout
        while True:
            master = self._master
            if master is None or self._stop.is_set():
                raise CablePulled()
            # Short slices: a pulled cable must end the device thread at once, not after a long wait.
            slice_s = max(0.0, min(0.05, deadline - time.monotonic()))
            ready, _, _ = select.select([master], [], [], slice_s)
            if ready:
                break
            if time.monotonic() >= deadline:
                return b""
        if self._stop.is_set():
            raise CablePulled()
        data = os.read(master, 4096)
        if not self.host_settings_match():
            return _garble(data)
        return bytes(b & 0x7F for b in data) if self.bytesize == 7 else data

    def receive_byte(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while not self._inbox:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._inbox.extend(self.receive(remaining))
        byte = self._inbox[0]
        del self._inbox[0]
        return byte

    def unread(self, data: bytes) -> None:
        self._inbox[:0] = data

    def sleep(self, seconds: float) -> None:
        """Wait, but wake up at once when the cable is pulled."""
        if self._stop.wait(seconds):
            raise CablePulled()


def _with_parity_bit(data: bytes, parity: str) -> bytes:
    """7-bit characters with their parity bit where an 8-bit receiver finds it (bit 7)."""
    out = bytearray()
    for byte in data:
        ones = bin(byte & 0x7F).count("1")
        bit = (ones % 2) if parity == "E" else (1 - ones % 2) if parity == "O" else 0
        out.append((byte & 0x7F) | (bit << 7))
    return bytes(out)


def _garble(data: bytes) -> bytes:
    # What a UART at the wrong rate or framing delivers: bytes unrelated to the ones sent, often with
    # the high bit set (framing errors), and fewer of them at a lower rate.
    return bytes(((b * 37) ^ 0xA5) & 0xFF for b in data)
