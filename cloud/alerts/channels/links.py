"""Deep links from a message to the alert in the workspace: ``{public_url}/ui/#/alerts/{id}?link=<token>``.

The token is 32 random bytes (URL-safe base64) that only the message carries; the database keeps its
SHA-256, so a copy of the table opens nothing. A link is for one alert and one recipient, expires
(24 h by default) and is used once. It is never a credential: opening it needs a signed-in care-team
member who may see the alert's patient (the API's normal authorisation), and it acknowledges nothing.
What the token adds is provenance: the audit log says who opened which message's link, and a
forwarded or leaked message stops working after its first use.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import cloud.alerts.channels.queries as queries
from cloud.alerts import AlertsError

DEFAULT_TTL = timedelta(hours=24)
_TOKEN_BYTES = 32


class LinkGone(AlertsError):
    """The link was used already or has expired."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class AlertLink:
    alert_id: int
    patient_id: str
    recipient: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    used_by: str | None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def link_url(public_url: str, alert_id: int, token: str) -> str:
    return f"{public_url.rstrip('/')}/ui/#/alerts/{alert_id}?link={token}"


def create_link(conn: Any, alert_id: int, recipient: str, *, public_url: str, now: datetime,
                ttl: timedelta = DEFAULT_TTL) -> str:
    """A new link for ``recipient`` (stored in the caller's transaction); returns its URL."""
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    queries.insert_link(conn, token_hash(token), alert_id, recipient, now, now + ttl)
    return link_url(public_url, alert_id, token)


def find_link(conn: Any, token: str) -> AlertLink | None:
    row = queries.find_link(conn, token_hash(token))
    return AlertLink(**row) if row is not None else None


def use_link(conn: Any, token: str, by: str, now: datetime) -> AlertLink:
    """Mark the link used by ``by``: the caller has authorised ``by`` for the link's alert first.
    Raises :class:`LinkGone` when it was used (also by a concurrent open) or has expired."""
    link = find_link(conn, token)
    if link is None:
        raise LinkGone("no such link")
    if not queries.use_link(conn, token_hash(token), by, now):
        current = find_link(conn, token)
        if current is not None and current.used_at is not None:
            raise LinkGone(f"the link was used at {current.used_at.isoformat()}")
        raise LinkGone(f"the link expired at {link.expires_at.isoformat()}")
    return link
