"""Test helpers: a gateway that publishes contract batches over real MQTT and collects its acks."""

from __future__ import annotations

import itertools
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt

from gateway.contract import Ack, Batch, Reading, acks_topic, compute_reading_id, readings_topic
from gateway.metrics import METRICS

_sequence = itertools.count(1)


def bp_reading(device_uid: str, *, systolic: float = 128, diastolic: float = 82, user_index: int | None = None,
               measured_at: datetime | None = None, sequence: int | None = None) -> Reading:
    sequence = next(_sequence) if sequence is None else sequence
    now = datetime.now(UTC)
    return Reading(
        id=compute_reading_id(device_uid, "blood_pressure", user_index, sequence=sequence),
        device={"uid": device_uid, "transport": "ble", "profile": "ble.blood_pressure", "model": "UA-651"},
        user_index=user_index, kind="blood_pressure", measured_at=measured_at or now - timedelta(seconds=5),
        received_at=now, clock={"judgement": "device"}, sequence=sequence,
        values={"systolic": {"value": systolic, "unit": METRICS["systolic"].unit},
                "diastolic": {"value": diastolic, "unit": METRICS["diastolic"].unit},
                "pulse_rate": {"value": 70, "unit": METRICS["pulse_rate"].unit}},
        raw="1e8000520050000000",
    )


class Gateway:
    """One simulated gateway: publishes on its readings topic (QoS 1) and records the acks it gets."""

    def __init__(self, host: str, port: int, gateway_id: str, *, v5: bool = True,
                 password: str | None = None) -> None:
        self.gateway_id = gateway_id
        self.acks: list[Ack] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{gateway_id}-{uuid.uuid4().hex[:4]}",
                                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        self.client.max_inflight_messages_set(1000)
        if password is not None:
            self.client.username_pw_set(gateway_id, password)

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            with self._lock:
                self.acks.append(Ack.model_validate_json(message.payload))

        self.client.on_message = on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(host, port, 30)
        self.client.subscribe(acks_topic(gateway_id), qos=1)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise AssertionError("gateway did not subscribe to its acks")

    def batch(self, readings: list[Reading], batch_id: str | None = None) -> Batch:
        return Batch(gateway_id=self.gateway_id, batch_id=batch_id or f"b-{uuid.uuid4().hex[:12]}",
                     sent_at=datetime.now(UTC), readings=readings)

    def publish(self, payload: bytes | str | Batch, topic: str | None = None) -> None:
        if isinstance(payload, Batch):
            payload = payload.model_dump_json()
        info = self.client.publish(topic or readings_topic(self.gateway_id), payload, qos=1)
        info.wait_for_publish(10)

    def acks_for(self, batch_id: str) -> list[Ack]:
        with self._lock:
            return [a for a in self.acks if a.batch_id == batch_id]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


QUEUEING_BEGIN, QUEUEING_END = "# --- queueing", "# --- end queueing"


def deploy_queueing_section(config_text: str) -> str:
    """The queueing section of deploy/mosquitto/mosquitto.conf (what keeps a burst from being dropped)."""
    start = config_text.index(QUEUEING_BEGIN)
    return config_text[start:config_text.index(QUEUEING_END, start)]
