"""``rpm-cloud ingest --workers N``: N worker processes on the shared subscription.

Each process runs one :class:`~cloud.ingest.consumer.IngestWorker` (its own MQTT connection, writer
thread and connection pool): the broker's shared subscription splits the gateways' messages between
them, and the database (readings keyed by id, row locks taken in id order) keeps the guarantees when
two of them see the same reading. On a 3.1.1-only broker there is no shared subscription, so one
worker reads the plain topic filter (with ``clean_session=False``: a persistent 3.1.1 session).

**Client ids and sessions.** Each worker has a persistent MQTT v5 session (expiry
``--session-expiry``, default ``RPM_INGEST_SESSION_EXPIRY_S`` = 3600 s; a clean stop ends it). A
shared subscription hands messages round-robin to every member *session*, online or not: messages
given to a dead worker's session stay there until the same client id reconnects, or are lost to the
group when the session expires. So a worker's id must be stable across its restarts, yet unique
among the instances running at once (two clients with one id take the session from each other on
every reconnect). The id is ``<prefix>-<slot>``, slot 0..N-1 for ``--workers N``. With
``--client-id PREFIX`` the operator guarantees the prefix is unique (a StatefulSet pod name, a
systemd instance name). The default prefix is ``ingest-<hostname>-<n>``, where ``n`` is the lowest
instance number no other ingest on this host holds: each instance holds an ``flock`` on
``<lock dir>/<hostname>-<n>.lock`` while it runs (``RPM_INGEST_LOCK_DIR``, default the temp dir).
The kernel drops the lock when the process dies, however it dies, so a restarted instance takes the
same number back, reclaims its sessions and receives what was queued for it while it was down,
and a second instance started beside it takes the next number instead of the first one's sessions.
Hosts differ by hostname; a pod whose name changes on every restart should get ``--client-id``
from a stable name, or its old sessions' messages wait for their expiry (the gateway resends what
the cloud never acked, so they are late, not lost).

**Failure.** A worker whose writer fails exits with status 1 (one log line says why); with
``--workers N`` the parent then stops the others and exits 1 too, so systemd or Kubernetes restarts
the service. ``--health-port`` serves ``/healthz`` and ``/readyz`` (:mod:`cloud.ingest.health`), and
``/metrics`` for Prometheus with every worker's counters (:mod:`cloud.ingest.metrics`).
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from cloud.ingest.consumer import IngestError, IngestWorker, broker_address, probe_protocol
from cloud.ingest.health import HealthServer
from cloud.ingest.metrics import VALUES, ingest_registry
from cloud.logging_setup import configure_logging
from cloud.settings import CloudSettings, get_settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--protocol", choices=["auto", "5", "3.1.1"], default="auto",
                        help="MQTT protocol; auto tries v5 and falls back to 3.1.1 (default auto)")
    parser.add_argument("--client-id", default=None,
                        help="client id prefix, unique among running instances and stable across restarts "
                             "(default: ingest-<hostname>-<n>, n claimed per host with a lock file)")
    parser.add_argument("--session-expiry", type=int, default=None, metavar="SECONDS",
                        help="MQTT v5 session expiry: how long the broker queues for a worker that is down "
                             "(default RPM_INGEST_SESSION_EXPIRY_S, 3600; 0: clean sessions)")
    parser.add_argument("--health-port", type=int, default=None, metavar="PORT",
                        help="serve /healthz, /readyz and /metrics (Prometheus) on this port (default: none)")
    parser.add_argument("--health-host", default="127.0.0.1",
                        help="address of the health endpoint (default 127.0.0.1; 0.0.0.0 for cluster probes)")
    parser.add_argument("--database-url", default=None, help="default: RPM_DATABASE_URL")
    parser.add_argument("--mqtt-url", default=None, help="default: RPM_MQTT_URL")


def _settings(args: argparse.Namespace) -> CloudSettings:
    overrides: dict[str, Any] = {}
    if args.database_url:
        overrides["database_url"] = args.database_url
    if args.mqtt_url:
        overrides["mqtt_url"] = args.mqtt_url
    return get_settings().model_copy(update=overrides)


def run_worker(settings: CloudSettings, client_id: str, protocol: str, session_expiry_s: int | None,
               should_stop: Callable[[], bool], report_ready: Callable[[bool], None] | None = None,
               report_metrics: Callable[[Sequence[float]], None] | None = None) -> int:
    """Run one worker until ``should_stop()``, logging its counters every 10 s; returns the exit status:
    0 after a requested stop, 1 when the worker failed (its supervisor should restart it).
    ``report_ready`` is told the worker's readiness and ``report_metrics`` its metrics
    (:meth:`~cloud.ingest.consumer.IngestWorker.metric_values`) on every poll: the health endpoint's sources."""
    worker = IngestWorker(settings, client_id=client_id, protocol=protocol, session_expiry_s=session_expiry_s)
    worker.start()
    _tune_garbage_collector()
    log.info("%s: consuming with MQTT %s from %s (session expiry %d s)", client_id, worker.protocol,
             settings.mqtt_url, worker.session_expiry_s)
    last_log = time.monotonic()
    status = 0
    try:
        # Polled, not waited on: a signal handler that sets an Event the main thread is waiting on
        # can deadlock on the Event's own lock.
        while not should_stop():
            time.sleep(0.2)
            if report_ready is not None:
                report_ready(worker.ready())
            if report_metrics is not None:
                report_metrics(worker.metric_values())
            if not worker.healthy():
                log.error("%s: exiting with status 1 so it is restarted: %s", client_id,
                          worker.failure or "a worker thread stopped")
                status = 1
                break
            if time.monotonic() - last_log >= 10:
                log.info("%s: %s", client_id, worker.stats)
                last_log = time.monotonic()
    finally:
        if report_ready is not None:
            report_ready(False)
        worker.stop(drain_timeout_s=0 if status else 5.0)
        if report_metrics is not None:
            report_metrics(worker.metric_values())
        log.info("%s: stopped: %s", client_id, worker.stats)
    return status


