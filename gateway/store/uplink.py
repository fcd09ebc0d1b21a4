"""The uplink: outbox batches to the broker, the cloud's acks back into the outbox (paho-mqtt 2.x).

paho runs its network loop in its own thread (``loop_start``); the asyncio side only queues
publishes and waits on events, so a slow or absent broker never blocks a device session. The
connection is managed here rather than by paho's own reconnect so that it can:

- back off exponentially **with jitter** (a fleet whose broker restarts must not reconnect in step);
- fall back to MQTT 3.1.1 when the broker refuses a v5 CONNECT (amqtt and some managed brokers):
  the persistent session is then ``clean_session=False`` instead of ``clean_start=False`` + expiry;
- report a refused login as a clear error (log and status) and keep retrying with backoff.

No task of the uplink dies silently: the sender runs under :meth:`Uplink._run_sender`, which logs a
failure once in plain words (the same failure again is one line with a count), shows it as the
uplink's error in the status, and starts it again with backoff; an ack that cannot be applied (a
full disk) is counted, said once, and the batch is sent again after the ack timeout.

Delivery is at-least-once end to end and exactly-once in effect: a reading leaves the outbox only on
the cloud's ack (sent after its database commit); a batch not acked within ``ack_timeout_s`` is sent
again, and batches in flight when a connection is lost without the broker keeping our session are
re-sent at once. Ids are deterministic and the cloud idempotent, so a re-send is harmless.

After an outage (a backlog in the outbox) what was measured in the last minutes goes first, in small
messages of its own that ingest writes ahead of every gateway's backlog; the backlog follows with at
most ``backlog_in_flight`` batches unacknowledged, so a fleet's backlog waits in the gateways instead of
filling the broker's queue ahead of the present, and a backlog batch the broker took waits
``queued_ack_timeout_s`` for its ack rather than being copied into that queue again every
``ack_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from gateway.config import MqttConfig
from gateway.contract import PRIORITY_PAYLOAD_BYTES, Ack, acks_topic, now_utc, readings_topic, status_topic
from gateway.errors import GatewayError
from gateway.mqtt.backoff import ExponentialBackoff
from gateway.mqtt.broker import BrokerAddress, BrokerUrlError, TlsError
from gateway.mqtt.client import (
    BAD_CREDENTIALS,
    MQTT_V5,
    MQTT_V311,
    UNSUPPORTED_PROTOCOL,
    ClientOptions,
    Protocol,
    apply_receive_maximum,
    connect,
    create_client,
)
from gateway.store.disk import describe
from gateway.store.outbox import Outbox, OutboxBatch

log = logging.getLogger(__name__)

CONNACK_TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 100  # batches awaiting PUBACK, before the broker's Receive Maximum caps it
LIVE_WINDOW_S = 300.0
"""While a backlog drains, readings stored within this long are the present: sent first, apart."""
LIVE_BATCH_BYTES = PRIORITY_PAYLOAD_BYTES - 1024  # the readings' JSON; the rest is the batch's envelope
SENDER_RESTART_MIN_S = 0.5
SENDER_RESTART_MAX_S = 30.0
SENDER_RESTART = ExponentialBackoff(SENDER_RESTART_MIN_S, SENDER_RESTART_MAX_S)
# amqtt never answers a v5 CONNECT that asks for a persistent session (it answers a bare one with
# "unsupported protocol version"): silence this long after a v5 CONNECT means "try 3.1.1".
V5_SILENCE_S = 3.0


class UplinkError(GatewayError):
    """The uplink's configuration is unusable (bad URL, unreadable TLS files)."""


def parse_broker_url(url: str) -> BrokerAddress:
    """The ``mqtt.url`` key: ``mqtt://[user:pass@]host[:port]`` or ``mqtts://`` (TLS, default port 8883)."""
    try:
        return BrokerAddress.parse(url)
    except BrokerUrlError as err:
        raise UplinkError(f"mqtt.url: {err}") from None


