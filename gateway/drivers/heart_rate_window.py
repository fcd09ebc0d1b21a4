"""Policy for live heart rate: notifications arrive at up to 4 Hz; the cloud wants one reading per
cadence (default a minute) carrying the window's median, not a flood.

Windows are aligned to multiples of the cadence since the Unix epoch (UTC) by
:class:`gateway.drivers.cadence_window.CadenceWindow`: the start is the reading's discriminator in its
deterministic id (a window has neither a sequence number nor a device time).
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime

from gateway.codecs.common import Measurement, Quantity
from gateway.drivers.cadence_window import CadenceWindow
from gateway.metrics import METRICS

PROFILE = "ble.heart_rate"


class HeartRateWindow(CadenceWindow):
    """Collect heart-rate measurements; hand back one :func:`aggregate` per closed window (see
    :class:`~gateway.drivers.cadence_window.CadenceWindow` for ``add``, ``flush`` and ``pending``)."""

    def __init__(self, cadence_s: float = 60.0) -> None:
        super().__init__(aggregate, cadence_s)


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
