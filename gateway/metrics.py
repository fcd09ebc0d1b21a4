"""The metric catalogue: kinds, metric names, canonical UCUM units, conversions and LOINC codes.

Names and units are fixed by ``specs/metrics.md``; the wire contract, the database, the API and the
``rpm-gateway decode`` output all use them. Stdlib only, so codecs, the gateway and the cloud can share it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class Kind(StrEnum):
    BLOOD_PRESSURE = "blood_pressure"
    GLUCOSE = "glucose"
    BODY_WEIGHT = "body_weight"
    HEART_RATE = "heart_rate"
    PULSE_OXIMETRY = "pulse_oximetry"
    BODY_TEMPERATURE = "body_temperature"


class UnknownUnitError(ValueError):
    """A device reported a unit the catalogue cannot convert to the metric's canonical unit."""


MMHG_PER_KPA = 7.500615758
MGDL_PER_KGL = 100_000.0
MGDL_PER_MOLL = 18_015.6  # molar mass of glucose 180.156 g/mol
KG_PER_LB = 0.45359237
M_PER_IN = 0.0254
CEL_PER_DEGF = 5 / 9
DEGF_ZERO_AT_CEL_ZERO = 32.0


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: Kind
    unit: str
    """Canonical UCUM unit code."""
    loinc: str | None
    conversions: Mapping[str, float] = field(default_factory=dict)
    """Factor from another UCUM unit code to the canonical unit."""
    limits: tuple[float, float] | None = None
    """Physically possible range: the contract rejects a value outside it as malformed."""
    plausible: tuple[float, float] | None = None
    """What a device can really measure: outside it a value is stored but flagged."""
    is_list: bool = False
    offsets: Mapping[str, float] = field(default_factory=dict)
    """Subtracted from a value in that unit before its factor applies: units whose zero differs
    (degrees Fahrenheit: (F - 32) x 5/9). A unit with a factor and no offset is a plain scale."""

    def to_canonical(self, value: float, unit: str) -> float:
        if unit == self.unit:
            return value
        try:
            return (value - self.offsets.get(unit, 0.0)) * self.conversions[unit]
        except KeyError:
            raise UnknownUnitError(f"{self.name}: cannot convert unit {unit!r} to {self.unit!r}") from None


# How people write the canonical UCUM codes: alert texts, e-mails and pages say "192 mmHg", never
# "192 mm[Hg]" (FHIR keeps the codes and has its own display strings).
HUMAN_UNITS = {"mm[Hg]": "mmHg", "Cel": "°C", "[degF]": "°F", "kg/m2": "kg/m²", "[lb_av]": "lb", "[in_i]": "in",
               "{beats}/min": "/min"}
# Longest first, so "kg/m2" is replaced before a shorter code inside it could be.
_UCUM_IN_TEXT = re.compile("|".join(re.escape(code) for code in sorted(HUMAN_UNITS, key=len, reverse=True)))


def human_unit(code: str) -> str:
    """The unit as a person writes it (``mm[Hg]`` -> ``mmHg``, ``Cel`` -> ``°C``); other codes as they are."""
    return HUMAN_UNITS.get(code, code)


def humanise_units(text: str) -> str:
    """Free text (an alert message stored before units were written the human way) with UCUM codes replaced."""
    return _UCUM_IN_TEXT.sub(lambda match: HUMAN_UNITS[match.group(0)], text)


_PRESSURE = {"kPa": MMHG_PER_KPA}
_CATALOGUE = [
    Metric("systolic", Kind.BLOOD_PRESSURE, "mm[Hg]", "8480-6", _PRESSURE, (0, 400), (40, 300)),
    Metric("diastolic", Kind.BLOOD_PRESSURE, "mm[Hg]", "8462-4", _PRESSURE, (0, 300), (20, 200)),
    Metric("mean_arterial", Kind.BLOOD_PRESSURE, "mm[Hg]", "8478-0", _PRESSURE, (0, 350), (25, 250)),
    Metric("pulse_rate", Kind.BLOOD_PRESSURE, "/min", "8867-4", {}, (0, 400), (20, 250)),
    Metric(
        "glucose", Kind.GLUCOSE, "mg/dL", "41653-7",
        {"kg/L": MGDL_PER_KGL, "mol/L": MGDL_PER_MOLL, "mmol/L": MGDL_PER_MOLL / 1000},
        (0, 1000), (10, 600),
    ),
    Metric("body_weight", Kind.BODY_WEIGHT, "kg", "29463-7", {"[lb_av]": KG_PER_LB}, (0, 700), (0.5, 400)),
    Metric("bmi", Kind.BODY_WEIGHT, "kg/m2", "39156-5", {}, (0, 250), (8, 120)),
    Metric("height", Kind.BODY_WEIGHT, "m", "8302-2", {"[in_i]": M_PER_IN, "cm": 0.01}, (0, 3), (0.3, 2.5)),
    Metric("heart_rate", Kind.HEART_RATE, "/min", "8867-4", {}, (0, 400), (20, 250)),
    Metric("rr_intervals", Kind.HEART_RATE, "s", None, {"s/1024": 1 / 1024, "ms": 0.001}, (0, 64), None,
           is_list=True),
    Metric("energy_expended", Kind.HEART_RATE, "kJ", None, {}, (0, 65535), None),
    Metric("spo2", Kind.PULSE_OXIMETRY, "%", "59408-5", {}, (0, 100), (50, 100)),
    Metric("spo2_pulse_rate", Kind.PULSE_OXIMETRY, "/min", "8889-8", {}, (0, 400), (20, 250)),
    Metric("pulse_amplitude_index", Kind.PULSE_OXIMETRY, "%", None, {}, (0, 100), (0.01, 30)),
    # Limits wide enough for any thermometer's range, narrow enough that a Fahrenheit number sent with
    # the Celsius unit flag (98.6 "Cel") is refused rather than stored as a fever of 98 degrees.
    Metric("body_temperature", Kind.BODY_TEMPERATURE, "Cel", "8310-5", {"[degF]": CEL_PER_DEGF}, (-10, 60),
           (25, 45), offsets={"[degF]": DEGF_ZERO_AT_CEL_ZERO}),
]

