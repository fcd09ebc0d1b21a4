"""The device side of two USB HID byte pipes, encoded on their own (no gateway imports).

**Contour USB meters** (glucometerutils ``support/contourusb.py``, contourpp ``hid_commands.cpp``): one
vendor-defined collection with a 64-byte input and a 64-byte output report, no report IDs. The host
writes ``"ABC"``, a length byte and the payload; the meter answers with three bytes the hosts ignore
(``"ABC"`` here too), the length byte and up to 60 payload bytes; a message longer than that continues
in further reports, each full one saying 60 ("more follows"), the last one less (0 if need be). The
meter speaks only when polled: each host report earns one answer.

**Silicon Labs CP2110** (AN434; OpenBSD ``uslhcomreg.h``): interrupt reports 0x01..0x3F in both
directions, the report ID being the count of UART bytes that follow; feature reports 0x41 UART enable,
0x42 UART status, 0x43 purge FIFOs, 0x46 version, 0x50 UART config (baud rate big-endian, parity,
flow control, data bits - 5, stop bits - 1). The UART is disabled at power-up: nothing crosses it until
the host enables it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

CONTOUR_REPORT = 64
CONTOUR_PAYLOAD = CONTOUR_REPORT - 4
CP2110_DATA_MAX = 0x3F
UART_ENABLE, UART_STATUS, PURGE_FIFOS, VERSION, UART_CONFIG = 0x41, 0x42, 0x43, 0x46, 0x50

# HID report descriptor items (HID 1.11 §6.2.2): tag/type/size byte, then the data.
_USAGE_PAGE_VENDOR = bytes([0x06, 0x00, 0xFF])
_USAGE_1 = bytes([0x09, 0x01])
_COLLECTION_APPLICATION = bytes([0xA1, 0x01])
_END_COLLECTION = bytes([0xC0])
_LOGICAL_0_255 = bytes([0x15, 0x00, 0x26, 0xFF, 0x00])
_REPORT_SIZE_8 = bytes([0x75, 0x08])
_INPUT, _OUTPUT, _FEATURE = bytes([0x81, 0x02]), bytes([0x91, 0x02]), bytes([0xB1, 0x02])


def _report_id(n: int) -> bytes:
    return bytes([0x85, n])


def _report_count(n: int) -> bytes:
    return bytes([0x95, n])


def contour_descriptor() -> bytes:
    body = (
        _LOGICAL_0_255
        + _REPORT_SIZE_8
        + _report_count(CONTOUR_REPORT)
        + _USAGE_1
        + _INPUT
        + _report_count(CONTOUR_REPORT)
        + _USAGE_1
        + _OUTPUT
    )
    return _USAGE_PAGE_VENDOR + _USAGE_1 + _COLLECTION_APPLICATION + body + _END_COLLECTION


def cp2110_descriptor() -> bytes:
    body = bytearray(_LOGICAL_0_255 + _REPORT_SIZE_8)
    for count in range(1, CP2110_DATA_MAX + 1):
        body += _report_id(count) + _report_count(count) + _USAGE_1 + _INPUT + _USAGE_1 + _OUTPUT
    for report, size in ((UART_ENABLE, 1), (UART_STATUS, 6), (PURGE_FIFOS, 1), (VERSION, 2), (UART_CONFIG, 8)):
        body += _report_id(report) + _report_count(size) + _USAGE_1 + _FEATURE
    return _USAGE_PAGE_VENDOR + _USAGE_1 + _COLLECTION_APPLICATION + bytes(body) + _END_COLLECTION


class HidFunction:
    """What a simulated HID device does with the host's reports. ``emit`` sends one input report."""

    descriptor: bytes = b""

    def __init__(self) -> None:
        self.emit: Callable[[bytes], None] = lambda report: None

    def on_output(self, report: bytes) -> None:
        """An output report from the host (report ID first where the device numbers its reports)."""

    def on_get_feature(self, report_id: int) -> bytes | None:
        """The feature report asked for (report ID first), or None: the device stalls the request."""
        return None

    def on_set_feature(self, report: bytes) -> bool:
        """A feature report from the host (report ID first); False stalls it."""
        return False


