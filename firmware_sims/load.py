"""``rpm-sim load``: G simulated gateways publish realistic readings over real MQTT; a JSON report says
what was stored, lost and duplicated, the throughput, and publish→commit and ack latencies.

Several publisher processes (one Python process tops out near 9 500 QoS 1 messages/s) each own a
share of the gateways, one MQTT connection per gateway, as in the field. Readings are built with the
contract once per device (a few value variants), validated, and then stamped per message with a
fresh deterministic id and times by string substitution, so the generator is not the bottleneck.
``received_at`` carries the publish instant: the cloud stores it beside its own ``stored_at``
(commit time), which is where the publish→commit latency comes from. Ingest must be running.

Each simulated gateway delivers like ``gateway/store/uplink.py``, so the report measures loss under broker,
ingest and database faults rather than the generator's own:

- a persistent MQTT v5 session (``clean_start`` on the first connect only, a session expiry), so the
  cloud's acks published while it was away still arrive; reconnects with jittered exponential backoff;
- a batch stays *unacknowledged* until the cloud's app-level ack (published after its commit) names
  it; the broker's PUBACK proves nothing (a broker that crashes loses what it had not saved). paho
  itself re-sends what the broker never PUBACKed after a reconnect;
- a batch that has waited for its ack is sent again (the same readings, byte for byte: a changed
  copy would be an id conflict), once its gateway's acks show it is not merely queued behind a
  backlog: no ack at all for that long (the cloud or the broker went away), or a batch sent that
  much later already acked (it was overtaken: lost on the way). "That long" is ``ack_timeout_s``,
  or longer while acks are taking longer (TCP's retransmission timeout, RFC 6298: smoothed ack time
  plus four deviations, only batches sent once sampled, doubled after each round of re-sends into
  silence). The generator offers a fixed rate, often beyond what ingest drains: a fixed timeout
  would re-send a backlog still queued in the broker and multiply the load it is measuring;
- each gateway keeps at most ``WINDOW`` batches awaiting the broker's PUBACK (or the broker's Receive
  Maximum); what it generates beyond that waits in its own queue, as in a gateway's outbox, and the
  readings' ``received_at`` (their generation time) makes that wait part of publish -> commit.

The report counts by the database, never by the generator's own bookkeeping: ``lost`` is readings
generated whose id is not stored after the settle time (0 or more, never negative); ``duplicates``
is rows beyond one per device record (device, user index, kind, sequence number: every record the
generator makes has one) plus observation rows beyond one per reading and metric. A batch acked
twice, or a reading sent twice and stored once, is not a duplicate: that is what ids are for; they
are counted as ``acks_repeated`` and ``resent``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.contract import Batch, Reading, acks_topic, compute_reading_id, readings_topic
from gateway.metrics import METRICS
from gateway.mqtt.backoff import ExponentialBackoff

LATENCY_SAMPLE = 20_000
"""Ack latencies each publisher keeps (a uniform reservoir sample) for the percentiles."""
SEQUENCE_BASE = 100
"""Generated readings' sequence numbers start above the template variants' own."""
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.2, 5.0
RECONNECT = ExponentialBackoff(RECONNECT_MIN_S, RECONNECT_MAX_S, jitter=(0.5, 1.0))
CONNACK_TIMEOUT_S = 10.0
MAINTENANCE_S = 0.2
"""How often a publisher looks for connections to re-open and batches to send again."""
WINDOW = 2000
"""Batches in flight (awaiting the broker's PUBACK) per gateway, or the broker's Receive Maximum if lower.
The generator keeps the window itself and hands paho no more: paho, when it holds messages queued
behind its own in-flight limit, walks all of its outgoing messages on every PUBACK, which at tens of
thousands queued made reading acks (and so the report's ack latency) minutes late."""
MAX_BURST = 500
"""Messages published between two services of the connections, however far behind schedule: acks and
PUBACKs are read while publishing (paho's in-flight window moves, and silence means silence)."""
MAX_BACKOFF = 16
DEAF_GAP_S = 1.0
"""A publisher that did not service its connections for this long (busy, or descheduled on a loaded
machine) did not hear its acks: that gap never counts as the cloud being quiet."""
GATEWAY_ID_FIELD = "{gateway_id}"
INFINITY = float("inf")


class LoadError(RuntimeError):
    """The load run cannot start (the broker is unreachable or refuses a gateway's login)."""


@dataclass(frozen=True, slots=True)
class LoadPlan:
    run_id: str
    host: str
    port: int
    gateways: int
    rate: float
    """Readings per second, all gateways together."""
    duration_s: float
    batch: int
    processes: int
    settle_s: float
    username: str | None = None
    """MQTT user; ``{gateway_id}`` in it becomes each gateway's own id (a broker that forces client id =
    user name, as deploy/mosquitto does, needs one user per gateway)."""
    password: str | None = None
    patients: bool = False
    """Assign each gateway's cuff to a patient of its own first, so ingest runs the twin and alert hooks
    on every reading (publish -> commit then includes them); else the readings wait unassigned."""
    ack_timeout_s: float = 30.0
    """A batch unacknowledged this long is sent again (see the module docstring for when)."""
    session_expiry_s: int = 600
    """MQTT v5 session expiry: how long the broker keeps queuing acks for a gateway that is away. A
    clean end of the run closes the sessions; this bounds what a crashed run leaves behind."""
    protocol: str = "auto"
    """``"5"`` or ``"3.1.1"`` (a broker such as the demo's amqtt that refuses v5): :func:`run_load`
    resolves ``"auto"`` by asking the broker once, as ingest does."""

    def gateway_id(self, index: int) -> str:
        return f"load-{self.run_id}-{index:04d}"

    def username_for(self, gateway_id: str) -> str | None:
        return self.username.replace(GATEWAY_ID_FIELD, gateway_id) if self.username else None


def cuff_uid(gateway_id: str) -> str:
    return f"ble:{gateway_id}:cuff"


def reading_ids(gateway_id: str, count: int) -> list[str]:
    """The ids of the first ``count`` readings a simulated gateway generates (its whole run)."""
    device_uid = cuff_uid(gateway_id)
    return [compute_reading_id(device_uid, "blood_pressure", None, sequence=SEQUENCE_BASE + n)
            for n in range(1, count + 1)]


@dataclass(slots=True)
class PublisherReport:
    readings_sent: int = 0
    """Readings generated and published once (re-sends are counted apart)."""
    batches_sent: int = 0
    batches_acked: int = 0
    readings_accepted: int = 0
    readings_rejected: int = 0
    batches_resent: int = 0
    readings_resent: int = 0
    acks_repeated: int = 0
    """Acks for a batch already acked (its re-sent copy, or a redelivery): not a duplicate."""
    acks_malformed: int = 0
    readings_unacked: int = 0
    """Readings whose batch had no ack yet when the publisher stopped (they may still be stored)."""
    reconnects: int = 0
    connect_failures: int = 0
    ack_timeout_end_s: float = 0.0
    """The ack timeout the publisher had arrived at by the end (see ``_Publisher.ack_timeout``)."""
    publish_s: float = 0.0
    ack_latencies_ms: list[float] = field(default_factory=list)
    """From a batch's first publish to its ack (re-sends included: what a gateway waits)."""
    behind_schedule_ms: float = 0.0
    """How far the publisher fell behind its schedule at the end (it could not reach the rate)."""
    generated: dict[int, int] = field(default_factory=dict)
    """Readings generated per gateway index (their ids follow: :func:`reading_ids`)."""
def _templates(gateway_id: str, variants: int = 8) -> tuple[str, list[str]]:
    """Reading JSON templates (``%(id)s``, ``%(measured)s``, ``%(received)s``) for this gateway's cuff."""
    device_uid = cuff_uid(gateway_id)
    rng = random.Random(gateway_id)
    templates = []
    for variant in range(variants):
        now = datetime.now(UTC)
        systolic, diastolic = rng.randint(105, 165), rng.randint(62, 98)
        reading = Reading(
            id=compute_reading_id(device_uid, "blood_pressure", None, sequence=variant),
            device={"uid": device_uid, "transport": "ble", "profile": "ble.blood_pressure",
                    "model": "UA-651BLE", "manufacturer": "A&D"},
            kind="blood_pressure", measured_at=now - timedelta(seconds=3), received_at=now,
            clock={"judgement": "corrected", "offset_s": round(rng.uniform(-40, 40), 1)}, sequence=variant,
            values={"systolic": {"value": systolic, "unit": METRICS["systolic"].unit},
                    "diastolic": {"value": diastolic, "unit": METRICS["diastolic"].unit},
                    "mean_arterial": {"value": round((systolic + 2 * diastolic) / 3, 1),
                                               "unit": METRICS["mean_arterial"].unit},
                    "pulse_rate": {"value": rng.randint(55, 95), "unit": METRICS["pulse_rate"].unit}},
            raw=os.urandom(19).hex(),
        )
        text = reading.model_dump_json().replace("%", "%%")
        text = text.replace(reading.id, "%(id)s").replace(f'"sequence":{variant},', '"sequence":%(seq)d,')
        text = text.replace(json.dumps(reading.measured_at.isoformat().replace("+00:00", "Z"))[1:-1], "%(measured)s")
        text = text.replace(json.dumps(reading.received_at.isoformat().replace("+00:00", "Z"))[1:-1], "%(received)s")
        if not all(f"%({key})" in text for key in ("id", "seq", "measured", "received")):
            raise RuntimeError("could not find id, sequence and times in the reading JSON (serialisation changed?)")
        templates.append(text)
    return device_uid, templates


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


class _SimulatedGateway:
    """One gateway of a publisher process: its MQTT connection, its cuff's templates, and every batch
    it sent that the cloud has not acknowledged yet (oldest send first)."""

    __slots__ = ("client", "connected", "connecting_since", "connects", "counter", "device_uid", "gateway_id",
                 "in_flight", "index", "last_ack_at", "newest_acked_first", "next_attempt", "reconnect_failures",
                 "refused", "templates", "topic", "unacked", "waiting", "window")

    def __init__(self, plan: LoadPlan, index: int) -> None:
        self.index = index
        self.gateway_id = plan.gateway_id(index)
        self.device_uid, self.templates = _templates(self.gateway_id)
        self.topic = readings_topic(self.gateway_id)
        self.client: Any = None
        self.counter = 0
        """Readings generated so far; reading n has sequence number SEQUENCE_BASE + n."""
        self.unacked: OrderedDict[str, list[Any]] = OrderedDict()
        """batch id -> [first sent (the readings' publish instant), last sent, first reading's counter,
        readings, times re-sent]. Oldest last send first; a batch still waiting for a slot in the window is last, with
        last sent = infinity (it has not been sent)."""
        self.waiting: deque[str] = deque()
        """Batches generated while the window was full, in order (the gateway's outbox backlog)."""
        self.in_flight = 0
        self.window = WINDOW
        self.connected = False
        self.connects = 0
        self.connecting_since: float | None = None
        self.next_attempt = 0.0
        self.reconnect_failures = 0
        self.last_ack_at = 0.0
        self.newest_acked_first = 0.0
        """First-send time of the newest batch acked: a batch first sent long after one still waiting
        overtook it. (Not the last send: a re-sent batch whose original is acked would make every
        batch behind it look overtaken and start a cascade of re-sends.)"""
        self.refused: str | None = None

    def readings(self, first: int, count: int, at: float) -> list[str]:
        """The JSON of readings ``first`` .. ``first + count - 1`` published at ``at``: the same arguments
        give the same bytes, so a re-sent batch carries exactly the readings first sent."""
        received, measured = _iso(at), _iso(at - 3)
        templates, device_uid = self.templates, self.device_uid
        out = []
        for n in range(first, first + count):
            seq = SEQUENCE_BASE + n
            reading_id = compute_reading_id(device_uid, "blood_pressure", None, sequence=seq)
            out.append(templates[seq % len(templates)] % {"id": reading_id, "seq": seq, "measured": measured,
                                                          "received": received})
        return out


def _publisher(plan: LoadPlan, index: int, results: Any, start_at: float) -> None:
    """One publisher process: gateways index, index + P, index + 2P, … of the plan. Always reports."""
    try:
        _Publisher(plan, index).run(results, start_at)
    except Exception as err:  # reported to the parent, which fails the run with it
        results.put((index, {"error": f"{type(err).__name__}: {err}"}))


class _Publisher:
    """No network threads: one thread writes each message itself and services every connection
    between ticks (a loop thread per client costs a wake-up and a context switch per message, which on
    two cores starves the broker and ingest being measured). paho's callbacks therefore run on this
    thread too, and nothing here needs a lock."""

    def __init__(self, plan: LoadPlan, index: int) -> None:
        self.plan = plan
        self.index = index
        self.report = PublisherReport()
        self.gateways = [_SimulatedGateway(plan, g) for g in range(index, plan.gateways, plan.processes)]
        self._acks_seen = 0
        self._last_service = time.monotonic()
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._backoff = 1

    # ------------------------------------------------------------------------------ connections

    def _connect(self, gw: _SimulatedGateway) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        v5 = self.plan.protocol != "3.1.1"
        # 3.1.1 has no session expiry nor clean-start-first-only: a kept session (clean_session=False)
        # is what lets acks published while a gateway is away still reach it; run ids are fresh.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=gw.gateway_id,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, userdata=gw,
                             **({} if v5 else {"clean_session": False}))
        username = self.plan.username_for(gw.gateway_id)
        if username:
            client.username_pw_set(username, self.plan.password)
        client.max_inflight_messages_set(0)  # no limit in paho: the window is kept here (see WINDOW)
        client.connect_timeout = 2.0  # a blocking TCP connect stalls every gateway of this process
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_ack
        client.on_publish = self._on_puback
        gw.client = client
        gw.connecting_since = time.monotonic()
        if not v5:
            client.connect(self.plan.host, self.plan.port, 30)
            return
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.plan.session_expiry_s
        # Clean on the first connect only (nothing of an earlier run under this id is ours), persistent after.
        client.connect(self.plan.host, self.plan.port, 30, clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                       properties=properties)

    def _on_connect(self, client: Any, gw: _SimulatedGateway, flags: Any, reason: Any, properties: Any) -> None:
        gw.connecting_since = None
        if reason.is_failure:
            gw.refused = str(reason)
            return
        gw.refused = None
        gw.connects += 1
        gw.connected = True
        gw.reconnect_failures = 0
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        gw.window = min(WINDOW, receive_maximum) if receive_maximum else WINDOW
        # A fresh connection gets a whole ack timeout (paho has just re-sent what lacked a PUBACK).
        gw.last_ack_at = time.time()
        # Again on every connect: a broker that lost its state (a crash before its autosave) lost this too.
        client.subscribe(acks_topic(gw.gateway_id), qos=1)

    def _on_disconnect(self, client: Any, gw: _SimulatedGateway, flags: Any, reason: Any, properties: Any) -> None:
        gw.connected = False
        gw.connecting_since = None
        gw.reconnect_failures += 1
        gw.next_attempt = time.monotonic() + RECONNECT.delay(gw.reconnect_failures)

    def _reconnect_due(self, now: float) -> None:
        for gw in self.gateways:
            if gw.connected:
                continue
            if gw.connecting_since is not None:
                if now - gw.connecting_since < CONNACK_TIMEOUT_S:
                    continue
                gw.connecting_since = None  # the broker took the TCP connection but never answered
            if now < gw.next_attempt:
                continue
            gw.connecting_since = now
            try:
                gw.client.reconnect()
            except OSError:
                self.report.connect_failures += 1
                self._on_disconnect(gw.client, gw, None, None, None)

    # ------------------------------------------------------------------------------ acks and re-sends

    def _on_ack(self, client: Any, gw: _SimulatedGateway, message: Any) -> None:
        received = time.time()
        report = self.report
        try:
            ack = json.loads(message.payload)
            batch_id, accepted, rejected = ack["batch_id"], ack["accepted"], ack["rejected"]
        except (ValueError, TypeError, KeyError):
            report.acks_malformed += 1
            return
        gw.last_ack_at = received
        entry = gw.unacked.pop(batch_id, None)
        if entry is None:
            report.acks_repeated += 1
            return
        first_sent = entry[0]
        if first_sent > gw.newest_acked_first:
            gw.newest_acked_first = first_sent
        if not entry[4]:
            # Karn's rule: only a batch sent once says how long an ack takes (for a re-sent one it is
            # unknown which copy was acked).
            self._sample_ack_time(received - entry[1])
        report.batches_acked += 1
        report.readings_accepted += len(accepted)
        report.readings_rejected += len(rejected)
        self._acks_seen += 1
        latency = (received - first_sent) * 1000
        latencies = report.ack_latencies_ms
        if len(latencies) < LATENCY_SAMPLE:
            latencies.append(latency)
        else:
            slot = random.randrange(self._acks_seen)
            if slot < LATENCY_SAMPLE:
                latencies[slot] = latency

    def _sample_ack_time(self, seconds: float) -> None:
        """Smoothed ack time and its variation (RFC 6298's estimator, as TCP keeps for its RTO)."""
        if self._srtt is None:
            self._srtt, self._rttvar = seconds, seconds / 2
        else:
            self._rttvar += (abs(self._srtt - seconds) - self._rttvar) / 4
            self._srtt += (seconds - self._srtt) / 8
        self._backoff = 1

    def ack_timeout(self) -> float:
        """How long a batch waits for its ack: ``ack_timeout_s``, or more when acks are taking longer
        (a backlog the cloud is draining: re-sending it would only double it), doubled after each round
        of re-sends into silence until an ack shows the way again (RFC 6298 sections 2 and 5)."""
        estimate = 0.0 if self._srtt is None else self._srtt + 4 * self._rttvar
        return max(self.plan.ack_timeout_s, estimate) * self._backoff

    def _resend_due(self, now: float) -> None:
        timeout = self.ack_timeout()
        cutoff = now - timeout
        resent_into_silence = False
        for gw in self.gateways:
            if not gw.connected or not gw.unacked:
                continue
            quiet = now - gw.last_ack_at > timeout
            unacked = gw.unacked
            while True:
                batch_id, entry = next(iter(unacked.items()))
                # Oldest send first: once one is too recent, or not overtaken, neither is any after it. With
                # the window full, the next service tries again.
                if entry[1] >= cutoff or not (quiet or gw.newest_acked_first > entry[1] + timeout):
                    break
                if gw.in_flight >= gw.window:
                    break
                entry[1] = now
                entry[4] += 1
                resent_into_silence |= quiet
                unacked.move_to_end(batch_id)
                payload = _batch_payload(gw.gateway_id, batch_id, gw.readings(entry[2], entry[3], entry[0]))
                gw.client.publish(gw.topic, payload, qos=1)
                gw.in_flight += 1
                self.report.batches_resent += 1
                self.report.readings_resent += entry[3]
        if resent_into_silence:
            self._backoff = min(MAX_BACKOFF, self._backoff * 2)

    def _on_puback(self, client: Any, gw: _SimulatedGateway, mid: int, reason: Any, properties: Any) -> None:
        gw.in_flight -= 1

    def _flush(self) -> None:
        """Send what waited for a slot in the window, oldest first."""
        for gw in self.gateways:
            waiting = gw.waiting
            while waiting and gw.in_flight < gw.window:
                batch_id = waiting.popleft()
                entry = gw.unacked.get(batch_id)
                if entry is None:
                    continue
                entry[1] = time.time()
                gw.client.publish(gw.topic, _batch_payload(gw.gateway_id, batch_id,
                                                           gw.readings(entry[2], entry[3], entry[0])), qos=1)
                gw.in_flight += 1

    def _service(self, now_mono: float, now: float) -> None:
        if now_mono - self._last_service > DEAF_GAP_S:
            for gw in self.gateways:
                gw.last_ack_at = max(gw.last_ack_at, now - MAINTENANCE_S)
        self._last_service = now_mono
        self._reconnect_due(now_mono)
        self._resend_due(now)

    # ------------------------------------------------------------------------------ the run

    def _open(self, start_at: float) -> None:
        """Connect every gateway before the start, or raise :class:`LoadError` saying which could not."""
        for gw in self.gateways:
            try:
                self._connect(gw)
            except OSError as err:
                raise LoadError(f"{gw.gateway_id}: cannot reach the broker {self.plan.host}:{self.plan.port}: "
                                f"{err}") from err
        deadline = max(start_at, time.time() + 5)
        while time.time() < deadline and not all(gw.connected for gw in self.gateways):
            for gw in self.gateways:
                gw.client.loop(timeout=0.01)
                if gw.refused:
                    raise LoadError(f"{gw.gateway_id}: the broker refused the connection: {gw.refused}")
        missing = [gw.gateway_id for gw in self.gateways if not gw.connected]
        if missing:
            raise LoadError(f"no CONNACK for {len(missing)} gateway(s), e.g. {missing[0]}")

    def run(self, results: Any, start_at: float) -> None:
        plan, report, gateways = self.plan, self.report, self.gateways
        if not gateways:
            results.put((self.index, asdict(report)))
            return
        self._open(start_at)
        # The templates are the contract's own output: prove a whole batch built from them still validates.
        Batch.model_validate_json(_batch_payload(gateways[0].gateway_id, "check",
                                                 gateways[0].readings(1, 1, time.time())))
        for _ in range(50):
            for gw in gateways:
                gw.client.loop(timeout=0.01)
        messages_per_s = plan.rate / plan.batch * len(gateways) / plan.gateways
        total_messages = int(messages_per_s * plan.duration_s)
        while time.time() < start_at:
            for gw in gateways:
                gw.client.loop(timeout=0)
            time.sleep(0.01)
        begun = time.perf_counter()
        for gw in gateways:
            gw.last_ack_at = time.time()
        next_service = time.monotonic() + MAINTENANCE_S
        sent = 0
        batch = plan.batch
        count = len(gateways)
        while sent < total_messages:
            due = min(total_messages, int((time.perf_counter() - begun) * messages_per_s) + 1, sent + MAX_BURST)
            while sent < due:
                gw = gateways[sent % count]
                now = time.time()
                first = gw.counter + 1
                gw.counter += batch
                batch_id = f"{gw.gateway_id}-{gw.counter}"
                if gw.in_flight < gw.window and not gw.waiting:
                    gw.unacked[batch_id] = [now, now, first, batch, 0]
                    # Published even while disconnected: paho keeps it and sends it on the next connect.
                    gw.client.publish(gw.topic, _batch_payload(gw.gateway_id, batch_id,
                                                               gw.readings(first, batch, now)), qos=1)
                    gw.in_flight += 1
                else:
                    gw.unacked[batch_id] = [now, INFINITY, first, batch, 0]
                    gw.waiting.append(batch_id)
                sent += 1
            for gw in gateways:
                gw.client.loop(timeout=0)
            self._flush()
            if time.monotonic() >= next_service:
                self._service(time.monotonic(), time.time())
                next_service = time.monotonic() + MAINTENANCE_S
            pause = (sent / messages_per_s) - (time.perf_counter() - begun)
            if pause > 0:
                time.sleep(min(pause, 0.005))
        report.publish_s = time.perf_counter() - begun
        report.behind_schedule_ms = max(0.0, (report.publish_s - plan.duration_s) * 1000)
        report.batches_sent = sent
        report.readings_sent = sent * batch
        self._settle()
        self._close()
        report.readings_unacked = sum(entry[3] for gw in gateways for entry in gw.unacked.values())
        report.generated = {gw.index: gw.counter for gw in gateways}
        report.reconnects = sum(max(0, gw.connects - 1) for gw in gateways)
        report.ack_timeout_end_s = round(self.ack_timeout(), 2)
        results.put((self.index, asdict(report)))

    def _settle(self) -> None:
        """Until every batch is acked or ``settle_s`` is up: keep connecting, receiving and re-sending."""
        deadline = time.monotonic() + self.plan.settle_s
        next_service = 0.0
        while time.monotonic() < deadline and any(gw.unacked for gw in self.gateways):
            for gw in self.gateways:
                gw.client.loop(timeout=0)
            self._flush()
            if time.monotonic() >= next_service:
                self._service(time.monotonic(), time.time())
                next_service = time.monotonic() + MAINTENANCE_S
            time.sleep(0.005)

    def _close(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        for gw in self.gateways:
            if gw.connected:
                # A clean end closes the session: the broker stops keeping acks for a gateway that is gone.
                # (3.1.1 cannot say so in its DISCONNECT: such a broker keeps the session.)
                properties = None
                if self.plan.protocol != "3.1.1":
                    properties = Properties(PacketTypes.DISCONNECT)
                    properties.SessionExpiryInterval = 0
                gw.client.disconnect(properties=properties)
                for _ in range(20):
                    if gw.client.loop(timeout=0.01) != 0:
                        break


def _batch_payload(gateway_id: str, batch_id: str, readings: list[str]) -> str:
    return (f'{{"v":1,"gateway_id":"{gateway_id}","batch_id":"{batch_id}","sent_at":"{_iso(time.time())}",'
            f'"readings":[{",".join(readings)}]}}')


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}


LOST_SAMPLE = 10
ID_CHUNK = 20_000


def measure_storage(database_url: str, plan: LoadPlan, generated: dict[int, int] | None = None) -> dict[str, Any]:
    """What the database holds for this run: stored, duplicates, store rate, publish -> commit latency,
    and, given how many readings each gateway generated, which of them are not stored (by id)."""
    import psycopg

    prefix = f"load-{plan.run_id}-%"
    device_prefix = f"ble:load-{plan.run_id}-%"
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT id), min(received_at), max(stored_at),"
            " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP"
            "  (ORDER BY extract(epoch FROM stored_at - received_at) * 1000)"
            " FROM readings WHERE gateway_id LIKE %s", (prefix,)).fetchone()
        # One row per device record: every reading the generator makes carries its cuff's sequence number.
        records = conn.execute(
            "SELECT count(*) - count(DISTINCT (device_uid, coalesce(user_index, -1), kind, coalesce(sequence, -1)))"
            " FROM readings WHERE device_uid LIKE %s", (device_prefix,)).fetchone()
        observations = conn.execute(
            "SELECT count(*) - count(DISTINCT (o.reading_id, o.metric)) FROM observations o"
            " JOIN readings r ON r.id = o.reading_id WHERE r.gateway_id LIKE %s", (prefix,)).fetchone()
        missing: list[str] = []
        lost = 0
        for chunk in _id_chunks(plan, generated or {}):
            absent = conn.execute("SELECT x FROM unnest(%s::text[]) AS x WHERE NOT EXISTS"
                                  " (SELECT 1 FROM readings r WHERE r.id = x)", (chunk,)).fetchall()
            lost += len(absent)
            missing += [a[0] for a in absent[:LOST_SAMPLE - len(missing)]]
    assert row is not None and records is not None and observations is not None
    stored, distinct, first, last, latency = row
    span = (last - first).total_seconds() if first and last else None
    duplicates = (stored - distinct) + records[0] + observations[0]
    measured: dict[str, Any] = {
        "stored": distinct,
        "duplicates": duplicates,
        "duplicate_rows": duplicates,  # the same figure under its earlier name
        "store_span_s": round(span, 3) if span else None,
        "stored_per_s": round(distinct / span, 1) if span else None,
        "publish_to_commit_ms": {k: (round(v, 1) if v is not None else None)
                                 for k, v in zip(("p50", "p95", "p99"), latency or (None,) * 3, strict=True)},
    }
    if generated is not None:
        expected = sum(generated.values())
        measured["lost"] = lost
        measured["lost_sample"] = missing
        # Stored under this run's gateways but never generated: would mean ids are not what they should be.
        measured["unexpected"] = distinct - (expected - lost)
    return measured


