"""What runs inside ingest's transaction after new readings are stored (alerts, the digital twin).

Ingest calls :func:`run_in_transaction_hooks` with only the readings that were newly stored (a
replayed reading is not passed again), inside the same transaction as the insert, and publishes the
returned notifications only after the commit. A hook that raises rolls the whole batch back: ingest
then retries the batch, so a hook must be deterministic and idempotent on retry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from gateway.contract import Reading


@dataclass(frozen=True, slots=True)
class StoredReading:
    reading: Reading
    patient_id: str | None
    gateway_id: str
    late: bool
    """Measured long before it arrived (a meter's memory downloaded days later)."""


@dataclass(frozen=True, slots=True)
class Notification:
    """A message to publish after commit (e.g. an alert on ``rpm/v1/alerts/{patient_id}``)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


Hook = Callable[[Any, Sequence[StoredReading]], Sequence[Notification] | None]

# "module:function", run in this order. The alerts/twin package registers itself here.
IN_TRANSACTION_HOOKS: list[str] = ["cloud.twin.hook:on_readings_stored", "cloud.alerts.hook:on_readings_stored"]


@cache
def _load(target: str) -> Hook:
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def run_in_transaction_hooks(conn: Any, stored: Sequence[StoredReading]) -> list[Notification]:
    """Run every registered hook on ``conn`` (a psycopg connection inside a transaction)."""
    notifications: list[Notification] = []
    if not stored:
        return notifications
    for target in IN_TRANSACTION_HOOKS:
        notifications.extend(_load(target)(conn, stored) or ())
    return notifications
