"""A simulated glucose meter that uploads its whole memory over ASTM E1381/E1394 on a pty.

Encoded on its own from ``specs/serial-protocols.md`` §1 (no gateway imports): the meter is the
sender. It offers ENQ until the host answers ACK, sends frames ``STX FN text ETB|ETX C1 C2 CR LF``
(FN from 1, modulo 8), waits for ACK after each, repeats a NAKed frame up to 6 times, and ends with
EOT. Records: H (sender name^version^serial, field 14 = the meter's clock), P, one R per stored
result, L. Two layouts: ``contour`` (each record in its own frame ending ETB, the last ETX; result
time in field 9, markers in field 7) and ``e1394`` (time in field 13; records longer than 240
characters split over ETB frames).

Faults on demand: noise before the transfer, frames sent with a bad checksum, a cable pulled after n
frames or in the middle of a frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from firmware_sims.serial.pty_device import PtyDevice

ENQ, ACK, NAK, EOT, STX, ETX, ETB, CR, LF = 0x05, 0x06, 0x15, 0x04, 0x02, 0x03, 0x17, 0x0D, 0x0A
MAX_TEXT = 240
MAX_TRIES = 6


@dataclass(frozen=True)
class GlucoseResult:
    when: datetime
    value: float
    unit: str = "mg/dL"
    flags: tuple[str, ...] = ()
    """Field 7 markers: ``>``/``<`` out of measuring range, ``B``/``A`` before/after meal, ``C`` control."""
    reference: str = "P"


@dataclass
class AstmFaults:
    noise_before: bytes = b""
    corrupt_frames: dict[int, int] = field(default_factory=dict)
    """Frame index in the transfer (1 = header) → how many times it is sent with a bad checksum."""
    pull_after_frames: int | None = None
    """Pull the cable once this many frames were acknowledged."""
    pull_mid_frame: int | None = None
    """Send half of this frame (index) and pull the cable."""


def checksum(body: bytes) -> bytes:
    return f"{sum(body) % 256:02X}".encode()


def frame(number: int, text: str, final: bool) -> bytes:
    body = bytes([0x30 + number % 8]) + text.encode("latin-1") + bytes([ETX if final else ETB])
    return bytes([STX]) + body + checksum(body) + bytes([CR, LF])


def timestamp(when: datetime, seconds: bool = False) -> str:
    return when.strftime("%Y%m%d%H%M%S" if seconds else "%Y%m%d%H%M")


@dataclass
class GlucoseMeter:
    """The meter itself (memory, clock): it outlives any one cable."""

    results: list[GlucoseResult] = field(default_factory=list)
    serial: str = "7390-1163170"
    model: str = "Bayer7390"
    version: str = "01.20"
    clock_offset: timedelta = timedelta(0)
    clock_unset: bool = False
    """The clock reset to 2000-01-01 (battery change): the header says so and so do new results."""
    layout: str = "contour"

    def now(self) -> datetime:
        if self.clock_unset:
            return datetime(2000, 1, 1, 0, 5)
        return (datetime.now() + self.clock_offset).replace(microsecond=0)

    def records(self) -> list[str]:
        header = (
            f"H|\\^&||sim|{self.model}^{self.version}\\01.04^{self.serial}^7396-|A=1^C=63^G=1^U=1"
            f"|{len(self.results)}||||||1|{timestamp(self.now())}"
        )
        records = [header, "P|1"]
        for number, result in enumerate(self.results, start=1):
            flags = "/".join(result.flags)
            value = f"{result.value:g}"
            if self.layout == "contour":
                records.append(
                    f"R|{number}|^^^Glucose|{value}|{result.unit}^{result.reference}||{flags}||{timestamp(result.when)}"
                )
            else:
                records.append(
                    f"R|{number}|^^^Glucose|{value}|{result.unit}||{flags}||||||{timestamp(result.when, True)}"
                )
        records.append("L|1||N")
        return records

    def frames(self) -> list[tuple[str, bool]]:
        """(text, final) per frame, in the meter's layout."""
        texts: list[tuple[str, bool]] = []
        records = self.records()
        if self.layout == "contour":
            for index, record in enumerate(records):
                texts.append((record + "\r", index == len(records) - 1))
            return texts
        for record in records:
            text = record + "\r"
            while len(text) > MAX_TEXT:
                texts.append((text[:MAX_TEXT], False))
                text = text[MAX_TEXT:]
            texts.append((text, True))
        return texts


class PtyAstmMeter(PtyDevice):
    """One cable to the meter: each plug-in uploads the whole memory once."""

    baudrate = 9600

    def __init__(self, meter: GlucoseMeter, faults: AstmFaults | None = None, *, enq_interval: float = 0.1,
                 reply_timeout: float = 15.0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.meter = meter
        self.faults = faults or AstmFaults()
        self.enq_interval = enq_interval
        self.reply_timeout = reply_timeout
        self.transfers = 0
        self.naks = 0
        self.finished = False

    def on_plug_in(self) -> None:
        self.finished = False
        self.naks = 0

    def serve(self) -> None:
        # Establishment (E1381 §6.2): offer ENQ until the host answers ACK (line noise, if asked for,
        # rides in front of each offer so the host sees it whenever it opened the port).
        while True:
            self.send(self.faults.noise_before + bytes([ENQ]))
            reply = self.receive_byte(self.enq_interval)
            if reply == ACK:
                break
        frames = self.meter.frames()
        corrupt = dict(self.faults.corrupt_frames)
        for index, (text, final) in enumerate(frames, start=1):
            if self.faults.pull_after_frames is not None and index > self.faults.pull_after_frames:
                self.pull_cable()
            data = frame(index, text, final)
            for _ in range(MAX_TRIES):
                if index == self.faults.pull_mid_frame:
                    self.send(data[: len(data) // 2])
                    self.pull_cable()
                outgoing = data
                if corrupt.get(index, 0) > 0:
                    corrupt[index] -= 1
                    outgoing = data[:-4] + (b"00" if data[-4:-2] != b"00" else b"01") + data[-2:]
                self.send(outgoing)
                reply = self._await_reply()
                if reply == ACK:
                    break
                if reply == EOT:  # the receiver asked to stop (E1381 §6.3.5)
                    self.send(bytes([EOT]))
                    return
                self.naks += 1
            else:
                self.send(bytes([EOT]))  # six NAKs: give up (termination phase)
                return
        self.send(bytes([EOT]))
        self.transfers += 1
        self.finished = True
        while not self.stopped:  # idle, "transfer complete" on the display, until unplugged
            self.receive(0.05)

    def _await_reply(self) -> int | None:
        while True:
            reply = self.receive_byte(self.reply_timeout)
            if reply is None or reply in (ACK, NAK, EOT):
                return reply
