"""PAHO PRIVATE ATTRIBUTES: every use of paho-mqtt internals in this project is in this module.

paho's public API cannot do two things we need:

* **the ingest fast path** (:class:`AckingClient`): fewer ``recv`` calls per packet and no walk over
  every outgoing message on each PUBACK, the two costs that dominated paho's network thread under
  load (profiled with py-spy). It overrides ``_sock_recv``, ``_sock_close``, ``_update_inflight``
  and reads ``_out_messages``, ``_out_message_mutex``, ``_inflight_messages``,
  ``_max_inflight_messages`` and ``_send_publish``;
* **the broker's Receive Maximum** (:func:`cap_in_flight`): MQTT 5 (3.3.4) forbids more QoS 1
  publishes in flight than the server's Receive Maximum, paho does not apply it, and its public
  setter refuses once connected, so the attribute it guards (``_max_inflight_messages``) is set, as
  paho's own CONNACK handling does with Server Keep Alive, before paho re-sends anything on the new
  connection.

Checked against paho-mqtt :data:`TESTED_MAJOR`.x (2.1 and 2.2). On another major version nothing here
touches paho's internals: the fast path is plain ``paho.mqtt.client.Client``, the Receive Maximum is
left at the limit set before connecting, and a warning says so once. Correct, only slower (and a
strict broker with a lower Receive Maximum may disconnect a client that exceeds it).
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

TESTED_MAJOR = 2
PAHO_VERSION: str = paho.mqtt.__version__
TESTED = PAHO_VERSION.split(".", 1)[0] == str(TESTED_MAJOR)
"""paho is of the major version this module was checked against: its private attributes may be used."""

RECV_CHUNK = 256 * 1024


@functools.cache
def _warn_untested() -> None:
    log.warning(
        "paho-mqtt %s is not the tested %d.x: running without the ingest fast path and without "
        "applying the broker's Receive Maximum after connect (gateway/mqtt/paho_private.py)",
        PAHO_VERSION,
        TESTED_MAJOR,
    )


class AckingClient(mqtt.Client):
    """paho's client, minus two per-packet costs it has under load (profiled with py-spy):

    * paho reads each packet with up to three ``recv`` calls (command byte, length bytes, body):
      here one ``recv`` of up to :data:`RECV_CHUNK` feeds many packets, and ``loop_read`` goes on
      until the buffer is empty (bytes left in it would not wake the socket's ``select``);
    * on every PUBACK for a message we published (each app-level ack is QoS 1), paho walks all its
      outgoing messages (up to the in-flight limit and beyond) looking for a queued one to send:
      under load that walk was most of the network thread's time. Here the messages that ``publish``
      queued are remembered in order and sent from that list; paho's walk runs only when something
      is queued that the list does not know (after a reconnect, which requeues on its own).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._received = b""
        self._received_at = 0
        self._queued_mids: deque[int] = deque()

    def _sock_recv(self, bufsize: int) -> bytes:
        at = self._received_at
        if at >= len(self._received):
            data = super()._sock_recv(max(bufsize, RECV_CHUNK))
            if len(data) <= bufsize:
                self._received, self._received_at = b"", 0
                return data
            self._received, at = data, 0
        self._received_at = at + bufsize
        return self._received[at : at + bufsize]

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._received_at < len(self._received):
            rc = super().loop_read(max_packets)
        return rc

    def _sock_close(self) -> None:
        # Bytes of the old connection must never be parsed as the next one's.
        self._received, self._received_at = b"", 0
        super()._sock_close()

    def publish(
        self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False, properties: Properties | None = None
    ) -> mqtt.MQTTMessageInfo:
        info = super().publish(topic, payload, qos, retain, properties)
        if qos > 0:
            with self._out_message_mutex:
                message = self._out_messages.get(info.mid)
                if message is not None and message.state == mqtt.mqtt_ms_queued:
                    self._queued_mids.append(info.mid)
        return info

    def _update_inflight(self) -> mqtt.MQTTErrorCode:
        # Called by paho with its outgoing-message lock held, after a slot was freed.
        out = self._out_messages
        while self._queued_mids and self._inflight_messages < self._max_inflight_messages:
            message = out.get(self._queued_mids.popleft())
            if message is None or message.state != mqtt.mqtt_ms_queued:
                continue
            # As paho's own loop does for each queued message it finds.
            self._inflight_messages += 1
            message.state = mqtt.mqtt_ms_wait_for_puback if message.qos == 1 else mqtt.mqtt_ms_wait_for_pubrec
            rc = self._send_publish(
                message.mid,
                message.topic.encode("utf-8"),
                message.payload,
                message.qos,
                message.retain,
                message.dup,
                properties=message.properties,
            )
            if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
        if self._inflight_messages >= len(out):
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS  # every outgoing message is in flight
        # Anything queued that was not noted above (a reconnect requeues messages itself): paho's scan.
        return super()._update_inflight()


def fast_client_class() -> type[mqtt.Client]:
    """:class:`AckingClient` on the tested paho, else paho's own client (and a warning)."""
    if TESTED:
        return AckingClient
    _warn_untested()
    return mqtt.Client


def cap_in_flight(client: mqtt.Client, limit: int) -> None:
    """Set the QoS > 0 publishes ``client`` keeps in flight on the current connection (see the module
    docstring for why the private attribute); call from ``on_connect``."""
    if TESTED:
        client._max_inflight_messages = limit
    elif client.max_inflight_messages != limit:
        _warn_untested()


def network_thread_alive(client: mqtt.Client) -> bool:
    """paho's loop thread (``loop_start``) is running: an exception in a callback would end it.
    Unknown on an untested paho, where this answers True."""
    if not TESTED:
        return True
    thread = client._thread
    return thread is not None and thread.is_alive()
