"""Live samples gathered into one reading per cadence: the windowing that heart-rate and oximetry
streams share (what a window's reading holds is theirs: ``gateway.drivers.heart_rate_window``,
``gateway.drivers.oximetry_window``).

Windows are aligned to multiples of the cadence since the Unix epoch (UTC), so a window's start is
the same whichever gateway process saw it: the start is the reading's discriminator in its
deterministic id (a window has neither a sequence number nor a device time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.codecs.common import Measurement

Aggregate = Callable[[list[Measurement], datetime, datetime], Measurement]
"""``aggregate(samples, start, end)``: one reading for a window's samples (never empty)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class _Window:
    start: datetime
    end: datetime
    samples: list[Measurement] = field(default_factory=list)


class CadenceWindow:
    """Collect live measurements; hand back one aggregate per closed window.

    ``add`` returns the aggregate of the previous window when a sample falls past its end;
    ``flush`` closes the open window (at the end of a session). Not thread-safe: one per device.
    """

    def __init__(self, aggregate: Aggregate, cadence_s: float = 60.0) -> None:
        if cadence_s <= 0:
            raise ValueError("cadence_s must be > 0")
        self.cadence = timedelta(seconds=cadence_s)
        self._aggregate = aggregate
        self._window: _Window | None = None

    def add(self, measurement: Measurement, at: datetime) -> Measurement | None:
        """Add one live measurement received at ``at``; return the closed window's aggregate, if any."""
        at = _aware(at)
        closed = None
        if self._window is not None and at >= self._window.end:
            closed = self._close(self._window, self._window.end)
            self._window = None
        if self._window is None:
            start = _EPOCH + ((at - _EPOCH) // self.cadence) * self.cadence
            self._window = _Window(start=start, end=start + self.cadence)
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
        return self._aggregate(window.samples, window.start, end)


def _aware(at: datetime) -> datetime:
    # A naive time is taken as UTC: windows must not shift with the host's zone.
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
