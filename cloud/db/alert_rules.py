"""Alert rules as typed rows: the catalogue (table ``alert_rules``, seeded from
specs/clinical-thresholds.md), per-patient overrides (``alert_rule_overrides``), and the two merged
into the rules in force for a patient.

Below the alerts and the twin so both read the rules by a plain import: the alerts evaluate them,
the twin shows the thresholds in force beside its state. Validating and storing an override is the
alerts' (``cloud.alerts.rules``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from psycopg.rows import dict_row

from gateway.metrics import METRICS, human_unit


@dataclass(frozen=True, slots=True)
class Condition:
    metric: str
    op: str
    value: float

    def triggered(self, x: float) -> bool:
        if self.op == ">=":
            return x >= self.value
        if self.op == ">":
            return x > self.value
        if self.op == "<=":
            return x <= self.value
        if self.op == "<":
            return x < self.value
        return abs(x) >= self.value  # abs>=

    def clear(self, x: float, margin: float) -> bool:
        """Back past the threshold by ``margin``: the hysteresis that keeps an alert from flapping."""
        if self.op in (">=", ">"):
            return x < self.value - margin
        if self.op in ("<=", "<"):
            return x > self.value + margin
        return abs(x) < self.value - margin

    def describe(self) -> str:
        unit = human_unit(METRICS[self.metric].unit) if self.metric in METRICS else ""
        op = "|z| >=" if self.op == "abs>=" else self.op
        return f"{self.metric} {op} {self.value:g}" + (f" {unit}" if unit and self.op != "abs>=" else "")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    rule_type: str
    reading_kind: str
    conditions: tuple[Condition, ...]
    params: Mapping[str, Any]
    severity: str
    margin: float
    resolve_after: int
    suppression_minutes: int
    enabled: bool
    description: str
    source: str
    overridden: bool = False
    override_note: str | None = field(default=None)

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(c.metric for c in self.conditions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule_type": self.rule_type,
            "reading_kind": self.reading_kind,
            "conditions": [{"metric": c.metric, "op": c.op, "value": c.value} for c in self.conditions],
            "params": dict(self.params),
            "severity": self.severity,
            "margin": self.margin,
            "resolve_after": self.resolve_after,
            "suppression_minutes": self.suppression_minutes,
            "enabled": self.enabled,
            "description": self.description,
            "source": self.source,
            "overridden": self.overridden,
            "override_note": self.override_note,
        }


def _conditions(raw: Sequence[Mapping[str, Any]]) -> tuple[Condition, ...]:
    return tuple(Condition(c["metric"], c["op"], float(c["value"])) for c in raw)


def _rule(row: Mapping[str, Any]) -> Rule:
    return Rule(
        id=row["id"], rule_type=row["rule_type"], reading_kind=row["reading_kind"],
        conditions=_conditions(row["conditions"]), params=dict(row["params"]), severity=row["severity"],
        margin=row["margin"], resolve_after=row["resolve_after"], suppression_minutes=row["suppression_minutes"],
        enabled=row["enabled"], description=row["description"], source=row["source"],
    )


def apply_override(rule: Rule, override: Mapping[str, Any]) -> Rule:
    """The rule with a care team's override: condition values replaced metric by metric, params merged."""
    conditions = rule.conditions
    if override.get("conditions"):
        by_metric = {c["metric"]: float(c["value"]) for c in override["conditions"]}
        conditions = tuple(replace(c, value=by_metric.get(c.metric, c.value)) for c in rule.conditions)
    return replace(
        rule,
        conditions=conditions,
        params={**rule.params, **(override.get("params") or {})},
        severity=override.get("severity") or rule.severity,
        margin=rule.margin if override.get("margin") is None else override["margin"],
        resolve_after=override.get("resolve_after") or rule.resolve_after,
        enabled=rule.enabled if override.get("enabled") is None else override["enabled"],
        overridden=True,
        override_note=override.get("note"),
    )


def catalogue(conn: Any) -> dict[str, Rule]:
    with conn.cursor(row_factory=dict_row) as cur:
        return {row["id"]: _rule(row) for row in cur.execute("SELECT * FROM alert_rules ORDER BY id")}


def overrides(conn: Any, patient_ids: Sequence[str]) -> dict[str, dict[str, Mapping[str, Any]]]:
    found: dict[str, dict[str, Mapping[str, Any]]] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute("SELECT * FROM alert_rule_overrides WHERE patient_id = ANY(%s)", (list(patient_ids),)):
            found.setdefault(row["patient_id"], {})[row["rule_id"]] = row
    return found


def rules_for_patients(conn: Any, patient_ids: Sequence[str]) -> dict[str, list[Rule]]:
    """Every rule (enabled or not) as in force for each patient, in one pair of queries."""
    base = catalogue(conn)
    by_patient = overrides(conn, patient_ids)
    result: dict[str, list[Rule]] = {}
    for patient_id in patient_ids:
        mine = by_patient.get(patient_id, {})
        result[patient_id] = [apply_override(rule, mine[rule_id]) if rule_id in mine else rule
                              for rule_id, rule in base.items()]
    return result


def effective_rules(conn: Any, patient_id: str) -> list[Rule]:
    return rules_for_patients(conn, [patient_id])[patient_id]
