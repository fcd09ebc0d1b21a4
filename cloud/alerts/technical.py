"""Technical alerts from gateway statuses: equipment problems the care team can act on.

A gateway's retained status says, per device, how many records it could not turn into readings
(``DeviceStatus.quarantined``: kept at the gateway with their bytes and reason) and whether its
storage is full (``outbox_full``). Neither says anything about the patient's health, yet both mean
readings are missing from the record, so each becomes an alert of category ``technical`` for the
patients the devices are assigned to:

* ``device_unreadable_records`` opens (or is updated) when a device's count *grows*; the care team
  resolves it once the device is checked. The same count reported again is no news.
* ``gateway_storage_full`` is open while any gateway of the patient reports its storage full and
  resolves by itself when none does.

Only the gateway a device is bound to speaks for it: a status naming another gateway's device
changes nothing (a hostile gateway cannot raise alerts on someone else's cuff). Runs in ingest's
transaction after the status row was written; lock order is twins, then alerts, then devices, as on
the readings path, so a status and a batch of the same patient never deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloud.alerts import queries
from cloud.alerts.delivery import Notification, record_changes
from cloud.alerts.lifecycle import SYSTEM, AlertBook
from cloud.db import alert_rules as rule_catalogue
from cloud.twin import service as twin
from gateway.contract import GatewayStatus

UNREADABLE_RULE = "device_unreadable_records"
STORAGE_RULE = "gateway_storage_full"

@dataclass(frozen=True, slots=True)
class _CountChange:
    uid: str
    profile: str
    model: str | None
    before: int
    now: int
    patients: list[str]


def on_gateway_statuses(conn: Any, statuses: Sequence[tuple[str, GatewayStatus]], now: datetime) -> list[Notification]:
    """Turn these (already stored) statuses into technical alert changes; return what to publish."""
    notifications: list[Notification] = []
    for gateway_id, status in statuses:
        if not _is_newest(conn, gateway_id, status):
            continue  # an older status arriving late says nothing about now
        notifications.extend(_apply(conn, gateway_id, status, now))
    return notifications


def _is_newest(conn: Any, gateway_id: str, status: GatewayStatus) -> bool:
    stored_at = queries.newest_status_at(conn, gateway_id)
    return stored_at is not None and stored_at <= status.at


def _apply(conn: Any, gateway_id: str, status: GatewayStatus, now: datetime) -> list[Notification]:
    reported = {d.uid: d.quarantined for d in status.devices}
    changes = [_CountChange(**row) for row in queries.changed_quarantine_counts(
        conn, gateway_id, list(reported), list(reported.values()), now)]
    gateway_patients = queries.gateway_patients(conn, gateway_id, now)
    grown = [c for c in changes if c.now > c.before]
    full = storage_is_full(status)
    storage_open = {r["patient_id"] for r in gateway_patients} if full else set()
    storage_resolve = set() if full else {r["patient_id"] for r in gateway_patients if not r["other_full"]}
    patients = sorted({p for c in grown for p in c.patients} | storage_open | storage_resolve)
    book: AlertBook | None = None
    if patients:
        twin.lock(conn, patients)
        book = AlertBook(conn, patients, now)
        in_force = rule_catalogue.rules_for_patients(conn, patients)
        for change in grown:
            for patient_id in change.patients:
                rule = _rule(in_force[patient_id], UNREADABLE_RULE)
                if rule is not None:
                    book.trigger(rule, patient_id, message=_unreadable_message(change), metric=None,
                                 value=float(change.now), reading_id=None, measured_at=status.at, late=False,
                                 flags=[], detail={"device_uid": change.uid, "gateway_id": gateway_id,
                                                   "new_records": change.now - change.before})
        for patient_id in sorted(storage_open):
            rule = _rule(in_force[patient_id], STORAGE_RULE)
            if rule is not None:
                book.trigger(rule, patient_id, message=_storage_message(gateway_id, status), metric=None,
                             value=float(status.outbox_depth), reading_id=None, measured_at=status.at, late=False,
                             flags=[], detail={"gateway_id": gateway_id})
        for patient_id in sorted(storage_resolve):
            alert = book.open.get((patient_id, STORAGE_RULE))
            if alert is not None:
                book.resolve(alert, SYSTEM, detail={"gateway_id": gateway_id, "outbox_depth": status.outbox_depth})
    if changes:
        queries.set_quarantine_counts(conn, [c.uid for c in changes], [c.now for c in changes])
    if book is None or not book.changes:
        return []
    return record_changes(conn, book.changes, now, mqtt_via_outbox=False)


def storage_is_full(status: GatewayStatus) -> bool:
    """New readings cannot be saved on the gateway (budget or disk exhausted, or the card unwritable)."""
    return status.outbox_full or status.storage_state in ("full", "unwritable")


def _rule(rules: Sequence[rule_catalogue.Rule], rule_id: str) -> rule_catalogue.Rule | None:
    for rule in rules:
        if rule.id == rule_id:
            return rule if rule.enabled else None
    return None


def _unreadable_message(change: _CountChange) -> str:
    what = change.model or change.profile
    new = change.now - change.before
    records = "record" if new == 1 else "records"
    return (f"{what} ({change.uid}) sent {new} {records} the gateway could not read"
            f" ({change.now} in total); readings may be missing: check the device")


def _storage_message(gateway_id: str, status: GatewayStatus) -> str:
    if status.storage_message:
        return f"Home gateway {gateway_id}: {status.storage_message}"
    waiting = f"{status.outbox_depth:,}".replace(",", " ")
    return (f"Home gateway {gateway_id}: storage full, {waiting} readings waiting to upload;"
            " new readings cannot be saved")
