"""The rules evaluated on newly stored readings, in the transaction that stored them.

Readings are taken per patient in time order. ``measurement_unsuccessful`` (no value) and
``control_solution`` (not a patient sample) readings fire nothing; readings with quality flags
(``irregular_pulse``, ``cuff_too_loose``, ``body_movement``) are judged and the alert says so; a late
reading is judged, its alert is marked late (and is not paged to webhooks as if it were now).

In ingest, ``cloud.effects.apply_new_readings`` plans the evaluation (:func:`plan_evaluation`: the rules
in force and the history they need), reads one history for the twin and the alerts, then runs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from cloud.alerts.delivery import Notification, record_changes
from cloud.alerts.evaluate import ReadingFacts, evaluate, flag_note, history_window
from cloud.alerts.lifecycle import AlertBook
from cloud.db import alert_rules
from cloud.db.alert_rules import Rule
from cloud.db.readings import StoredReading
from cloud.twin import baselines
from gateway.metrics import EXCLUDED_FLAGS


def facts_of(item: StoredReading) -> ReadingFacts | None:
    reading = item.reading
    if not item.patient_id or EXCLUDED_FLAGS & set(reading.flags):
        return None
    values = {name: float(v.value) for name, v in reading.values.items() if not isinstance(v.value, list)}
    if not values:
        return None
    return ReadingFacts(
        reading.id, item.patient_id, str(reading.kind), reading.measured_at, values, tuple(reading.flags), item.late
    )


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The readings to judge per patient and the rules in force for those patients."""

    by_patient: Mapping[str, Sequence[ReadingFacts]]
    in_force: Mapping[str, Sequence[Rule]]

    def history_window(self) -> baselines.HistoryWindow | None:
        """All the history these readings need (rate, average and baseline rules); None: none."""
        lookback = max(
            (history_window(r) for rs in self.in_force.values() for r in rs if r.enabled), default=timedelta(0)
        )
        metrics = {
            c.metric
            for rs in self.in_force.values()
            for r in rs
            if r.enabled and r.rule_type in ("rate", "average", "baseline")
            for c in r.conditions
        }
        # Rules judge a reading's own metrics.
        metrics &= {m for fs in self.by_patient.values() for f in fs for m in f.values}
        if not metrics:
            return None
        every = [f for fs in self.by_patient.values() for f in fs]
        return baselines.HistoryWindow(
            frozenset(self.by_patient),
            frozenset(metrics),
            min(f.measured_at for f in every) - lookback,
            max(f.measured_at for f in every),
        )

    def run(
        self, conn: Any, history: baselines.History, now: datetime, *, mqtt_via_outbox: bool = False
    ) -> list[Notification]:
        """Judge every reading by every rule in force; return the MQTT messages to publish after commit.

        ``history`` covers at least :meth:`history_window`. Lock order is twin rows, then alert rows
        (as in ``cloud.alerts.service``): in ingest the effects have locked the twins already. Without
        that, correctness still holds (the unique index decides who opens an alert), but an
        acknowledgement could then deadlock with a worker.
        """
        patient_ids = sorted(self.by_patient)
        suppression = max(
            (timedelta(minutes=r.suppression_minutes) for rs in self.in_force.values() for r in rs),
            default=timedelta(0),
        )
        book = AlertBook(conn, patient_ids, now, suppression)
        for patient_id in patient_ids:
            for facts in sorted(self.by_patient[patient_id], key=lambda f: f.measured_at):
                for rule in self.in_force[patient_id]:
                    verdict = evaluate(rule, facts, history, now)
                    if verdict is None:
                        continue
                    if verdict.outcome == "trigger":
                        message = verdict.message + flag_note(facts.flags)
                        if facts.late:
                            message += f" [late: measured {facts.measured_at.isoformat()}]"
                        verdict = replace(verdict, message=message)
                    book.on_verdict(rule, facts, verdict)
        return record_changes(conn, book.changes, now, mqtt_via_outbox=mqtt_via_outbox)


def plan_evaluation(conn: Any, stored: Sequence[StoredReading]) -> Evaluation | None:
    """The facts of the readings that can be judged and their patients' rules in force (one pair of
    queries); None when no reading can be judged."""
    by_patient: dict[str, list[ReadingFacts]] = {}
    for item in stored:
        facts = facts_of(item)
        if facts is not None:
            by_patient.setdefault(facts.patient_id, []).append(facts)
    if not by_patient:
        return None
    return Evaluation(by_patient, alert_rules.rules_for_patients(conn, sorted(by_patient)))


def evaluate_readings(
    conn: Any, stored: Sequence[StoredReading], now: datetime, *, mqtt_via_outbox: bool = False
) -> list[Notification]:
    """The alerts alone on these (already stored) readings, reading the history they need themselves."""
    evaluation = plan_evaluation(conn, stored)
    if evaluation is None:
        return []
    return evaluation.run(
        conn, baselines.read_window(conn, evaluation.history_window()), now, mqtt_via_outbox=mqtt_via_outbox
    )
