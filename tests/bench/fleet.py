"""A fleet of gateways coming back after an outage (issue 23, item 7), for ``test_fleet_drain_bench.py``.

Each simulated gateway is the product's own ``Outbox`` + ``Uplink`` (the code ``rpm-gateway run``
runs), a few hundred of them on one asyncio loop per process. Before the uplinks start, every outbox
is filled with the blood-pressure readings its cuff took while the cloud was away (stored then, so
their stored time is old); then every uplink starts at a random moment of the reconnect window while
each cuff keeps measuring every minute, and the parent process drops crisis readings (systolic 185)
into random gateways while the backlog drains. The parent measures, from the database and from the
alerts' ``NOTIFY`` (migration 0590 announces every alert event at commit), how long each crisis waited
from its outbox to its committed alert, and what the drain cost, lost and re-sent.

The parent and the gateway processes speak over one pipe each: the parent says ``go`` (the common
start instant), ``crisis`` (which gateway) and ``stop``; a process answers ``ready`` (backlog built),
``started`` (its first uplink), ``crisis`` (the reading's id and when it was in the outbox),
``progress`` and a ``final`` report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import random
import resource
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from firmware_sims.load import assign_cuffs, cuff_uid
from gateway.config import MqttConfig
from gateway.contract import Reading, compute_reading_id
from gateway.metrics import METRICS
from gateway.store.outbox import Outbox
from gateway.store.uplink import Uplink
from tests.bench.cpu_cost import CpuMeter, postgres_finders, process_tree

FRESH_SEQUENCE_BASE = 1_000_000
"""Readings taken after the reconnect are numbered from here: below it is the backlog, so the database
tells backlog from fresh by the sequence number alone."""
STALE_GATEWAY = 0
STALE_CRISIS_SEQUENCE = 0
CRISIS = (185, 100)
STALE_CRISIS = (190, 100)
RESERVE_BYTES = 64 * 1024
"""A thousand 4 MiB reserve files would be 4 GB of disk for a provision (a full disk) this bench never
exercises."""
EXECUTOR_THREADS = 32
"""A real gateway has its event loop's executor to itself; hundreds sharing the default six threads
would queue their outbox calls behind each other and measure the harness."""
LOG_KEPT = 5
GATEWAYS_PER_PROCESS = 125
"""paho's network loop waits with ``select()``, which takes no descriptor above 1 023, and each gateway
holds six (its outbox's database, WAL and shared memory, the MQTT socket and paho's wake-up pair): more
gateways in one process and the last ones never connect."""
REPLAYS_SETTLE_S = 120.0
"""The longest the count of re-sent readings ingest received is waited for after the run."""
RECONNECT_GRACE_S = 60.0
"""Gateways not all connected this long after the reconnect window: the run stops and says so."""


@dataclass(frozen=True, slots=True)
class FleetPlan:
    run_id: str
    mqtt_url: str
    data_dir: Path
    gateways: int = 1000
    hours: float = 24.0
    processes: int = 4
    """At least this many gateway processes, and at least one per ``GATEWAYS_PER_PROCESS``."""
    interval_s: float = 300.0
    """A cuff reading every 5 minutes while the cloud was away."""
    reconnect_s: float = 10.0
    fresh_every_s: float = 60.0
    crises: int = 100
    crisis_after_s: float = 15.0
    """Crises start this long after the first uplink, or once a fifth of the backlog is stored if that
    comes first (a small fleet drains in less), and stop once ``crisis_until`` of it is stored."""
    crisis_until: float = 0.8
    stale_age_h: float = 20.0
    drain_limit_s: float = 900.0
    settle_s: float = 120.0
    """After the drain: how long gateways may take to empty their outboxes, and alerts to arrive."""

    @property
    def backlog_per_gateway(self) -> int:
        return int(self.hours * 3600 / self.interval_s)

    @property
    def backlog_total(self) -> int:
        # Every gateway's cuff readings, plus the one stale crisis.
        return self.gateways * self.backlog_per_gateway + 1

    @property
    def prefix(self) -> str:
        return f"fleet-{self.run_id}-"

    def gateway_id(self, index: int) -> str:
        return f"{self.prefix}{index:04d}"

    @property
    def process_count(self) -> int:
        return min(self.gateways, max(self.processes, -(-self.gateways // GATEWAYS_PER_PROCESS)))

    def share(self, process: int) -> range:
        return range(process, self.gateways, self.process_count)


def bp_reading(device_uid: str, sequence: int, measured_at: datetime, systolic: int, diastolic: int,
               pulse: int) -> Reading:
    """A cuff's stored record as the gateway makes it: a sequence number, hence a deterministic id."""
    return Reading(
        id=compute_reading_id(device_uid, "blood_pressure", None, sequence=sequence),
        device={"uid": device_uid, "transport": "ble", "profile": "ble.blood_pressure", "model": "UA-651BLE",
                "manufacturer": "A&D"},
        kind="blood_pressure", measured_at=measured_at, received_at=measured_at + timedelta(seconds=2),
        clock={"judgement": "device"}, sequence=sequence,
        values={"systolic": {"value": systolic, "unit": METRICS["systolic"].unit},
                "diastolic": {"value": diastolic, "unit": METRICS["diastolic"].unit},
                "mean_arterial": {"value": round((systolic + 2 * diastolic) / 3, 1),
                                  "unit": METRICS["mean_arterial"].unit},
                "pulse_rate": {"value": pulse, "unit": METRICS["pulse_rate"].unit}},
        raw=sequence.to_bytes(8, "big").hex(),
    )


