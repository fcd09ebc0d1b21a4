"""Byte streams carried in USB HID reports: the Contour USB report layout and the CP2110 HID-to-UART bridge.

Neither layer is a protocol of its own: each carries the bytes a serial cable would, and the device's
protocol (ASTM E1381/E1394 for the Contour meters, TaiDoc's 8-byte frames behind a CP2110) runs
unchanged on top (:mod:`gateway.drivers.hidraw` turns reports into the byte stream the serial drivers
read).

**Contour USB** (Ascensia/Bayer Contour USB 1a79:6002, Contour Next USB 1a79:7410, Contour Next ONE
1a79:7800; the layout is the one the open-source readers use: glucometerutils
``glucometerutils/support/contourusb.py`` (MIT; from Anders Hammarquist's glucodump) and contourpp
``hid_commands.cpp``). Reports are 64 bytes, no report ID. Host to meter: ``"ABC"``, one length byte,
that many payload bytes, zero padding to 64. Meter to host: three bytes the readers ignore, the length
byte (0..60) at offset 3, the payload from offset 4. A message longer than 60 bytes continues in the next
report: a length of exactly 60 means "more follows" (both readers loop while it is 60).

**CP2110** (Silicon Labs AN434, "CP2110/4 HID-to-UART Interface Specification"; cross-checked with
OpenBSD's ``uslhcom(4)`` driver, ``sys/dev/usb/uslhcomreg.h``). UART data travels in interrupt reports
whose report ID *is* the number of data bytes (0x01..0x3F), both ways. Configuration is in feature
reports: 0x41 get/set UART enable (one byte, 0 or 1), 0x43 purge FIFOs (bit 0 transmit, bit 1 receive),
0x50 get/set UART config: baud rate (4 bytes, big-endian), parity (0 none, 1 even, 2 odd, 3 mark,
4 space), flow control (0 none, 1 RTS/CTS), data bits (0..3 for 5..8 bits: AN434 rev 0.4 wrote 5..8,
the chips want 0..3, as uslhcom notes), stop bits (0 one, 1 one and a half or two).

Pure: bytes in, bytes out, :class:`~gateway.codecs.common.DecodeError` on bad reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.codecs.common import InvalidFieldError, TruncatedError

CONTOUR_REPORT_SIZE = 64
CONTOUR_HEADER = b"ABC"
CONTOUR_MAX_PAYLOAD = CONTOUR_REPORT_SIZE - 4

CP2110_MAX_DATA = 0x3F
CP2110_UART_ENABLE = 0x41
CP2110_PURGE_FIFOS = 0x43
CP2110_UART_CONFIG = 0x50
CP2110_PURGE_BOTH = 0x03
_PARITY_CODES = {"N": 0, "E": 1, "O": 2, "M": 3, "S": 4}
_PARITY_LETTERS = {code: letter for letter, code in _PARITY_CODES.items()}


def contour_output_reports(data: bytes) -> list[bytes]:
    """The 64-byte output reports carrying ``data`` to a Contour meter (60 payload bytes each at most)."""
    reports = []
    for start in range(0, max(len(data), 1), CONTOUR_MAX_PAYLOAD):
        chunk = data[start : start + CONTOUR_MAX_PAYLOAD]
        report = CONTOUR_HEADER + bytes([len(chunk)]) + chunk
        reports.append(report + bytes(CONTOUR_REPORT_SIZE - len(report)))
    return reports


def contour_input_payload(report: bytes) -> bytes:
    """The payload of one input report from a Contour meter (its length byte says how much is payload)."""
    if len(report) < 4:
        raise TruncatedError("length byte", 3, 1, len(report))
    length = report[3]
    if length > CONTOUR_MAX_PAYLOAD:
        raise InvalidFieldError("length byte", 3, f"{length} exceeds the {CONTOUR_MAX_PAYLOAD}-byte payload")
    if len(report) < 4 + length:
        raise TruncatedError("payload", 4, length, len(report))
    return bytes(report[4 : 4 + length])


def cp2110_data_reports(data: bytes) -> list[bytes]:
    """Interrupt reports carrying ``data`` to the UART: report ID = byte count (1..63), then the bytes."""
    return [
        bytes([len(chunk)]) + chunk
        for chunk in (data[start : start + CP2110_MAX_DATA] for start in range(0, len(data), CP2110_MAX_DATA))
    ]


def cp2110_data_payload(report: bytes) -> bytes:
    """The UART bytes in one interrupt report from a CP2110 (as hidraw reads it: report ID first)."""
    if not report:
        raise TruncatedError("report ID", 0, 1, 0)
    count = report[0]
    if not 1 <= count <= CP2110_MAX_DATA:
        raise InvalidFieldError("report ID", 0, f"0x{count:02x} is not a data report (0x01..0x3f)")
    if len(report) < 1 + count:
        raise TruncatedError("UART data", 1, count, len(report))
    return bytes(report[1 : 1 + count])


@dataclass(frozen=True, slots=True)
class UartConfig:
    baudrate: int
    parity: str = "N"
    bytesize: int = 8
    stopbits: int = 1
    flow_control: bool = False


def cp2110_uart_config_report(config: UartConfig) -> bytes:
    """The Set UART Config feature report (0x50) for ``config``."""
    if not 0 < config.baudrate < 1 << 32:
        raise InvalidFieldError("baud rate", 1, f"{config.baudrate} does not fit four bytes")
    parity = _PARITY_CODES.get(config.parity.upper())
    if parity is None:
        raise InvalidFieldError("parity", 5, f"{config.parity!r} is not one of N, E, O, M, S")
    if not 5 <= config.bytesize <= 8:
        raise InvalidFieldError("data bits", 7, f"{config.bytesize} is not 5..8")
    if config.stopbits not in (1, 2):
        raise InvalidFieldError("stop bits", 8, f"{config.stopbits} is not 1 or 2")
    return (
        bytes([CP2110_UART_CONFIG])
        + config.baudrate.to_bytes(4, "big")
        + bytes([parity, int(config.flow_control), config.bytesize - 5, config.stopbits - 1])
    )


def decode_cp2110_uart_config(report: bytes) -> UartConfig:
    """A Get UART Config feature report (report ID 0x50 first) as settings."""
    if len(report) < 9:
        raise TruncatedError("UART config", 0, 9, len(report))
    if report[0] != CP2110_UART_CONFIG:
        raise InvalidFieldError("report ID", 0, f"0x{report[0]:02x} is not the UART config report (0x50)")
    parity = _PARITY_LETTERS.get(report[5])
    if parity is None:
        raise InvalidFieldError("parity", 5, f"code {report[5]} is not 0..4")
    if report[7] > 3 or report[8] > 1:
        raise InvalidFieldError(
            "data bits" if report[7] > 3 else "stop bits",
            7 if report[7] > 3 else 8,
            f"code {report[7] if report[7] > 3 else report[8]} out of range",
        )
    return UartConfig(
        baudrate=int.from_bytes(report[1:5], "big"),
        parity=parity,
        bytesize=report[7] + 5,
        stopbits=report[8] + 1,
        flow_control=bool(report[6]),
    )