def claim_instance_prefix(lock_dir: Path | None = None) -> tuple[str, IO[str] | None]:
    """The default client-id prefix ``ingest-<hostname>-<n>`` and the open lock file that holds ``n``
    (keep it open while the instance runs). See the module docstring for why."""
    host = socket.gethostname()
    directory = lock_dir or Path(tempfile.gettempdir()) / f"rpm-ingest-{os.getuid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for n in range(1024):
            handle = (directory / f"{host}-{n}.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return f"ingest-{host}-{n}", handle
    except OSError as err:
        log.warning("cannot claim an ingest instance number in %s (%s)", directory, err)
    # Unique but not stable: sessions of a dead instance are not reclaimed (they expire).
    log.warning("using a per-process client id; pass --client-id for sessions that survive a restart")
    return f"ingest-{host}-p{os.getpid()}", None


def _tune_garbage_collector() -> None:
    """Every message allocates a few hundred short-lived objects (pydantic models, paho packets): with
    the default gen-0 threshold of 700 the collector runs every few messages and walks the long-lived
    heap (imported modules, numpy) each time it reaches gen 2, about half the validation cost under
    load. Freeze what start-up loaded (never collected again) and collect young objects less often;
    reference counting still frees almost everything at once, so memory stays flat."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


class _StopRequest:
    """Set from a signal handler (a plain attribute: safe there), or by the parent through ``shared``."""

    def __init__(self, shared: Any = None) -> None:
        self.requested = False
        self.shared = shared

    def __call__(self, *_: Any) -> None:
        self.requested = True

    def is_set(self) -> bool:
        return self.requested or (self.shared is not None and self.shared.is_set())


def _child(settings: CloudSettings, client_id: str, protocol: str, session_expiry_s: int | None, shared_stop: Any,
           ready: Any, metrics: Any) -> None:
    configure_logging(client_id, settings=settings)
    stop = _StopRequest(shared_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    signal.signal(signal.SIGTERM, stop)

    def report(is_ready: bool) -> None:
        ready.value = is_ready

    def report_metrics(values: Sequence[float]) -> None:
        metrics[:] = values

    raise SystemExit(run_worker(settings, client_id, protocol, session_expiry_s, stop.is_set, report, report_metrics))


def main(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        address = broker_address(settings)
    except IngestError as err:
        print(f"error: {err}")
        return 2
    protocol = args.protocol
    if protocol == "auto":
        probed = None
        deadline = time.monotonic() + 60
        while probed is None and time.monotonic() < deadline:
            probed = probe_protocol(address, settings)
            if probed is None:
                time.sleep(1)
        if probed is None:
            print(f"error: MQTT broker {address.host}:{address.port} unreachable")
            return 2
        protocol = probed
    workers = max(1, args.workers)
    if protocol == "3.1.1" and workers > 1:
        log.warning("MQTT 3.1.1 has no shared subscriptions: running one worker instead of %d", workers)
        workers = 1

    lock: IO[str] | None = None
    if args.client_id:
        prefix = args.client_id
    else:
        prefix, lock = claim_instance_prefix(settings.ingest_lock_dir)
    try:
        return _run(args, settings, prefix, protocol, workers)
    finally:
        if lock is not None:
            lock.close()


def _run(args: argparse.Namespace, settings: CloudSettings, prefix: str, protocol: str, workers: int) -> int:
    stop = _StopRequest()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    context = multiprocessing.get_context("spawn")
    ready_flags = [context.Value("b", 0, lock=False) for _ in range(workers)]
    # Each worker's metrics, written by its poll loop (worker_values) and read when /metrics is scraped.
    metric_values = [context.Array("d", VALUES, lock=False) for _ in range(workers)]
    names = [f"{prefix}-{i}" for i in range(workers)]
    processes: list[Any] = []
    failed = False

    def live() -> bool:
        return not failed and all(p.is_alive() for p in processes)

    def ready() -> bool:
        return live() and all(flag.value for flag in ready_flags)

    health = None
    if args.health_port is not None:
        try:
            registry = ingest_registry(lambda: zip(names, metric_values, strict=True))
            health = HealthServer(args.health_host, args.health_port, live=live, ready=ready, metrics=registry).start()
        except OSError as err:
            print(f"error: cannot serve health on {args.health_host}:{args.health_port}: {err}")
            return 2
        log.info("health: http://%s:%d/healthz, /readyz and /metrics", args.health_host, health.port)
    try:
        if workers == 1:
            # In this process: liveness is this loop running, readiness what the worker reports.
            processes.append(_ThisProcess())

            def report(is_ready: bool) -> None:
                ready_flags[0].value = is_ready

            def report_metrics(values: Sequence[float]) -> None:
                metric_values[0][:] = values

            return run_worker(settings, names[0], protocol, args.session_expiry, stop.is_set, report, report_metrics)
        shared_stop = context.Event()
        processes.extend(context.Process(
            target=_child, name=names[i],
            args=(settings, names[i], protocol, args.session_expiry, shared_stop, ready_flags[i], metric_values[i]))
            for i in range(workers))
        for process in processes:
            process.start()
        # A worker that dies takes its share of the subscription with it: stop the rest and exit non-zero
        # so the supervisor (systemd, Kubernetes) restarts the service whole.
        while not stop.is_set():
            time.sleep(0.5)
            if any(not p.is_alive() for p in processes):
                log.error("a worker process exited; stopping the others")
                failed = True
                break
        shared_stop.set()
        for process in processes:
            process.join(30)
        return 1 if failed or any(p.exitcode != 0 for p in processes) else 0
    finally:
        if health is not None:
            health.stop()


class _ThisProcess:
    """The single-worker case, where the worker runs in the service's own process."""

    @staticmethod
    def is_alive() -> bool:
        return True
