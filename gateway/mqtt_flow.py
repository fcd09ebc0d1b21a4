"""MQTT flow control shared by the gateway's uplink and the cloud's ingest (both paho-mqtt 2 clients)."""

from __future__ import annotations

from typing import Any


def apply_receive_maximum(client: Any, wanted: int, connack_properties: Any) -> int:
    """Cap a paho client's QoS 1 publishes in flight by the broker's Receive Maximum; call from on_connect.

    MQTT 5 (3.3.4) forbids more than the server's Receive Maximum in flight: mosquitto tolerates it,
    stricter brokers disconnect with 0x93, and paho does not apply the cap itself. Its public setter
    refuses once connected, so this sets the attribute it guards, as paho's own CONNACK handling does
    with Server Keep Alive, before paho re-sends anything on the new connection.
    """
    receive_maximum = getattr(connack_properties, "ReceiveMaximum", None)
    limit = min(wanted, receive_maximum) if receive_maximum else wanted
    client._max_inflight_messages = limit
    return limit
