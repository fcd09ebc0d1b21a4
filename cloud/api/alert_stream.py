"""The live alert stream's fan-out: one listening database connection per API process, any number of streams.

Migration 0590 announces every alert event at commit (``pg_notify`` on ``rpm_alert_events``, naming the
event id, alert, patient, severity, status and review state). :class:`AlertStreamHub` listens on one
connection of its own, outside the API's pool, and hands each event to every :class:`Subscription`; each
stream (``cloud.api.routes.stream``) decides what its caller may see. An idle stream therefore holds no
database connection at all, only a small queue.

A listener that loses its connection reconnects with backoff and first replays, from ``alert_events``,
what was committed meanwhile (bounded by ``CATCH_UP_MAX``; ids handed out already are skipped), so a
stream misses nothing a database restart would otherwise swallow. A subscriber that falls behind by more
than its queue holds is told so (``ended``) and its stream ends: the client resumes with ``Last-Event-ID``,
which is the bounded replay it would need anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from dataclasses import dataclass

import psycopg

from cloud.api import queries

log = logging.getLogger(__name__)
CHANNEL = "rpm_alert_events"
APPLICATION_NAME = "rpm-api-alert-stream"
"""How the listening connection names itself in ``pg_stat_activity``."""
CATCH_UP_MAX = 10_000
"""Events a reconnected listener replays at most (older ones are left to the clients' Last-Event-ID)."""
CATCH_UP_LOOKBACK = 1_000
"""Ids below the newest seen that a catch-up reads again: transactions commit in another order than they
took their ids, so an event with a smaller id can commit after a bigger one was announced."""
_REMEMBERED = 20_000
"""Ids already handed out that the hub remembers, so a catch-up never hands one out twice."""
QUEUE_MAX = 1_000
"""Events a subscriber may fall behind before its stream is ended."""
_HEALTH_CHECK_S = 30.0


@dataclass(frozen=True, slots=True)
class StreamEvent:
    id: int
    """The ``alert_events`` id (the SSE ``id:``)."""
    patient_id: str
    data: str
    """The JSON the client receives: alert_id, patient_id, event, severity, status, review_state, at."""


def event_from_row(event_id: int, patient_id: str, payload: str) -> StreamEvent:
    """From a row of :func:`cloud.api.queries.alert_events_after` (or the notification's payload)."""
    fields = json.loads(payload)
    fields.pop("id", None)
    return StreamEvent(event_id, patient_id, json.dumps(fields, separators=(",", ":")))


def event_from_notification(payload: str) -> StreamEvent:
    fields = json.loads(payload)
    return event_from_row(int(fields["id"]), str(fields["patient_id"]), payload)


class Subscription:
    """One stream's queue of events, in commit order; ``ended`` once it fell behind or the hub stopped."""

    def __init__(self, maxsize: int = QUEUE_MAX) -> None:
        self._queue: asyncio.Queue[StreamEvent | None] = asyncio.Queue(maxsize)
        self.ended = False

    def offer(self, event: StreamEvent) -> None:
        if self.ended:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.end()

    def end(self) -> None:
        self.ended = True
        while not self._queue.empty():  # what is queued is dropped: the client resumes from its last id
            self._queue.get_nowait()
        self._queue.put_nowait(None)  # wakes the stream

    async def next(self, wait_s: float) -> StreamEvent | None:
        """The next event, or None after ``wait_s`` seconds without one (or once ended: see ``ended``)."""
        if self.ended:
            return None
        try:
            async with asyncio.timeout(wait_s):
                return await self._queue.get()
        except TimeoutError:
            return None


class AlertStreamHub:
    """``await hub.start()`` … ``hub.subscribe()`` / ``hub.unsubscribe(s)`` … ``await hub.stop()``."""

    def __init__(self, database_url: str, *, backoff_max_s: float = 30.0) -> None:
        self._url = database_url
        self._backoff_max_s = backoff_max_s
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_id: int | None = None
        self._handed_out: deque[int] = deque(maxlen=_REMEMBERED)
        self._handed_out_ids: set[int] = set()
        self.listening = asyncio.Event()
        """Set while the listener's LISTEN is in force (tests and readiness wait on it)."""
        self.listener_pid: int | None = None
        """The listening connection's backend process id (``pg_stat_activity.pid``)."""

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alert-stream-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for subscription in list(self._subscribers):
            subscription.end()
        self._subscribers.clear()

    def subscribe(self) -> Subscription:
        subscription = Subscription()
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def _dispatch(self, event: StreamEvent) -> None:
        # Never "id <= newest": a smaller id committed late is news. Only an id handed out already is not.
        if event.id in self._handed_out_ids:
            return
        if len(self._handed_out) == self._handed_out.maxlen:
            self._handed_out_ids.discard(self._handed_out[0])
        self._handed_out.append(event.id)
        self._handed_out_ids.add(event.id)
        self._last_id = max(self._last_id or 0, event.id)
        for subscription in list(self._subscribers):
            subscription.offer(event)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the listener must outlive any database trouble
                self.listening.clear()
                failures += 1
                delay = min(self._backoff_max_s, 0.5 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0)
                log.warning("alert stream listener lost its connection (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(self._url, autocommit=True,
                                                         application_name=APPLICATION_NAME) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self.listener_pid = conn.info.backend_pid
            # From here on every commit is announced to us; what came before is caught up from the table.
            if self._last_id is None:
                row = await (await conn.execute("SELECT coalesce(max(id), 0) FROM alert_events")).fetchone()
                self._last_id = row[0] if row else 0
            else:
                await self._catch_up(conn)
            self.listening.set()
            while True:
                async for notify in conn.notifies(timeout=_HEALTH_CHECK_S):
                    try:
                        self._dispatch(event_from_notification(notify.payload))
                    except (ValueError, KeyError, TypeError) as exc:
                        log.error("ignored a malformed alert event notification %r: %s", notify.payload[:200], exc)
                # Quiet for a while: make sure the connection is still there (a dead one raises here).
                await conn.execute("SELECT 1")

    async def _catch_up(self, conn: psycopg.AsyncConnection) -> None:
        assert self._last_id is not None
        cursor = await conn.execute(queries.ALERT_EVENTS_SINCE,
                                    (max(0, self._last_id - CATCH_UP_LOOKBACK), CATCH_UP_MAX))
        rows = await cursor.fetchall()
        if len(rows) == CATCH_UP_MAX:
            log.warning("alert stream listener missed more than %d events; streams resume them by Last-Event-ID",
                        CATCH_UP_MAX)
        for event_id, patient_id, payload in rows:
            self._dispatch(event_from_row(event_id, patient_id, payload))
