"""``GET /v1/stream``: alert events as server-sent events, for the patients whose alerts the caller may see.

The page reads it with ``fetch`` and a stream reader, so the bearer token travels in the Authorization
header as on every other request (``EventSource`` cannot send one). Each event is

    id: <alert_events id>
    event: alert
    data: {"alert_id", "patient_id", "event", "severity", "status", "review_state", "at"}

``Last-Event-ID`` (header, or ``last_event_id`` in the query for clients that cannot set it) replays what
came after that id from ``alert_events``, at most ``REPLAY_MAX`` events; past that the stream sends one
``event: reset`` (reload what you show) and goes on live. A ``: keep-alive`` comment follows every
``RPM_STREAM_KEEPALIVE_S`` idle seconds. A stream ends when its token expires or after
``RPM_STREAM_MAX_S``; the client reconnects with the last id it saw and loses nothing.

An idle stream holds no database connection: the process's :class:`~cloud.api.alert_stream.AlertStreamHub`
listens once for everyone. Consent is checked with a short-lived pool connection when an event's patient is
new to the stream, and again once the last check is ``CONSENT_RECHECK_S`` old (a revocation silences that
patient within that time); each allowed check writes the audit row naming the patient before their first
event leaves. Events of a patient the caller may not see are never sent.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from cloud.api import queries
from cloud.api.alert_stream import AlertStreamHub, StreamEvent, event_from_row
from cloud.api.deps import CLINICAL_ROLES, CurrentPrincipal, note_audit
from cloud.api.problems import forbidden, problem_responses
from cloud.api.tokens import Principal

REPLAY_MAX = 500
"""Events a resumed stream replays at most; past that it says ``reset``."""
CONSENT_RECHECK_S = 60.0
"""How old a stream's consent decision for a patient may get before it is checked again."""


@asynccontextmanager
async def _hub(app: FastAPI) -> AsyncIterator[None]:
    hub = AlertStreamHub(app.state.settings.database_url)
    app.state.alert_stream = hub
    await hub.start()
    try:
        yield
    finally:
        await hub.stop()


router = APIRouter(prefix="/v1/stream", tags=["alerts"], lifespan=_hub,
                   responses=problem_responses(401, 403, 422, 503, "default"))
_SSE_DOC = {200: {"description": "Server-sent events (`event: alert`, `: keep-alive` comments)",
                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


def _frame(event: StreamEvent) -> str:
    return f"id: {event.id}\nevent: alert\ndata: {event.data}\n\n"


class _Visibility:
    """Which patients' events this stream may send, decided by the database and remembered for a while."""

    def __init__(self, request: Request, principal: Principal) -> None:
        self._pool = request.app.state.pool
        self._principal = principal
        self._request_id: str = request.state.request_id
        self._decided: dict[str, tuple[bool, float]] = {}

    def remember(self, patient_id: str) -> None:
        """Already checked and audited (the replay, in the request that opened the stream)."""
        self._decided[patient_id] = (True, time.monotonic())

    async def allows(self, patient_id: str) -> bool:
        decided = self._decided.get(patient_id)
        if decided is not None and time.monotonic() - decided[1] < CONSENT_RECHECK_S:
            return decided[0]
        allowed = await run_in_threadpool(self._check, patient_id)
        self._decided[patient_id] = (allowed, time.monotonic())
        return allowed

    def _check(self, patient_id: str) -> bool:
        p = self._principal
        with self._pool.connection() as conn:
            return queries.audit_stream_patient(
                conn, subject=p.subject, role=p.role, care_teams=_teams(p), own_patient=_own(p),
                patient_id=patient_id, request_id=self._request_id)


def _teams(principal: Principal) -> tuple[str, ...]:
    return principal.care_teams if principal.role in CLINICAL_ROLES else ()


def _own(principal: Principal) -> str | None:
    return principal.patient_id if principal.role == "patient" else None


def _replay(request: Request, principal: Principal, after_id: int) -> list[tuple[int, str, str]]:
    with request.app.state.pool.connection() as conn:
        return queries.alert_events_after(conn, after_id=after_id, care_teams=_teams(principal),
                                          own_patient=_own(principal), limit=REPLAY_MAX + 1)


@router.get("", summary="Alert events as they happen (server-sent events), for the patients whose alerts the caller"
                        " may see; resume with Last-Event-ID", response_class=StreamingResponse, responses=_SSE_DOC)
async def stream(request: Request, principal: CurrentPrincipal,
                 last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
                 last_event_id: Annotated[int | None, Query(ge=0, le=2**62,
                                                            description="As the Last-Event-ID header")] = None,
                 ) -> StreamingResponse:
    if principal.role == "admin":
        raise forbidden("alerts are clinical data")
    settings = request.app.state.settings
    hub: AlertStreamHub = request.app.state.alert_stream
    resume = last_event_id
    header = (last_event_id_header or "").strip()
    if header.isascii() and header.isdigit():  # isdigit() alone takes "²", which int() refuses
        resume = int(header)
    visibility = _Visibility(request, principal)
    # Subscribed before the replay is read: whatever commits in between arrives live (duplicates are skipped).
    subscription = hub.subscribe()
    replay: list[StreamEvent] = []
    reset = False
    try:
        if resume is not None:
            rows = await run_in_threadpool(_replay, request, principal, resume)
            reset = len(rows) > REPLAY_MAX
            replay = [] if reset else [event_from_row(*row) for row in rows]
            for event in replay:
                note_audit(request, event.patient_id)  # the middleware audits them before the body leaves
                visibility.remember(event.patient_id)
    except BaseException:
        hub.unsubscribe(subscription)
        raise
    expires = principal.claims.get("exp")
    deadline = time.monotonic() + settings.stream_max_s
    if isinstance(expires, int | float):
        deadline = min(deadline, time.monotonic() + (expires - time.time()))

    replayed = {event.id for event in replay}

    async def frames() -> AsyncIterator[str]:
        try:
            yield "retry: 3000\n: connected\n\n"
            if reset:
                yield ("event: reset\ndata: " + json.dumps({"reason": f"more than {REPLAY_MAX} events since"
                                                           f" {resume}: reload, then follow live"}) + "\n\n")
            for event in replay:
                yield _frame(event)
            while not subscription.ended:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                event = await subscription.next(min(settings.stream_keepalive_s, remaining))
                if event is None:
                    if not subscription.ended and deadline > time.monotonic():
                        yield ": keep-alive\n\n"
                    continue
                # Only what was replayed is skipped, never "ids up to the last sent": transactions commit in
                # another order than they took their ids, and a smaller id committed late is news.
                if event.id in replayed:
                    continue
                if await visibility.allows(event.patient_id):
                    yield _frame(event)
        finally:
            hub.unsubscribe(subscription)

    return _EventStream(frames(), lambda: hub.unsubscribe(subscription))


class _EventStream(StreamingResponse):
    """A stream that unsubscribes as soon as its response ends, however it ends. A client that goes away
    makes the send fail and leaves the generator suspended; left to the garbage collector, its ``finally``
    (and with it the unsubscription) could come much later."""

    def __init__(self, frames: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        # X-Accel-Buffering: no proxy buffers a live stream.
        super().__init__(frames, media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})
        self._frames = frames
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
            aclose = getattr(self._frames, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

