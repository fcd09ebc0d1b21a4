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
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from psycopg_pool import PoolTimeout

from cloud.db.pool import open_pool
from cloud.hooks import IN_TRANSACTION_HOOKS
from cloud.hooks import _load as load_hook
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
    READINGS_FILTER,
    TOPIC_PREFIX,
    Ack,
    Rejection,
    acks_topic,
)
from gateway.mqtt_flow import apply_receive_maximum

log = logging.getLogger(__name__)

STATUS_FILTER = f"{TOPIC_PREFIX}/gw/+/status"
RECEIVE_MAXIMUM_LIMIT = 65535
ACKS_IN_FLIGHT = 1000  # unacknowledged ack publishes, before the broker's Receive Maximum caps it
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0
SCHEMA_FAULT_CLASSES = ("42", "3F")
"""SQLSTATE classes that say the schema or privileges are wrong (syntax error or access rule
violation, invalid schema name), never the data: such a failure stops the worker, rejects nothing."""


class IngestError(RuntimeError):
    """The ingest worker could not start (e.g. the broker refused the connection)."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise IngestError(f"unsupported MQTT URL scheme {parts.scheme!r} (mqtt:// or mqtts://)")
        tls = parts.scheme in ("mqtts", "ssl")
        return cls(parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls)


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


RECV_CHUNK = 256 * 1024


class _AckingClient(mqtt.Client):
    """paho's client, minus two per-packet costs it has under load (profiled with py-spy):

    * paho reads each packet with up to three ``recv`` calls (command byte, length bytes, body):
      here one ``recv`` of up to :data:`RECV_CHUNK` feeds many packets, and ``loop_read`` goes on
      until the buffer is empty (bytes left in it would not wake the socket's ``select``);
    * on every PUBACK for a message we published (each app-level ack is QoS 1), paho walks all its
      outgoing messages (up to the in-flight limit and beyond) looking for a queued one to send:
      under load that walk was most of the network thread's time. Here the messages that ``publish``
      queued are remembered in order and sent from that list; paho's walk runs only when something
      is queued that the list does not know (after a reconnect, which requeues on its own).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._received = b""
        self._received_at = 0
        self._queued_mids: deque[int] = deque()

    def _sock_recv(self, bufsize: int) -> bytes:
        at = self._received_at
        if at >= len(self._received):
            data = super()._sock_recv(max(bufsize, RECV_CHUNK))
            if len(data) <= bufsize:
                self._received, self._received_at = b"", 0
                return data
            self._received, at = data, 0
        self._received_at = at + bufsize
        return self._received[at:at + bufsize]

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._received_at < len(self._received):
            rc = super().loop_read(max_packets)
        return rc

    def network_thread_alive(self) -> bool:
        """paho's loop thread (``loop_start``) is running: an exception in a callback would end it."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _sock_close(self) -> None:
        # Bytes of the old connection must never be parsed as the next one's.
        self._received, self._received_at = b"", 0
        super()._sock_close()

    def publish(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False,
                properties: Properties | None = None) -> mqtt.MQTTMessageInfo:
        info = super().publish(topic, payload, qos, retain, properties)
        if qos > 0:
            with self._out_message_mutex:
                message = self._out_messages.get(info.mid)
                if message is not None and message.state == mqtt.mqtt_ms_queued:
                    self._queued_mids.append(info.mid)
        return info

    def _update_inflight(self) -> mqtt.MQTTErrorCode:
        # Called by paho with its outgoing-message lock held, after a slot was freed.
        out = self._out_messages
        while self._queued_mids and self._inflight_messages < self._max_inflight_messages:
            message = out.get(self._queued_mids.popleft())
            if message is None or message.state != mqtt.mqtt_ms_queued:
                continue
            # As paho's own loop does for each queued message it finds.
            self._inflight_messages += 1
            message.state = mqtt.mqtt_ms_wait_for_puback if message.qos == 1 else mqtt.mqtt_ms_wait_for_pubrec
            rc = self._send_publish(message.mid, message.topic.encode("utf-8"), message.payload, message.qos,
                                    message.retain, message.dup, properties=message.properties)
            if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
        if self._inflight_messages >= len(out):
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS  # every outgoing message is in flight
        # Anything queued that was not noted above (a reconnect requeues messages itself): paho's scan.
        return super()._update_inflight()


class _Refused(Exception):
    """The database (or a hook) refused the group for a reason retrying will not cure."""


class WorkerFailed(IngestError):
    """The writer met an error it cannot turn into a dead letter: the worker must be restarted."""


def broker_speaks_v5(address: BrokerAddress, settings: CloudSettings, timeout_s: float = 5.0) -> bool | None:
    """True if a v5 CONNECT is accepted, False if refused (a 3.1.1-only broker), None if unreachable."""
    answer: dict[str, bool] = {}
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ingest-probe-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5)
    _configure_security(client, address, settings)

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        answer["v5"] = not reason_code.is_failure
        done.set()

    def on_disconnect(client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        answer.setdefault("v5", False)
        done.set()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    try:
        client.connect(address.host, address.port, keepalive=10)
    except OSError:
        return None
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return answer.get("v5", False)


def _configure_security(client: mqtt.Client, address: BrokerAddress, settings: CloudSettings) -> None:
    if settings.mqtt_username:
        client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
    if address.tls:
        client.tls_set(
            ca_certs=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
            certfile=str(settings.mqtt_cert_file) if settings.mqtt_cert_file else None,
            keyfile=str(settings.mqtt_key_file) if settings.mqtt_key_file else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )


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
        self.address = BrokerAddress.parse(settings.mqtt_url)
        self.client_id = client_id or f"ingest-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.requested_protocol = protocol
        self.protocol: str | None = None
        self.session_expiry_s = settings.ingest_session_expiry_s if session_expiry_s is None else session_expiry_s
        """MQTT v5 session expiry: the broker keeps queuing for this client id this long after it
        vanishes (a clean :meth:`stop` ends the session instead)."""
        self.stats = IngestStats()
        self.subscribed = threading.Event()
        self.failure: str | None = None
        """Why the writer stopped, once it has (the worker is then of no use: restart it)."""
        self._pool_size = pool_size
        self._queue: queue.Queue[_Delivery] = queue.Queue(maxsize=settings.ingest_queue_max)
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
        # Import the in-transaction hooks now, not inside the first transaction (numpy, httpx: ~0.3 s).
        for target in IN_TRANSACTION_HOOKS:
            load_hook(target)
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
                and isinstance(client, _AckingClient) and client.network_thread_alive())

    def ready(self) -> bool:
        """Readiness: healthy and subscribed (messages published now reach this worker's group)."""
        return self.subscribed.is_set() and self.healthy()

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
            self._thread.join(BACKOFF_MAX_S + 5)
        if client is not None:
            properties = None
            left_behind = self.failure is not None or self._left_unacked or not self._queue.empty()
            if left_behind:
                log.warning("%s: stopping with messages not stored: the session stays with the broker, which"
                            " delivers them again when this client id comes back", self.client_id)
            if self.protocol == "5" and self.session_expiry_s and not left_behind:
                # A clean stop ends the session; a crash, a failure or a stop while messages wait
                # unacknowledged (the database away) leaves it for the broker to keep and redeliver.
                properties = Properties(PacketTypes.DISCONNECT)
                properties.SessionExpiryInterval = 0
            client.disconnect(properties=properties)
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
            speaks = broker_speaks_v5(self.address, self.settings)
            if speaks is not None:
                if not speaks:
                    log.warning("broker %s:%s refused MQTT v5: falling back to 3.1.1 on %s (one worker)",
                                self.address.host, self.address.port, READINGS_FILTER)
                return "5" if speaks else "3.1.1"
            if time.monotonic() > deadline:
                raise IngestError(f"MQTT broker {self.address.host}:{self.address.port} unreachable")
            time.sleep(0.5)

    def _filters(self) -> list[str]:
        if self.protocol == "5":
            return [INGEST_SUBSCRIPTION, f"$share/{INGEST_SHARE_GROUP}/{STATUS_FILTER}"]
        return [READINGS_FILTER, STATUS_FILTER]

    def _make_client(self) -> mqtt.Client:
        v5 = self.protocol == "5"
        client = _AckingClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        _configure_security(client, self.address, self.settings)
        client.max_inflight_messages_set(ACKS_IN_FLIGHT)
        client.reconnect_delay_set(0.2, 5)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.ReceiveMaximum = min(RECEIVE_MAXIMUM_LIMIT, self.settings.ingest_queue_max)
            if self.session_expiry_s:
                properties.SessionExpiryInterval = self.session_expiry_s
        client.connect_async(self.address.host, self.address.port, keepalive=30,
                             clean_start=not self.session_expiry_s if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                             properties=properties)
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
        group = _Group()
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return group
        self._add(group, first)
        deadline = time.monotonic() + self.settings.ingest_batch_ms / 1000
        while group.readings < self.settings.ingest_batch_max:
            try:
                delivery = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    delivery = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            self._add(group, delivery)
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
        backoff = BACKOFF_MIN_S
        statuses = [s for s in group.statuses if s is not None]
        while True:
            try:
                with self._pool.connection(timeout=5.0) as conn:
                    return self._writer.write(conn, group.batches, datetime.now(UTC), statuses)
            except (psycopg.OperationalError, PoolTimeout) as err:
                # The database is down, restarting, or chose us as a deadlock victim: same group again.
                self.stats.database_errors += 1
                log.warning("%s: database unavailable (%s); retrying in %.1f s", self.client_id,
                            _first_line(err), backoff)
                if self._stopping.wait(backoff):
                    return None
                backoff = min(BACKOFF_MAX_S, backoff * 2)
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
        generation = self._generation
        for delivery in group.deliveries:
            if delivery.qos > 0 and delivery.generation == generation:
                client.ack(delivery.mid, delivery.qos)
        if self.on_commit is not None:
            self.on_commit(result)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
