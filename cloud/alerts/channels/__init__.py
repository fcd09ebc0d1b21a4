"""Notification channels: e-mail over SMTP, Standard-Webhooks-signed webhooks, an HTTP SMS/voice
provider (MQTT stays in ``cloud.alerts.delivery``), the texts they carry and the deep links in them.

``render`` the words, ``links`` single-use deep links, ``email`` / ``webhooks`` / ``provider`` one
attempt each (a :class:`ChannelError` when it fails), ``outbox`` :func:`queue_message` (render and
queue in the caller's transaction) and :func:`deliveries_of` (what was sent, for the alert detail).
``cloud.alerts.delivery.deliver_due`` sends what is due and records every attempt.
"""

from cloud.alerts.channels.errors import ChannelError, MessageError
from cloud.alerts.channels.outbox import deliveries_of, queue_message

__all__ = ["ChannelError", "MessageError", "deliveries_of", "queue_message"]
