"""The alerts' Python API for the clinician API (and the CLI): list, acknowledge, resolve, comment,
rules in force and per-patient overrides, webhooks.

Every function takes a psycopg connection and runs in ``conn.transaction()`` (its own transaction on
an autocommit connection, a savepoint inside the caller's). Changes are told to the twin and queued
for MQTT and webhooks in the same transaction; the delivery loop (``rpm-cloud scheduler``) sends them.
Errors: :class:`~cloud.alerts.AlertNotFound`, :class:`~cloud.alerts.AlertStateError`,
:class:`~cloud.alerts.RuleNotFound`, :class:`~cloud.alerts.InvalidOverride`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from cloud.alerts import AlertNotFound, AlertStateError, queries
from cloud.alerts import rules as rule_catalogue
from cloud.alerts.delivery import record_changes
from cloud.alerts.lifecycle import AlertBook, Change
from cloud.db import alert_rules
from cloud.db.alert_rules import Rule
from cloud.twin import service as twin

STATUSES = ("open", "acknowledged", "resolved")


def list_alerts(conn: Any, *, patient_id: str | None = None, status: Sequence[str] | None = None,
                severity: Sequence[str] | None = None, since: datetime | None = None,
                before_id: int | None = None, limit: int = 100,
                review_state: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Alerts newest first. ``status``/``severity``/``review_state`` filter by any of the given values; page
    with ``before_id`` (the smallest id of the previous page)."""
    return queries.list_alerts(conn, patient_id=patient_id, statuses=status, severities=severity, since=since,
                               before_id=before_id, limit=max(1, min(limit, 1000)), review_states=review_state)


def get_alert(conn: Any, alert_id: int) -> dict[str, Any]:
    row = queries.get_alert(conn, int(alert_id))
    if row is None:
        raise AlertNotFound(str(alert_id))
    return row


def alert_history(conn: Any, alert_id: int) -> list[dict[str, Any]]:
    """The alert's events (opened, updated, reopened, acknowledged, resolved, reviewed, comment), oldest first."""
    get_alert(conn, alert_id)
    return queries.alert_events(conn, int(alert_id))


def _locked(conn: Any, alert_id: int) -> dict[str, Any]:
    # Lock order as in ingest (twin row, then alert rows), so an acknowledgement never deadlocks a worker.
    row = get_alert(conn, alert_id)
    twin.lock(conn, [row["patient_id"]])
    locked = queries.lock_alert(conn, int(alert_id))
    assert locked is not None
    return locked


def acknowledge(conn: Any, alert_id: int, by: str, note: str | None = None,
                now: datetime | None = None) -> dict[str, Any]:
    """Mark the alert seen by ``by`` (who and when are kept). An open alert stays open (acknowledged) until
    it resolves; one that resolved before anyone looked and needs review is reviewed. Both stop escalation."""
    now = now or datetime.now(UTC)
    detail = Jsonb({"note": note} if note else {})
    with conn.transaction():
        alert = _locked(conn, alert_id)
        if alert["status"] == "resolved":
            row = queries.review_alert(conn, alert["id"], by, now)
            if row is None:
                raise AlertStateError(f"alert {alert_id} is resolved and needs no review"
                                      + (f" (reviewed by {alert['reviewed_by']})" if alert["reviewed_by"] else ""))
            queries.insert_event(conn, row["id"], now, "reviewed", by, None, detail)
            record_changes(conn, [Change(row, "resolved", "reviewed", by)], now, mqtt_via_outbox=True)
            return row
        if alert["status"] == "acknowledged":
            return alert
        row = queries.acknowledge_alert(conn, alert["id"], by, now)
        queries.insert_event(conn, row["id"], now, "acknowledged", by, None, detail)
        record_changes(conn, [Change(row, "acknowledged", "acknowledged", by)], now, mqtt_via_outbox=True)
        return row


def resolve(conn: Any, alert_id: int, by: str, note: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Close the alert by hand (e.g. the clinician has acted); a new trigger opens a new episode after
    the rule's suppression window, or re-opens this one within it."""
    now = now or datetime.now(UTC)
    with conn.transaction():
        alert = _locked(conn, alert_id)
        if alert["status"] == "resolved":
            raise AlertStateError(f"alert {alert_id} is already resolved")
        book = AlertBook(conn, [alert["patient_id"]], now)
        change = book.resolve(alert, by, detail={"note": note} if note else {})
        record_changes(conn, [change], now, mqtt_via_outbox=True)
        return change.alert


def comment(conn: Any, alert_id: int, by: str, text: str, now: datetime | None = None) -> dict[str, Any]:
    """Add a note to the alert's history; returns the event."""
    if not text.strip():
        raise AlertStateError("a comment needs text")
    now = now or datetime.now(UTC)
    with conn.transaction():
        get_alert(conn, alert_id)
        queries.insert_event(conn, int(alert_id), now, "comment", by, None, Jsonb({"text": text}))
        return queries.alert_events(conn, int(alert_id))[-1]


def get_rules(conn: Any, patient_id: str | None = None) -> list[Rule]:
    """The catalogue (``patient_id`` None) or the rules in force for one patient, overrides applied.
    ``Rule.as_dict()`` gives a JSON-ready form."""
    if patient_id is None:
        return list(alert_rules.catalogue(conn).values())
    return alert_rules.effective_rules(conn, patient_id)


def set_rule_override(conn: Any, patient_id: str, rule_id: str, *, by: str, enabled: bool | None = None,
                      thresholds: Mapping[str, float] | None = None, severity: str | None = None,
                      params: Mapping[str, Any] | None = None, margin: float | None = None,
                      resolve_after: int | None = None, note: str | None = None) -> Rule:
    """Override a rule for one patient (only the given fields; ``thresholds`` by metric, e.g.
    ``{"systolic": 170}``). Recorded in the twin as ``threshold_changed``; returns the rule in force."""
    with conn.transaction():
        twin.lock(conn, [patient_id])
        rule = rule_catalogue.store_override(
            conn, patient_id, rule_id, enabled=enabled, thresholds=thresholds, severity=severity, params=params,
            margin=margin, resolve_after=resolve_after, note=note, by=by,
        )
        twin.record_threshold_changed(conn, patient_id, rule_id, rule.as_dict(), by)
        return rule


def clear_rule_override(conn: Any, patient_id: str, rule_id: str, *, by: str) -> Rule:
    """Back to the catalogue default for this patient."""
    with conn.transaction():
        twin.lock(conn, [patient_id])
        rule = rule_catalogue.delete_override(conn, patient_id, rule_id)
        twin.record_threshold_changed(conn, patient_id, rule_id, rule.as_dict(), by)
        return rule


def add_webhook(conn: Any, url: str, secret: str, *, patient_id: str | None = None,
                events: Sequence[str] = ("open", "resolved")) -> int:
    """Register an endpoint. ``events`` from open, reopened, updated, acknowledged, resolved, reviewed, and ``late``
    (also page alerts opened by readings measured long ago)."""
    allowed = {"open", "opened", "reopened", "updated", "acknowledged", "resolved", "reviewed", "late"}
    unknown = sorted(set(events) - allowed)
    if unknown or not url.startswith(("http://", "https://")) or not secret:
        raise ValueError(f"bad webhook: url must be http(s), secret non-empty, events from {sorted(allowed)}")
    with conn.transaction():
        return queries.add_webhook(conn, url, secret, patient_id, list(events))
