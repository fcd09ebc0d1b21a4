"""The channels' error: why one attempt to send a message failed."""

from __future__ import annotations

from cloud.alerts import AlertsError


class ChannelError(AlertsError):
    """One attempt to send failed. ``reason`` is a short word the alert detail and the metrics can group
    by (``config``, ``refused``, ``timeout``, ``tls``, ``auth``, ``rejected``, ``http``, ``protocol``);
    ``permanent`` says retrying cannot help (a recipient the server refuses, a 4xx from the provider),
    so the delivery gives up at once and an escalation moves on."""

    def __init__(self, reason: str, detail: str, *, permanent: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.permanent = permanent


class MessageError(AlertsError):
    """A message that cannot be queued: an unknown channel or kind, no address, an alert that does not exist."""
