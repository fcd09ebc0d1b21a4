"""USB HID meters on Linux hidraw: the report links the serial drivers run over, unchanged.

A Contour Next USB meter and a TaiDoc meter behind a CP2110 bridge are HID devices, not ttys: Linux
gives each a ``/dev/hidrawN`` node where one ``read()`` is one input report and one ``write()`` one
output report (report ID first where the device numbers its reports), and feature reports go through
the ``HIDIOCSFEATURE``/``HIDIOCGFEATURE`` ioctls (``Documentation/hid/hidraw.rst``). What those reports
carry is the byte stream a serial cable would (:mod:`gateway.codecs.hid_reports`), so a
:class:`HidrawLink` is a :class:`~gateway.drivers.serial_port.SerialLink` as far as a driver can tell:
the ASTM and TaiDoc sessions run over it as they are, with their own framing, checksums and retries.

Reading is plain ``os.read`` on a non-blocking descriptor watched by the event loop (``add_reader``), so
no thread and no hidapi are needed; writes and the feature ioctls (the kernel waits up to 5 s for the
device's answer to those) run on a worker thread. A device unplugged mid-session makes the node's read
fail with EIO: :class:`~gateway.drivers.base.DeviceDisconnectedError`, as a pulled serial cable does.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Callable
from typing import ClassVar, Protocol

from gateway.codecs.common import DecodeError
from gateway.codecs.hid_reports import (
    CP2110_PURGE_BOTH,
    CP2110_PURGE_FIFOS,
    CP2110_UART_CONFIG,
    CP2110_UART_ENABLE,
    UartConfig,
    contour_input_payload,
    contour_output_reports,
    cp2110_data_payload,
    cp2110_data_reports,
    cp2110_uart_config_report,
    decode_cp2110_uart_config,
)
from gateway.drivers.base import DeviceDisconnectedError
from gateway.drivers.serial_port import LineSettings, SerialLink, SerialOpenError

log = logging.getLogger(__name__)

# The largest report a hidraw read returns (HID_MAX_BUFFER_SIZE in include/linux/hid.h).
MAX_REPORT = 16384
EOT = 0x04


def _hidraw_ioctl(nr: int, size: int) -> int:
    # _IOC(_IOC_WRITE | _IOC_READ, 'H', nr, size) from include/uapi/linux/hidraw.h.
    return (3 << 30) | (size << 16) | (ord("H") << 8) | nr


class ReportDevice(Protocol):
    """One open HID device as a report pipe (``HidrawDevice``; tests use a socket pair)."""

    def fileno(self) -> int: ...

    def read_report(self) -> bytes:
        """One input report; ``BlockingIOError`` when none is waiting, another ``OSError`` when gone."""

    def write_report(self, report: bytes) -> None: ...

    def set_feature(self, report: bytes) -> None:
        """Send a feature report (report ID first); blocks until the device took it."""

    def get_feature(self, report_id: int, size: int) -> bytes:
        """Read a feature report (report ID first, ``size`` bytes with it); blocks until the device answered."""

    def close(self) -> None: ...


class HidrawDevice:
    """A ``/dev/hidrawN`` node, opened read-write and non-blocking."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._fd

    def read_report(self) -> bytes:
        return os.read(self._fd, MAX_REPORT)

    def write_report(self, report: bytes) -> None:
        written = os.write(self._fd, report)
        if written != len(report):
            raise OSError(f"short write: {written} of {len(report)} bytes")

    def set_feature(self, report: bytes) -> None:
        fcntl.ioctl(self._fd, _hidraw_ioctl(0x06, len(report)), bytearray(report))

    def get_feature(self, report_id: int, size: int) -> bytes:
        buffer = bytearray(size)
        buffer[0] = report_id
        got = fcntl.ioctl(self._fd, _hidraw_ioctl(0x07, size), buffer, True)
        return bytes(buffer[:got])

    def close(self) -> None:
        os.close(self._fd)


