"""Policy for a live oximeter stream: PLX Continuous Measurements arrive about once a second; the cloud
wants one reading per cadence (default a minute), not 1 440 an hour.

A window's reading carries, for SpO2, the lowest value the window *held*: the minimum of a 3-sample
running median over its usable samples. A real dip of three seconds or more survives (a desaturation
is what the stream is watched for); a one-sample artefact does not. Pulse rate and pulse amplitude
index are the window's medians. Usable means the oximeter did not flag the sample as one it does not
stand by (invalid, questionable, unavailable, low perfusion, a displaced or disconnected sensor...);
when no sample is usable the window still becomes a reading, from all its samples and carrying their
flags, so it is stored and shown but never judged. Every window reading is flagged ``averaged``.

Windows are aligned to multiples of the cadence since the Unix epoch (UTC) by the same
:class:`gateway.drivers.cadence_window.CadenceWindow` as heart-rate windows: the start is the reading's
discriminator in its deterministic id.
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime

from gateway.codecs.common import Measurement, Quantity
from gateway.drivers.cadence_window import CadenceWindow

# Sample flags the oximeter raises when it does not stand by the value (PLXS status bits).
UNUSABLE = frozenset({
    "invalid_measurement", "questionable_measurement", "measurement_unavailable", "low_perfusion",
    "sensor_displaced", "sensor_disconnected", "sensor_unconnected_to_user", "equipment_malfunction",
    "sensor_malfunction", "unknown_sensor_connected", "inadequate_signal", "poor_signal", "erratic_signal",
    "non_pulsatile_signal", "signal_processing_irregularity", "calibration_ongoing", "early_estimate",
    "demonstration_data", "testing_data",
})
HELD_SAMPLES = 3
# The codec's units (PLXS sends percent and beats/min only).
_UNITS = {"spo2_pulse_rate": "/min", "pulse_amplitude_index": "%"}


class OximetryWindow(CadenceWindow):
    """Collect continuous measurements; hand back one :func:`aggregate` reading per closed window (one
    per device; see :class:`~gateway.drivers.cadence_window.CadenceWindow` for ``add`` and ``flush``)."""

    def __init__(self, cadence_s: float = 60.0) -> None:
        super().__init__(aggregate, cadence_s)


def held_minimum(values: list[float], held: int = HELD_SAMPLES) -> float:
    """The lowest value sustained over ``held`` consecutive samples (minimum of the running median);
    with fewer samples than that, the plain minimum."""
    if len(values) < held:
        return min(values)
    return min(statistics.median(values[i:i + held]) for i in range(len(values) - held + 1))


def aggregate(samples: list[Measurement], start: datetime, end: datetime) -> Measurement:
    """One reading for a window of continuous samples (see the module docstring for the rule)."""
    usable = [s for s in samples if not UNUSABLE & set(s.flags) and "spo2" in s.values]
    basis = usable or [s for s in samples if s.values]
    values: dict[str, Quantity] = {}
    spo2 = [float(s.values["spo2"].value) for s in basis if "spo2" in s.values]  # type: ignore[arg-type]
    if spo2:
        values["spo2"] = Quantity(held_minimum(spo2), "%")
    for metric in ("spo2_pulse_rate", "pulse_amplitude_index"):
        numbers = [float(s.values[metric].value) for s in basis if metric in s.values]  # type: ignore[arg-type]
        if numbers:
            values[metric] = Quantity(statistics.median(numbers), _UNITS[metric])
    flagged = basis if usable else samples
    flags = list(dict.fromkeys(flag for s in flagged for flag in s.flags))
    if not values and "measurement_unsuccessful" not in flags:
        flags.append("measurement_unsuccessful")
    flags.append("averaged")
    # Keep a real frame for audit: the lowest-SpO2 usable sample's.
    with_spo2 = [s for s in basis if "spo2" in s.values]
    raw = min(with_spo2, key=lambda s: float(s.values["spo2"].value)).raw if with_spo2 else samples[-1].raw  # type: ignore[arg-type]
    return Measurement(
        profile=samples[0].profile,
        kind=samples[0].kind,
        values=values,
        device_time=None,
        flags=tuple(flags),
        raw=raw,
        details={
            "window_start": start.astimezone(UTC).isoformat(),
            "window_end": end.astimezone(UTC).isoformat(),
            "samples": len(samples),
            "usable_samples": len(usable),
        },
    )
