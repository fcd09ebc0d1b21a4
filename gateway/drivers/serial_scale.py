"""Weighing scales and indicators streaming A&D-style lines over a serial port.

Byte formats live in ``gateway.codecs.ad_scale``; this is the session: read lines as long as the
scale is plugged in, and turn each *weighing* into one reading — the first stable (``ST``) weight
after the load was near zero. A patient standing on the scale for a minute produces hundreds of
identical stable lines and must produce one reading; the next reading needs the platform emptied
first. Line settings (2400/9600 baud, 7E1/8N1) come from the device table or the config.

The scale has no clock: a weighing's time is the gateway's local time when it settled, recorded as
the device time (``details.time_source = "gateway"``), which also makes two weighings of the same
weight distinct readings.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, tzinfo

from gateway.codecs.ad_scale import ScaleLine, decode_line_reading, parse_line
from gateway.codecs.common import DecodeError
from gateway.drivers.base import DeviceTimeoutError, SessionResult
from gateway.drivers.serial_port import ProtocolError, SerialDriver, SerialLink
from gateway.metrics import METRICS

log = logging.getLogger(__name__)

# A body on the platform weighs far more than this; a load below it is "the platform is empty".
DEFAULT_ZERO_KG = 2.0
# This many undecodable lines in a row means the line settings are wrong (or it is not a scale).
MAX_BAD_LINES = 8


class SerialScaleDriver(SerialDriver):
    profile = "serial.ad_scale"
    default_baudrate = 2400
    default_bytesize = 7
    default_parity = "E"

    async def session(self, link: SerialLink) -> SessionResult:
        zero_kg = float(self.options.get("zero_kg", DEFAULT_ZERO_KG))
        # A scale that sends only on stable weight is silent for hours: silence is no error.
        idle_s = float(self.options.get("idle_timeout_s", 3600.0))
        max_weighings = self.options.get("max_weighings")
        armed = True
        bad_in_a_row = 0
        weighings = 0
        overloads = 0
        notes: list[str] = []
        while max_weighings is None or weighings < int(max_weighings):
            try:
                raw = await link.read_until(b"\n", idle_s, limit=256)
            except DeviceTimeoutError:
                continue
            try:
                line = parse_line(raw)
            except DecodeError as err:
                bad_in_a_row += 1
                log.warning("%s: unreadable line %r: %s", self.port_path, raw, err)
                if bad_in_a_row >= MAX_BAD_LINES:
                    raise ProtocolError(
                        f"{self.port_path}: {bad_in_a_row} unreadable lines in a row at {self.settings} "
                        f"(wrong baud rate or parity?): {err}"
                    ) from err
                continue
            bad_in_a_row = 0
            if line.overload:
                overloads += 1
                continue
            weight_kg = _in_kg(line)
            if weight_kg is None:
                continue
            if abs(weight_kg) <= zero_kg:
                armed = True
                continue
            if not (armed and line.stable and line.weight_kind in (None, "GS", "NT")):
                continue
            try:
                measurement = decode_line_reading(raw)
            except DecodeError as err:
                log.warning("%s: stable line %r not a reading: %s", self.port_path, raw, err)
                continue
            measurement = dataclasses.replace(
                measurement,
                device_time=_local_now(self.local_tz),
                details={**measurement.details, "time_source": "gateway"},
            )
            await self.sink(self.device, measurement, None)
            weighings += 1
            armed = False
        if overloads:
            notes.append(f"{overloads} overload line(s)")
        return SessionResult(measurements=weighings, notes=notes)


def _in_kg(line: ScaleLine) -> float | None:
    unit = (line.unit or "").lower()
    if line.value is None:
        return None
    if unit == "kg":
        return line.value
    if unit == "lb":
        return METRICS["body_weight"].to_canonical(line.value, "[lb_av]")
    if unit == "g":
        return line.value / 1000
    return None


def _local_now(local_tz: tzinfo | None) -> datetime:
    # Milliseconds kept: two weighings of the same weight are two readings, however quick.
    now = datetime.now(local_tz) if local_tz else datetime.now().astimezone()
    return now.replace(tzinfo=None, microsecond=now.microsecond // 1000 * 1000)
