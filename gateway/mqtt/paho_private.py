"""PAHO PRIVATE ATTRIBUTES: every use of paho-mqtt internals in this project is in this module.

paho's public API cannot do two things we need:

* **the ingest fast path** (:class:`AckingClient`): fewer ``recv`` calls per packet, no walk over
  every outgoing message on each PUBACK, and no property objects for the packets that carry none,
  the costs that dominated paho's network thread under load (profiled with py-spy). It overrides
  ``_sock_recv``, ``_sock_close``, ``_update_inflight``, ``_handle_publish`` and
  ``_handle_pubackcomp`` and reads ``_in_packet``, ``_protocol``, ``_manual_ack``, ``_out_messages``,
  ``_out_message_mutex``, ``_inflight_messages``, ``_max_inflight_messages``, ``_send_publish``,
  ``_send_puback``, ``_do_on_publish`` and ``_handle_on_message``;
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
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

TESTED_MAJOR = 2
PAHO_VERSION: str = paho.mqtt.__version__
TESTED = PAHO_VERSION.split(".", 1)[0] == str(TESTED_MAJOR)
"""paho is of the major version this module was checked against: its private attributes may be used."""

RECV_CHUNK = 256 * 1024
WRITE_CHUNK = 64 * 1024
"""Bytes of queued packets joined into one ``send`` (a commit's PUBACKs and app acks go out together)."""
NO_PUBLISH_PROPERTIES = Properties(PacketTypes.PUBLISH)
"""The properties of every received PUBLISH that carried none (shared: read them, never set them)."""
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_NO_PUBACK_PROPERTIES = Properties(PacketTypes.PUBACK)


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
    * for each PUBLISH (MQTT 5) and each PUBACK paho builds property and reason-code objects, about a
      tenth of ingest's CPU per message: a QoS 1 PUBLISH whose property length is 0 and a PUBACK that
      says Success with no properties (what brokers send on the hot path) are decoded here without
      them; anything else goes through paho's own decoding, which judges it (malformed packets included);
    * paho writes each outgoing packet with its own ``send``, and with ``loop_start`` every packet
      queued from another thread also costs a wake-up byte to the loop's socket pair: a commit of N
      messages answers with 2N packets (PUBACKs and app acks). Here a wake-up is sent only when the
      queue was empty (the loop drains all of it once awake), and runs of PUBACKs and QoS > 0
      PUBLISHes are joined into one ``send`` of up to :data:`WRITE_CHUNK` bytes;
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

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        header, packet = self._in_packet["command"], self._in_packet["packet"]
        if header & 0x06 != 0x02 or self._protocol != mqtt.MQTTv5:
            return super()._handle_publish()
        # Topic length, topic, packet id, property length (a 0 byte when there are none), payload.
        size = len(packet)
        topic_end = 2 + ((packet[0] << 8) | packet[1]) if size >= 2 else size
        if topic_end == 2 or topic_end + 3 > size or packet[topic_end + 2] != 0:
            return super()._handle_publish()  # empty topic (an alias), properties, or malformed: paho judges
        mid = (packet[topic_end] << 8) | packet[topic_end + 1]
        message = mqtt.MQTTMessage(mid=mid, topic=bytes(packet[2:topic_end]))
        message.dup = bool(header & 0x08)
        message.qos = 1
        message.retain = bool(header & 0x01)
        message.properties = NO_PUBLISH_PROPERTIES
        message.payload = bytes(packet[topic_end + 3 :])
        message.timestamp = mqtt.time_func()
        self._handle_on_message(message)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS if self._manual_ack else self._send_puback(mid)

    def _handle_pubackcomp(self, cmd: Any) -> mqtt.MQTTErrorCode:
        packet = self._in_packet["packet"]
        # Mid only, or (MQTT 5) mid + reason Success (+ a 0 property length): nothing to decode but the
        # mid. With an on_publish callback set, paho's own objects go to it.
        plain = len(packet) == 2 or (
            self._protocol == mqtt.MQTTv5 and len(packet) in (3, 4) and not any(packet[2:]))
        if cmd != "PUBACK" or not plain or self.on_publish is not None:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PUBACK_PROPERTIES)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: mqtt.MQTTMessageInfo | None = None) -> mqtt.MQTTErrorCode:
        if self._thread is None or self._on_socket_register_write is not None:
            return super()._packet_queue(command, packet, mid, qos, info)
        out = self._out_packet
        # The loop thread selects for writing while the queue is non-empty and drains it whole once
        # awake: only the append that makes the queue non-empty has to wake it.
        wake = not out
        out.append({"command": command, "mid": mid, "qos": qos, "pos": 0, "to_process": len(packet),
                    "packet": packet, "info": info})
        if wake and self._sockpairW is not None:
            try:
                self._sockpairW.send(mqtt.sockpair_data)
            except BlockingIOError:
                pass
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_write(self) -> mqtt.MQTTErrorCode:
        out = self._out_packet
        while len(out) > 1 and _joinable(out[0]) and _joinable(out[1]):
            run, size = [], 0
            while out and size < WRITE_CHUNK and _joinable(out[0]):
                packet = out.popleft()
                run.append(packet)
                size += packet["to_process"]
            try:
                sent = self._sock_send(b"".join(p["packet"][p["pos"]:] for p in run))
            except (AttributeError, ValueError):
                out.extendleft(reversed(run))
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
            except BlockingIOError:
                out.extendleft(reversed(run))
                return mqtt.MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                out.extendleft(reversed(run))
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to send on socket: %s", err)
                return mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST
            for index, packet in enumerate(run):
                if sent >= packet["to_process"]:
                    sent -= packet["to_process"]
                    packet["pos"] += packet["to_process"]
                    packet["to_process"] = 0
                    continue
                # The socket took part of the run: the rest goes back, first in line, as paho keeps it.
                packet["pos"] += sent
                packet["to_process"] -= sent
                out.extendleft(reversed(run[index:]))
                break
            else:
                continue
            break
        return super()._packet_write()

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


def _joinable(packet: Any) -> bool:
    """Nothing happens when this packet is written but the write (paho's ``_packet_write`` acts on a
    written QoS 0 PUBLISH and a DISCONNECT only)."""
    kind = packet["command"] & 0xF0
    return kind == mqtt.PUBACK or (kind == mqtt.PUBLISH and packet["qos"] > 0)


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
