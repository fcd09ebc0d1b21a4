"""A simulated A&D-style weighing scale streaming weight lines on a pty.

Encoded on its own from ``specs/serial-protocols.md`` §2 (no gateway imports). Formats: ``balance``
(``ST,+00071.20 kg``: 9 data characters, unit padded to 3), ``indicator`` (``ST,GS,+0071.20kg``: 8
data characters, 2-character unit) and ``csv`` (``ST,+00071.20,kg``). Default line settings are
A&D's factory 2400 baud 7E1.

A weighing is a patient stepping on (unstable lines climbing to the weight), standing (stable lines
repeated), and stepping off (unstable lines falling, then stable zero). Faults: an overload line,
garbage, a partial line then a pulled cable.
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware_sims.serial.pty_device import PtyDevice


@dataclass(frozen=True)
class Weighing:
    weight: float
    unit: str = "kg"
    stable_lines: int = 5
    """How many stable lines the scale repeats while the patient stands still."""


@dataclass
class ScaleFaults:
    overload_before: bool = False
    garbage_before: bytes = b""
    pull_mid_line_after: int | None = None
    """Pull the cable halfway through the line after this many lines."""


def format_line(header: str, value: float | None, unit: str, style: str = "balance") -> str:
    if style == "indicator":
        data = "+    .  " if value is None else f"{value:+08.2f}"
        return f"{header},GS,{data}{unit:>2}\r\n"
    if value is None:
        return f"{header},+9999999E+19\r\n" if style == "balance" else f"{header},+9999999E+19,{unit}\r\n"
    data = f"{value:+09.2f}"
    if style == "csv":
        return f"{header},{data},{unit}\r\n"
    return f"{header},{data}{unit:>3}\r\n"


class PtyScale(PtyDevice):
    """The scale on one cable. ``line_interval`` paces lines; ``idle_lines`` of stable zero separate
    weighings; ``start_delay`` bounds the wait for the host to open the port before the first weighing."""

    baudrate = 2400
    bytesize = 7
    parity = "E"

    def __init__(self, weighings: list[Weighing], *, style: str = "balance", faults: ScaleFaults | None = None,
                 line_interval: float = 0.01, idle_lines: int = 3, start_delay: float = 5.0,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.weighings = list(weighings)
        self.style = style
        self.faults = faults or ScaleFaults()
        self.line_interval = line_interval
        self.idle_lines = idle_lines
        self.start_delay = start_delay
        self.lines_sent = 0
        self.done = False

    def on_plug_in(self) -> None:
        self.lines_sent = 0
        self.done = False

    def _line(self, text: str) -> None:
        data = text.encode("ascii")
        if self.faults.pull_mid_line_after is not None and self.lines_sent >= self.faults.pull_mid_line_after:
            self.send(data[: len(data) // 2])
            self.pull_cable()
        self.send(data)
        self.lines_sent += 1
        self.sleep(self.line_interval)

    def serve(self) -> None:
        self.wait_for_host(self.start_delay)
        unit = self.weighings[0].unit if self.weighings else "kg"
        for _ in range(self.idle_lines):
            self._line(format_line("ST", 0.0, unit, self.style))
        if self.faults.garbage_before:
            self.send(self.faults.garbage_before)
        if self.faults.overload_before:
            self._line(format_line("OL", None, unit, self.style))
        for weighing in self.weighings:
            w, unit = weighing.weight, weighing.unit
            for fraction in (0.3, 0.7, 0.95, 1.02):
                self._line(format_line("US", round(w * fraction, 2), unit, self.style))
            for _ in range(weighing.stable_lines):
                self._line(format_line("ST", w, unit, self.style))
            for fraction in (0.6, 0.1):
                self._line(format_line("US", round(w * fraction, 2), unit, self.style))
            for _ in range(self.idle_lines):
                self._line(format_line("ST", 0.0, unit, self.style))
        self.done = True
        while not self.stopped:  # the platform stays empty: a scale that streams keeps sending zero
            self._line(format_line("ST", 0.0, unit, self.style))
            self.sleep(0.05)
