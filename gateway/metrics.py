"""The metric catalogue: kinds, metric names, canonical UCUM units, conversions and LOINC codes.

Names and units are fixed by ``specs/metrics.md``; the wire contract, the database, the API and the
``rpm-gateway decode`` output all use them. Stdlib only, so codecs, the gateway and the cloud can share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class Kind(StrEnum):
    BLOOD_PRESSURE = "blood_pressure"
    GLUCOSE = "glucose"
    BODY_WEIGHT = "body_weight"
    HEART_RATE = "heart_rate"


class UnknownUnitError(ValueError):
    """A device reported a unit the catalogue cannot convert to the metric's canonical unit."""


MMHG_PER_KPA = 7.500615758
MGDL_PER_KGL = 100_000.0
MGDL_PER_MOLL = 18_015.6  # molar mass of glucose 180.156 g/mol
KG_PER_LB = 0.45359237
M_PER_IN = 0.0254


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

    def to_canonical(self, value: float, unit: str) -> float:
        if unit == self.unit:
            return value
        try:
            return value * self.conversions[unit]
        except KeyError:
            raise UnknownUnitError(f"{self.name}: cannot convert unit {unit!r} to {self.unit!r}") from None


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
]

METRICS: Mapping[str, Metric] = MappingProxyType({m.name: m for m in _CATALOGUE})
METRICS_BY_KIND: Mapping[Kind, tuple[Metric, ...]] = MappingProxyType(
    {k: tuple(m for m in _CATALOGUE if m.kind is k) for k in Kind}
)

# LOINC codes beyond the per-metric ones, for the FHIR mapping.
LOINC_BP_PANEL = "85354-9"
LOINC_GLUCOSE_BLOOD_MASS = "2339-0"
LOINC_GLUCOSE_CAPILLARY_MASS = "41653-7"
# IEEE 11073 MDC codes the HL7 Personal Health Device IG asks for beside LOINC.
MDC_CODES: Mapping[str, int] = MappingProxyType(
    {"blood_pressure": 150020, "systolic": 150021, "diastolic": 150022, "mean_arterial": 150023}
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
OTHER_FLAGS = (
    "sensor_contact_lost", "measurement_unsuccessful", "clock_unset", "control_solution",
    "out_of_plausible_range", "unstable", "averaged",
)
FLAGS: frozenset[str] = frozenset(BP_FLAGS + GLUCOSE_FLAGS + OTHER_FLAGS)


def metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None
