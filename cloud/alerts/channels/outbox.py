"""Queueing messages to people: render now, in the caller's transaction; send later (``deliver_due``).

A message is rendered when it is queued, from the alert as it is then, and stored whole in the outbox
row (``payload``: the :class:`RenderedMessage` JSON), so what was sent is what the alert looked like
when it was decided to send it, and a retry sends the same words (and the same link).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import cloud.alerts.channels.links as links
import cloud.alerts.channels.queries as queries
from cloud.alerts.channels.errors import MessageError
from cloud.alerts.channels.render import CARE_TEAM_KINDS, PATIENT_KINDS, MessageFacts, RenderedMessage, render
from cloud.settings import get_settings

CHANNELS = ("email", "provider")
"""What :func:`queue_message` queues; webhooks and MQTT are queued per alert change by ``record_changes``."""
AUDIENCES = ("care_team", "patient")


def facts_of(conn: Any, alert_id: int) -> MessageFacts:
    row = queries.alert_facts(conn, alert_id)
    if row is None:
        raise MessageError(f"alert {alert_id} does not exist")
    reading = (queries.reading_values(conn, row["reading_id"], row["patient_id"], row["measured_at"])
               if row["reading_id"] else {})
    return MessageFacts(
        alert_id=row["id"], patient_id=row["patient_id"], patient_name=row["display_name"], timezone=row["timezone"],
        severity=row["severity"], status=row["status"], rule_description=row["description"], message=row["message"],
        reading_kind=row["reading_kind"], opened_at=row["opened_at"], measured_at=row["measured_at"],
        metric=row["metric"], value=row["value"], reading=reading, category=row["category"],
    )


def queue_message(conn: Any, *, channel: str, address: str, alert: Mapping[str, Any] | int, recipient: str,
                  audience: str, kind: str, context: Mapping[str, Any] | None, escalation_id: int | None = None,
                  step: int | None = None, max_attempts: int | None = None, now: datetime,
                  public_url: str | None = None, link_ttl: timedelta | None = None) -> int:
    """Render a message about ``alert`` (its row or id) for ``recipient`` and put it in the outbox in the
    caller's transaction; return the delivery id.

    ``channel``: ``email`` (``address`` an e-mail address) or ``provider`` (a phone number).
    ``audience``: ``care_team`` (kinds ``alert``, ``escalation``; a deep link for ``recipient`` is made)
    or ``patient`` (``patient_missing_data``, ``patient_repeat_reading``; ``recipient`` is
    ``patient:<patient_id>``, no link). ``context``: see :func:`render`. ``public_url`` and
    ``link_ttl``: default ``RPM_PUBLIC_URL`` and ``RPM_ALERT_LINK_TTL_S``.
    Raises :class:`MessageError` for an unknown channel, audience or kind, an empty address or a
    missing alert.
    """
    if channel not in CHANNELS:
        raise MessageError(f"channel {channel!r} cannot carry a message to a person (one of {', '.join(CHANNELS)})")
    if audience not in AUDIENCES:
        raise MessageError(f"audience {audience!r} is not one of {', '.join(AUDIENCES)}")
    allowed = CARE_TEAM_KINDS if audience == "care_team" else PATIENT_KINDS
    if kind not in allowed:
        raise MessageError(f"kind {kind!r} is not a message for the {audience} (one of {', '.join(allowed)})")
    if not address or not address.strip():
        raise MessageError(f"no {'e-mail address' if channel == 'email' else 'phone number'} for {recipient}")
    if not recipient:
        raise MessageError("a message needs a recipient")
    address = address.strip()
    if any(c in address for c in "\r\n\x00") or len(address) > 320:
        raise MessageError(f"address for {recipient} is not one line of at most 320 characters")
    if channel == "email" and "@" not in address:
        raise MessageError(f"{address!r} is not an e-mail address")
    alert_id = int(alert if isinstance(alert, int) else alert["id"])
    facts = facts_of(conn, alert_id)
    settings = get_settings()
    ttl = link_ttl if link_ttl is not None else timedelta(seconds=settings.alert_link_ttl_s)
    link = None
    if audience == "care_team":
        link = links.create_link(conn, alert_id, recipient, public_url=public_url or settings.public_url, now=now,
                                 ttl=ttl)
    message: RenderedMessage = render(kind, facts, link=link, context=context, now=now,
                                      link_hours=ttl.total_seconds() / 3600)
    return queries.insert_message(conn, channel=channel, alert_id=alert_id, status=facts.status,
                                  payload=message.to_json(), address=address, recipient=recipient,
                                  audience=audience, kind=kind, escalation_id=escalation_id, step=step,
                                  max_attempts=max_attempts, now=now)


def deliveries_of(conn: Any, alert_id: int) -> list[dict[str, Any]]:
    """Every delivery of the alert (webhooks, MQTT, e-mail, provider), oldest first, each with its
    ``status`` (queued, sent, failed, retrying), ``attempt_count``, ``last_error`` and ``attempts``
    (one entry per attempt: attempt, at, outcome, error, duration_ms)."""
    return queries.deliveries_of(conn, alert_id)