def assign_patients(database_url: str, plan: FleetPlan) -> None:
    """One patient per gateway (id = gateway id), its cuff assigned from two days ago, so the whole
    backlog (and the stale crisis) is the patient's."""
    assign_cuffs(database_url, [plan.gateway_id(g) for g in range(plan.gateways)],
                 datetime.now(UTC) - timedelta(days=2), "Fleet patient")


# ---------------------------------------------------------------------------------------- gateway side


class _StoredClock:
    """The outbox's clock: the backlog's own time while it is being stored, the real clock after."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self) -> float:
        return time.time() if self.at is None else self.at


class _UplinkLogCounter(logging.Handler):
    """The uplinks' warnings, counted, with the first few kept (re-sends are in ``Uplink.state``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.counts["warnings"] += 1
        if len(self.warnings) < LOG_KEPT:
            self.warnings.append(record.getMessage())


class _FleetGateway:
    def __init__(self, plan: FleetPlan, index: int) -> None:
        self.plan = plan
        self.index = index
        self.gateway_id = plan.gateway_id(index)
        self.device_uid = cuff_uid(self.gateway_id)
        self.rng = random.Random(self.gateway_id)
        self.clock = _StoredClock()
        self.outbox = Outbox(plan.data_dir / self.gateway_id / "outbox.sqlite", clock=self.clock,
                             reserve_bytes=RESERVE_BYTES)
        self.uplink = Uplink(MqttConfig(url=plan.mqtt_url), self.gateway_id, self.outbox)
        self.next_sequence = FRESH_SEQUENCE_BASE
        self.put_ids: list[str] = []
        self.task: asyncio.Task[None] | None = None

    def _normal(self, sequence: int, measured_at: datetime) -> Reading:
        # The load generator's value ranges: no threshold rule fires on them.
        return bp_reading(self.device_uid, sequence, measured_at, self.rng.randint(105, 165), self.rng.randint(62, 98),
                          self.rng.randint(55, 95))

    def store_backlog(self, now: datetime) -> None:
        """The readings taken while the cloud was away, in one transaction. One stored time for all (the
        oldest reading's): the outbox orders by insertion, so only ages in the status would tell."""
        count = self.plan.backlog_per_gateway
        readings = [self._normal(n + 1, now - timedelta(seconds=self.plan.interval_s * (count - n)))
                    for n in range(count)]
        if self.index == STALE_GATEWAY:
            stale_at = now - timedelta(hours=self.plan.stale_age_h)
            readings.append(bp_reading(self.device_uid, STALE_CRISIS_SEQUENCE, stale_at, *STALE_CRISIS, 88))
            readings.sort(key=lambda r: r.measured_at)
        self.clock.at = readings[0].measured_at.timestamp()
        try:
            added = self.outbox.put_many(readings)
        finally:
            self.clock.at = None
        if added != len(readings):
            raise RuntimeError(f"{self.gateway_id}: {added} of {len(readings)} backlog readings stored")
        self.put_ids.extend(r.id for r in readings)

    async def take_reading(self, *, crisis: bool) -> tuple[str, float]:
        """A reading taken now, committed to the outbox as a device session does; (id, when it was in)."""
        now = datetime.now(UTC) - timedelta(seconds=2)  # measured, then handed to the gateway
        sequence, self.next_sequence = self.next_sequence, self.next_sequence + 1
        reading = (bp_reading(self.device_uid, sequence, now, *CRISIS, 96) if crisis
                   else self._normal(sequence, now))
        await asyncio.to_thread(self.outbox.put, reading)
        put_at = time.time()
        self.put_ids.append(reading.id)
        self.uplink.notify()
        return reading.id, put_at

    async def keep_measuring(self, stop: asyncio.Event) -> None:
        """A reading about every minute until ``stop``; never cancelled in the middle of a put, whose
        thread would store the reading after the run stopped looking."""
        wait = self.rng.uniform(0, self.plan.fresh_every_s)
        while not await _stopped(stop, wait):
            await self.take_reading(crisis=False)
            wait = self.plan.fresh_every_s * self.rng.uniform(0.8, 1.2)


