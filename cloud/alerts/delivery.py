"""Telling the world about alert changes: the twin, MQTT, and webhooks through a delivery outbox.

In ingest's transaction, :func:`record_changes` appends the twin events, writes one outbox row per
matching webhook, and returns the MQTT :class:`Notification` s ingest publishes after commit (QoS 1,
payload = contract ``Alert`` JSON). Changes made outside ingest (the API, the scheduler) put their
MQTT message in the outbox too. :func:`deliver_due` sends what is due: webhooks as an HTTP POST whose
body is signed with HMAC-SHA256 (``X-RPM-Signature: sha256=<hex>``), retried with exponential
backoff so an endpoint that is down gets it when it comes back.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from cloud.alerts import queries
from cloud.alerts.lifecycle import Change
from cloud.twin import service as twin
from gateway.contract import Alert, alerts_topic
from gateway.mqtt.backoff import ExponentialBackoff

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-RPM-Signature"


@dataclass(frozen=True, slots=True)
class Notification:
    """A message to publish after commit (e.g. an alert on ``rpm/v1/alerts/{patient_id}``)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


_TWIN_EVENT = {"opened": "alert_opened", "reopened": "alert_opened", "updated": "alert_updated",
               "acknowledged": "alert_acknowledged", "resolved": "alert_resolved", "reviewed": "alert_reviewed"}
_CONTRACT_STATUS = {"open": "open", "acknowledged": "acknowledged", "resolved": "resolved"}


def alert_message(row: dict[str, Any], status: str, at: datetime) -> Alert:
    return Alert(
        alert_id=str(row["id"]), patient_id=row["patient_id"], rule=row["rule_id"], severity=row["severity"],
        status=status, message=row["message"], metric=row["metric"], value=row["value"],
        reading_id=row["reading_id"], measured_at=row["measured_at"], late=row["late"], flags=list(row["flags"]),
        at=at, review_state=row.get("review_state"),
    )


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """What a webhook receiver does: constant-time comparison of the signature header."""
    return hmac.compare_digest(sign(secret, body), signature)


def _wants(webhook: dict[str, Any], change: Change) -> bool:
    if webhook["patient_id"] not in (None, change.alert["patient_id"]):
        return False
    events = set(webhook["events"])
    if "open" in events:
        events.add("opened")
    if change.event not in events:
        return False
    # A reading measured days ago does not page as if it were now: only endpoints that asked for late alerts.
    return not (change.event == "opened" and change.alert["late"] and "late" not in events)


def _twin_data(change: Change) -> dict[str, Any]:
    row = change.alert
    return {
        "alert_id": row["id"], "rule": row["rule_id"], "severity": row["severity"], "status": row["status"],
        "message": row["message"], "metric": row["metric"], "value": row["value"],
        "measured_at": row["measured_at"], "late": row["late"], "opened_at": row["opened_at"],
        "acknowledged_by": row["acknowledged_by"], "actor": change.actor,
        "review_state": row.get("review_state"), "reviewed_at": row.get("reviewed_at"),
        "reviewed_by": row.get("reviewed_by"),
    }


def record_changes(conn: Any, changes: Sequence[Change], now: datetime, *, mqtt_via_outbox: bool,
                   twin_events: Mapping[str, Sequence[tuple[str, dict]]] | None = None) -> list[Notification]:
    """Twin events, webhook outbox rows and MQTT messages for these changes (in the caller's transaction).

    ``twin_events``: other events to append to the twins in the same write (the batch's baselines).
    """
    events: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for patient_id, extra in (twin_events or {}).items():
        events[patient_id].extend(extra)
    for change in changes:
        events[change.alert["patient_id"]].append((_TWIN_EVENT[change.event], _twin_data(change)))
    twin.append_events(conn, events, now)
    if not changes:
        return []

    webhooks = queries.webhooks_for(conn, sorted(events))
    notifications: list[Notification] = []
    outbox: list[tuple[Any, ...]] = []
    for change in changes:
        status = "updated" if change.event == "updated" else _CONTRACT_STATUS[change.alert["status"]]
        payload = alert_message(change.alert, status, now).model_dump_json().encode()
        topic = alerts_topic(change.alert["patient_id"])
        if mqtt_via_outbox:
            outbox.append(("mqtt", None, topic, change.alert["id"], status, payload, now))
        else:
            notifications.append(Notification(topic=topic, payload=payload, qos=1))
        for webhook in webhooks:
            if _wants(webhook, change):
                outbox.append(("webhook", webhook["id"], None, change.alert["id"], status, payload, now))
    queries.insert_deliveries(conn, outbox)
    return notifications


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = 2.0
    factor: float = 2.0
    max_s: float = 3600.0
    max_attempts: int = 20
    lease_s: float = 60.0
    """A claimed delivery is retried after this if its sender dies mid-call."""

    def retry_at(self, attempts: int, now: datetime) -> datetime | None:
        if attempts >= self.max_attempts:
            return None
        return now + timedelta(seconds=ExponentialBackoff(self.base_s, self.max_s, self.factor).delay(attempts))


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0


Publish = Callable[[str, bytes], bool]
"""Publish (topic, payload) at QoS 1; True once the broker acknowledged it."""


def deliver_due(conn: Any, *, http: httpx.Client, publish: Publish | None = None, backoff: Backoff | None = None,
                now: datetime | None = None, limit: int = 100) -> DeliveryReport:
    """Send the deliveries that are due. ``conn`` must be in autocommit mode (no transaction is held
    open across an HTTP call). Without ``publish`` the MQTT rows are left for a sender that has it."""
    backoff = backoff or Backoff()
    now = now or datetime.now(UTC)
    channels = ["webhook", "mqtt"] if publish is not None else ["webhook"]
    claimed = queries.claim_deliveries(conn, now, now + timedelta(seconds=backoff.lease_s), limit, channels)
    delivered = retrying = failed = 0
    for row in claimed:
        error = _send(row, http, publish)
        finished = datetime.now(UTC)
        if error is None:
            queries.mark_delivered(conn, row["id"], finished)
            delivered += 1
            continue
        retry_at = backoff.retry_at(row["attempts"], finished)
        queries.mark_failed_attempt(conn, row["id"], error, retry_at, finished)
        if retry_at is None:
            log.error("giving up delivery %s after %s attempts: %s", row["id"], row["attempts"], error)
            failed += 1
        else:
            log.warning("delivery %s attempt %s failed (%s); retry at %s", row["id"], row["attempts"], error,
                        retry_at.isoformat())
            retrying += 1
    return DeliveryReport(delivered, retrying, failed)


def _send(row: dict[str, Any], http: httpx.Client, publish: Publish | None) -> str | None:
    body = bytes(row["payload"])
    if row["channel"] == "mqtt":
        assert publish is not None  # only claimed with a publisher
        return None if publish(row["topic"], body) else "MQTT publish not acknowledged"
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(row["secret"], body),
        "X-RPM-Delivery": str(row["id"]),
        "X-RPM-Alert-Status": row["status"],
    }
    try:
        response = http.post(row["url"], content=body, headers=headers)
    except httpx.HTTPError as err:
        return f"{type(err).__name__}: {err}"
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"
