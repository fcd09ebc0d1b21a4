"""deploy/mosquitto on a real mosquitto: a broker client is who it authenticated as. A gateway that
logs in as itself cannot take over another gateway's or an ingest worker's client id (which would
disconnect it and take its session), cannot log in where service client ids live, and cannot
publish or read under another gateway's id."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from gateway.contract import acks_topic, readings_topic
from tests.deploy.deploy_broker import DeployMosquitto, connected_clients
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]

GW_A, GW_B, INGEST_ID = "gw-ident-a", "gw-ident-b", "ingest-ident-0"


class Probe:
    """One MQTT v5 client that records what happens to it. No automatic reconnect: a client that is
    knocked off stays off, so a takeover shows as a disconnect here."""

    def __init__(self, port: int, client_id: str, user: str, password: str) -> None:
        self.client_id = client_id
        self.connack: Any = None
        self.disconnects: list[str] = []
        self.messages: list[tuple[str, bytes]] = []
        self.pubacks: dict[int, str] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port, 30)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        if not self._connected.wait(10):
            raise AssertionError(f"{client_id}: no CONNACK")

    def _loop(self) -> None:
        # loop() rather than loop_start(): paho's loop thread reconnects by itself, which would hide a takeover.
        while self.client.loop(timeout=0.05) == mqtt.MQTT_ERR_SUCCESS:
            pass

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connack = reason
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._lock:
            self.disconnects.append(str(reason))

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload))

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            self.pubacks[mid] = str(reason)

    @property
    def accepted(self) -> bool:
        return not self.connack.is_failure

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(10), f"{self.client_id}: no SUBACK for {topic}"

    def publish(self, topic: str, payload: str) -> str:
        """Publish at QoS 1 and return the broker's PUBACK reason."""
        info = self.client.publish(topic, payload, qos=1)
        return wait_until(lambda: self.pubacks.get(info.mid), what=f"PUBACK for {topic}")

    def received(self, payload: bytes) -> bool:
        with self._lock:
            return any(p == payload for _, p in self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self._thread.join(5)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DeployMosquitto]:
    server = DeployMosquitto(tmp_path, external={GW_A: secrets.token_hex(8), GW_B: secrets.token_hex(8)},
                             internal={"ingest": secrets.token_hex(8)})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def probes() -> Iterator[list[Probe]]:
    made: list[Probe] = []
    yield made
    for probe in made:
        probe.close()


def round_trip(ingest: Probe, target: Probe, gateway_id: str) -> None:
    """The cloud's ack reaches ``target``: it is still connected and subscribed."""
    marker = f"ack-{secrets.token_hex(4)}".encode()
    reason = ingest.publish(acks_topic(gateway_id), marker.decode())
    assert reason == "Success", f"{target.client_id} has no subscription left ({reason}): {target.disconnects}"
    wait_until(lambda: target.received(marker), what=f"{target.client_id} receiving its ack")


def test_a_gateway_cannot_take_over_another_gateways_or_an_ingest_workers_client_id(broker, probes) -> None:  # type: ignore[no-untyped-def]
    passwords = broker.passwords
    gw_a = Probe(broker.external_port, GW_A, GW_A, passwords[GW_A])
    ingest = Probe(broker.internal_port, INGEST_ID, "ingest", passwords["ingest"])
    probes += [gw_a, ingest]
    gw_a.subscribe(acks_topic(GW_A))
    ingest.subscribe(f"$share/ingest/{readings_topic('+')}")

    for attempt in range(3):  # repeatedly, as an attacker would
        for victim in (GW_A, INGEST_ID):
            impostor = Probe(broker.external_port, victim, GW_B, passwords[GW_B])
            probes.append(impostor)
            # Accepted, but as itself: the broker replaced the client id it asked for with its user name.
            assert impostor.accepted
            round_trip(ingest, gw_a, GW_A)
            assert gw_a.disconnects == [], f"gateway A was knocked off (attempt {attempt}, id {victim})"
            assert ingest.disconnects == [], f"the ingest worker was knocked off (attempt {attempt})"
            # Its marker on its own topic arrives at ingest: the impostor's session is gw-b's, not the victim's.
            marker = f"from-b-{secrets.token_hex(4)}".encode()
            assert impostor.publish(readings_topic(GW_B), marker.decode()) == "Success"
            wait_until(lambda m=marker: ingest.received(m), what="the impostor's own reading at ingest")
    # The broker's own account: every connection made with gw-b's credentials was named gw-b.
    as_b = [client_id for client_id, user in connected_clients(broker.log_text()) if user == GW_B]
    assert len(as_b) == 6 and set(as_b) == {GW_B}, as_b


def test_gateway_credentials_are_refused_on_the_services_listener(broker, probes) -> None:  # type: ignore[no-untyped-def]
    # There client ids are the services' own choice, so a gateway must not get in at all.
    impostor = Probe(broker.internal_port, INGEST_ID, GW_B, broker.passwords[GW_B])
    probes.append(impostor)
    assert impostor.connack.is_failure and str(impostor.connack) == "Not authorized"
    # And a service user is unknown on the gateway listener (its client id would be forced anyway).
    service = Probe(broker.external_port, INGEST_ID, "ingest", broker.passwords["ingest"])
    probes.append(service)
    assert service.connack.is_failure


def test_a_gateway_cannot_publish_readings_or_read_acks_under_another_gateways_id(broker, probes) -> None:  # type: ignore[no-untyped-def]
    passwords = broker.passwords
    gw_a = Probe(broker.external_port, GW_A, GW_A, passwords[GW_A])
    gw_b = Probe(broker.external_port, GW_B, GW_B, passwords[GW_B])
    ingest = Probe(broker.internal_port, INGEST_ID, "ingest", passwords["ingest"])
    probes += [gw_a, gw_b, ingest]
    gw_a.subscribe(acks_topic(GW_A))
    gw_b.subscribe(acks_topic(GW_B))
    gw_b.subscribe(acks_topic(GW_A))  # granted by mosquitto; "read" is enforced on every delivery
    ingest.subscribe(f"$share/ingest/{readings_topic('+')}")

    assert gw_b.publish(readings_topic(GW_A), "forged") == "Not authorized"
    assert gw_b.publish(readings_topic(GW_B), "honest") == "Success"
    wait_until(lambda: ingest.received(b"honest"), what="gateway B's own reading at ingest")
    assert not ingest.received(b"forged")

    round_trip(ingest, gw_a, GW_A)
    # Published after A's ack: had the broker let B read A's ack, it would have reached B before this one.
    round_trip(ingest, gw_b, GW_B)
    assert [t for t, _ in gw_b.messages] == [acks_topic(GW_B)], "gateway B read gateway A's ack"