def _id_chunks(plan: LoadPlan, generated: dict[int, int]) -> Any:
    chunk: list[str] = []
    for index, count in sorted(generated.items()):
        for reading_id in reading_ids(plan.gateway_id(index), count):
            chunk.append(reading_id)
            if len(chunk) >= ID_CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def wait_for_storage(database_url: str, plan: LoadPlan, expected: int, quiet_s: float) -> int:
    """Poll until ``expected`` readings of this run are stored, or the count stops growing for ``quiet_s``."""
    import psycopg

    last, last_change = -1, time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM readings WHERE gateway_id LIKE %s",
                               (f"load-{plan.run_id}-%",)).fetchone()
            stored = row[0] if row else 0
            if stored >= expected:
                return stored
            if stored != last:
                last, last_change = stored, time.monotonic()
            elif time.monotonic() - last_change > quiet_s:
                return stored
            time.sleep(0.5)


def assign_patients(database_url: str, plan: LoadPlan) -> None:
    """One patient per simulated gateway (id = gateway id), its cuff assigned from a day ago."""
    assign_cuffs(database_url, [plan.gateway_id(index) for index in range(plan.gateways)],
                 datetime.now(UTC) - timedelta(days=1), "Load patient")


def assign_cuffs(database_url: str, gateway_ids: list[str], since: datetime, name: str) -> None:
    """For each gateway a patient of the same id (``name`` and the gateway's number), its cuff
    (:func:`cuff_uid`) assigned from ``since``.

    Through the cloud's own command (``rpm-cloud assign --batch -``, one process for the whole fleet):
    a simulator knows the wire contract, not the cloud's modules.
    """
    lines = "".join(json.dumps({"device_uid": cuff_uid(gateway_id), "patient_id": gateway_id,
                                "valid_from": since.isoformat(), "create_patient": True,
                                "name": f"{name} {index}"}) + "\n"
                    for index, gateway_id in enumerate(gateway_ids))
    # The URL goes in the environment, not the command line, where any local user could read it.
    done = subprocess.run([sys.executable, "-m", "cloud.cli", "assign", "--batch", "-"], input=lines, text=True,
                          capture_output=True, env={**os.environ, "RPM_DATABASE_URL": database_url},
                          timeout=300 + len(gateway_ids) // 10, check=False)
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip().splitlines()
        raise RuntimeError(f"rpm-cloud assign --batch failed ({done.returncode}): {said[-1] if said else ''}")


def resolve_protocol(plan: LoadPlan) -> LoadPlan:
    """``plan`` with ``protocol="auto"`` replaced by what the broker speaks (v5, else 3.1.1)."""
    if plan.protocol != "auto":
        return plan
    from gateway.mqtt.broker import BrokerAddress
    from gateway.mqtt.client import ClientOptions, broker_speaks_v5

    options = ClientOptions(client_id=f"load-{plan.run_id}", username=plan.username_for(plan.gateway_id(0)),
                            password=plan.password)
    speaks = broker_speaks_v5(BrokerAddress(plan.host, plan.port, tls=False), options)
    if speaks is None:
        raise LoadError(f"MQTT broker {plan.host}:{plan.port} cannot be reached")
    return replace(plan, protocol="5" if speaks else "3.1.1")


def run_load(plan: LoadPlan, database_url: str | None) -> dict[str, Any]:
    plan = resolve_protocol(plan)
    if plan.patients:
        if not database_url:
            raise ValueError("assigning patients needs the database URL")
        assign_patients(database_url, plan)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + 1.5 + 0.02 * plan.gateways / plan.processes  # every process connected by then
    processes = [context.Process(target=_publisher, args=(plan, i, results, start_at), daemon=True)
                 for i in range(plan.processes)]
    for process in processes:
        process.start()
    reports: list[dict[str, Any]] = []
    # Publishers bound their own time (publishing, then at most settle_s for the last acks); wait for
    # every report as long as one of them is alive.
    while len(reports) < len(processes):
        try:
            reports.append(results.get(timeout=1)[1])
        except Exception:  # queue.Empty from a multiprocessing queue
            if not any(p.is_alive() for p in processes) and results.empty():
                break
    for process in processes:
        process.join(5)
    errors = [r["error"] for r in reports if "error" in r]
    reports = [r for r in reports if "error" not in r]
    sent = sum(r["readings_sent"] for r in reports)
    latencies = [v for r in reports for v in r["ack_latencies_ms"]]

    def total(key: str) -> int:
        return sum(r[key] for r in reports)

    report: dict[str, Any] = {
        "run_id": plan.run_id,
        "gateways": plan.gateways,
        "processes": plan.processes,
        "batch": plan.batch,
        "target_rate": plan.rate,
        "duration_s": plan.duration_s,
        "ack_timeout_s": plan.ack_timeout_s,
        "ack_timeout_end_s": max((r["ack_timeout_end_s"] for r in reports), default=None),
        "publishers_reported": len(reports),
        "publisher_errors": errors,
        "readings_sent": sent,
        "batches_sent": total("batches_sent"),
        "sent_per_s": round(sent / max(r["publish_s"] for r in reports), 1) if reports else 0,
        "behind_schedule_ms": max((r["behind_schedule_ms"] for r in reports), default=0),
        "batches_acked": total("batches_acked"),
        "readings_accepted": total("readings_accepted"),
        "readings_rejected": total("readings_rejected"),
        "readings_unacked": total("readings_unacked"),
        "batches_resent": total("batches_resent"),
        "resent": total("readings_resent"),
        "acks_repeated": total("acks_repeated"),
        "acks_malformed": total("acks_malformed"),
        "reconnects": total("reconnects"),
        "connect_failures": total("connect_failures"),
        "ack_latency_ms": _percentiles(latencies),
    }
    if database_url:
        generated = {int(g): n for r in reports for g, n in r["generated"].items()}
        # Ingest may still be draining a backlog the broker holds: wait while the count still grows.
        wait_for_storage(database_url, plan, sent, quiet_s=max(5.0, min(plan.settle_s, 30.0)))
        report.update(measure_storage(database_url, plan, generated))
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateways", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1000, help="readings per second, all gateways together")
    parser.add_argument("--duration", type=float, default=10, help="seconds of publishing")
    parser.add_argument("--batch", type=int, default=1, help="readings per message (default 1)")
    parser.add_argument("--processes", type=int, default=None, help="publisher processes (default: min(G, 4))")
    parser.add_argument("--settle", type=float, default=30,
                        help="seconds after publishing to wait for the last acks, re-sending (default 30)")
    parser.add_argument("--ack-timeout", type=float, default=30,
                        help="seconds a batch waits for the cloud's ack before it is sent again (default 30)")
    parser.add_argument("--session-expiry", type=int, default=600, metavar="SECONDS",
                        help="MQTT v5 session expiry of each simulated gateway (default 600)")
    parser.add_argument("--mqtt-url", default=os.environ.get("RPM_MQTT_URL", "mqtt://127.0.0.1:1883"))
    parser.add_argument("--protocol", choices=("auto", "5", "3.1.1"), default="auto",
                        help="MQTT version of the simulated gateways (default auto: v5 where the broker accepts it, "
                             "else 3.1.1, e.g. rpm-demo's amqtt)")
    parser.add_argument("--username", default=None,
                        help="MQTT user (the broker's ACLs must allow it); {gateway_id} in it becomes each "
                             "simulated gateway's id, for a broker with one user per gateway")
    parser.add_argument("--password", default=None)
    parser.add_argument("--database-url", default=os.environ.get("RPM_DATABASE_URL"),
                        help="where ingest stores (to count stored, lost, duplicates and latency); "
                             "default RPM_DATABASE_URL")
    parser.add_argument("--patients", action="store_true",
                        help="assign each gateway's cuff to a patient of its own first, so ingest runs the twin "
                             "and alert hooks on every reading (needs --database-url)")
    parser.add_argument("--run-id", default=None,
                        help="names the simulated gateways load-RUN-0000 ... (default: random), e.g. to create "
                             "their broker users first")


def plan_from_args(args: argparse.Namespace) -> LoadPlan:
    from urllib.parse import urlsplit

    url = urlsplit(args.mqtt_url)
    processes = args.processes or min(args.gateways, 4)
    return LoadPlan(run_id=args.run_id or uuid.uuid4().hex[:8], host=url.hostname or "127.0.0.1",
                    port=url.port or 1883, gateways=args.gateways, rate=args.rate, duration_s=args.duration,
                    batch=args.batch, processes=max(1, min(processes, args.gateways)), settle_s=args.settle,
                    username=args.username, password=args.password, patients=args.patients,
                    ack_timeout_s=args.ack_timeout, session_expiry_s=args.session_expiry, protocol=args.protocol)


def main(args: argparse.Namespace) -> int:
    if args.gateways < 1 or args.rate <= 0 or args.duration <= 0 or not 1 <= args.batch <= 5000:
        print("error: need --gateways >= 1, --rate > 0, --duration > 0, 1 <= --batch <= 5000", file=sys.stderr)
        return 2
    if args.ack_timeout <= 0 or args.settle < 0 or args.session_expiry < 0:
        print("error: need --ack-timeout > 0, --settle >= 0, --session-expiry >= 0", file=sys.stderr)
        return 2
    if args.run_id is not None and not args.run_id.replace("-", "").isalnum():
        print("error: --run-id takes letters, digits and '-'", file=sys.stderr)
        return 2
    if args.patients and not args.database_url:
        print("error: --patients needs --database-url (or RPM_DATABASE_URL)", file=sys.stderr)
        return 2
    report = run_load(plan_from_args(args), args.database_url)
    print(json.dumps(report, indent=2))
    complete = report["publishers_reported"] == report["processes"]
    return 0 if complete and report.get("lost", 0) == 0 and report.get("duplicates", 0) == 0 else 1
