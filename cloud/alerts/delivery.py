"""Telling the world about alert changes: the twin, MQTT, webhooks, e-mail and an SMS/voice provider
through one delivery outbox.

In ingest's transaction, :func:`record_changes` appends the twin events, writes one outbox row per
matching webhook, and returns the MQTT :class:`Notification` s ingest publishes after commit (QoS 1,
payload = contract ``Alert`` JSON). Changes made outside ingest (the API, the scheduler) put their
MQTT message in the outbox too; messages to people (e-mail, provider) are queued by
``cloud.alerts.channels.queue_message``. :func:`deliver_due` sends what is due on every channel:
webhooks signed per Standard Webhooks (``cloud.alerts.channels.webhooks``; the old
``X-RPM-Signature`` header too, for one release), e-mail over SMTP, the provider's HTTP POST, MQTT.
Every attempt is a ``delivery_attempts`` row; a failed one is retried with exponential backoff up to
the row's ``max_attempts`` (else the :class:`Backoff`'s), and one that cannot succeed (a refused
recipient, a 4xx from the provider) gives up at once so an escalation moves to its next step.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from cloud.alerts import queries
from cloud.alerts.channels import queries as outbox
from cloud.alerts.channels import webhooks
from cloud.alerts.channels.email import Mailer, SmtpConfig
from cloud.alerts.channels.errors import ChannelError
from cloud.alerts.channels.provider import Provider, ProviderConfig
from cloud.alerts.channels.render import RenderedMessage
from cloud.alerts.lifecycle import Change
from cloud.settings import get_settings
from cloud.twin import service as twin
from gateway.contract import Alert, alerts_topic
from gateway.mqtt.backoff import ExponentialBackoff

log = logging.getLogger(__name__)
SIGNATURE_HEADER = webhooks.LEGACY_SIGNATURE_HEADER
sign = webhooks.legacy_sign
verify = webhooks.legacy_verify


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
    """Unless the delivery row sets its own (``alert_deliveries.max_attempts``)."""
    lease_s: float = 60.0
    """A claimed delivery is retried after this if its sender dies mid-call. A pass starts no send after
    half of it, so every channel's timeout must stay below half (SMTP and provider default 10 s)."""

    def retry_at(self, attempts: int, now: datetime, max_attempts: int | None = None) -> datetime | None:
        if attempts >= (max_attempts or self.max_attempts):
            return None
        return now + timedelta(seconds=ExponentialBackoff(self.base_s, self.max_s, self.factor).delay(attempts))


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    attempts_by_channel: Mapping[str, int] = field(default_factory=dict)
    failures_by_channel: Mapping[str, int] = field(default_factory=dict)
    """Failed attempts (retrying or given up) per channel."""


Publish = Callable[[str, bytes], bool]
"""Publish (topic, payload) at QoS 1; True once the broker acknowledged it."""


class _Senders:
    """The channels' senders for one pass; a channel whose configuration is broken fails its attempts
    with that reason (shown on the alert) instead of stopping the other channels."""

    def __init__(self, http: httpx.Client, publish: Publish | None, mailer: Mailer | None,
                 provider: Provider | None) -> None:
        self.http, self.publish = http, publish
        self.mailer = mailer if mailer is not None else Mailer(SmtpConfig.from_settings(get_settings()))
        self.provider: Provider | ChannelError
        try:
            self.provider = provider if provider is not None else Provider(
                ProviderConfig.from_settings(get_settings()), http)
        except ChannelError as err:
            self.provider = err

    def send(self, row: dict[str, Any]) -> None:
        body = bytes(row["payload"])
        channel = row["channel"]
        if channel == "mqtt":
            assert self.publish is not None  # only claimed with a publisher
            if not self.publish(row["topic"], body):
                raise ChannelError("refused", "MQTT publish not acknowledged")
        elif channel == "webhook":
            if row["url"] is None:
                raise ChannelError("config", f"webhook {row['webhook_id']} no longer exists", permanent=True)
            webhooks.post(self.http, row["url"], row["secret"], body, delivery_id=row["id"],
                          alert_status=row["status"])
        elif channel == "email":
            self.mailer.send(row["address"], RenderedMessage.from_json(body), delivery_id=row["id"])
        elif channel == "provider":
            if isinstance(self.provider, ChannelError):
                raise self.provider
            message = RenderedMessage.from_json(body)
            self.provider.send(row["address"], message.short, kind=row["kind"] or "alert", delivery_id=row["id"])
        else:
            raise ChannelError("config", f"unknown channel {channel!r}", permanent=True)


def deliver_due(conn: Any, *, http: httpx.Client, publish: Publish | None = None, backoff: Backoff | None = None,
                now: datetime | None = None, limit: int = 100, mailer: Mailer | None = None,
                provider: Provider | None = None) -> DeliveryReport:
    """Send the deliveries that are due and record each attempt. ``conn`` must be in autocommit mode (no
    transaction is held open across a network call). Without ``publish`` the MQTT rows are left for a
    sender that has it. ``mailer`` / ``provider``: default, from the settings (``RPM_SMTP_*``,
    ``RPM_PROVIDER_*``)."""
    backoff = backoff or Backoff()
    now = now or datetime.now(UTC)
    senders = _Senders(http, publish, mailer, provider)
    channels = ["webhook", "email", "provider"] + (["mqtt"] if publish is not None else [])
    lease_until = now + timedelta(seconds=backoff.lease_s)
    claimed = outbox.claim(conn, now, lease_until, limit, channels)
    claimed_at = time.monotonic()
    delivered = retrying = failed = 0
    attempts: dict[str, int] = defaultdict(int)
    failures: dict[str, int] = defaultdict(int)
    for index, row in enumerate(claimed):
        if time.monotonic() - claimed_at > backoff.lease_s / 2:
            # Slow endpoints ate half the lease: a send started now could outlive it, and another sender
            # would take the row and send it too. Give the rest back for the next pass.
            rest = [r["id"] for r in claimed[index:]]
            released = outbox.release(conn, rest, lease_until, datetime.now(UTC))
            log.warning("delivery pass ran past half its lease; %d deliveries left for the next pass", released)
            break
        started = time.perf_counter()
        error: ChannelError | None = None
        try:
            senders.send(row)
        except ChannelError as err:
            error = err
        except Exception as err:  # one bad row (a damaged payload) must not stop the pass: it is recorded on the alert
            log.exception("delivery %s: unexpected error", row["id"])
            error = ChannelError("error", f"{type(err).__name__}: {err}")
        finished = datetime.now(UTC)
        duration_ms = round((time.perf_counter() - started) * 1000)
        attempts[row["channel"]] += 1
        if error is None:
            outbox.finish_attempt(conn, row["id"], row["attempts"], error=None, retry_at=None, at=finished,
                                  duration_ms=duration_ms)
            delivered += 1
            continue
        failures[row["channel"]] += 1
        retry_at = None if error.permanent else backoff.retry_at(row["attempts"], finished, row["max_attempts"])
        outbox.finish_attempt(conn, row["id"], row["attempts"], error=str(error), retry_at=retry_at, at=finished,
                              duration_ms=duration_ms)
        if retry_at is None:
            log.error("giving up %s delivery %s after %s attempts: %s", row["channel"], row["id"], row["attempts"],
                      error)
            failed += 1
        else:
            log.warning("%s delivery %s attempt %s failed (%s); retry at %s", row["channel"], row["id"],
                        row["attempts"], error, retry_at.isoformat())
            retrying += 1
    return DeliveryReport(delivered, retrying, failed, dict(attempts), dict(failures))
