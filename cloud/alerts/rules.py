"""Per-patient overrides of the rule catalogue: validated against the rule they change, stored in
``alert_rule_overrides``, removed. The catalogue and the rules in force (overrides applied) are typed
rows in ``cloud.db.alert_rules``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Jsonb

from cloud.alerts import InvalidOverride, RuleNotFound
from cloud.db.alert_rules import Rule, catalogue, effective_rules, overrides
from gateway.metrics import METRICS

OPS = (">=", ">", "<=", "<", "abs>=")
SEVERITIES = ("info", "warning", "critical")


def validate_override(rule: Rule, *, enabled: bool | None, thresholds: Mapping[str, float] | None,
                      severity: str | None, params: Mapping[str, Any] | None, margin: float | None,
                      resolve_after: int | None) -> None:
    if thresholds:
        unknown = sorted(set(thresholds) - set(rule.metrics))
        if unknown:
            raise InvalidOverride(f"rule {rule.id} has no threshold for {unknown}; it has {list(rule.metrics)}")
        for metric, value in thresholds.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise InvalidOverride(f"rule {rule.id}: threshold for {metric} must be a finite number")
            limits = METRICS[metric].limits if metric in METRICS and rule.rule_type != "baseline" else None
            if limits and not limits[0] <= value <= limits[1]:
                raise InvalidOverride(f"rule {rule.id}: {metric} threshold {value} is outside {limits}")
    if severity is not None and severity not in SEVERITIES:
        raise InvalidOverride(f"severity must be one of {SEVERITIES}")
    if params:
        unknown = sorted(set(params) - set(rule.params))
        if unknown:
            raise InvalidOverride(f"rule {rule.id} has no setting {unknown}; it has {sorted(rule.params)}")
        for key, value in params.items():
            if isinstance(rule.params[key], int | float) and (
                not isinstance(value, int | float) or isinstance(value, bool) or value <= 0
            ):
                raise InvalidOverride(f"rule {rule.id}: {key} must be a positive number")
    if margin is not None and (not math.isfinite(margin) or margin < 0):
        raise InvalidOverride("margin must be a finite number >= 0")
    if resolve_after is not None and resolve_after < 1:
        raise InvalidOverride("resolve_after must be >= 1")
    del enabled  # any boolean is fine


def store_override(conn: Any, patient_id: str, rule_id: str, *, enabled: bool | None,
                   thresholds: Mapping[str, float] | None, severity: str | None,
                   params: Mapping[str, Any] | None, margin: float | None, resolve_after: int | None,
                   note: str | None, by: str) -> Rule:
    base = catalogue(conn).get(rule_id)
    if base is None:
        raise RuleNotFound(rule_id)
    validate_override(base, enabled=enabled, thresholds=thresholds, severity=severity, params=params,
                      margin=margin, resolve_after=resolve_after)
    existing = overrides(conn, [patient_id]).get(patient_id, {}).get(rule_id) or {}
    merged = {c["metric"]: c["value"] for c in existing.get("conditions") or ()}
    merged.update({m: float(v) for m, v in (thresholds or {}).items()})
    conditions = [{"metric": m, "value": v} for m, v in sorted(merged.items())] or None
    conn.execute(
        """
        INSERT INTO alert_rule_overrides (patient_id, rule_id, enabled, conditions, params, severity, margin,
                                          resolve_after, note, set_by, set_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
        ON CONFLICT (patient_id, rule_id) DO UPDATE SET
            enabled = COALESCE(EXCLUDED.enabled, alert_rule_overrides.enabled),
            conditions = COALESCE(EXCLUDED.conditions, alert_rule_overrides.conditions),
            params = COALESCE(alert_rule_overrides.params, '{}'::jsonb) || COALESCE(EXCLUDED.params, '{}'::jsonb),
            severity = COALESCE(EXCLUDED.severity, alert_rule_overrides.severity),
            margin = COALESCE(EXCLUDED.margin, alert_rule_overrides.margin),
            resolve_after = COALESCE(EXCLUDED.resolve_after, alert_rule_overrides.resolve_after),
            note = COALESCE(EXCLUDED.note, alert_rule_overrides.note),
            set_by = EXCLUDED.set_by, set_at = now()
        """,
        (patient_id, rule_id, enabled, Jsonb(conditions) if conditions else None,
         Jsonb(dict(params)) if params else None, severity, margin, resolve_after, note, by),
    )
    return next(r for r in effective_rules(conn, patient_id) if r.id == rule_id)


def delete_override(conn: Any, patient_id: str, rule_id: str) -> Rule:
    base = catalogue(conn).get(rule_id)
    if base is None:
        raise RuleNotFound(rule_id)
    conn.execute("DELETE FROM alert_rule_overrides WHERE patient_id = %s AND rule_id = %s", (patient_id, rule_id))
    return base
