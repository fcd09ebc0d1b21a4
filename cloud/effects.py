"""What newly stored readings do inside the transaction that stored them: the twin, then the alerts.

Ingest (``cloud.ingest.writer``) calls :func:`apply_new_readings` with only the readings that were
newly stored (a replayed reading is not passed again), inside the same transaction as the insert,
and publishes the returned notifications only after the commit. An assignment that claims queued
readings (``cloud.devices.assignment``) calls it the same way. If it raises, the whole batch rolls
back and ingest retries it: everything here is deterministic and idempotent on retry.

Lock order, the same for every worker and for the API's alert changes (``cloud.alerts.service``):
the patients' twin rows first (``FOR UPDATE``, in patient order), which serialises one patient's
effects across ingest workers; then alert rows (the alerts' lifecycle). The history (the patients'
recent values) is read once, after the twin lock, for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cloud.alerts import new_readings as alerts
from cloud.alerts.delivery import Notification
from cloud.db.readings import StoredReading
from cloud.twin import baselines
from cloud.twin import new_readings as twin
from cloud.twin import service as twin_service


def apply_new_readings(conn: Any, stored: Sequence[StoredReading], now: datetime) -> list[Notification]:
    """Fold ``stored`` into the twins and evaluate the rules on them, on ``conn`` (a psycopg connection
    inside the caller's transaction); ``now`` is when the alerts judge them. Returns the MQTT messages
    to publish after the commit."""
    mine = [s for s in stored if s.patient_id]
    if not mine:
        return []
    # First, in patient order: a worker holding a patient's twin has the patient to itself, and the
    # history read below sees everything the previous holder committed.
    locked = twin_service.lock(conn, sorted({s.patient_id for s in mine if s.patient_id}))
    evaluation = alerts.plan_evaluation(conn, mine)
    history = baselines.read_window(
        conn,
        baselines.covering(twin.history_window(mine), evaluation.history_window() if evaluation is not None else None),
    )
    twin.record_readings(conn, mine, history, locked)
    if evaluation is None:
        return []
    return evaluation.run(conn, history, now)