class ContourReports(HidFunction):
    """A Contour meter's 64-byte reports; ``on_bytes`` hears what the host's reports carry."""

    descriptor = contour_descriptor()

    def __init__(self, on_bytes: Callable[[bytes], None]) -> None:
        super().__init__()
        self.on_bytes = on_bytes
        self.bad_reports = 0

    def on_output(self, report: bytes) -> None:
        if len(report) < 4 or report[:3] != b"ABC" or report[3] > CONTOUR_PAYLOAD or len(report) < 4 + report[3]:
            self.bad_reports += 1  # not the layout the meter knows: it ignores the report
            return
        self.on_bytes(bytes(report[4 : 4 + report[3]]))

    def send_message(self, message: bytes) -> None:
        """One message as the meter sends it: full reports while more follows, then a short one."""
        start = 0
        while True:
            chunk = message[start : start + CONTOUR_PAYLOAD]
            report = b"ABC" + bytes([len(chunk)]) + chunk
            self.emit(report + bytes(CONTOUR_REPORT - len(report)))
            start += CONTOUR_PAYLOAD
            if len(chunk) < CONTOUR_PAYLOAD:
                return


@dataclass(frozen=True)
class UartLine:
    baudrate: int = 9600
    parity: int = 0
    flow_control: int = 0
    data_bits: int = 3
    stop_bits: int = 0

    def encode(self) -> bytes:
        return (
            bytes([UART_CONFIG])
            + self.baudrate.to_bytes(4, "big")
            + bytes([self.parity, self.flow_control, self.data_bits, self.stop_bits])
        )

    @classmethod
    def decode(cls, report: bytes) -> UartLine | None:
        if len(report) < 9 or report[5] > 4 or report[6] > 1 or report[7] > 3 or report[8] > 1:
            return None
        return cls(int.from_bytes(report[1:5], "big"), report[5], report[6], report[7], report[8])


class Cp2110Bridge(HidFunction):
    """A CP2110 between the host and a UART device; ``on_bytes`` hears what the host sent over the UART."""

    descriptor = cp2110_descriptor()

    def __init__(self, on_bytes: Callable[[bytes], None], *, version: tuple[int, int] = (0x0A, 0x01)) -> None:
        super().__init__()
        self.on_bytes = on_bytes
        self.version = version
        self.enabled = False
        self.line = UartLine()
        self.purges = 0
        self.config_writes: list[UartLine] = []
        self._lock = threading.Lock()

    def on_output(self, report: bytes) -> None:
        if not report or not 1 <= report[0] <= CP2110_DATA_MAX or len(report) < 1 + report[0]:
            return
        with self._lock:
            enabled = self.enabled
        if enabled:  # a disabled UART sends nothing
            self.on_bytes(bytes(report[1 : 1 + report[0]]))

    def send_bytes(self, data: bytes) -> bool:
        """UART bytes from the device to the host; False (dropped) while the UART is disabled."""
        with self._lock:
            if not self.enabled:
                return False
        for start in range(0, len(data), CP2110_DATA_MAX):
            chunk = data[start : start + CP2110_DATA_MAX]
            self.emit(bytes([len(chunk)]) + chunk)
        return True

    def on_get_feature(self, report_id: int) -> bytes | None:
        with self._lock:
            if report_id == UART_ENABLE:
                return bytes([UART_ENABLE, int(self.enabled)])
            if report_id == UART_CONFIG:
                return self.line.encode()
            if report_id == UART_STATUS:
                return bytes([UART_STATUS, 0, 0, 0, 0, 0, 0])
            if report_id == VERSION:
                return bytes([VERSION, *self.version])
        return None

    def on_set_feature(self, report: bytes) -> bool:
        if not report:
            return False
        with self._lock:
            if report[0] == UART_ENABLE and len(report) >= 2 and report[1] in (0, 1):
                self.enabled = bool(report[1])
                return True
            if report[0] == PURGE_FIFOS and len(report) >= 2 and 1 <= report[1] <= 3:
                self.purges += 1
                return True
            if report[0] == UART_CONFIG:
                line = UartLine.decode(report)
                if line is None or not 300 <= line.baudrate <= 1_000_000:
                    return False
                self.line = line
                self.config_writes.append(line)
                return True
        return False

    def line_matches(self, baudrate: int, parity: str = "N", bytesize: int = 8, stopbits: int = 1) -> bool:
        """Does the bridge's UART run the device's line? (Else both directions turn to garbage.)"""
        with self._lock:
            line = self.line
        codes = {"N": 0, "E": 1, "O": 2}
        return (line.baudrate, line.parity, line.data_bits, line.stop_bits) == (
            baudrate,
            codes.get(parity.upper(), -1),
            bytesize - 5,
            stopbits - 1,
        )
