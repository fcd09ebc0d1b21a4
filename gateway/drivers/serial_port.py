"""Serial ports for device sessions: open a path with pyserial exactly as ``/dev/ttyUSB0`` is opened,
read on a thread of its own so the event loop never blocks, every read with a timeout, a clean close.

:class:`SerialLink` is the transport; :class:`SerialDriver` is the base every USB serial driver
extends (ASTM meter, A&D scale, ANT stick, TaiDoc): ``run()`` opens the link, runs ``session()`` and
closes the link whatever happens. A cable pulled mid-session surfaces as
:class:`~gateway.drivers.base.DeviceDisconnectedError`; silence as
:class:`~gateway.drivers.base.DeviceTimeoutError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import termios
import threading
from abc import ABC, abstractmethod
from datetime import tzinfo
from typing import Any, ClassVar

import serial

from gateway.drivers.base import (
    DeviceDisconnectedError,
    DeviceInfo,
    DeviceTimeoutError,
    DriverError,
    IdentityCheck,
    MeasurementSink,
    SessionResult,
)
from gateway.drivers.device_state import DeviceStateStore
from gateway.drivers.device_strings import clean_device_string

log = logging.getLogger(__name__)

# The reader thread wakes at least this often to notice a close request.
_POLL_S = 0.05
_PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class SerialOpenError(DriverError):
    """The port could not be opened or configured (gone already, no permission, busy)."""


class ProtocolError(DriverError):
    """The device broke its protocol beyond what retries repair (too many bad frames, wrong replies)."""


@dataclasses.dataclass(frozen=True, slots=True)
class LineSettings:
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1

    def __str__(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


class SerialLink:
    """One open serial port. Bytes arrive through a reader thread into a buffer the async reads drain."""

    node_kind: ClassVar[str] = "tty"
    """The device nodes this link opens (a USB product's link decides which ports it matches)."""

    def __init__(self, path: str, settings: LineSettings | None = None) -> None:
        self.path = path
        self.settings = settings or LineSettings()
        self._port: serial.Serial | None = None
        self._buffer = bytearray()
        self._error: DriverError | None = None
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._data_ready: asyncio.Event | None = None

    @property
    def is_open(self) -> bool:
        return self._port is not None

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._data_ready = asyncio.Event()
        settings = self.settings
        parity = _PARITIES.get(settings.parity.upper())
        if parity is None:
            raise SerialOpenError(f"{self.path}: unknown parity {settings.parity!r} (N, E or O)")

        def _open() -> serial.Serial:
            return serial.Serial(
                self.path,
                baudrate=settings.baudrate,
                bytesize=settings.bytesize,
                parity=parity,
                stopbits=settings.stopbits,
                timeout=_POLL_S,
                write_timeout=2.0,
                exclusive=True,
            )

        try:
            self._port = await asyncio.to_thread(_open)
        except (serial.SerialException, OSError, ValueError, termios.error) as err:
            # termios.error is not an OSError: pyserial lets it through when the driver refuses a setting.
            raise SerialOpenError(f"{self.path}: cannot open at {settings}: {err}") from err
        self._thread = threading.Thread(target=self._read_forever, name=f"serial-read {self.path}", daemon=True)
        self._thread.start()

    def _read_forever(self) -> None:
        port = self._port
        assert port is not None
        seven_bit = self.settings.bytesize == 7
        while not self._closing.is_set():
            try:
                chunk = port.read(1)
                if chunk and port.in_waiting:
                    chunk += port.read(port.in_waiting)
            except (serial.SerialException, OSError, TypeError) as err:
                # pyserial says "device reports readiness to read but returned no data" or "read failed:
                # [Errno 5]" when the cable (or a pty's master) goes away.
                if not self._closing.is_set():
                    self._deliver(b"", DeviceDisconnectedError(f"{self.path}: link lost: {err}"))
                return
            if chunk:
                if seven_bit:
                    # A UART set to 7 data bits never delivers bit 7; a pty ignores CS7, so mask here.
                    chunk = bytes(b & 0x7F for b in chunk)
                self._deliver(chunk, None)

    def _deliver(self, chunk: bytes, error: DriverError | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def _on_loop() -> None:
            self._buffer.extend(chunk)
            if error is not None:
                self._error = error
            assert self._data_ready is not None
            self._data_ready.set()

        try:
            loop.call_soon_threadsafe(_on_loop)
        except RuntimeError:  # the loop closed while we read
            pass

    async def _wait_for_data(self, deadline: float, what: str) -> None:
        assert self._data_ready is not None and self._loop is not None
        if self._error is not None:
            raise self._error
        remaining = deadline - self._loop.time()
        if remaining <= 0:
            raise DeviceTimeoutError(f"{self.path}: no {what} within the timeout")
        self._data_ready.clear()
        try:
            await asyncio.wait_for(self._data_ready.wait(), remaining)
        except TimeoutError:
            if self._error is not None:
                raise self._error from None
            raise DeviceTimeoutError(f"{self.path}: no {what} within the timeout") from None

    def _deadline(self, wait_s: float) -> float:
        assert self._loop is not None
        return self._loop.time() + wait_s

    async def read_some(self, wait_s: float) -> bytes:
        """Whatever has arrived (at least one byte) within ``wait_s`` seconds."""
        deadline = self._deadline(wait_s)
        while not self._buffer:
            await self._wait_for_data(deadline, "data")
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    async def read_exactly(self, n: int, wait_s: float) -> bytes:
        deadline = self._deadline(wait_s)
        while len(self._buffer) < n:
            await self._wait_for_data(deadline, f"{n}-byte reply")
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def read_until(self, terminator: bytes, wait_s: float, limit: int = 4096) -> bytes:
        """Bytes up to and including ``terminator``; more than ``limit`` bytes without one is an error."""
        deadline = self._deadline(wait_s)
        while True:
            index = self._buffer.find(terminator)
            if index >= 0:
                end = index + len(terminator)
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            if len(self._buffer) > limit:
                junk = bytes(self._buffer)
                self._buffer.clear()
                raise ProtocolError(f"{self.path}: {len(junk)} bytes without {terminator!r} "
                                f"(wrong baud rate or parity, or line noise?)")
            await self._wait_for_data(deadline, f"line ending {terminator!r}")

    def pending(self) -> bytes:
        """Bytes received but not yet read (left in the buffer)."""
        return bytes(self._buffer)

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of the buffer (a reader took more than its share)."""
        self._buffer[:0] = data

    def discard_input(self) -> None:
        self._buffer.clear()

    async def write(self, data: bytes) -> None:
        port = self._port
        if port is None:
            raise DeviceDisconnectedError(f"{self.path}: not open")
        if self._error is not None:
            raise self._error
        try:
            await asyncio.to_thread(port.write, data)
        except (serial.SerialException, OSError) as err:
            raise DeviceDisconnectedError(f"{self.path}: write failed: {err}") from err

    async def close(self) -> None:
        port, self._port = self._port, None
        if port is None:
            return
        self._closing.set()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, 2.0)
        try:
            await asyncio.to_thread(port.close)
        except (serial.SerialException, OSError) as err:  # closing a vanished device: nothing left to do
            log.debug("%s: close: %s", self.path, err)

    async def __aenter__(self) -> SerialLink:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SerialDriver(ABC):
    """A session with one device on one serial port.

    Subclasses set ``profile`` and the default line settings and implement :meth:`session`. ``options``
    come from the device table or config (``bytesize``, ``parity``, ``stopbits`` are understood here;
    the rest belongs to the subclass). Measurements go to ``sink`` one by one, each committed before
    the driver moves on, so whatever was completely received before a failure is kept.
    """

    profile: ClassVar[str]
    default_baudrate: ClassVar[int] = 9600
    default_bytesize: ClassVar[int] = 8
    default_parity: ClassVar[str] = "N"
    default_stopbits: ClassVar[int] = 1
    identifies_itself: ClassVar[bool] = False
    """The session learns the device's serial and calls :meth:`identify` (its uid changes): the USB
    manager then reports status under the final uid only, never under the provisional port uid."""
    link_class: type[SerialLink] = SerialLink
    """The link ``run()`` opens: a serial port, or a HID report link (:mod:`gateway.drivers.hidraw`) for a
    meter whose bytes travel in USB HID reports; set by the session from the USB product."""
    check_identity: IdentityCheck | None = None
    """Set by the session (:class:`~gateway.drivers.base.SerialSession`): turns the identity the device
    reported into the device its records are filed under, or refuses it (see :meth:`identify`)."""

    def __init__(
        self,
        port_path: str,
        device: DeviceInfo,
        sink: MeasurementSink,
        state: DeviceStateStore,
        *,
        baudrate: int | None = None,
        local_tz: tzinfo | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.port_path = port_path
        self.device = device
        self.sink = sink
        self.state = state
        self.local_tz = local_tz
        self.options = dict(options or {})
        self.settings = LineSettings(
            baudrate=int(baudrate or self.options.get("baudrate") or self.default_baudrate),
            bytesize=int(self.options.get("bytesize") or self.default_bytesize),
            parity=str(self.options.get("parity") or self.default_parity).upper(),
            stopbits=int(self.options.get("stopbits") or self.default_stopbits),
        )
        self.link: SerialLink | None = None

    def identify(self, serial_number: str | None, *, model: str | None = None) -> None:
        """Adopt the serial number the device reported: the uid becomes ``usb:<vid>:<pid>:<serial>``, or
        the uid ``check_identity`` maps it to (the one it was confirmed under); ``check_identity`` may
        raise :class:`~gateway.drivers.base.DeviceNotAdmittedError`, and then no record may be taken.
        Both strings are cleaned first (they come from the device's own header, NULs and all)."""
        serial_number, model = clean_device_string(serial_number), clean_device_string(model)
        if not serial_number:
            return
        prefix = ":".join(self.device.uid.split(":")[:3]) if self.device.uid.startswith("usb:") else "usb:0000:0000"
        reported = dataclasses.replace(
            self.device, uid=f"{prefix}:{serial_number}", serial=serial_number, model=model or self.device.model
        )
        # Issue 19: the uid the records carry is the one a person confirmed (maybe the port's, before the
        # serial was known); the check raises DeviceNotAdmittedError for a meter nobody confirmed.
        self.device = reported if self.check_identity is None else self.check_identity(reported)

    async def run(self) -> SessionResult:
        """Open the port, run the session, close the port (also on error or cancellation)."""
        link = self.link_class(self.port_path, self.settings)
        await link.open()
        self.link = link
        try:
            return await self.session(link)
        finally:
            await link.close()

    @abstractmethod
    async def session(self, link: SerialLink) -> SessionResult:
        """Talk to the device until the session ends (transfer done, or the device went away)."""


def usb_uid(vid: int | None, pid: int | None, identity: str) -> str:
    """``usb:<vid>:<pid>:<serial or port>`` with ids as four lowercase hex digits (0000 when unknown)."""
    return f"usb:{(vid or 0):04x}:{(pid or 0):04x}:{identity}"
