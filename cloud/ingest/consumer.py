"""One ingest worker: an MQTT consumer feeding a writer thread through a bounded queue.

paho's network thread only enqueues; the writer thread validates, writes a group of messages in one
transaction (:class:`~cloud.ingest.writer.BatchWriter`), and only after the commit acknowledges the
broker's deliveries (``manual_ack``) and publishes the app-level :class:`~gateway.contract.Ack`.

Backpressure: with MQTT v5 the CONNECT asks for a Receive Maximum equal to the queue size, so the
broker never has more unacknowledged messages in flight to this worker than the queue holds; as
deliveries are acknowledged only after commit, a slow or absent database stops the flow at the
broker (which keeps the messages queued) instead of growing memory here. With MQTT 3.1.1 the queue's
blocking ``put`` stops paho reading the socket instead. A database outage is retried with backoff,
the same group of messages, until it commits: nothing is acknowledged before that, nothing is lost.

The queue has two lanes (:mod:`cloud.ingest.lanes`): small messages, which is how gateways send what
was measured just now while a backlog drains, are written before large backlog messages that arrived
earlier, and PUBACKs still leave in arrival order.

One message never stops the worker: validation never raises (a bad message is a dead letter), and a
message the database refuses is retried one reading at a time, so only the reading it refuses is
rejected and dead-lettered. If the writer thread meets an error it cannot turn into a dead letter,
it stops, the worker is marked failed (:attr:`IngestWorker.failure`, one log line) and stops
reading from the broker; ``run_worker`` then exits non-zero so the supervisor restarts it, and
everything unacknowledged is redelivered. :meth:`IngestWorker.healthy` and :meth:`IngestWorker.ready`
are what the service's ``/healthz`` and ``/readyz`` report.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from psycopg_pool import PoolTimeout

from cloud.db.pool import open_pool
from cloud.errors import CloudError
from cloud.ingest.lanes import AckOrder, Lanes
from cloud.ingest.metrics import WriterMetrics, worker_values
from cloud.ingest.validation import (
    DeadLetter,
    StatusUpdate,
    ValidatedBatch,
    printable,
    validate_message,
    validate_status,
)
from cloud.ingest.writer import BatchWriter, WriteResult, as_store_failure
from cloud.settings import CloudSettings
from gateway.contract import (
    INGEST_SHARE_GROUP,
    INGEST_SUBSCRIPTION,
    PRIORITY_PAYLOAD_BYTES,
    READINGS_FILTER,
    TOPIC_PREFIX,
    Ack,
    Rejection,
    acks_topic,
)
from gateway.mqtt.backoff import ExponentialBackoff
from gateway.mqtt.broker import BrokerAddress, BrokerUrlError
from gateway.mqtt.client import (
    MQTT_V5,
    MQTT_V311,
    ClientOptions,
    Protocol,
    apply_receive_maximum,
    broker_speaks_v5,
    connect_async,
    create_client,
    disconnect,
    network_thread_alive,
)

log = logging.getLogger(__name__)

STATUS_FILTER = f"{TOPIC_PREFIX}/gw/+/status"
ACKS_IN_FLIGHT = 1000  # unacknowledged ack publishes, before the broker's Receive Maximum caps it
DATABASE_RETRY = ExponentialBackoff(0.1, 5.0)
"""The same group again while the database is unavailable: 0.1 s, doubling to 5 s."""
SCHEMA_FAULT_CLASSES = ("42", "3F")
"""SQLSTATE classes that say the schema or privileges are wrong (syntax error or access rule
violation, invalid schema name), never the data: such a failure stops the worker, rejects nothing."""


class IngestError(CloudError, RuntimeError):
    """The ingest worker could not start (e.g. the broker refused the connection)."""


def broker_address(settings: CloudSettings) -> BrokerAddress:
    try:
        return BrokerAddress.parse(settings.mqtt_url)
    except BrokerUrlError as err:
        raise IngestError(f"RPM_MQTT_URL: {err}") from None


def client_options(settings: CloudSettings, client_id: str) -> ClientOptions:
    """What every ingest connection shares: credentials and TLS from the settings."""
    return ClientOptions(client_id=client_id, username=settings.mqtt_username, password=settings.mqtt_password,
                         tls=settings.mqtt_tls())


def probe_protocol(address: BrokerAddress, settings: CloudSettings) -> Protocol | None:
    """MQTT 5 if the broker accepts it, 3.1.1 if it refuses it, None if it cannot be reached."""
    speaks = broker_speaks_v5(address, replace(client_options(settings, "ingest"), keepalive_s=10))
    return None if speaks is None else MQTT_V5 if speaks else MQTT_V311


@dataclass(slots=True)
class IngestStats:
    """Counters kept by the writer thread (read by tests, the service's log line and the benchmark)."""

    messages: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    commits: int = 0
    database_errors: int = 0
    isolated_failures: int = 0
    statuses: int = 0
    security_events: int = 0
    """Readings refused for a device bound to another gateway or an id stored with other content."""


@dataclass(frozen=True, slots=True)
class _Delivery:
    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes


@dataclass(slots=True)
class _Group:
    """Messages written in one transaction; the three lists are parallel (a status message has an
    empty batch, a readings message no status)."""

    deliveries: list[_Delivery] = field(default_factory=list)
    batches: list[ValidatedBatch] = field(default_factory=list)
    statuses: list[StatusUpdate | None] = field(default_factory=list)
    readings: int = 0

    def singles(self) -> list[_Group]:
        return [_Group([d], [b], [s], len(b.readings))
                for d, b, s in zip(self.deliveries, self.batches, self.statuses, strict=True)]


class _Refused(CloudError):
    """The database (or a hook) refused the group for a reason retrying will not cure."""


class WorkerFailed(IngestError):
    """The writer met an error it cannot turn into a dead letter: the worker must be restarted."""


class IngestWorker:
    """``IngestWorker(settings).start()`` … ``.stop()``: one consumer of the shared subscription."""

    def __init__(
        self,
        settings: CloudSettings,
        *,
        client_id: str | None = None,
        protocol: str = "auto",
        session_expiry_s: int | None = None,
        pool_size: int = 2,
    ) -> None:
        if protocol not in ("auto", "5", "3.1.1"):
            raise IngestError(f"protocol must be auto, 5 or 3.1.1, not {protocol!r}")
        self.settings = settings
        self.address = broker_address(settings)
        self.client_id = client_id or f"ingest-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.requested_protocol = protocol
        self.protocol: str | None = None
        self.session_expiry_s = settings.ingest_session_expiry_s if session_expiry_s is None else session_expiry_s
        """MQTT v5 session expiry: the broker keeps queuing for this client id this long after it
        vanishes (a clean :meth:`stop` ends the session instead)."""
        self.stats = IngestStats()
        self.metrics = WriterMetrics()
        """Commit latencies and dead letters by reason (the service's ``/metrics``)."""
        self.subscribed = threading.Event()
        self.failure: str | None = None
        """Why the writer stopped, once it has (the worker is then of no use: restart it)."""
        self._pool_size = pool_size
        self._queue: Lanes[_Delivery] = Lanes(settings.ingest_queue_max, PRIORITY_PAYLOAD_BYTES)
        self._acks = AckOrder(self._send_puback)
        self._writer = BatchWriter(settings.late_after_s)
        self._stopping = threading.Event()
        self._left_unacked = False
        """A delivery was left unacknowledged at stop: the session must outlive this worker."""
        self._generation = 0
        self._client: mqtt.Client | None = None
        self._thread: threading.Thread | None = None
        self._pool: Any = None
        self.on_commit: Callable[[WriteResult], None] | None = None
        """Called on the writer thread after each commit (tests and the benchmark count with it)."""

    # ------------------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 30.0) -> IngestWorker:
        self.protocol = self._choose_protocol(timeout_s)
        self._pool = open_pool(self.settings.database_url, min_size=1, max_size=self._pool_size, name=self.client_id)
        self._client = self._make_client()
        self._thread = threading.Thread(target=self._run_writer, name=f"{self.client_id}-writer", daemon=True)
        self._thread.start()
        self._client.loop_start()
        return self

    def healthy(self) -> bool:
        """Liveness: the writer thread and paho's network thread are running and nothing failed."""
        client = self._client
        return (self.failure is None and self._thread is not None and self._thread.is_alive()
                and client is not None and network_thread_alive(client))

    def ready(self) -> bool:
        """Readiness: healthy and subscribed (messages published now reach this worker's group)."""
        return self.subscribed.is_set() and self.healthy()

    def metric_values(self) -> list[float]:
        """The worker's metrics now, as :class:`~cloud.ingest.metrics.IngestCollector` reads them."""
        return worker_values(self.stats, self.metrics, queue_depth=self._queue.qsize(),
                             in_flight=self._queue.unfinished_tasks, healthy=self.healthy(), ready=self.ready())

    def wait_ready(self, timeout_s: float = 15.0) -> None:
        """Block until the subscription is in place (messages published after this reach the group)."""
        if not self.subscribed.wait(timeout_s):
            raise IngestError(f"{self.client_id}: not subscribed within {timeout_s:.0f} s")

    def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Stop taking messages, finish the queued ones while the database allows, disconnect."""
        client = self._client
        if client is not None and client.is_connected():
            client.unsubscribe(self._filters())
        deadline = time.monotonic() + drain_timeout_s
        while (self._queue.unfinished_tasks or not self._queue.empty()) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(DATABASE_RETRY.max_s + 5)
        if client is not None:
            left_behind = self.failure is not None or self._left_unacked or not self._queue.empty()
            if left_behind:
                log.warning("%s: stopping with messages not stored: the session stays with the broker, which"
                            " delivers them again when this client id comes back", self.client_id)
            # A clean stop ends the session; a crash, a failure or a stop while messages wait
            # unacknowledged (the database away) leaves it for the broker to keep and redeliver.
            disconnect(client, end_session=self.protocol == MQTT_V5 and bool(self.session_expiry_s)
                       and not left_behind)
            client.loop_stop()
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> IngestWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ MQTT side

    def _choose_protocol(self, timeout_s: float) -> str:
        if self.requested_protocol != "auto":
            return self.requested_protocol
        deadline = time.monotonic() + timeout_s
        while True:
            protocol = probe_protocol(self.address, self.settings)
            if protocol is not None:
                if protocol == MQTT_V311:
                    log.warning("broker %s:%s refused MQTT v5: falling back to 3.1.1 on %s (one worker)",
                                self.address.host, self.address.port, READINGS_FILTER)
                return protocol
            if time.monotonic() > deadline:
                raise IngestError(f"MQTT broker {self.address.host}:{self.address.port} unreachable")
            time.sleep(0.5)

    def _filters(self) -> list[str]:
        if self.protocol == MQTT_V5:
            return [INGEST_SUBSCRIPTION, f"$share/{INGEST_SHARE_GROUP}/{STATUS_FILTER}"]
        return [READINGS_FILTER, STATUS_FILTER]

    def _make_client(self) -> mqtt.Client:
        v5 = self.protocol == MQTT_V5
        options = replace(
            client_options(self.settings, self.client_id),
            protocol=MQTT_V5 if v5 else MQTT_V311,
            # 3.1.1 has no expiry: its session is always kept (clean_session=False).
            persistent=bool(self.session_expiry_s) or not v5,
            session_expiry_s=self.session_expiry_s,
            # The broker sends no more unacknowledged messages than the queue holds (backpressure).
            receive_maximum=self.settings.ingest_queue_max,
            keepalive_s=30,
            max_in_flight=ACKS_IN_FLIGHT,
            manual_ack=True,
            fast_path=True,
        )
        client = create_client(self.address, options)
        client.reconnect_delay_set(0.2, 5)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        connect_async(client, self.address, options)
        return client

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("%s: broker refused the connection: %s", self.client_id, reason_code)
            return
        apply_receive_maximum(client, ACKS_IN_FLIGHT, properties)
        # Delivery ids (mids) belong to one connection: deliveries queued under an older one are
        # stored but not acked on this one (the broker redelivers them; storing again is a no-op).
        self._generation += 1
        client.subscribe([(f, 1) for f in self._filters()])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        failures = [rc for rc in reason_codes if rc.is_failure]
        if failures:
            log.error("%s: subscription refused: %s", self.client_id, failures)
            return
        self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self.subscribed.clear()
        if not self._stopping.is_set():
            log.warning("%s: disconnected from the broker (%s); reconnecting", self.client_id, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self.failure is not None:
            return  # not acked: redelivered to whoever takes this session or share next
        delivery = _Delivery(self._generation, message.mid, message.qos, message.topic, message.payload)
        # In line before the writer can see it: its PUBACK waits for every earlier one.
        self._acks.received(delivery.generation, delivery.mid, delivery.qos)
        try:
            self._queue.put_nowait(delivery)  # the usual case: no timed wait to set up
            return
        except queue.Full:
            pass
        while True:
            try:
                self._queue.put(delivery, timeout=0.5)
                return
            except queue.Full:
                if self._stopping.is_set() or self.failure is not None:
                    self._left_unacked = True
                    return  # not acked: the broker redelivers it

    def _send_puback(self, mid: int, qos: int) -> None:
        client = self._client
        if client is not None:
            client.ack(mid, qos)

    # ------------------------------------------------------------------------------ writer side

    def _run_writer(self) -> None:
        try:
            while not self._stopping.is_set():
                group = self._gather()
                if group.deliveries:
                    try:
                        self._process(group)
                    finally:
                        for _ in group.deliveries:
                            self._queue.task_done()
        except BaseException as err:
            self._fail(f"writer stopped: {type(err).__name__}: {_first_line(err)}")
            log.debug("%s: writer traceback", self.client_id, exc_info=True)

    def _fail(self, reason: str) -> None:
        # Nothing of the current group was acknowledged: stop reading so the broker keeps (and, on
        # restart, redelivers) everything this worker has not committed.
        self.failure = reason
        log.error("%s: FAILED, needs a restart: %s", self.client_id, reason)
        self.subscribed.clear()
        client = self._client
        if client is not None:
            try:
                client.unsubscribe(self._filters())
            except Exception:  # already failing: the exit code says the rest
                log.debug("%s: unsubscribe after failure failed", self.client_id, exc_info=True)

    def _gather(self) -> _Group:
        """The next group to write. Small messages (the present) go alone, with at most one backlog
        message so a drain moves on; a backlog group stops at ``ingest_backlog_batch_max`` readings,
        which bounds how long a message arriving meanwhile waits for the group in progress."""
        group = _Group()
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return group
        self._add(group, first)
        present = len(first.payload) <= PRIORITY_PAYLOAD_BYTES
        limit = self.settings.ingest_batch_max if present else self.settings.ingest_backlog_batch_max
        deadline = time.monotonic() + self.settings.ingest_batch_ms / 1000
        while group.readings < limit:
            try:
                delivery = self._queue.get_nowait(large=not present)
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    delivery = self._queue.get(timeout=remaining, large=not present)
                except queue.Empty:
                    break
            self._add(group, delivery)
        if present:
            try:
                self._add(group, self._queue.get_large_nowait())
            except queue.Empty:
                pass
        return group

    def _add(self, group: _Group, delivery: _Delivery) -> None:
        group.deliveries.append(delivery)
        if delivery.topic.endswith("/status"):
            checked = validate_status(delivery.topic, delivery.payload)
            batch = ValidatedBatch(delivery.topic, None, None)
            if isinstance(checked, DeadLetter):
                batch.dead_letters.append(checked)
                checked = None
            group.batches.append(batch)
            group.statuses.append(checked)
            return
        batch = validate_message(delivery.topic, delivery.payload)
        group.batches.append(batch)
        group.statuses.append(None)
        group.readings += len(batch.readings)

    def _process(self, group: _Group) -> None:
        try:
            result = self._write_with_retry(group)
        except _Refused as refused:
            self.stats.isolated_failures += 1
            if len(group.deliveries) > 1:
                log.warning("%s: a group of %d messages was refused (%s); writing them one by one",
                            self.client_id, len(group.deliveries), refused)
                for single in group.singles():
                    self._process(single)
                return
            result = self._write_refused(group, str(refused))
        if result is None:
            self._left_unacked = True
            return  # stopping while the database is away: nothing acked, the broker keeps the messages
        self._after_commit(group, result)

    def _write_refused(self, group: _Group, reason: str) -> WriteResult | None:
        delivery, batch = group.deliveries[0], group.batches[0]
        if len(batch.readings) > 1:
            return self._write_one_by_one(group)
        log.error("%s: message on %s not stored: %s", self.client_id, delivery.topic, reason)
        failed = _Group([delivery], [as_store_failure(batch, f"not stored: {reason}", delivery.payload)], [None])
        try:
            return self._write_with_retry(failed)
        except _Refused as err:
            # Not even its dead letter could be written (a broken schema, a failing database): leave
            # the message unacknowledged and fail loudly; the broker redelivers it after the restart.
            raise WorkerFailed(f"the dead letter for a message on {delivery.topic} was refused too: {err}") from err

    def _write_one_by_one(self, group: _Group) -> WriteResult | None:
        """The database refused a message: write its readings one per transaction so only the ones it
        refuses are rejected and dead-lettered, then answer the message with one ack."""
        delivery, batch = group.deliveries[0], group.batches[0]
        log.warning("%s: message on %s refused; writing its %d readings one by one", self.client_id, delivery.topic,
                    len(batch.readings))
        combined = WriteResult()
        accepted: list[str] = []
        rejected = list(batch.rejected)
        dead_letters = list(batch.dead_letters)
        for reading in batch.readings:
            single = ValidatedBatch(batch.topic, batch.ack_gateway, batch.batch_id, [reading])
            try:
                result = self._write_with_retry(_Group([delivery], [single], [None], 1))
            except _Refused as refused:
                reason = printable(f"not stored: {refused}")
                log.error("%s: reading %s on %s not stored: %s", self.client_id, reading.id, delivery.topic, refused)
                rejected.append(Rejection(id=reading.id, reason=reason))
                dead_letters.append(DeadLetter(batch.topic, reason, reading.model_dump_json().encode(),
                                               batch.ack_gateway, batch.batch_id, reading.id))
                continue
            if result is None:
                return None  # stopping: nothing acked, the broker redelivers the message
            combined.stored += result.stored
            combined.duplicates += result.duplicates
            combined.dead_letters += result.dead_letters
            combined.security_events += result.security_events
            combined.notifications += result.notifications
            for _, ack in result.acks:
                accepted += ack.accepted
                rejected += ack.rejected
        # The message's own dead letters (and the refused readings') last, in one transaction; no ack
        # from it: the one ack below answers the whole message.
        letters = ValidatedBatch(batch.topic, None, None, dead_letters=dead_letters)
        try:
            tail = self._write_with_retry(_Group([delivery], [letters], [None]))
        except _Refused as err:
            raise WorkerFailed(f"the dead letters for a message on {delivery.topic} were refused: {err}") from err
        if tail is None:
            return None
        combined.dead_letters += tail.dead_letters
        if batch.ack_gateway and batch.batch_id:
            combined.acks.append((batch.ack_gateway, Ack(batch_id=batch.batch_id, accepted=accepted,
                                                         rejected=rejected)))
        return combined

    def _write_with_retry(self, group: _Group) -> WriteResult | None:
        failures = 0
        statuses = [s for s in group.statuses if s is not None]
        while True:
            try:
                with self._pool.connection(timeout=5.0) as conn:
                    started = time.perf_counter()
                    result = self._writer.write(conn, group.batches, datetime.now(UTC), statuses)
                    self.metrics.committed(time.perf_counter() - started, _dead_letter_reasons(group, result),
                                           result.security_events)
                    return result
            except (psycopg.OperationalError, PoolTimeout) as err:
                # The database is down, restarting, or chose us as a deadlock victim: same group again.
                self.stats.database_errors += 1
                failures += 1
                backoff = DATABASE_RETRY.delay(failures)
                log.warning("%s: database unavailable (%s); retrying in %.1f s", self.client_id,
                            _first_line(err), backoff)
                if self._stopping.wait(backoff):
                    return None
            except Exception as err:  # bad data the database refuses, or a hook failing on it
                if isinstance(err, psycopg.Error) and (err.sqlstate or "")[:2] in SCHEMA_FAULT_CLASSES:
                    # An undefined column or table, a missing privilege: the deployment is broken (e.g.
                    # a migration not applied), not the message. Rejecting would make every gateway
                    # quarantine good readings for good; failing leaves them with the broker instead.
                    raise WorkerFailed(f"the database schema refuses ingest's statements: {type(err).__name__}:"
                                       f" {_first_line(err)}") from err
                raise _Refused(f"{type(err).__name__}: {_first_line(err)}") from err

    def _after_commit(self, group: _Group, result: WriteResult) -> None:
        stats = self.stats
        stats.commits += 1
        stats.messages += len(group.deliveries)
        stats.readings_stored += result.stored
        stats.duplicates += result.duplicates
        stats.dead_letters += result.dead_letters
        stats.security_events += result.security_events
        stats.statuses += sum(1 for s in group.statuses if s is not None)
        client = self._client
        assert client is not None
        for gateway_id, ack in result.acks:
            client.publish(acks_topic(gateway_id), ack.model_dump_json(), qos=1)
        for note in result.notifications:
            client.publish(note.topic, note.payload, qos=note.qos, retain=note.retain)
        self._acks.done(((d.generation, d.mid, d.qos) for d in group.deliveries), self._generation)
        if self.on_commit is not None:
            self.on_commit(result)


def _dead_letter_reasons(group: _Group, result: WriteResult) -> list[str]:
    """Reasons of the dead letters the group's own messages carried (the writer's refusals are its
    security events); looked at only when a commit wrote dead letters."""
    if not result.dead_letters:
        return []
    return [dead.reason for batch in group.batches for dead in batch.dead_letters]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