METRICS: Mapping[str, Metric] = MappingProxyType({m.name: m for m in _CATALOGUE})
METRICS_BY_KIND: Mapping[Kind, tuple[Metric, ...]] = MappingProxyType(
    {k: tuple(m for m in _CATALOGUE if m.kind is k) for k in Kind}
)

# LOINC codes beyond the per-metric ones, for the FHIR mapping.
LOINC_BP_PANEL = "85354-9"
LOINC_GLUCOSE_BLOOD_MASS = "2339-0"
LOINC_GLUCOSE_CAPILLARY_MASS = "41653-7"
# FHIR vital-signs oxygen saturation; an SpO2 Observation carries it beside 59408-5 (by pulse oximetry).
LOINC_OXYGEN_SATURATION = "2708-6"
# IEEE 11073 MDC codes the HL7 Personal Health Device IG asks for beside LOINC.
MDC_CODES: Mapping[str, int] = MappingProxyType(
    {"blood_pressure": 150020, "systolic": 150021, "diastolic": 150022, "mean_arterial": 150023,
     # MDC_PULS_OXIM_SAT_O2, MDC_PULS_OXIM_PULS_RATE, MDC_PULS_OXIM_PERF_REL, MDC_TEMP_BODY.
     "spo2": 150456, "spo2_pulse_rate": 149530, "pulse_amplitude_index": 150448, "body_temperature": 150364}
)

# Device status flags (fixed names, specs/metrics.md).
BP_FLAGS = (
    "body_movement", "cuff_too_loose", "irregular_pulse", "pulse_rate_above_range",
    "pulse_rate_below_range", "improper_position",
)
GLUCOSE_FLAGS = (
    "device_battery_low", "sensor_malfunction", "sample_size_insufficient", "strip_insertion_error",
    "strip_type_incorrect", "result_above_range", "result_below_range", "temperature_too_high",
    "temperature_too_low", "strip_pulled_too_soon", "device_fault", "time_fault",
)
# PLXS measurement status (bits 5-15) and device and sensor status (bits 1-15) that qualify a value;
# provenance bits (validated, fully qualified, from storage, display update) stay in a record's details.
PULSE_OXIMETRY_FLAGS = (
    "measurement_ongoing", "early_estimate", "demonstration_data", "testing_data", "calibration_ongoing",
    "measurement_unavailable", "questionable_measurement", "invalid_measurement",
    "equipment_malfunction", "signal_processing_irregularity", "inadequate_signal", "poor_signal",
    "low_perfusion", "erratic_signal", "non_pulsatile_signal", "questionable_pulse", "signal_analysis_ongoing",
    "sensor_interference", "sensor_unconnected_to_user", "unknown_sensor_connected", "sensor_displaced",
    "sensor_malfunction", "sensor_disconnected",
)
THERMOMETER_FLAGS = ("intermediate",)
"""An Intermediate Temperature (0x2A1E) decodes with this flag and never becomes a reading."""
OTHER_FLAGS = (
    "sensor_contact_lost", "measurement_unsuccessful", "clock_unset", "control_solution",
    "out_of_plausible_range", "unstable", "averaged",
)
FLAGS: frozenset[str] = frozenset(BP_FLAGS + GLUCOSE_FLAGS + PULSE_OXIMETRY_FLAGS + THERMOMETER_FLAGS + OTHER_FLAGS)
EXCLUDED_FLAGS: frozenset[str] = frozenset({
    "measurement_unsuccessful", "control_solution",
    # Pulse oximetry (specs/clinical-thresholds.md): stored and shown, never judged, never a trend point.
    "invalid_measurement", "measurement_unavailable", "low_perfusion", "sensor_displaced", "sensor_disconnected",
    "sensor_unconnected_to_user", "demonstration_data", "testing_data",
    "intermediate",  # a thermometer's value on its way; the gateway never sends one, the cloud never judges one
})
"""A reading with one of these is not a patient value (no value, a control-solution sample, demonstration
or test data, or a value its own device disowns): the cloud stores it but never judges it, trends it or
counts it toward a baseline."""
assert EXCLUDED_FLAGS <= FLAGS


def metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None
