"""Policy for live heart rate: notifications arrive at up to 4 Hz; the cloud wants one reading per
cadence (default a minute) carrying the window's median, not a flood.

Windows are aligned to multiples of the cadence since the Unix epoch (UTC), so a window's start is
the same whichever gateway process saw it: the start is the reading's discriminator in its
deterministic id (a window has neither a sequence number nor a device time).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.codecs.common import Measurement, Quantity
from gateway.metrics import METRICS

PROFILE = "ble.heart_rate"


@dataclass(slots=True)
class _Window:
    start: datetime
    end: datetime
    samples: list[Measurement] = field(default_factory=list)


class HeartRateWindow:
    """Collect heart-rate measurements; hand back one aggregate per closed window.

    ``add`` returns the aggregate of the previous window when a sample falls past its end;
    ``flush`` closes the open window (at the end of a session). Not thread-safe: one per device.
    """

    def __init__(self, cadence_s: float = 60.0) -> None:
        if cadence_s <= 0:
            raise ValueError("cadence_s must be > 0")
        self.cadence = timedelta(seconds=cadence_s)
        self._window: _Window | None = None

    def _window_for(self, at: datetime) -> _Window:
        at = _aware(at)
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        start = epoch + ((at - epoch) // self.cadence) * self.cadence
        return _Window(start=start, end=start + self.cadence)

    def add(self, measurement: Measurement, at: datetime) -> Measurement | None:
        """Add one live measurement received at ``at``; return the closed window's aggregate, if any."""
        at = _aware(at)
        closed = None
        if self._window is not None and at >= self._window.end:
            closed = self._close(self._window, self._window.end)
            self._window = None
        if self._window is None:
            self._window = self._window_for(at)
        # A late sample (before the open window's start, e.g. a clock step) stays in the open window
        # rather than reopening a window that was already sent.
        self._window.samples.append(measurement)
        return closed

    def flush(self, at: datetime) -> Measurement | None:
        """Close the open window now (a session ended); None when nothing is open."""
        if self._window is None:
            return None
        window, self._window = self._window, None
        return self._close(window, min(_aware(at), window.end))

    @property
    def pending(self) -> int:
        """Samples held in the open window."""
        return 0 if self._window is None else len(self._window.samples)

    def _close(self, window: _Window, end: datetime) -> Measurement | None:
        if not window.samples:
            return None
        return aggregate(window.samples, window.start, end)


def aggregate(samples: list[Measurement], start: datetime, end: datetime) -> Measurement:
    """One measurement for a window: median heart rate, every RR interval in arrival order, the
    highest energy expended (the device's counter only grows until reset), the union of flags."""
    with_contact = [s for s in samples if "sensor_contact_lost" not in s.flags and "heart_rate" in s.values]
    # A strap that lost skin contact reports rubbish rates; use them only when nothing better exists.
    rated = with_contact or [s for s in samples if "heart_rate" in s.values]
    values: dict[str, Quantity] = {}
    raw = samples[-1].raw
    if rated:
        rates = [float(_scalar(s.values["heart_rate"].value)) for s in rated]
        median = statistics.median(rates)
        values["heart_rate"] = Quantity(median, rated[0].values["heart_rate"].unit)
        # Keep a real frame for audit: the one whose rate is nearest the median.
        raw = min(rated, key=lambda s: abs(float(_scalar(s.values["heart_rate"].value)) - median)).raw
    rr = _rr_intervals(samples)
    if rr is not None:
        values["rr_intervals"] = rr
    energies = [s.values["energy_expended"] for s in samples if "energy_expended" in s.values]
    if energies:
        values["energy_expended"] = Quantity(max(float(_scalar(q.value)) for q in energies), energies[0].unit)
    flags = list(dict.fromkeys(flag for s in samples for flag in s.flags))
    if not values and "measurement_unsuccessful" not in flags:
        flags.append("measurement_unsuccessful")
    return Measurement(
        profile=samples[0].profile,
        kind="heart_rate",
        values=values,
        device_time=None,
        user_index=samples[0].user_index,
        sequence=None,
        flags=tuple(flags),
        raw=raw,
        details={
            "window_start": start.astimezone(UTC).isoformat(),
            "window_end": end.astimezone(UTC).isoformat(),
            "samples": len(samples),
        },
    )


def _rr_intervals(samples: list[Measurement]) -> Quantity | None:
    quantities = [s.values["rr_intervals"] for s in samples if "rr_intervals" in s.values]
    if not quantities:
        return None
    units = {q.unit for q in quantities}
    if len(units) == 1:
        unit = units.pop()
        return Quantity(tuple(v for q in quantities for v in _as_tuple(q.value)), unit)
    # Mixed units (one device switched encodings): fall back to canonical seconds.
    metric = METRICS["rr_intervals"]
    return Quantity(tuple(metric.to_canonical(v, q.unit) for q in quantities for v in _as_tuple(q.value)), metric.unit)


def _as_tuple(value: float | tuple[float, ...]) -> tuple[float, ...]:
    return value if isinstance(value, tuple) else (value,)


def _scalar(value: float | tuple[float, ...]) -> float:
    return value[0] if isinstance(value, tuple) else value


def _aware(at: datetime) -> datetime:
    # A naive time is taken as UTC: windows must not shift with the host's zone.
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
