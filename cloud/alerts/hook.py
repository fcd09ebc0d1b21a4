"""Ingest hook: evaluate the rules on newly stored readings in ingest's transaction.

Readings are taken per patient in time order. ``measurement_unsuccessful`` (no value) and
``control_solution`` (not a patient sample) readings fire nothing; readings with quality flags
(``irregular_pulse``, ``cuff_too_loose``, ``body_movement``) are judged and the alert says so; a late
reading is judged, its alert is marked late (and is not paged to webhooks as if it were now).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cloud.alerts import rules as rule_catalogue
from cloud.alerts.delivery import record_changes
from cloud.alerts.evaluate import ReadingFacts, evaluate, flag_note, history_window
from cloud.alerts.lifecycle import AlertBook
from cloud.hooks import Notification, StoredReading
from cloud.twin import baselines
from cloud.twin.state import EXCLUDED_FLAGS


def facts_of(item: StoredReading) -> ReadingFacts | None:
    reading = item.reading
    if not item.patient_id or EXCLUDED_FLAGS & set(reading.flags):
        return None
    values = {name: float(v.value) for name, v in reading.values.items() if not isinstance(v.value, list)}
    if not values:
        return None
    return ReadingFacts(reading.id, item.patient_id, str(reading.kind), reading.measured_at, values,
                        tuple(reading.flags), item.late)


def evaluate_readings(conn: Any, stored: Sequence[StoredReading], now: datetime,
                      *, mqtt_via_outbox: bool = False) -> list[Notification]:
    """Evaluate every rule on these (already stored) readings; return the MQTT messages to publish.

    Lock order is twin rows, then alert rows (as in ``cloud.alerts.service``): in ingest the twin's hook,
    registered first, has locked the twins already. Without it, correctness still holds (the unique
    index decides who opens an alert), but an acknowledgement could then deadlock with a worker.
    """
    by_patient: dict[str, list[ReadingFacts]] = defaultdict(list)
    for item in stored:
        facts = facts_of(item)
        if facts is not None:
            by_patient[facts.patient_id].append(facts)
    if not by_patient:
        return []
    patient_ids = sorted(by_patient)
    in_force = rule_catalogue.rules_for_patients(conn, patient_ids)

    # All the history these readings need (rate, average and baseline rules): usually what the twin's
    # hook read for this batch a moment ago, else one query.
    lookback = max((history_window(r) for rs in in_force.values() for r in rs if r.enabled), default=timedelta(0))
    metrics = {c.metric for rs in in_force.values() for r in rs
               if r.enabled and r.rule_type in ("rate", "average", "baseline") for c in r.conditions}
    metrics &= {m for fs in by_patient.values() for f in fs for m in f.values}  # rules judge a reading's own metrics
    every = [f for fs in by_patient.values() for f in fs]
    history = baselines.history_for(
        conn, stored, patient_ids, metrics, min(f.measured_at for f in every) - lookback,
        max(f.measured_at for f in every),
    )

    suppression = max((timedelta(minutes=r.suppression_minutes) for rs in in_force.values() for r in rs),
                      default=timedelta(0))
    book = AlertBook(conn, patient_ids, now, suppression)
    for patient_id in patient_ids:
        for facts in sorted(by_patient[patient_id], key=lambda f: f.measured_at):
            for rule in in_force[patient_id]:
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


def on_readings_stored(conn: Any, stored: Sequence[StoredReading]) -> list[Notification]:
    return evaluate_readings(conn, stored, datetime.now(UTC))
