"""A minimal MQTT 5 server that enforces what mosquitto only advertises: its Receive Maximum.

mosquitto sends Receive Maximum in CONNACK and then accepts any number of QoS 1 publishes; brokers
that follow MQTT 5 §3.3.4 strictly (EMQX, HiveMQ) disconnect a client that exceeds it. This server
never acknowledges a client's publish (so every one stays in flight), counts them, and records each
one over its Receive Maximum where a strict broker would disconnect; it can also deliver QoS 1
publishes to a client that subscribed.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from cloud.embedded import free_port

CONNECT, CONNACK, PUBLISH, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 8, 9, 12, 13, 14
RECEIVE_MAXIMUM = 0x21


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _varint(len(body)) + body


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _varint_at(data: bytes, at: int) -> tuple[int, int]:
    """The variable byte integer at ``at`` and the offset after it."""
    value, shift = 0, 0
    while True:
        digit = data[at]
        at += 1
        value |= (digit & 0x7F) << shift
        shift += 7
        if not digit & 0x80:
            return value, at


def _read_packet(sock: socket.socket) -> tuple[int, int, bytes]:
    first = _read_exact(sock, 1)[0]
    length_bytes = _read_exact(sock, 1)
    while length_bytes[-1] & 0x80:
        length_bytes += _read_exact(sock, 1)
    length, _ = _varint_at(length_bytes, 0)
    return first >> 4, first & 0x0F, _read_exact(sock, length)


class StrictBroker:
    def __init__(self, receive_maximum: int) -> None:
        self.receive_maximum = receive_maximum
        self.host = "127.0.0.1"
        self.port = free_port()
        self.received = 0
        """QoS 1 publishes received from clients, none of them ever acknowledged."""
        self.subscribed = threading.Event()
        self.violations: list[str] = []
        self._clients: list[socket.socket] = []
        self._subscribers: list[socket.socket] = []
        self._lock = threading.Lock()
        self._next_id = 1
        self._listener = socket.create_server((self.host, self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="strict-broker").start()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def deliver(self, topic: str, payload: bytes) -> None:
        """Send a QoS 1 publish to every client that subscribed (the client's PUBACK is ignored)."""
        with self._lock:
            packet_id, self._next_id = self._next_id, self._next_id % 65535 + 1
            name = topic.encode()
            body = struct.pack("!H", len(name)) + name + struct.pack("!H", packet_id) + b"\x00" + payload
            for sock in self._subscribers:
                sock.sendall(_packet(PUBLISH << 4 | 0b0010, body))

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in self._clients:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self._clients.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        in_flight = 0
        try:
            while True:
                kind, flags, body = _read_packet(sock)
                if kind == CONNECT:
                    props = bytes([RECEIVE_MAXIMUM]) + struct.pack("!H", self.receive_maximum)
                    sock.sendall(_packet(CONNACK << 4, b"\x00\x00" + _varint(len(props)) + props))
                elif kind == SUBSCRIBE:
                    (packet_id,) = struct.unpack_from("!H", body)
                    props_len, at = _varint_at(body, 2)
                    at, filters = at + props_len, 0
                    while at < len(body):
                        (name_len,) = struct.unpack_from("!H", body, at)
                        at += 2 + name_len + 1
                        filters += 1
                    sock.sendall(_packet(SUBACK << 4, struct.pack("!H", packet_id) + b"\x00" + b"\x01" * filters))
                    with self._lock:
                        self._subscribers.append(sock)
                    self.subscribed.set()
                elif kind == PUBLISH and (flags >> 1) & 0b11:
                    (name_len,) = struct.unpack_from("!H", body)
                    in_flight += 1
                    with self._lock:
                        self.received += 1
                    if in_flight > self.receive_maximum:
                        self.violations.append(f"{in_flight} QoS 1 publishes in flight on "
                                               f"{body[2:2 + name_len].decode()}")
                elif kind == PINGREQ:
                    sock.sendall(_packet(PINGRESP << 4, b""))
                elif kind == DISCONNECT:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            with self._lock:
                if sock in self._subscribers:
                    self._subscribers.remove(sock)
            with contextlib.suppress(OSError):
                sock.close()
