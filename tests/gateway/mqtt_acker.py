"""A test-side stand-in for the cloud: subscribes to a gateway's readings and publishes an Ack.

Only for gateway tests that must not depend on the cloud; the fault tests end on the real ingest.
It records every reading id it saw (duplicates included) so tests can tell "every reading, once in
effect" from "every reading, exactly one delivery".
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from gateway.contract import Ack, Rejection, acks_topic, readings_topic, status_topic


class TestAcker:
    __test__ = False  # not a pytest class

    def __init__(self, host: str, port: int, gateway_id: str, *, v5: bool = True,
                 reject: Callable[[dict[str, Any]], str | None] | None = None) -> None:
        self.gateway_id = gateway_id
        self.seen: Counter[str] = Counter()
        self.batches = 0
        self.messages: list[list[str]] = []
        """The reading ids of each readings message, in arrival order."""
        self.unacked: list[Ack] = []
        """Acks held back while ``acking`` is False, for :meth:`release_held_acks`."""
        self.statuses: list[dict[str, Any]] = []
        self.acking = True
        self._reject = reject
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"acker-{uuid.uuid4().hex[:8]}",
                                   protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.connect(host, port, 30)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("test acker did not subscribe within 10 s")

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe([(readings_topic(self.gateway_id), 1), (status_topic(self.gateway_id), 1)])

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            data = json.loads(message.payload)
        except ValueError:
            return  # an empty retained message (a cleared status)
        if "readings" not in data:
            with self._lock:
                self.statuses.append(data)
            return
        accepted, rejected = [], []
        for reading in data["readings"]:
            reason = self._reject(reading) if self._reject else None
            if reason:
                rejected.append(Rejection(id=reading["id"], reason=reason))
            else:
                accepted.append(reading["id"])
        with self._lock:
            self.batches += 1
            self.messages.append([r["id"] for r in data["readings"]])
            self.seen.update(r["id"] for r in data["readings"])
            acking = self.acking
        ack = Ack(batch_id=data["batch_id"], accepted=accepted, rejected=rejected)
        if acking:
            client.publish(acks_topic(self.gateway_id), ack.model_dump_json(), qos=1)
        else:
            with self._lock:
                self.unacked.append(ack)

    def release_held_acks(self) -> int:
        """Publish the acks held back while not acking (the cloud catching up)."""
        with self._lock:
            held, self.unacked = self.unacked, []
        for ack in held:
            self._client.publish(acks_topic(self.gateway_id), ack.model_dump_json(), qos=1).wait_for_publish(5)
        return len(held)

    def ids(self) -> set[str]:
        with self._lock:
            return set(self.seen)

    def last_status(self) -> dict[str, Any] | None:
        with self._lock:
            return self.statuses[-1] if self.statuses else None

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