class HidrawLink(SerialLink):
    """A HID device as a serial link: input reports unpacked into the read buffer, writes packed into
    output reports. Subclasses say how (:meth:`pack`, :meth:`unpack`) and may set the device up first."""

    node_kind: ClassVar[str] = "hidraw"

    def __init__(
        self,
        path: str,
        settings: LineSettings | None = None,
        *,
        open_device: Callable[[str], ReportDevice] | None = None,
    ) -> None:
        super().__init__(path, settings)
        self._open_device: Callable[[str], ReportDevice] = open_device or HidrawDevice
        self._device: ReportDevice | None = None
        self.bad_reports = 0

    @property
    def is_open(self) -> bool:
        return self._device is not None

    def pack(self, data: bytes) -> list[bytes]:
        raise NotImplementedError

    def unpack(self, report: bytes) -> bytes:
        raise NotImplementedError

    async def configure(self, device: ReportDevice) -> None:
        """Set the device up before reports flow (the CP2110's UART); nothing by default."""

    async def started(self) -> None:
        """Called once reports flow (the Contour meter is polled here); nothing by default."""

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._data_ready = asyncio.Event()
        try:
            device = await asyncio.to_thread(self._open_device, self.path)
        except OSError as err:
            raise SerialOpenError(f"{self.path}: cannot open the HID device: {err}") from err
        self._device = device
        try:
            await self.configure(device)
            self._loop.add_reader(device.fileno(), self._on_readable)
            await self.started()
        except BaseException:
            await self.close()
            raise

    def _on_readable(self) -> None:
        device = self._device
        assert device is not None and self._data_ready is not None
        try:
            report = device.read_report()
        except BlockingIOError:
            return
        except OSError as err:
            report, failure = b"", err
        else:
            failure = None if report else EOFError("end of file")
        if failure is not None:
            # EIO once the device is gone (hidraw_read: the node's device no longer exists).
            self._stop_reading()
            self._error = DeviceDisconnectedError(f"{self.path}: link lost: {failure}")
            self._data_ready.set()
            return
        try:
            payload = self.unpack(report)
        except DecodeError as err:
            # A report that carries no stream bytes of the form we know: dropped, and the driver's own
            # framing (checksums, retries) sees a gap if it held data.
            self.bad_reports += 1
            log.warning("%s: dropped an input report (%s): %s", self.path, err, report[:16].hex())
            return
        if payload:
            self._buffer.extend(payload)
            self._data_ready.set()

    def _stop_reading(self) -> None:
        device, loop = self._device, self._loop
        if device is not None and loop is not None and not loop.is_closed():
            loop.remove_reader(device.fileno())

    async def write(self, data: bytes) -> None:
        device = self._device
        if device is None:
            raise DeviceDisconnectedError(f"{self.path}: not open")
        if self._error is not None:
            raise self._error
        try:
            for report in self.pack(data):
                await asyncio.to_thread(device.write_report, report)
        except OSError as err:
            raise DeviceDisconnectedError(f"{self.path}: write failed: {err}") from err

    async def close(self) -> None:
        device = self._device
        if device is None:
            return
        self._stop_reading()
        self._device = None
        try:
            device.close()
        except OSError as err:  # closing a vanished device: nothing left to do
            log.debug("%s: close: %s", self.path, err)


class ContourHidLink(HidrawLink):
    """A Contour USB meter: 64-byte reports, ``"ABC"`` + length + payload (see :mod:`gateway.codecs.hid_reports`).

    Over HID the meter speaks only when spoken to: each message it sends answers a report from the host.
    The ASTM receiver answers every meter message (ACK, NAK) anyway, so only the first one needs a poll:
    an EOT once the link is up (the receiver's "nothing to say", as glucodump starts), to which a meter
    ready to upload answers ENQ."""

    def pack(self, data: bytes) -> list[bytes]:
        return contour_output_reports(data)

    def unpack(self, report: bytes) -> bytes:
        return contour_input_payload(report)

    async def started(self) -> None:
        await self.write(bytes([EOT]))


class Cp2110Link(HidrawLink):
    """A UART behind a Silicon Labs CP2110: the line settings go to the bridge (Set UART Config), read back
    to check the bridge took them, then the UART is enabled and its FIFOs purged before any byte flows."""

    def pack(self, data: bytes) -> list[bytes]:
        return cp2110_data_reports(data)

    def unpack(self, report: bytes) -> bytes:
        return cp2110_data_payload(report)

    async def configure(self, device: ReportDevice) -> None:
        s = self.settings
        try:
            wanted = UartConfig(baudrate=s.baudrate, parity=s.parity, bytesize=s.bytesize, stopbits=s.stopbits)
            await asyncio.to_thread(device.set_feature, cp2110_uart_config_report(wanted))
            answer = await asyncio.to_thread(device.get_feature, CP2110_UART_CONFIG, 9)
            got = decode_cp2110_uart_config(answer)
            if got != wanted:
                raise SerialOpenError(f"{self.path}: the CP2110 kept {got} after being set to {wanted}")
            await asyncio.to_thread(device.set_feature, bytes([CP2110_UART_ENABLE, 1]))
            await asyncio.to_thread(device.set_feature, bytes([CP2110_PURGE_FIFOS, CP2110_PURGE_BOTH]))
        except DecodeError as err:
            raise SerialOpenError(f"{self.path}: CP2110 UART config at {s}: {err}") from err
        except OSError as err:
            raise SerialOpenError(f"{self.path}: CP2110 did not take the UART config at {s}: {err}") from err
