"""The alert state machine in the database: open once, update while the condition holds, resolve with
hysteresis, re-open within the suppression window as the same episode.

At most one not-yet-resolved alert per patient and rule is a database guarantee (the partial unique
index ``alerts_one_open_per_rule``): opening is ``INSERT .. ON CONFLICT DO NOTHING``, and a worker
that loses the race updates the winner's alert instead of opening a second one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cloud.alerts import queries
from cloud.alerts.evaluate import ReadingFacts, Verdict
from cloud.alerts.rules import SEVERITIES
from cloud.db.alert_rules import Rule

SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class Change:
    """One change to an alert, to be told to the twin, MQTT and webhooks."""

    alert: dict[str, Any]
    status: str
    """Contract status: ``open``, ``updated``, ``acknowledged`` or ``resolved``."""
    event: str
    """``opened``, ``reopened``, ``updated``, ``acknowledged``, ``resolved`` or ``reviewed``."""
    actor: str = SYSTEM


def _worse(a: str, b: str) -> str:
    return a if SEVERITIES.index(a) >= SEVERITIES.index(b) else b


class AlertBook:
    """The alerts of a set of patients during one transaction (rows locked as they are touched)."""

    def __init__(self, conn: Any, patient_ids: Sequence[str], now: datetime,
                 max_suppression: timedelta = timedelta(days=1)) -> None:
        self.conn = conn
        self.now = now
        self.open: dict[tuple[str, str], dict[str, Any]] = {
            (row["patient_id"], row["rule_id"]): row for row in queries.lock_open_alerts(conn, list(patient_ids))
        }
        self._recent: dict[tuple[str, str], dict[str, Any]] | None = None
        self._patient_ids = list(patient_ids)
        self._max_suppression = max_suppression
        self.changes: list[Change] = []

    def _recently_resolved(self, patient_id: str, rule_id: str) -> dict[str, Any] | None:
        if self._recent is None:
            self._recent = {
                (row["patient_id"], row["rule_id"]): row
                for row in queries.recently_resolved(self.conn, self._patient_ids, self.now - self._max_suppression)
            }
        return self._recent.get((patient_id, rule_id))

    def _event(self, alert_id: int, event: str, actor: str, reading_id: str | None, detail: dict) -> None:
        queries.insert_event(self.conn, alert_id, self.now, event, actor, reading_id, Jsonb(detail))

    # --- transitions -------------------------------------------------------------------------------

    def on_verdict(self, rule: Rule, facts: ReadingFacts, verdict: Verdict) -> Change | None:
        if verdict.outcome == "trigger":
            return self.trigger(rule, facts.patient_id, message=verdict.message, metric=verdict.metric,
                                value=verdict.value, reading_id=facts.reading_id, measured_at=facts.measured_at,
                                late=facts.late, flags=list(facts.flags), detail=dict(verdict.detail))
        alert = self.open.get((facts.patient_id, rule.id))
        if alert is None:
            return None
        # A reading older than the one that last triggered (a late download) never resolves it.
        if alert["measured_at"] is not None and facts.measured_at <= alert["measured_at"]:
            return None
        if verdict.outcome == "hold":
            if alert["normal_streak"]:
                alert.update(queries.set_streak(self.conn, alert["id"], 0, self.now))
            return None
        streak = alert["normal_streak"] + 1
        if rule.rule_type == "missing_data" or streak >= rule.resolve_after:
            return self.resolve(alert, SYSTEM, reading_id=facts.reading_id,
                                detail={"value": verdict.value, "metric": verdict.metric, "normal_readings": streak})
        alert.update(queries.set_streak(self.conn, alert["id"], streak, self.now))
        return None

    def trigger(self, rule: Rule, patient_id: str, *, message: str, metric: str | None, value: float | None,
                reading_id: str | None, measured_at: datetime | None, late: bool, flags: list[str],
                detail: dict | None = None) -> Change:
        key = (patient_id, rule.id)
        fields = {"severity": rule.severity, "message": message, "metric": metric, "value": value,
                  "reading_id": reading_id, "measured_at": measured_at, "late": late, "flags": flags}
        alert = self.open.get(key)
        if alert is None:
            change = self._reopen(rule, patient_id, fields) or self._insert(rule, patient_id, fields)
            if change is not None:
                self.open[key] = change.alert
                self.changes.append(change)
                return change
            # Another worker opened it first (we waited on its commit): update that alert instead.
            alert = queries.lock_open_alert(self.conn, patient_id, rule.id)
            self.open[key] = alert
        newer = alert["measured_at"] is None or measured_at is None or measured_at >= alert["measured_at"]
        if newer:
            fields["severity"] = _worse(alert["severity"], rule.severity)
            row = queries.update_triggered(self.conn, alert["id"], fields, self.now)
        else:
            row = queries.count_trigger(self.conn, alert["id"], self.now)
        self.open[key] = row
        self._event(row["id"], "updated", SYSTEM, reading_id,
                    {"value": value, "metric": metric, "late": late, **(detail or {})})
        change = Change(row, "updated", "updated")
        self.changes.append(change)
        return change

    def _insert(self, rule: Rule, patient_id: str, fields: dict[str, Any]) -> Change | None:
        row = queries.insert_alert(self.conn, patient_id, rule.id, fields, self.now)
        if row is None:
            return None
        self._event(row["id"], "opened", SYSTEM, fields["reading_id"],
                    {"value": fields["value"], "metric": fields["metric"], "late": fields["late"]})
        return Change(row, "open", "opened")

    def _reopen(self, rule: Rule, patient_id: str, fields: dict[str, Any]) -> Change | None:
        recent = self._recently_resolved(patient_id, rule.id)
        if recent is None or recent["resolved_at"] < self.now - timedelta(minutes=rule.suppression_minutes):
            return None
        try:
            with self.conn.transaction():
                row = queries.reopen_alert(self.conn, recent["id"], fields, self.now)
        except psycopg.errors.UniqueViolation:
            return None  # a new alert of this rule was opened meanwhile: take the normal path
        if row is None:
            return None
        self._recent.pop((patient_id, rule.id), None)  # type: ignore[union-attr]
        self._event(row["id"], "reopened", SYSTEM, fields["reading_id"],
                    {"value": fields["value"], "metric": fields["metric"], "late": fields["late"]})
        return Change(row, "open", "reopened")

    def resolve(self, alert: dict[str, Any], actor: str, *, reading_id: str | None = None,
                detail: dict | None = None) -> Change:
        row = queries.resolve_alert(self.conn, alert["id"], actor, self.now, reviewed=actor != SYSTEM)
        self.open.pop((row["patient_id"], row["rule_id"]), None)
        self._event(row["id"], "resolved", actor, reading_id, detail or {})
        change = Change(row, "resolved", "resolved", actor)
        self.changes.append(change)
        return change