async def _stopped(stop: asyncio.Event, within_s: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), within_s)
    return stop.is_set()


async def _run_share(plan: FleetPlan, process: int, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(EXECUTOR_THREADS, thread_name_prefix="outbox"))
    began = time.perf_counter()
    gateways = {g: _FleetGateway(plan, g) for g in plan.share(process)}
    now = datetime.now(UTC)
    for gateway in gateways.values():
        gateway.store_backlog(now)
    pipe.send(("ready", round(time.perf_counter() - began, 2)))

    commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    loop.add_reader(pipe.fileno(), lambda: commands.put_nowait(pipe.recv()))
    command = await commands.get()
    assert command[0] == "go", command
    start_at: float = command[1]
    first_start: list[float] = []

    async def reconnect(gateway: _FleetGateway) -> None:
        await asyncio.sleep(max(0.0, start_at + gateway.rng.uniform(0, plan.reconnect_s) - time.time()))
        if not first_start:
            first_start.append(time.time())
            pipe.send(("started", first_start[0]))
        gateway.task = asyncio.create_task(gateway.uplink.run())
        gateway.task.add_done_callback(uplink_ended)

    def uplink_ended(task: asyncio.Task[None]) -> None:
        # The uplink runs until cancelled: one that ended by itself is a failure the run must not hide.
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            pipe.send(("error", f"an uplink stopped: {type(error).__name__}: {error}"))

    async def report_progress() -> None:
        while True:
            await asyncio.sleep(1.0)
            pipe.send(("progress", sum(g.outbox.depth() for g in gateways.values()),
                       sum(g.uplink.state.connected for g in gateways.values())))

    async def crisis(gateway: _FleetGateway) -> None:
        reading_id, put_at = await gateway.take_reading(crisis=True)
        pipe.send(("crisis", reading_id, gateway.gateway_id, put_at))

    stop_measuring = asyncio.Event()
    background = [asyncio.create_task(reconnect(g)) for g in gateways.values()]
    background.append(asyncio.create_task(report_progress()))
    measuring = [asyncio.create_task(g.keep_measuring(stop_measuring)) for g in gateways.values()]
    crises: list[asyncio.Task[None]] = []
    while (command := await commands.get())[0] != "stop":
        crises.append(asyncio.create_task(crisis(gateways[command[1]])))
    stop_measuring.set()
    await asyncio.gather(*crises, *measuring)
    for task in background:
        task.cancel()
    stopped_at = time.time()
    # The cuffs stop measuring; what they measured must still reach the cloud (the uplink's own drain,
    # as on SIGTERM; it gives up at once while disconnected, so ask again until the deadline).
    deadline = time.monotonic() + plan.settle_s
    pending = list(gateways.values())
    while pending and (left := deadline - time.monotonic()) > 0:
        drained = await asyncio.gather(*(g.uplink.drain(left) for g in pending))
        pending = [g for g, done in zip(pending, drained, strict=True) if not done]
        if pending:
            await asyncio.gather(*(g.uplink.wait_connected(min(1.0, left)) for g in pending))
    emptied_at = time.time()
    states = [g.uplink.state for g in gateways.values()]
    final = {
        "put_ids": [rid for g in gateways.values() for rid in g.put_ids],
        "depth_left": sum(g.outbox.depth() for g in gateways.values()),
        "emptied_s_after_stop": round(emptied_at - stopped_at, 2),
        "batches_sent": sum(s.batches_sent for s in states),
        "batches_resent": sum(s.batches_resent for s in states),
        "readings_acked": sum(s.readings_acked for s in states),
        "readings_rejected": sum(s.readings_rejected for s in states),
        "connects": sum(s.connects for s in states),
        "ack_failures": sum(g.uplink.ack_failures for g in gateways.values()),
        "sender_failures": sum(g.uplink.sender_failures for g in gateways.values()),
        "uplink_log": dict(_LOG_COUNTER.counts),
        "uplink_warnings": _LOG_COUNTER.warnings,
    }
    pipe.send(("final", final))
    # close() stops the paho client and the cancelled connection loop stops it again: paho says
    # "Client is not connected" at ERROR for each of hundreds of gateways, which is no finding here.
    logging.getLogger("paho").setLevel(logging.CRITICAL)
    await asyncio.gather(*(g.uplink.close() for g in gateways.values()))
    for gateway in gateways.values():
        if gateway.task is not None:
            gateway.task.cancel()
    await asyncio.gather(*(g.task for g in gateways.values() if g.task is not None), return_exceptions=True)
    for gateway in gateways.values():
        gateway.outbox.close()


