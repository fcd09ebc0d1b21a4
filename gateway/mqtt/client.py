"""Building and connecting paho-mqtt 2 clients: the one place the project constructs them.

A caller says what it wants in :class:`ClientOptions` (its client id, MQTT 5 or 3.1.1, whether the
broker keeps its session, credentials, TLS, limits) and keeps its own policy: callbacks, what to
subscribe, when to fall back to 3.1.1, what a refusal means to it.

Sessions: a *persistent* client keeps its subscriptions and queued QoS 1 messages across
connections. With MQTT 5 that is ``clean_start=False`` and a Session Expiry Interval (how long the
broker keeps the session after a disconnect); with 3.1.1, which has no expiry, ``clean_session=False``.
Some brokers speak 3.1.1 only (amqtt, some managed brokers): :func:`broker_speaks_v5` asks before a
client commits to one protocol, and :data:`UNSUPPORTED_PROTOCOL` is how a CONNACK says "not v5".
"""

from __future__ import annotations

import logging
import ssl
import threading
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.mqtt import paho_private
from gateway.mqtt.broker import BrokerAddress, TlsError, TlsOptions

Protocol = Literal["5", "3.1.1"]
MQTT_V5: Protocol = "5"
MQTT_V311: Protocol = "3.1.1"

# CONNACK reason codes (MQTT 5 numbering; paho maps 3.1.1 return codes onto them).
UNSUPPORTED_PROTOCOL = frozenset({1, 132})
BAD_CREDENTIALS = frozenset({4, 5, 134, 135})
RECEIVE_MAXIMUM_LIMIT = 65535
"""The largest Receive Maximum a v5 CONNECT can ask for (a two-byte integer)."""


@dataclass(frozen=True, slots=True)
class ClientOptions:
    client_id: str
    protocol: Protocol = MQTT_V5
    persistent: bool = False
    """Keep the session across connections (see the module docstring)."""
    session_expiry_s: int = 0
    """MQTT 5: how long the broker keeps a persistent session after a disconnect."""
    receive_maximum: int | None = None
    """MQTT 5: QoS > 0 messages the broker may have in flight to this client (our backpressure)."""
    keepalive_s: int = 60
    username: str | None = None
    """Overrides the broker URL's user; so does ``password``."""
    password: str | None = None
    tls: TlsOptions = field(default_factory=TlsOptions)
    max_in_flight: int | None = None
    """QoS > 0 publishes paho keeps in flight (before the broker's Receive Maximum caps it); None: paho's."""
    manual_ack: bool = False
    """Incoming QoS > 0 messages are acknowledged by the caller (``client.ack``), not on receipt."""
    fast_path: bool = False
    """Use :class:`~gateway.mqtt.paho_private.AckingClient` (a high-rate consumer that publishes many acks)."""
    logger: str | None = None
    """Name of the logger paho's own log goes to (TLS alerts, socket errors); None: not logged."""


def create_client(address: BrokerAddress, options: ClientOptions, *, userdata: Any = None) -> mqtt.Client:
    """A paho client, not yet connected; raises :class:`~gateway.mqtt.broker.TlsError` for unusable
    TLS files."""
    v5 = options.protocol == MQTT_V5
    client_class = paho_private.fast_client_class() if options.fast_path else mqtt.Client
    client = client_class(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=options.client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        # MQTT 5 sets its session at connect (clean_start); 3.1.1 only here.
        clean_session=None if v5 else not options.persistent,
        userdata=userdata,
        manual_ack=options.manual_ack,
    )
    if options.max_in_flight is not None:
        client.max_inflight_messages_set(options.max_in_flight)
    if options.logger is not None:
        client.enable_logger(logging.getLogger(options.logger))
    username = options.username or address.username
    if username:
        client.username_pw_set(username, options.password or address.password)
    tls = options.tls
    if tls.wanted(address):
        try:
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError) as err:
            raise TlsError(f"TLS files unusable: {err}") from err
    return client


def _connect_arguments(options: ClientOptions) -> dict[str, Any]:
    if options.protocol != MQTT_V5:
        return {}  # 3.1.1: the session was chosen with clean_session when the client was made
    properties = Properties(PacketTypes.CONNECT)
    if options.session_expiry_s:
        properties.SessionExpiryInterval = options.session_expiry_s
    if options.receive_maximum:
        properties.ReceiveMaximum = min(RECEIVE_MAXIMUM_LIMIT, options.receive_maximum)
    return {"clean_start": not options.persistent, "properties": properties}


def connect(client: mqtt.Client, address: BrokerAddress, options: ClientOptions) -> None:
    """Connect now (blocking: the TCP and TLS handshakes; the CONNACK comes to ``on_connect``)."""
    client.connect(address.host, address.port, options.keepalive_s, **_connect_arguments(options))


def connect_async(client: mqtt.Client, address: BrokerAddress, options: ClientOptions) -> None:
    """Connect from paho's network thread once ``loop_start`` runs (it also reconnects by itself)."""
    client.connect_async(address.host, address.port, options.keepalive_s, **_connect_arguments(options))


def disconnect(client: mqtt.Client, *, end_session: bool = False) -> None:
    """Disconnect; ``end_session`` (MQTT 5) also tells the broker to drop a persistent session now
    (Session Expiry Interval 0 on the DISCONNECT) instead of keeping it for its expiry."""
    properties = None
    if end_session:
        properties = Properties(PacketTypes.DISCONNECT)
        properties.SessionExpiryInterval = 0
    client.disconnect(properties=properties)


def apply_receive_maximum(client: mqtt.Client, wanted: int, connack_properties: Any) -> int:
    """Cap a client's QoS 1 publishes in flight by the broker's Receive Maximum; call from ``on_connect``.

    MQTT 5 (3.3.4) forbids more than the server's Receive Maximum in flight: mosquitto tolerates it,
    stricter brokers disconnect with 0x93, and paho does not apply the cap itself."""
    receive_maximum = getattr(connack_properties, "ReceiveMaximum", None)
    limit = min(wanted, receive_maximum) if receive_maximum else wanted
    paho_private.cap_in_flight(client, limit)
    return limit


def network_thread_alive(client: mqtt.Client) -> bool:
    """paho's network thread (``loop_start``) is running: an exception in a callback would end it."""
    return paho_private.network_thread_alive(client)


def broker_speaks_v5(address: BrokerAddress, options: ClientOptions, timeout_s: float = 5.0) -> bool | None:
    """True if the broker accepts an MQTT 5 CONNECT, False if it refuses it or stays silent (a 3.1.1-only
    broker), None if it cannot be reached. Connects once with ``options`` (a clean v5 session; the
    client id gets a random suffix so the probe never takes a real client's session) and disconnects."""
    probe = replace(
        options,
        client_id=f"{options.client_id}-probe-{uuid.uuid4().hex[:8]}",
        protocol=MQTT_V5,
        persistent=False,
        session_expiry_s=0,
        fast_path=False,
        manual_ack=False,
    )
    answer: dict[str, bool] = {}
    done = threading.Event()
    client = create_client(address, probe)

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        answer["v5"] = not reason_code.is_failure
        done.set()

    def on_disconnect(client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        answer.setdefault("v5", False)
        done.set()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    try:
        connect(client, address, probe)
    except OSError:
        return None
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return answer.get("v5", False)