@dataclass
class _InFlight:
    size: int
    sent: float
    mid: int
    puback: bool = False
    backlog: bool = False
    """Sent from a backlog (counts against ``backlog_in_flight``)."""


@dataclass(frozen=True, slots=True)
class UplinkState:
    connected: bool
    protocol: str | None
    error: str | None
    in_flight_batches: int
    in_flight_readings: int
    batches_sent: int
    readings_acked: int
    readings_rejected: int
    connects: int
    batches_resent: int = 0
    """Batches whose readings were offered again: no ack within their timeout, or in flight on a
    connection lost without the broker keeping the session."""


class Uplink:
    """Sends outbox batches and applies acks. ``run()`` until cancelled, then ``close()``."""

    def __init__(
        self,
        config: MqttConfig,
        gateway_id: str,
        outbox: Outbox,
        *,
        will_payload: Callable[[], str] | None = None,
        on_change: Callable[[], None] | None = None,
        subscriptions: dict[str, Callable[[bytes], None]] | None = None,
        on_auth_refused: Callable[[], None] | None = None,
    ) -> None:
        """``subscriptions``: further topics read on this connection (the retained config topic), each with
        the callback that gets its payloads on paho's thread; ``on_auth_refused``: the broker refused the
        credentials (called from the event loop)."""
        self.config = config
        self._subscriptions = dict(subscriptions or {})
        self._on_auth_refused = on_auth_refused
        self.gateway_id = gateway_id
        self.outbox = outbox
        self.address = parse_broker_url(config.url)
        self._reconnect = config.reconnect_backoff()
        self._will_payload = will_payload
        self._on_change = on_change
        self._protocol: Protocol = MQTT_V5
        self._fallback_unconfirmed = False
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self._in_flight: dict[str, _InFlight] = {}
        self._mid_batch: dict[int, str] = {}
        self._error: str | None = None
        self._pending_status: str | None = None
        self._batches_sent = 0
        self._readings_acked = 0
        self._readings_rejected = 0
        self._connects = 0
        self._batches_resent = 0
        self._closing = False
        self._sender_error: str | None = None
        self.sender_failures = 0
        self.ack_failures = 0
        """Acks that could not be applied (their batches are sent again after the ack timeout)."""

    # ------------------------------------------------------------------------------ public

    @property
    def state(self) -> UplinkState:
        return UplinkState(
            connected=self._connected.is_set(),
            protocol=None if self._client is None else self._protocol,
            error=self._error,
            in_flight_batches=len(self._in_flight),
            in_flight_readings=sum(f.size for f in self._in_flight.values()),
            batches_sent=self._batches_sent,
            readings_acked=self._readings_acked,
            readings_rejected=self._readings_rejected,
            connects=self._connects,
            batches_resent=self._batches_resent,
        )

    @property
    def error(self) -> str | None:
        """What stops readings from going out, in plain words: the sender's failure, else the connection's."""
        return self._sender_error or self._error

    def notify(self) -> None:
        """A reading was stored: consider sending (call from the event loop's thread)."""
        self._wake.set()

    def publish_status(self, payload: str) -> None:
        """Publish a retained status now if connected, else as soon as the connection is up."""
        client = self._client
        if client is not None and self._connected.is_set():
            client.publish(status_topic(self.gateway_id), payload, qos=1, retain=True)
        else:
            self._pending_status = payload

    async def run(self) -> None:
        """Keep a connection up and send batches, until cancelled."""
        self._loop = asyncio.get_running_loop()
        # Whatever a previous process had in flight was never acked to this one: make it sendable now.
        released = await asyncio.to_thread(self.outbox.release)
        if released:
            log.info("uplink: %d reading(s) in flight before the restart will be sent again", released)
        sender = asyncio.create_task(self._run_sender(), name="uplink-sender")
        try:
            await self._connection_loop()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def wait_connected(self, within_s: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), within_s)
        except TimeoutError:
            return False
        return True

    async def drain(self, within_s: float) -> bool:
        """Wait until nothing is in flight and the outbox is empty (or ``within_s``); True if drained."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if not self._in_flight and self.outbox.depth() == 0:
                return True
            if not self._connected.is_set():
                return False
            self._wake.set()
            self._acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), min(0.2, max(0.0, deadline - time.monotonic())))
        return not self._in_flight and self.outbox.depth() == 0

    async def close(self, final_status: str | None = None) -> None:
        """Publish the final (offline) status if connected, then disconnect cleanly."""
        self._closing = True
        client = self._client
        if client is None:
            return
        if final_status is not None and self._connected.is_set():
            info = client.publish(status_topic(self.gateway_id), final_status, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(info.wait_for_publish, 3.0)
        await asyncio.to_thread(self._stop_client, client)
        self._client = None
        self._connected.clear()

    # ------------------------------------------------------------------------------ connection

    async def _connection_loop(self) -> None:
        failures = 0
        while not self._closing:
            outcome = await self._connect_once()
            if self._closing:
                return
            if outcome == "fallback":
                continue  # straight away, as 3.1.1
            failures = 0 if outcome == "was_up" else failures + 1
            delay = self._reconnect.delay(failures)
            # The reason was said once (_set_error); the retries after it are quiet.
            log.log(logging.INFO if failures <= 1 else logging.DEBUG, "uplink: reconnecting to %s:%d in %.1f s",
                    self.address.host, self.address.port, delay)
            await asyncio.sleep(delay)

    async def _connect_once(self) -> str:
        """One connection's life. Returns ``was_up`` (connected, then lost), ``failed`` or ``fallback``."""
        loop = asyncio.get_running_loop()
        connack: asyncio.Future[tuple[int, str, bool]] = loop.create_future()
        lost = asyncio.Event()
        client = self._make_client()

        def on_connect(c: mqtt.Client, _u: Any, flags: Any, reason: Any, props: Any = None) -> None:
            apply_receive_maximum(c, MAX_IN_FLIGHT, props)
            result = (int(reason.value), str(reason), bool(getattr(flags, "session_present", False)))
            loop.call_soon_threadsafe(lambda: connack.done() or connack.set_result(result))

        def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
            loop.call_soon_threadsafe(lost.set)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        try:
            await asyncio.to_thread(self._connect_client, client)
        except (OSError, ssl.SSLError) as err:
            self._set_error(f"cannot reach broker {self.address.host}:{self.address.port}: {err}")
            await asyncio.to_thread(self._stop_client, client)
            return "failed"
        client.loop_start()
        self._client = client
        try:
            waiter = asyncio.ensure_future(lost.wait())
            v5 = self._protocol == MQTT_V5
            done, _ = await asyncio.wait({connack, waiter}, timeout=V5_SILENCE_S if v5 else CONNACK_TIMEOUT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if connack not in done:
                why = "closed the connection" if lost.is_set() else "did not answer"
                if v5:
                    return self._fall_back(f"it {why} after a v5 CONNECT", confirmed=False)
                if self._fallback_unconfirmed:
                    # 3.1.1 fared no better: the protocol was not the problem. Back to v5 next time, and say
                    # what else it can be.
                    self._protocol = MQTT_V5
                    self._fallback_unconfirmed = False
                    self._set_error(f"broker {self.address.host}:{self.address.port} {why} during CONNECT with "
                                    "MQTT 5 and 3.1.1 (TLS client certificate, broker policy or overload? see the "
                                    "broker's log)", level=logging.ERROR)
                else:
                    self._set_error(f"broker {self.address.host}:{self.address.port} {why} during CONNECT")
                return "failed"
            self._fallback_unconfirmed = False
            code, text, session_present = connack.result()
            if code != 0:
                if code in UNSUPPORTED_PROTOCOL and self._protocol == MQTT_V5:
                    return self._fall_back(text, confirmed=True)
                if code in BAD_CREDENTIALS:
                    user = self.config.username or self.address.username
                    self._set_error(f"broker refused the credentials for user {user!r}: {text}", level=logging.ERROR)
                    if self._on_auth_refused is not None:
                        self._on_auth_refused()
                else:
                    self._set_error(f"broker refused the connection: {text}", level=logging.ERROR)
                return "failed"
            await self._on_connected(client, session_present)
            await lost.wait()
            self._connected.clear()
            if not self._closing:
                self._set_error(f"connection to {self.address.host}:{self.address.port} lost")
            self._notify_change()
            return "was_up"
        finally:
            if self._client is client:
                self._client = None
            self._connected.clear()
            await asyncio.to_thread(self._stop_client, client)

    def _fall_back(self, why: str, *, confirmed: bool) -> str:
        """Try 3.1.1 next. ``confirmed``: the broker said so; else it only went silent or closed, which
        a TLS or policy failure also looks like, so 3.1.1 must then prove itself."""
        log.warning("uplink: broker refused MQTT v5 (%s): falling back to MQTT 3.1.1 with a persistent session",
                    why)
        self._protocol = MQTT_V311
        self._fallback_unconfirmed = not confirmed
        return "fallback"

    def _client_options(self) -> ClientOptions:
        config = self.config
        return ClientOptions(
            client_id=self.gateway_id,
            protocol=self._protocol,
            # The cloud's acks published while the gateway was away wait in its session.
            persistent=True,
            session_expiry_s=config.session_expiry_s,
            keepalive_s=config.keepalive_s,
            username=config.username,
            password=config.password,
            tls=config.tls(),
            # paho's own queue holds what we publish while a (re)connect is in progress; the outbox is the
            # real store, so no cap here beyond what max_in_flight allows.
            max_in_flight=MAX_IN_FLIGHT,
            # TLS alerts and socket errors surface through paho's log (the "paho" logger level applies).
            logger="paho.uplink",
        )

    def _make_client(self) -> mqtt.Client:
        try:
            client = create_client(self.address, self._client_options())
        except TlsError as err:
            raise UplinkError(f"mqtt {err}") from err
        if self._will_payload is not None:
            client.will_set(status_topic(self.gateway_id), self._will_payload(), qos=1, retain=True)
        return client

    def _connect_client(self, client: mqtt.Client) -> None:
        connect(client, self.address, self._client_options())

    @staticmethod
    def _stop_client(client: mqtt.Client) -> None:
        with contextlib.suppress(Exception):
            client.disconnect()
        with contextlib.suppress(Exception):
            client.loop_stop()

    async def _on_connected(self, client: mqtt.Client, session_present: bool) -> None:
        self._connects += 1
        client.subscribe(acks_topic(self.gateway_id), qos=1)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        # Without the broker keeping our session, acks for what was in flight are gone: send it again.
        # With it, only batches the broker never confirmed (PUBACK) need sending again.
        lost_batches = [b for b, f in self._in_flight.items() if not session_present or not f.puback]
        for batch_id in lost_batches:
            del self._in_flight[batch_id]
        if lost_batches:
            self._batches_resent += len(lost_batches)
            count = await asyncio.to_thread(self.outbox.release, lost_batches)
            log.info("uplink: %d batch(es), %d reading(s) re-queued after reconnect (session present: %s)",
                     len(lost_batches), count, session_present)
        self._mid_batch.clear()
        log.info("uplink: connected to %s:%d as %s (MQTT %s, session present: %s)", self.address.host,
                 self.address.port, self.gateway_id, self._protocol, session_present)
        self._error = None
        self._connected.set()
        if self._pending_status is not None:
            payload, self._pending_status = self._pending_status, None
            client.publish(status_topic(self.gateway_id), payload, qos=1, retain=True)
        self._wake.set()
        self._notify_change()

    def _set_error(self, message: str, level: int = logging.WARNING) -> None:
        changed = message != self._error
        self._error = message
        # Once in plain words; the same failure on every retry after it only at debug level.
        log.log(level if changed else logging.DEBUG, "uplink: %s", message)
        if changed:
            self._notify_change()

    def _notify_change(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("uplink: status change callback failed")

    # ------------------------------------------------------------------------------ sending

    async def _run_sender(self) -> None:
        """The send loop, restarted with backoff whatever it raises: a full disk that makes taking a
        batch fail must delay sending, never end it (the connection would stay up, sending nothing)."""
        failures = 0
        last: str | None = None
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._send_loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if loop.time() - started > SENDER_RESTART_MAX_S:
                    failures = 0
                failures += 1
                self.sender_failures += 1
                message = f"sending stopped: {describe(err)}"
                delay = SENDER_RESTART.delay(failures)
                if message != last:
                    log.error("uplink: %s; sending again in %.1f s", message, delay, exc_info=err)
                else:
                    log.warning("uplink: %s (again, %d times in a row); sending again in %.1f s", message, failures,
                                delay)
                last = message
                if self._sender_error != message:
                    self._sender_error = message
                    self._notify_change()
                await asyncio.sleep(delay)

    async def _send_loop(self) -> None:
        ack_timeout = self.config.ack_timeout_s
        # Expired batches are released by :meth:`_forget_expired`; the outbox's own re-offer is for
        # batches this process forgot, so it waits the longest timeout.
        offer_again = max(ack_timeout, self.config.queued_ack_timeout_s)
        batch_max = self.config.batch_max
        linger = self.config.batch_ms / 1000
        first_seen: float | None = None
        while True:
            await self._connected.wait()
            await self._forget_expired()
            if sum(f.size for f in self._in_flight.values()) >= self.config.max_in_flight:
                await self._wait(self._acked, min(0.5, ack_timeout))
                continue
            if await asyncio.to_thread(self.outbox.backlog_waiting, LIVE_WINDOW_S, offer_again):
                first_seen = None
                if not await self._send_during_backlog(batch_max, offer_again):
                    # An ack (room for the backlog) and a new reading (the present) both set _wake.
                    await self._wait(self._wake, min(0.5, ack_timeout))
                continue
            waiting = await asyncio.to_thread(self.outbox.sendable_count, offer_again, batch_max)
            if waiting == 0:
                first_seen = None
                await self._wait(self._wake, min(1.0, ack_timeout / 2))
                continue
            if waiting < batch_max:
                now = time.monotonic()
                first_seen = first_seen or now
                remaining = linger - (now - first_seen)
                if remaining > 0:
                    await self._wait(self._wake, remaining)
                    continue
            first_seen = None
            batch = await asyncio.to_thread(self.outbox.take_batch, uuid.uuid4().hex, batch_max, offer_again)
            self._sending_again()
            if batch is not None:
                await self._publish_batch(batch)

    async def _send_during_backlog(self, batch_max: int, offer_again: float) -> bool:
        """While a backlog drains: what was measured just now first, in a small message of its own that
        ingest takes before the backlog (:data:`~gateway.contract.PRIORITY_PAYLOAD_BYTES`); then the
        backlog, with at most ``backlog_in_flight`` of its batches unacknowledged, so the fleet's
        backlog waits here, not in the broker's queue ahead of other gateways' present. False if
        nothing could be sent now."""
        live = await asyncio.to_thread(self.outbox.take_live_batch, uuid.uuid4().hex, LIVE_WINDOW_S, batch_max,
                                       LIVE_BATCH_BYTES)
        self._sending_again()
        if live is not None:
            await self._publish_batch(live)
            return True
        if sum(1 for f in self._in_flight.values() if f.backlog) >= self.config.backlog_in_flight:
            return False
        batch = await asyncio.to_thread(self.outbox.take_batch, uuid.uuid4().hex, batch_max, offer_again,
                                        min_age_s=LIVE_WINDOW_S)
        if batch is None:
            return False
        await self._publish_batch(batch, backlog=True)
        return True

    def _sending_again(self) -> None:
        if self._sender_error is not None:
            self._sender_error = None  # taking a batch works again
            log.info("uplink: sending again")
            self._notify_change()

    async def _wait(self, event: asyncio.Event, seconds: float) -> None:
        event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    async def _publish_batch(self, batch: OutboxBatch, *, backlog: bool = False) -> None:
        client = self._client
        sent_at = now_utc().isoformat().replace("+00:00", "Z")
        # The stored payloads are already the readings' wire JSON: assemble, do not re-encode.
        payload = (
            f'{{"v":1,"gateway_id":"{self.gateway_id}","batch_id":"{batch.batch_id}","sent_at":"{sent_at}",'
            f'"readings":[{",".join(batch.payloads)}]}}'
        )
        if client is None or not self._connected.is_set():
            await asyncio.to_thread(self.outbox.release, [batch.batch_id])
            return
        info = client.publish(readings_topic(self.gateway_id), payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.info("uplink: publish of batch %s failed (%s); it stays in the outbox", batch.batch_id,
                     mqtt.error_string(info.rc))
            await asyncio.to_thread(self.outbox.release, [batch.batch_id])
            return
        self._in_flight[batch.batch_id] = _InFlight(len(batch), time.monotonic(), info.mid, backlog=backlog)
        self._mid_batch[info.mid] = batch.batch_id
        self._batches_sent += 1
        log.debug("uplink: sent batch %s (%d readings)", batch.batch_id, len(batch))

    async def _forget_expired(self) -> None:
        """Batches past their ack timeout are sendable again at once. ``ack_timeout_s`` for every batch
        but a backlog batch the broker took (PUBACK): that one waits ``queued_ack_timeout_s``, since
        after an outage the whole fleet's backlog is queued ahead of it, and sending it again during
        the drain would only add a copy to the queue. (A PUBACK alone is not enough for the others:
        a broker with no subscriber, e.g. ingest not up yet, takes a message and drops it.)"""
        now = time.monotonic()
        expired: list[str] = []
        for batch_id, flight in list(self._in_flight.items()):
            timeout = (self.config.queued_ack_timeout_s if flight.puback and flight.backlog
                       else self.config.ack_timeout_s)
            if now - flight.sent < timeout:
                continue
            log.info("uplink: no ack for batch %s within %.0f s%s: its readings will be sent again", batch_id,
                     timeout, "" if flight.puback else " (the broker did not take it)")
            expired.append(batch_id)
            del self._in_flight[batch_id]
            self._mid_batch.pop(flight.mid, None)
        if expired:
            self._batches_resent += len(expired)
            await asyncio.to_thread(self.outbox.release, expired)

    # ------------------------------------------------------------------------------ paho thread

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, _reason: Any = None, _p: Any = None) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._mark_puback, mid)

    def _mark_puback(self, mid: int) -> None:
        batch_id = self._mid_batch.pop(mid, None)
        if batch_id is not None and batch_id in self._in_flight:
            self._in_flight[batch_id].puback = True

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        # Runs on paho's thread: the outbox write (an fsync) happens here, never on the event loop.
        extra = self._subscriptions.get(message.topic)
        if extra is not None:
            try:
                extra(message.payload)
            except Exception:
                log.exception("uplink: handling a message on %s failed", message.topic)
            return
        try:
            ack = Ack.model_validate_json(message.payload)
        except ValidationError as err:
            log.warning("uplink: ignoring a malformed ack on %s: %s", message.topic, err.errors()[:1])
            return
        try:
            outcome = self.outbox.apply_ack(ack)
        except Exception as err:
            self.ack_failures += 1
            # One traceback; after that one line each (a full disk fails every ack the same way).
            log.error("uplink: could not apply the ack for batch %s: %s (it is sent again; %d ack(s) failed)",
                      ack.batch_id, describe(err), self.ack_failures, exc_info=err if self.ack_failures == 1 else None)
            return
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._after_ack, ack.batch_id, outcome.accepted, outcome.quarantined)

    def _after_ack(self, batch_id: str, accepted: int, quarantined: int) -> None:
        self._in_flight.pop(batch_id, None)
        self._readings_acked += accepted
        self._readings_rejected += quarantined
        self._acked.set()
        self._wake.set()
        if quarantined:
            self._notify_change()