_LOG_COUNTER = _UplinkLogCounter()


def _gateway_process(plan: FleetPlan, process: int, pipe: Connection) -> None:
    """One process's share of the fleet. Always answers, with ``error`` if it failed."""
    # Six descriptors per gateway (see GATEWAYS_PER_PROCESS): a share comes close to the usual 1 024.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logging.basicConfig(level=logging.WARNING, format=f"fleet[{process}] %(levelname)s %(name)s: %(message)s")
    uplink_log = logging.getLogger("gateway.store.uplink")
    uplink_log.propagate = False
    uplink_log.addHandler(_LOG_COUNTER)
    logging.getLogger("paho").setLevel(logging.ERROR)
    try:
        asyncio.run(_run_share(plan, process, pipe))
    except Exception as err:
        pipe.send(("error", f"{type(err).__name__}: {err}"))
        raise


# ---------------------------------------------------------------------------------------- cloud side


class AlertCommits:
    """When each alert event's commit was announced (``LISTEN rpm_alert_events``), by event id."""

    def __init__(self, database_url: str) -> None:
        import psycopg

        self.seen: dict[int, float] = {}
        self._conn = psycopg.connect(database_url, autocommit=True)
        self._conn.execute("LISTEN rpm_alert_events")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="alert-listener", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            for note in self._conn.notifies(timeout=0.5):
                self.seen[json.loads(note.payload)["id"]] = time.time()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


class BrokerQueue:
    """The broker's stored-message count from ``$SYS`` (mosquitto publishes it every ``sys_interval``,
    10 s by default): the messages it holds, queued for sessions or in flight."""

    TOPIC = "$SYS/broker/store/messages/count"

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.samples: list[tuple[float, int]] = []
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleet-sys-{os.getpid()}")
        self._client.on_connect = lambda c, *_: c.subscribe(self.TOPIC)
        self._client.on_message = lambda _c, _u, m: self.samples.append((time.time(), int(m.payload)))
        self._client.connect(host, port)
        self._client.loop_start()

    def peak(self, since: float) -> int | None:
        values = [count for at, count in self.samples if at >= since]
        return max(values) if values else None

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class _Progress:
    """The parent's view of the run while it lasts."""

    crises_put: list[tuple[str, str, float]] = field(default_factory=list)
    crises_after_window: int = 0
    finals: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    started: list[float] = field(default_factory=list)
    depth: dict[int, int] = field(default_factory=dict)
    connected: dict[int, int] = field(default_factory=dict)
    peak_depth: int = 0


def _stored_backlog(conn: Any, plan: FleetPlan) -> int:
    row = conn.execute("SELECT count(*) FROM readings WHERE gateway_id LIKE %s AND sequence < %s",
                       (plan.prefix + "%", FRESH_SEQUENCE_BASE)).fetchone()
    return int(row[0])


