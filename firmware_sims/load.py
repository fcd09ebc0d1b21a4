"""``rpm-sim load``: G simulated gateways publish realistic readings over real MQTT; a JSON report says
what was stored, lost and duplicated, the throughput, and publish→commit and ack latencies.

Several publisher processes (one Python process tops out near 9 500 QoS 1 messages/s) each own a
share of the gateways, one MQTT connection per gateway, as in the field. Readings are built with the
contract once per device (a few value variants), validated, and then stamped per message with a
fresh deterministic id and times by string substitution, so the generator is not the bottleneck.
``received_at`` carries the publish instant: the cloud stores it beside its own ``stored_at``
(commit time), which is where the publish→commit latency comes from. Ingest must be running.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.contract import Batch, Reading, acks_topic, compute_reading_id, readings_topic
from gateway.metrics import METRICS

LATENCY_SAMPLE = 20_000
"""Ack latencies each publisher keeps (a uniform reservoir sample) for the percentiles."""


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
    password: str | None = None
    patients: bool = False
    """Assign each gateway's cuff to a patient of its own first, so ingest runs the twin and alert hooks
    on every reading (publish -> commit then includes them); else the readings wait unassigned."""

    def gateway_id(self, index: int) -> str:
        return f"load-{self.run_id}-{index:04d}"


def cuff_uid(gateway_id: str) -> str:
    return f"ble:{gateway_id}:cuff"


@dataclass(slots=True)
class PublisherReport:
    readings_sent: int = 0
    batches_sent: int = 0
    batches_acked: int = 0
    readings_accepted: int = 0
    readings_rejected: int = 0
    publish_s: float = 0.0
    ack_latencies_ms: list[float] = field(default_factory=list)
    behind_schedule_ms: float = 0.0
    """How far the publisher fell behind its schedule at the end (it could not reach the rate)."""


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


def _publisher(plan: LoadPlan, index: int, results: Any, start_at: float) -> None:
    """One publisher process: gateways index, index + P, index + 2P, … of the plan. Always reports."""
    try:
        _publish(plan, index, results, start_at)
    except Exception as err:  # reported to the parent, which fails the run with it
        results.put((index, {"error": f"{type(err).__name__}: {err}"}))


def _publish(plan: LoadPlan, index: int, results: Any, start_at: float) -> None:
    import paho.mqtt.client as mqtt

    mine = list(range(index, plan.gateways, plan.processes))
    report = PublisherReport()
    if not mine:
        results.put((index, asdict(report)))
        return
    lock = threading.Lock()
    sent_at: dict[str, float] = {}
    seen = 0

    def on_ack(client: Any, userdata: Any, message: Any) -> None:
        nonlocal seen
        received = time.time()
        ack = json.loads(message.payload)
        with lock:
            published = sent_at.pop(ack["batch_id"], None)
            if published is None:
                return  # a second ack for a batch (redelivery): counted once
            report.batches_acked += 1
            report.readings_accepted += len(ack["accepted"])
            report.readings_rejected += len(ack["rejected"])
            seen += 1
            latency = (received - published) * 1000
            if len(report.ack_latencies_ms) < LATENCY_SAMPLE:
                report.ack_latencies_ms.append(latency)
            else:
                slot = random.randrange(seen)
                if slot < LATENCY_SAMPLE:
                    report.ack_latencies_ms[slot] = latency

    clients, templates, devices = [], [], []
    for g in mine:
        gateway_id = plan.gateway_id(g)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=gateway_id, protocol=mqtt.MQTTv5)
        if plan.username:
            client.username_pw_set(plan.username, plan.password)
        client.max_inflight_messages_set(2000)
        client.on_message = on_ack
        client.connect(plan.host, plan.port, 60)
        client.subscribe(acks_topic(gateway_id), qos=1)
        clients.append((gateway_id, client))
        device_uid, variants = _templates(gateway_id)
        devices.append(device_uid)
        templates.append(variants)
    # The templates are the contract's own output: prove a whole batch built from them still validates.
    sample = _batch_payload(clients[0][0], "check", [templates[0][0] % {
        "id": "0" * 32, "seq": 1, "measured": _iso(time.time() - 3), "received": _iso(time.time())}])
    Batch.model_validate_json(sample)

    # No network threads while publishing: this thread writes each message itself and services every
    # connection between ticks (a loop thread per client costs a wake-up and a context switch per
    # message, which on two cores starves the broker and ingest being measured).
    for _ in range(50):
        for _, client in clients:
            client.loop(timeout=0.01)
    messages_per_s = plan.rate / plan.batch * len(mine) / plan.gateways
    total_messages = int(messages_per_s * plan.duration_s)
    sequence = [0] * len(mine)
    while time.time() < start_at:
        for _, client in clients:
            client.loop(timeout=0)
        time.sleep(0.01)
    begun = time.perf_counter()
    sent = 0
    infos = []
    while sent < total_messages:
        due = min(total_messages, int((time.perf_counter() - begun) * messages_per_s) + 1)
        while sent < due:
            slot = sent % len(mine)
            gateway_id, client = clients[slot]
            now = time.time()
            received, measured = _iso(now), _iso(now - 3)
            readings = []
            for _ in range(plan.batch):
                sequence[slot] += 1
                seq = sequence[slot] + 100  # above the template variants' own sequence numbers
                reading_id = compute_reading_id(devices[slot], "blood_pressure", None, sequence=seq)
                variant = templates[slot][seq % len(templates[slot])]
                readings.append(variant % {"id": reading_id, "seq": seq, "measured": measured, "received": received})
            batch_id = f"{gateway_id}-{sequence[slot]}"
            with lock:
                sent_at[batch_id] = now
            infos.append(client.publish(readings_topic(gateway_id), _batch_payload(gateway_id, batch_id, readings),
                                        qos=1))
            sent += 1
            report.readings_sent += plan.batch
        for _, client in clients:
            client.loop(timeout=0)
        pause = (sent / messages_per_s) - (time.perf_counter() - begun)
        if pause > 0:
            time.sleep(min(pause, 0.005))
    report.publish_s = time.perf_counter() - begun
    report.behind_schedule_ms = max(0.0, (report.publish_s - plan.duration_s) * 1000)
    report.batches_sent = sent
    for _, client in clients:
        client.loop_start()
    deadline = time.monotonic() + plan.settle_s
    for info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
    while time.monotonic() < deadline:
        with lock:
            if not sent_at:
                break
        time.sleep(0.05)
    for _, client in clients:
        client.disconnect()
        client.loop_stop()
    with lock:
        results.put((index, asdict(report)))


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


def measure_storage(database_url: str, plan: LoadPlan) -> dict[str, Any]:
    """What the database holds for this run (readings are keyed by id, so duplicates can only show
    up as extra observation rows)."""
    import psycopg

    prefix = f"load-{plan.run_id}-%"
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT id), min(received_at), max(stored_at),"
            " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP"
            "  (ORDER BY extract(epoch FROM stored_at - received_at) * 1000)"
            " FROM readings WHERE gateway_id LIKE %s", (prefix,)).fetchone()
        dup = conn.execute(
            "SELECT count(*) - count(DISTINCT (o.reading_id, o.metric)) FROM observations o"
            " JOIN readings r ON r.id = o.reading_id WHERE r.gateway_id LIKE %s", (prefix,)).fetchone()
    assert row is not None and dup is not None
    stored, distinct, first, last, latency = row
    span = (last - first).total_seconds() if first and last else None
    return {
        "stored": distinct,
        "duplicate_rows": (stored - distinct) + dup[0],
        "store_span_s": round(span, 3) if span else None,
        "stored_per_s": round(distinct / span, 1) if span else None,
        "publish_to_commit_ms": {k: (round(v, 1) if v is not None else None)
                                 for k, v in zip(("p50", "p95", "p99"), latency or (None,) * 3, strict=True)},
    }


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
    import psycopg

    from cloud.db.assign import assign_device

    since = datetime.now(UTC) - timedelta(days=1)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for index in range(plan.gateways):
            gateway_id = plan.gateway_id(index)
            assign_device(conn, cuff_uid(gateway_id), gateway_id, valid_from=since, create_patient=True,
                          display_name=f"Load patient {index}", created_by="rpm-sim load")


def run_load(plan: LoadPlan, database_url: str | None) -> dict[str, Any]:
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
    report: dict[str, Any] = {
        "run_id": plan.run_id,
        "gateways": plan.gateways,
        "processes": plan.processes,
        "batch": plan.batch,
        "target_rate": plan.rate,
        "duration_s": plan.duration_s,
        "publishers_reported": len(reports),
        "publisher_errors": errors,
        "readings_sent": sent,
        "batches_sent": sum(r["batches_sent"] for r in reports),
        "sent_per_s": round(sent / max(r["publish_s"] for r in reports), 1) if reports else 0,
        "behind_schedule_ms": max((r["behind_schedule_ms"] for r in reports), default=0),
        "batches_acked": sum(r["batches_acked"] for r in reports),
        "readings_accepted": sum(r["readings_accepted"] for r in reports),
        "readings_rejected": sum(r["readings_rejected"] for r in reports),
        "ack_latency_ms": _percentiles(latencies),
    }
    if database_url:
        # Ingest may still be draining a backlog the broker holds: wait while the count still grows.
        wait_for_storage(database_url, plan, sent, quiet_s=max(5.0, min(plan.settle_s, 30.0)))
        storage = measure_storage(database_url, plan)
        report.update(storage)
        report["lost"] = sent - storage["stored"]
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateways", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1000, help="readings per second, all gateways together")
    parser.add_argument("--duration", type=float, default=10, help="seconds of publishing")
    parser.add_argument("--batch", type=int, default=1, help="readings per message (default 1)")
    parser.add_argument("--processes", type=int, default=None, help="publisher processes (default: min(G, 4))")
    parser.add_argument("--settle", type=float, default=30, help="seconds to wait for the last acks")
    parser.add_argument("--mqtt-url", default=os.environ.get("RPM_MQTT_URL", "mqtt://127.0.0.1:1883"))
    parser.add_argument("--username", default=None, help="MQTT user (the broker's ACLs must allow it)")
    parser.add_argument("--password", default=None)
    parser.add_argument("--database-url", default=os.environ.get("RPM_DATABASE_URL"),
                        help="where ingest stores (to count stored, lost, duplicates and latency); "
                             "default RPM_DATABASE_URL")
    parser.add_argument("--patients", action="store_true",
                        help="assign each gateway's cuff to a patient of its own first, so ingest runs the twin "
                             "and alert hooks on every reading (needs --database-url)")


def plan_from_args(args: argparse.Namespace) -> LoadPlan:
    from urllib.parse import urlsplit

    url = urlsplit(args.mqtt_url)
    processes = args.processes or min(args.gateways, 4)
    return LoadPlan(run_id=uuid.uuid4().hex[:8], host=url.hostname or "127.0.0.1", port=url.port or 1883,
                    gateways=args.gateways, rate=args.rate, duration_s=args.duration, batch=args.batch,
                    processes=max(1, min(processes, args.gateways)), settle_s=args.settle,
                    username=args.username, password=args.password, patients=args.patients)


def main(args: argparse.Namespace) -> int:
    if args.gateways < 1 or args.rate <= 0 or args.duration <= 0 or not 1 <= args.batch <= 5000:
        print("error: need --gateways >= 1, --rate > 0, --duration > 0, 1 <= --batch <= 5000", file=sys.stderr)
        return 2
    if args.patients and not args.database_url:
        print("error: --patients needs --database-url (or RPM_DATABASE_URL)", file=sys.stderr)
        return 2
    report = run_load(plan_from_args(args), args.database_url)
    print(json.dumps(report, indent=2))
    complete = report["publishers_reported"] == report["processes"]
    return 0 if complete and report.get("lost", 0) == 0 else 1
