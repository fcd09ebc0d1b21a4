"""Pure evaluation: what one rule says about one reading, given the patient's recent history.

A :class:`Verdict` is ``trigger`` (the condition holds), ``clear`` (back past the threshold by the
rule's margin: counts toward resolving), or ``hold`` (neither: in the hysteresis band, changes
nothing). ``None`` means the rule does not apply (another kind, a metric the reading lacks, a
baseline without enough data). Defaults and their sources: specs/clinical-thresholds.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from cloud.db.alert_rules import Condition, Rule
from cloud.twin.baselines import EMPTY, Baseline, History, compute_baseline
from gateway.metrics import METRICS, human_unit

QUALITY_FLAGS = ("irregular_pulse", "cuff_too_loose", "body_movement", "improper_position",
                 "questionable_measurement")
"""Flags that keep a reading (and its alert) but must be said in the alert: they question the value."""


@dataclass(frozen=True, slots=True)
class ReadingFacts:
    reading_id: str
    patient_id: str
    kind: str
    measured_at: datetime
    values: Mapping[str, float]
    flags: tuple[str, ...] = ()
    late: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str  # "trigger" | "clear" | "hold"
    metric: str | None = None
    value: float | None = None
    message: str = ""
    detail: Mapping[str, float] = field(default_factory=dict)


def _fmt(metric: str, value: float) -> str:
    unit = human_unit(METRICS[metric].unit) if metric in METRICS else ""
    return f"{value:.4g} {unit}".strip()


def flag_note(flags: tuple[str, ...]) -> str:
    said = [f.replace("_", " ") for f in flags if f in QUALITY_FLAGS]
    return f" (reading flagged: {', '.join(said)})" if said else ""


def _judge(rule: Rule, judged: list[tuple[Condition, float]], describe: str) -> Verdict | None:
    if not judged:
        return None
    prefix = f"{describe} " if describe else ""
    for condition, value in judged:
        if condition.triggered(value):
            return Verdict("trigger", condition.metric, value,
                           f"{rule.description}: {prefix}{condition.metric} {_fmt(condition.metric, value)}"
                           f" ({condition.describe()})")
    if all(condition.clear(value, rule.margin) for condition, value in judged):
        condition, value = judged[0]
        return Verdict("clear", condition.metric, value)
    return Verdict("hold", judged[0][0].metric, judged[0][1])


def _threshold(rule: Rule, facts: ReadingFacts) -> Verdict | None:
    judged = [(c, facts.values[c.metric]) for c in rule.conditions if c.metric in facts.values]
    return _judge(rule, judged, "")


def _average(rule: Rule, facts: ReadingFacts, history: History) -> Verdict | None:
    days = float(rule.params.get("window_days", 7))
    min_readings = int(rule.params.get("min_readings", 4))
    judged: list[tuple[Condition, float]] = []
    for condition in rule.conditions:
        if condition.metric not in facts.values:
            continue
        values = history.get((facts.patient_id, condition.metric), EMPTY).window(
            facts.measured_at - timedelta(days=days), facts.measured_at)
        if len(values) < min_readings:
            return None
        judged.append((condition, float(np.mean(values))))
    return _judge(rule, judged, f"{days:g}-day average")


def _rate(rule: Rule, facts: ReadingFacts, history: History) -> Verdict | None:
    condition = rule.conditions[0]
    if condition.metric not in facts.values:
        return None
    hours = float(rule.params.get("window_hours", 24))
    earlier = history.get((facts.patient_id, condition.metric), EMPTY).window(
        facts.measured_at - timedelta(hours=hours), facts.measured_at, include_end=False, exclude=facts.reading_id)
    if not len(earlier):
        return None
    lowest = float(earlier.min())
    gain = facts.values[condition.metric] - lowest
    if condition.triggered(gain):
        return Verdict(
            "trigger", condition.metric, facts.values[condition.metric],
            f"{rule.description}: {condition.metric} {_fmt(condition.metric, facts.values[condition.metric])},"
            f" up {gain:.2f} from {_fmt(condition.metric, lowest)} within {hours:g} h",
            {"gain": round(gain, 3), "from": lowest},
        )
    if condition.clear(gain, rule.margin):
        return Verdict("clear", condition.metric, facts.values[condition.metric])
    return Verdict("hold", condition.metric, facts.values[condition.metric])


def _baseline(rule: Rule, facts: ReadingFacts, history: History) -> Verdict | None:
    condition = rule.conditions[0]
    if condition.metric not in facts.values:
        return None
    baseline = compute_baseline(
        history.get((facts.patient_id, condition.metric), EMPTY), facts.measured_at,
        window_days=int(rule.params.get("window_days", 30)), min_days=int(rule.params.get("min_days", 14)),
        min_readings=int(rule.params.get("min_readings", 14)), exclude_reading=facts.reading_id,
    )
    if baseline is None:
        return None  # not enough of the patient's own data yet
    value = facts.values[condition.metric]
    if rule.params.get("measure") == "drop_below_median":
        return _drop_below_baseline(rule, condition, value, baseline)
    z = baseline.robust_z(value, float(rule.params.get("min_scale", 0)))
    detail = {"z": round(z, 2), "median": baseline.median, "mad": baseline.mad, "n": baseline.n}
    if condition.triggered(z):
        return Verdict(
            "trigger", condition.metric, value,
            f"{rule.description}: {condition.metric} {_fmt(condition.metric, value)} vs own median"
            f" {_fmt(condition.metric, baseline.median)} over {baseline.n} readings (z = {z:+.1f})",
            detail,
        )
    return Verdict("clear" if condition.clear(z, rule.margin) else "hold", condition.metric, value, "", detail)


def _drop_below_baseline(rule: Rule, condition: Condition, value: float, baseline: Baseline) -> Verdict:
    # SpO2 (specs/clinical-thresholds.md): "a drop of >= 4 points below the patient's own 7-day baseline"
    # is judged in points, not in z: an oximeter's MAD is often 0-1 point, so a z would fire on noise.
    drop = baseline.median - value
    detail = {"drop": round(drop, 2), "median": baseline.median, "n": baseline.n}
    if condition.triggered(drop):
        return Verdict(
            "trigger", condition.metric, value,
            f"{rule.description}: {condition.metric} {_fmt(condition.metric, value)}, {drop:.3g} below own median"
            f" {_fmt(condition.metric, baseline.median)} over {baseline.n} readings",
            detail,
        )
    return Verdict("clear" if condition.clear(drop, rule.margin) else "hold", condition.metric, value, "", detail)


def _missing_data_cleared(rule: Rule, facts: ReadingFacts, now: datetime) -> Verdict | None:
    # A reading of the expected kind ends the gap, unless it was itself measured long ago.
    if now - facts.measured_at < timedelta(hours=float(rule.params.get("hours", 48))):
        return Verdict("clear")
    return None


def evaluate(rule: Rule, facts: ReadingFacts, history: History, now: datetime) -> Verdict | None:
    """What ``rule`` says about this reading (``history`` holds the patient's values, this reading included)."""
    if not rule.enabled or rule.reading_kind != facts.kind:
        return None
    if rule.rule_type == "threshold":
        return _threshold(rule, facts)
    if rule.rule_type == "average":
        return _average(rule, facts, history)
    if rule.rule_type == "rate":
        return _rate(rule, facts, history)
    if rule.rule_type == "baseline":
        return _baseline(rule, facts, history)
    if rule.rule_type == "missing_data":
        return _missing_data_cleared(rule, facts, now)
    return None


def history_window(rule: Rule) -> timedelta:
    """How far back before a reading this rule looks."""
    if rule.rule_type == "rate":
        return timedelta(hours=float(rule.params.get("window_hours", 24)))
    if rule.rule_type in ("average", "baseline"):
        return timedelta(days=float(rule.params.get("window_days", 30)))
    return timedelta(0)