def _take_messages(pipes: Sequence[Connection], progress: _Progress, timeout: float) -> None:
    for pipe in wait(list(pipes), timeout):
        assert isinstance(pipe, Connection)
        process = pipes.index(pipe)
        try:
            message = pipe.recv()
        except EOFError:
            continue
        kind = message[0]
        if kind == "crisis":
            progress.crises_put.append(message[1:])
        elif kind == "progress":
            progress.depth[process], progress.connected[process] = message[1], message[2]
            progress.peak_depth = max(progress.peak_depth, sum(progress.depth.values()))
        elif kind == "started":
            progress.started.append(message[1])
        elif kind == "final":
            progress.finals.append(message[1])
        elif kind == "error":
            progress.errors.append(message[1])


def run_fleet(plan: FleetPlan, database_url: str, *, ingest_pid: int, broker_pid: int, broker_host: str,
              broker_port: int) -> dict[str, Any]:
    """Run the outage drain and return its figures (see the test module for what is asserted)."""
    import psycopg

    rng = random.Random(plan.run_id)
    assign_patients(database_url, plan)
    alerts = AlertCommits(database_url)
    broker_queue = BrokerQueue(broker_host, broker_port)
    context = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    processes = []
    for process in range(plan.process_count):
        ours, theirs = context.Pipe()
        processes.append(context.Process(target=_gateway_process, args=(plan, process, theirs), daemon=True))
        pipes.append(ours)
    build_began = time.perf_counter()
    for child in processes:
        child.start()
    progress = _Progress()
    report: dict[str, Any] = {"gateways": plan.gateways, "hours": plan.hours, "processes": plan.process_count,
                              "backlog_readings": plan.backlog_total}
    postgres_ingest, _, close_finders = postgres_finders(database_url)
    meter = CpuMeter({
        "ingest": lambda: process_tree(ingest_pid),
        "postgres_ingest": postgres_ingest,
        "broker": lambda: [broker_pid],
        "gateways": lambda: [child.pid for child in processes if child.pid is not None],
    })
    db = psycopg.connect(database_url, autocommit=True)
    try:
        ready = 0
        deadline = time.monotonic() + 900
        while ready < plan.process_count and time.monotonic() < deadline and not progress.errors:
            for pipe in wait(list(pipes), 1.0):
                assert isinstance(pipe, Connection)
                message = pipe.recv()
                if message[0] == "ready":
                    ready += 1
                elif message[0] == "error":
                    progress.errors.append(message[1])
        if progress.errors or ready < plan.process_count:
            raise AssertionError(f"the gateway processes did not build their backlogs: {progress.errors}")
        report["backlog_build_s"] = round(time.perf_counter() - build_began, 1)

        meter.start()
        start_at = time.time() + 1.0
        for pipe in pipes:
            pipe.send(("go", start_at))
        targets = [g for g in range(plan.gateways) if g != STALE_GATEWAY]
        rng.shuffle(targets)
        # More crises than gateways to spare: some patients have two (the second updates the first's alert).
        targets = (targets * (plan.crises // max(1, len(targets)) + 1))[: plan.crises]
        history: deque[tuple[float, int]] = deque(maxlen=10)
        next_crisis = 0.0
        stored = 0
        last_poll = 0.0
        while stored < plan.backlog_total and time.time() - start_at < plan.drain_limit_s:
            _take_messages(pipes, progress, 0.05)
            if progress.errors:
                raise AssertionError(f"a gateway process failed: {progress.errors}")
            now = time.time()
            if now - last_poll >= 0.5:
                stored, last_poll = _stored_backlog(db, plan), now
                history.append((now, stored))
            done = stored / plan.backlog_total
            if now - start_at > plan.reconnect_s + RECONNECT_GRACE_S and len(progress.connected) == plan.process_count:
                back = sum(progress.connected.values())
                if back < plan.gateways and stored == history[0][1]:
                    raise AssertionError(f"only {back} of {plan.gateways} gateways connected; nothing stored lately")
            # Never before every gateway is back: a crisis held by a gateway still away measures the outage.
            all_back = sum(progress.connected.values()) == plan.gateways
            window_open = all_back and (now - start_at >= plan.crisis_after_s or done >= 0.2)
            if targets and window_open and now >= next_crisis:
                gateway = targets.pop()
                pipes[gateway % plan.process_count].send(("crisis", gateway))
                if done >= plan.crisis_until:
                    progress.crises_after_window += 1
                    next_crisis = now + 0.05
                else:
                    # Spread what is left over the time until the window closes, at the rate seen lately.
                    (t0, s0), (t1, s1) = history[0], history[-1]
                    rate = (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else plan.backlog_total / 60
                    until_close = max(0.0, plan.crisis_until * plan.backlog_total - stored) / rate
                    next_crisis = now + rng.uniform(0.2, 1.8) * until_close / max(1, len(targets) + 1)
        drained = stored >= plan.backlog_total
        # Crises not yet sent (a drain faster than the window): sent now, counted apart.
        for gateway in targets:
            pipes[gateway % plan.process_count].send(("crisis", gateway))
            progress.crises_after_window += 1
        for pipe in pipes:
            pipe.send(("stop",))
        deadline = time.monotonic() + plan.settle_s + 60
        while len(progress.finals) < plan.process_count and time.monotonic() < deadline and not progress.errors:
            _take_messages(pipes, progress, 0.5)
        meter.stop()
        if progress.errors or len(progress.finals) < plan.process_count:
            raise AssertionError(f"the gateway processes did not report: {progress.errors}")

        first_start = min(progress.started)
        backlog_end = db.execute(
            "SELECT extract(epoch FROM max(stored_at)) FROM readings WHERE gateway_id LIKE %s AND sequence < %s",
            (plan.prefix + "%", FRESH_SEQUENCE_BASE)).fetchone()[0]
        drain_end = float(backlog_end) if drained and backlog_end is not None else time.time()
        drain_s = drain_end - first_start
        in_drain = db.execute(
            "SELECT count(*) FROM readings WHERE gateway_id LIKE %s AND stored_at <= to_timestamp(%s)",
            (plan.prefix + "%", drain_end)).fetchone()[0]
        report.update({
            "drained": drained,
            "drain_s": round(drain_s, 1),
            "stored_per_s_in_drain": round(in_drain / drain_s) if drain_s > 0 else None,
            "peak_outbox_depth": progress.peak_depth,
            "outboxes_emptied_s_after_stop": max(f["emptied_s_after_stop"] for f in progress.finals),
            "outbox_depth_left": sum(f["depth_left"] for f in progress.finals),
        })
        report.update(_alert_figures(db, alerts, plan, progress, time.monotonic() + plan.settle_s))
        report.update(_delivery_figures(db, plan, progress))
        report["crises_after_window"] = progress.crises_after_window
        report["broker_peak_stored_messages"] = broker_queue.peak(first_start)
        cpu = meter.report(int(in_drain), drain_end)
        report["cpu_us_per_reading"] = cpu["cpu_us_per_reading"]
        report["cpu_s"] = cpu["cpu_s"]
        return report
    finally:
        db.close()
        close_finders()
        alerts.close()
        broker_queue.close()
        # After a clean run they are closing their connections; after a failure, waiting for them is pointless.
        finished = len(progress.finals) == plan.process_count
        for child in processes:
            child.join(30 if finished else 1)
            if child.is_alive():
                child.kill()


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _alert_figures(db: Any, alerts: AlertCommits, plan: FleetPlan, progress: _Progress,
                   deadline: float) -> dict[str, Any]:
    """Per fresh crisis, its outbox -> alert-committed time; and whether the stale crisis's alert is late."""
    crisis_ids = [c[0] for c in progress.crises_put]
    stale_id = compute_reading_id(cuff_uid(plan.gateway_id(STALE_GATEWAY)), "blood_pressure", None,
                                  sequence=STALE_CRISIS_SEQUENCE)
    query = ("SELECT e.id, e.reading_id, extract(epoch FROM e.at), a.late FROM alert_events e"
             " JOIN alerts a ON a.id = e.alert_id WHERE a.rule_id = 'bp_crisis' AND e.reading_id = ANY(%s)"
             " AND e.event IN ('opened', 'updated', 'reopened')")
    while True:
        rows = db.execute(query, ([*crisis_ids, stale_id],)).fetchall()
        if len({r[1] for r in rows}) == len(crisis_ids) + 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    put_at = {c[0]: c[2] for c in progress.crises_put}
    first: dict[str, tuple[float, bool, bool]] = {}
    stale_late: bool | None = None
    for event_id, reading_id, at, late in sorted(rows):
        if reading_id == stale_id:
            stale_late = bool(late)
            continue
        # The NOTIFY arrives at commit; without it (the listener fell behind), the event's own time,
        # taken in the transaction before its commit, is a slight underestimate.
        committed = alerts.seen.get(event_id)
        first.setdefault(reading_id, (committed if committed is not None else float(at), committed is not None,
                                      bool(late)))
    latencies = [at - put_at[reading_id] for reading_id, (at, _, _) in first.items()]
    from_notify = sum(notified for _, notified, _ in first.values())
    late_fresh = sum(late for _, _, late in first.values())
    figures: dict[str, Any] = {"crises": len(crisis_ids), "crisis_alerts": len(latencies),
                               "crisis_alerts_from_notify": from_notify, "crisis_alerts_late": late_fresh,
                               "stale_crisis_alert_late": stale_late}
    if latencies:
        figures["crisis_to_alert_s"] = {name: round(_percentile(latencies, share), 2) for name, share in
                                        (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))}
    return figures


def _delivery_figures(db: Any, plan: FleetPlan, progress: _Progress) -> dict[str, Any]:
    """Lost (put in an outbox, not stored), doubled (one device record stored twice) and re-sent."""
    expected = [rid for final in progress.finals for rid in final["put_ids"]]
    with db.transaction():
        db.execute("CREATE TEMP TABLE fleet_expected (id text PRIMARY KEY) ON COMMIT DROP")
        with db.cursor().copy("COPY fleet_expected (id) FROM STDIN") as copy:
            for rid in expected:
                copy.write_row((rid,))
        lost = db.execute("SELECT count(*) FROM fleet_expected e WHERE NOT EXISTS"
                          " (SELECT 1 FROM readings r WHERE r.id = e.id)").fetchone()[0]
    stored, doubled = db.execute(
        "SELECT count(*), count(*) - count(DISTINCT (device_uid, sequence)) FROM readings WHERE gateway_id LIKE %s",
        (plan.prefix + "%",)).fetchone()
    uplink_log: Counter[str] = Counter()
    for final in progress.finals:
        uplink_log.update(final["uplink_log"])
    totals = {key: sum(f[key] for f in progress.finals) for key in
              ("batches_sent", "batches_resent", "readings_acked", "readings_rejected", "connects", "ack_failures",
               "sender_failures")}
    return {
        "readings_put": len(expected), "readings_stored": stored, "lost": lost, "doubled": doubled,
        **totals,
        "uplink_warnings": uplink_log["warnings"],
        "uplink_warning_samples": [w for f in progress.finals for w in f["uplink_warnings"]][:LOG_KEPT],
        "ingest_replays": _ingest_replays(db),
    }


def _ingest_replays(db: Any) -> int | None:
    """Readings ingest received again after they were stored (a re-sent copy), stored nothing for and acked
    again: what its writers copied into their staging tables, from the statistics PostgreSQL keeps for
    those temp tables, less the readings in the database (the run's and the start-up probe's). Copies
    still queued in the broker come later, so read until the figure has not moved for longer than a
    backend may hold its statistics (10 s when idle); None if the server keeps none for temp tables."""
    query = ("SELECT (SELECT sum(n_tup_ins) FROM pg_stat_all_tables WHERE relname = 'ingest_stage_readings')"
             " - (SELECT count(*) FROM readings)")
    value: int | None = None
    since = time.monotonic()
    deadline = since + REPLAYS_SETTLE_S
    while time.monotonic() < deadline:
        row = db.execute(query).fetchone()
        if row is None or row[0] is None:
            return None
        if int(row[0]) != value:
            value, since = int(row[0]), time.monotonic()
        elif time.monotonic() - since > 12:
            break
        time.sleep(1.0)
    return value


def plan_summary(plan: FleetPlan) -> dict[str, Any]:
    """The plan as JSON, with the processes it runs and where the gateway and ingest code came from (a
    before/after comparison runs the same harness against two trees)."""
    import cloud.ingest.consumer
    import gateway.store.uplink

    summary = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(plan).items()}
    summary["process_count"] = plan.process_count
    summary["code"] = [gateway.store.uplink.__file__, cloud.ingest.consumer.__file__]
    return summary
