"""The ingest fast path decodes the common PUBLISH and PUBACK itself (gateway/mqtt/paho_private.py): for
every packet it must do exactly what paho's own decoding does, or hand the packet to paho."""

from __future__ import annotations

import struct
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.mqtt import paho_private

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not paho_private.TESTED, reason="the fast path exists on the tested paho only"),
]


def _client(cls: type[mqtt.Client], protocol: int = mqtt.MQTTv5) -> tuple[mqtt.Client, list[mqtt.MQTTMessage]]:
    client = cls(mqtt.CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol, manual_ack=True)
    received: list[mqtt.MQTTMessage] = []
    client.on_message = lambda c, u, m: received.append(m)
    return client, received


def _feed_publish(client: mqtt.Client, header: int, body: bytes) -> Any:
    client._in_packet = {"command": header, "have_remaining": 1, "remaining_count": [], "remaining_mult": 1,
                         "remaining_length": len(body), "packet": bytearray(body), "to_process": 0, "pos": 0}
    try:
        return client._handle_publish()
    except Exception as err:  # paho's MalformedPacket, compared by type below
        return type(err)


def _publish_body(topic: bytes, mid: int | None, properties: bytes | None, payload: bytes) -> bytes:
    body = struct.pack("!H", len(topic)) + topic
    if mid is not None:
        body += struct.pack("!H", mid)
    if properties is not None:
        body += properties
    return body + payload


def _same(ours: mqtt.MQTTMessage, theirs: mqtt.MQTTMessage) -> None:
    assert (ours.mid, ours._topic, ours.payload, ours.qos, ours.dup, ours.retain) == (
        theirs.mid, theirs._topic, theirs.payload, theirs.qos, theirs.dup, theirs.retain)
    assert type(ours.payload) is bytes
    assert ours.properties.json() == theirs.properties.json()


def _with_user_property() -> bytes:
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("k", "v")
    return props.pack()


@pytest.mark.parametrize(
    ("header", "body"),
    [
        (0x32, _publish_body(b"rpm/v1/gw/g1/readings", 7, b"\x00", b'{"v":1}')),
        (0x3B, _publish_body(b"rpm/v1/gw/g1/readings", 65535, b"\x00", b"")),  # dup, retain, empty payload
        (0x32, _publish_body(b"rpm/v1/gw/g1/readings", 9, _with_user_property(), b"x")),  # properties: paho
        (0x30, _publish_body(b"a/b", None, b"\x00", b"qos0")),  # QoS 0: paho
        (0x32, _publish_body(b"", 3, b"\x03\x23\x00\x01", b"alias")),  # empty topic with an alias: paho
        (0x32, _publish_body(b"\xff\xfe", 4, b"\x00", b"bad utf-8 topic")),
    ],
)
def test_a_publish_is_decoded_as_paho_decodes_it(header: int, body: bytes) -> None:
    ours, ours_got = _client(paho_private.AckingClient)
    theirs, theirs_got = _client(mqtt.Client)
    assert _feed_publish(ours, header, body) == _feed_publish(theirs, header, body)
    assert len(ours_got) == len(theirs_got)
    for a, b in zip(ours_got, theirs_got, strict=True):
        _same(a, b)


@settings(max_examples=300, deadline=None)
@given(header=st.sampled_from([0x30, 0x32, 0x34, 0x3A, 0x33]), body=st.binary(max_size=40))
def test_any_bytes_get_the_same_answer_as_from_paho(header: int, body: bytes) -> None:
    for protocol in (mqtt.MQTTv5, mqtt.MQTTv311):
        ours, ours_got = _client(paho_private.AckingClient, protocol)
        theirs, theirs_got = _client(mqtt.Client, protocol)
        assert _feed_publish(ours, header, body) == _feed_publish(theirs, header, body)
        assert len(ours_got) == len(theirs_got)
        for a, b in zip(ours_got, theirs_got, strict=True):
            _same(a, b)


@pytest.mark.parametrize("puback", [b"\x00\x01", b"\x00\x01\x00", b"\x00\x01\x00\x00", b"\x00\x01\x10",
                                    b"\x00\x01\x00\x03\x1f\x00\x00"])
def test_a_puback_completes_the_publish_it_names(puback: bytes) -> None:
    answers = []
    for cls in (paho_private.AckingClient, mqtt.Client):
        client, _ = _client(cls)
        info = client.publish("rpm/v1/gw/g1/acks", b"ack", qos=1)  # queued: not connected
        client._out_messages[info.mid].state = mqtt.mqtt_ms_wait_for_puback
        client._inflight_messages = 1
        client._in_packet = {"command": 0x40, "packet": bytearray(puback[:0] + bytes([0, info.mid]) + puback[2:])}
        rc = client._handle_pubackcomp("PUBACK")
        answers.append((rc, info._published, info.mid in client._out_messages, client._inflight_messages))
    assert answers[0] == answers[1]
    assert answers[0][1] is True  # every one of these names the message: it is done


def test_with_an_on_publish_callback_paho_decodes_the_puback() -> None:
    client, _ = _client(paho_private.AckingClient)
    seen: list[Any] = []
    client.on_publish = lambda c, u, mid, reason, props: seen.append((mid, reason, props))
    info = client.publish("t", b"x", qos=1)
    client._out_messages[info.mid].state = mqtt.mqtt_ms_wait_for_puback
    client._in_packet = {"command": 0x40, "packet": bytearray(bytes([0, info.mid]))}
    client._handle_pubackcomp("PUBACK")
    assert seen and seen[0][0] == info.mid and seen[0][2] is not paho_private._NO_PUBACK_PROPERTIES


def _connected_pair(cls: type[mqtt.Client]) -> tuple[mqtt.Client, Any]:
    import socket

    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # small: writes come back partial
    ours.setblocking(False)
    client, _ = _client(cls)
    client._sock = ours
    return client, peer


def _drain(peer: Any, until: int) -> bytes:
    got = b""
    peer.settimeout(2)
    while len(got) < until:
        got += peer.recv(1 << 20)
    return got


def test_queued_packets_go_out_whole_and_in_order_even_when_the_socket_takes_part_of_them() -> None:
    written: list[bytes] = []
    for cls in (paho_private.AckingClient, mqtt.Client):
        client, peer = _connected_pair(cls)
        client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
        # As under loop_start: queued from "another thread", written by the loop (here, by hand).
        client._thread = threading.current_thread()
        for mid in range(1, 400):
            client.ack(mid, 1)  # PUBACKs (manual ack)
            client.publish(f"rpm/v1/gw/g{mid}/acks", b"a" * (mid % 7 * 300), qos=1)
        client.publish("t/qos0", b"zero", qos=0)  # paho's own handling at the end
        expected = sum(p["to_process"] for p in client._out_packet)
        received = b""
        while client._out_packet:
            rc = client._packet_write()
            assert rc in (mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS, mqtt.MQTTErrorCode.MQTT_ERR_AGAIN)
            peer.setblocking(False)
            try:
                received += peer.recv(1 << 20)
            except BlockingIOError:
                pass
        received += _drain(peer, expected - len(received)) if len(received) < expected else b""
        assert len(received) == expected
        written.append(received)
        client._thread = None
        client._sock.close()
        peer.close()
    assert written[0] == written[1]  # byte for byte what paho itself writes
