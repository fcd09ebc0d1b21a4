"""``rpm-cloud ingest --workers N``: N worker processes on the shared subscription.

Each process runs one :class:`~cloud.ingest.consumer.IngestWorker` (its own MQTT connection, writer
thread and connection pool): the broker's shared subscription splits the gateways' messages between
them, and the database (readings keyed by id, row locks taken in id order) keeps the guarantees when
two of them see the same reading. On a 3.1.1-only broker there is no shared subscription, so one
worker reads the plain topic filter.
"""

from __future__ import annotations

import argparse
import gc
import logging
import multiprocessing
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from cloud.ingest.consumer import BrokerAddress, IngestError, IngestWorker, broker_speaks_v5
from cloud.settings import CloudSettings, get_settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--protocol", choices=["auto", "5", "3.1.1"], default="auto",
                        help="MQTT protocol; auto tries v5 and falls back to 3.1.1 (default auto)")
    parser.add_argument("--client-id", default=None,
                        help="client id prefix; a stable one plus --session-expiry keeps the broker queuing "
                             "for a worker while it restarts (default: hostname)")
    parser.add_argument("--session-expiry", type=int, default=0, metavar="SECONDS",
                        help="MQTT v5 session expiry interval (default 0: clean sessions)")
    parser.add_argument("--database-url", default=None, help="default: RPM_DATABASE_URL")
    parser.add_argument("--mqtt-url", default=None, help="default: RPM_MQTT_URL")


def _settings(args: argparse.Namespace) -> CloudSettings:
    overrides: dict[str, Any] = {}
    if args.database_url:
        overrides["database_url"] = args.database_url
    if args.mqtt_url:
        overrides["mqtt_url"] = args.mqtt_url
    return get_settings().model_copy(update=overrides)


def run_worker(settings: CloudSettings, client_id: str, protocol: str, session_expiry_s: int,
               should_stop: Callable[[], bool]) -> None:
    """Run one worker until ``should_stop()``, logging its counters every 10 s."""
    worker = IngestWorker(settings, client_id=client_id, protocol=protocol, session_expiry_s=session_expiry_s)
    worker.start()
    _tune_garbage_collector()
    log.info("%s: consuming with MQTT %s from %s", client_id, worker.protocol, settings.mqtt_url)
    last_log = time.monotonic()
    try:
        # Polled, not waited on: a signal handler that sets an Event the main thread is waiting on
        # can deadlock on the Event's own lock.
        while not should_stop():
            time.sleep(0.2)
            if time.monotonic() - last_log >= 10:
                log.info("%s: %s", client_id, worker.stats)
                last_log = time.monotonic()
    finally:
        worker.stop()
        log.info("%s: stopped: %s", client_id, worker.stats)


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


def _child(settings: CloudSettings, client_id: str, protocol: str, session_expiry_s: int, shared_stop: Any) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s {client_id} %(name)s: %(message)s")
    stop = _StopRequest(shared_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    signal.signal(signal.SIGTERM, stop)
    run_worker(settings, client_id, protocol, session_expiry_s, stop.is_set)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = _settings(args)
    prefix = args.client_id or f"ingest-{socket.gethostname()}"
    try:
        address = BrokerAddress.parse(settings.mqtt_url)
    except IngestError as err:
        print(f"error: {err}")
        return 2
    protocol = args.protocol
    if protocol == "auto":
        speaks = None
        deadline = time.monotonic() + 60
        while speaks is None and time.monotonic() < deadline:
            speaks = broker_speaks_v5(address, settings)
            if speaks is None:
                time.sleep(1)
        if speaks is None:
            print(f"error: MQTT broker {address.host}:{address.port} unreachable")
            return 2
        protocol = "5" if speaks else "3.1.1"
    workers = max(1, args.workers)
    if protocol == "3.1.1" and workers > 1:
        log.warning("MQTT 3.1.1 has no shared subscriptions: running one worker instead of %d", workers)
        workers = 1

    stop = _StopRequest()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if workers == 1:
        run_worker(settings, f"{prefix}-0", protocol, args.session_expiry, stop.is_set)
        return 0
    context = multiprocessing.get_context("spawn")
    shared_stop = context.Event()
    processes = [context.Process(target=_child, name=f"{prefix}-{i}",
                                 args=(settings, f"{prefix}-{i}", protocol, args.session_expiry, shared_stop))
                 for i in range(workers)]
    for process in processes:
        process.start()
    # A worker that dies takes its share of the subscription with it: stop the rest and exit non-zero
    # so the supervisor (systemd, Kubernetes) restarts the service whole.
    failed = False
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
