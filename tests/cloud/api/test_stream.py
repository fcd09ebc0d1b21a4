"""``GET /v1/stream`` over real HTTP: uvicorn on a free port (``ui_live_server.LiveServer``), httpx reading the
server-sent events as the page does (a streamed GET with the bearer token in its header), real PostgreSQL
notifications behind it (migration 0590)."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest

from cloud.alerts import service
from cloud.api.alert_stream import APPLICATION_NAME
from cloud.api.app import create_app
from cloud.api.routes import stream as stream_route
from cloud.settings import CloudSettings
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, now
from tests.cloud.api.conftest import TokenFactory, grant
from tests.cloud.api.ui_live_server import LiveServer
from tests.waiting import eventually, wait_until

ALL = ["readings", "alerts", "twin"]


@dataclass
class Event:
    id: int | None
    event: str | None
    data: dict[str, Any] | None
    comments: list[str] = field(default_factory=list)


class SseReader:
    """Reads one stream in a thread; ``next(within_s)`` gives its events (comments included) as they come."""

    def __init__(self, http: httpx.Client, headers: dict[str, str]) -> None:
        self._events: queue.Queue[Event | BaseException | None] = queue.Queue()
        self._closing = threading.Event()
        self._context = http.stream("GET", "/v1/stream", headers=headers)
        self.response = self._context.__enter__()
        self._thread = threading.Thread(target=self._read, daemon=True)
        if self.response.status_code == 200:
            self._thread.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        comments: list[str] = []
        try:
            for line in self.response.iter_lines():
                if self._closing.is_set():
                    break
                if line.startswith(":"):
                    comments.append(line[1:].strip())
                elif line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                if not line and (fields or comments):
                    self._events.put(Event(int(fields["id"]) if "id" in fields else None, fields.get("event"),
                                           json.loads(fields["data"]) if "data" in fields else None, comments))
                    fields, comments = {}, []
            self._events.put(None)  # the server ended the stream
        except (httpx.HTTPError, RuntimeError) as exc:
            self._events.put(exc)

    def next(self, within_s: float = 5.0) -> Event | None:
        """The next event or comment block; None when the stream ended; AssertionError after ``within_s``."""
        try:
            item = self._events.get(timeout=within_s)
        except queue.Empty:
            raise AssertionError(f"nothing on the stream within {within_s} s") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def alert_events(self, until: Any, within_s: float = 5.0) -> list[Event]:
        """Alert events, in order, up to and including the first for which ``until(event)`` holds."""
        deadline = time.monotonic() + within_s
        seen: list[Event] = []
        while True:
            item = self.next(max(0.01, deadline - time.monotonic()))
            assert item is not None, "the stream ended"
            if item.event == "alert":
                seen.append(item)
                if until(item):
                    return seen

    def close(self) -> None:
        """Hang up as a browser does. The reading thread stops at the next line it reads (a keep-alive comes
        within a second): closing the response under a thread blocked reading it would keep the socket open."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def server(api_settings: CloudSettings) -> Iterator[LiveServer]:
    settings = api_settings.model_copy(update={"stream_keepalive_s": 0.5})
    app = create_app(settings)
    with LiveServer(app) as live:
        wait_until(lambda: app.state.alert_stream.listening.is_set(), 10, "the stream's listener")
        live.app = app  # type: ignore[attr-defined]
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(10.0)) as client:
        yield client


@dataclass
class Team:
    ids: dict[str, str]
    alerts: dict[str, int]
    nurse: dict[str, str]


def _crisis(conn: psycopg.Connection, patient_id: str) -> int:
    cuff = add_patient(conn, patient_id)["blood_pressure"]
    ingest(conn, [bp(cuff, now() - timedelta(minutes=5), 191, 122)], patient_id)
    row = conn.execute("SELECT id FROM alerts WHERE patient_id = %s AND rule_id = 'bp_crisis'",
                       (patient_id,)).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def team(conn: psycopg.Connection, unique_id: str, auth: TokenFactory) -> Team:
    name, other = f"{unique_id}-team", f"{unique_id}-other"
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Team'), (%s, 'Elsewhere')", (name, other))
    ids = {n: f"{unique_id}-{n}" for n in ("ana", "ben", "readings_only", "stranger")}
    alerts = {n: _crisis(conn, patient_id) for n, patient_id in ids.items()}
    grant(conn, ids["ana"], name, ALL)
    grant(conn, ids["ben"], name, ALL)
    grant(conn, ids["readings_only"], name, ["readings"])
    grant(conn, ids["stranger"], other, ALL)
    return Team(ids, alerts, auth("care_team", sub=f"{unique_id}-nurse", care_teams=(name,)))


def _open(http: httpx.Client, headers: dict[str, str]) -> SseReader:
    reader = SseReader(http, headers)
    assert reader.response.status_code == 200, reader.response.read()
    assert reader.response.headers["content-type"].startswith("text/event-stream")
    first = reader.next()
    assert first is not None and "connected" in first.comments
    return reader


def test_an_acknowledgement_is_on_the_stream_within_two_seconds(http: httpx.Client, team: Team) -> None:
    reader = _open(http, team.nurse)
    try:
        alert_id = team.alerts["ana"]
        started = time.monotonic()
        assert http.post(f"/v1/alerts/{alert_id}/acknowledge", headers=team.nurse).status_code == 200
        events = reader.alert_events(lambda e: e.data["alert_id"] == alert_id, within_s=2.0)
        elapsed = time.monotonic() - started
    finally:
        reader.close()
    assert elapsed < 2.0
    event = events[-1]
    assert event.data == {"alert_id": alert_id, "patient_id": team.ids["ana"], "event": "acknowledged",
                          "severity": "critical", "status": "acknowledged", "review_state": "reviewed",
                          "at": event.data["at"]}
    assert event.id is not None and event.id > 0


def test_a_patient_without_alert_consent_never_appears(http: httpx.Client, conn: psycopg.Connection,
                                                       team: Team) -> None:
    reader = _open(http, team.nurse)
    try:
        for hidden in ("stranger", "readings_only"):
            service.comment(conn, team.alerts[hidden], "dr.elsewhere", "seen elsewhere")
            service.acknowledge(conn, team.alerts[hidden], "dr.elsewhere")
        # Events reach a stream in commit order: once this one is here, the hidden ones were judged.
        service.comment(conn, team.alerts["ben"], "dr.team", "calling the patient")
        events = reader.alert_events(lambda e: e.data["patient_id"] == team.ids["ben"])
    finally:
        reader.close()
    assert [e.data["patient_id"] for e in events] == [team.ids["ben"]]
    assert events[0].data["event"] == "comment"


def test_resume_with_last_event_id_replays_what_was_missed(http: httpx.Client, conn: psycopg.Connection,
                                                          team: Team) -> None:
    reader = _open(http, team.nurse)
    try:
        service.comment(conn, team.alerts["ana"], "dr.team", "first")
        last = reader.alert_events(lambda e: e.data["patient_id"] == team.ids["ana"])[-1]
    finally:
        reader.close()
    # While disconnected: one event of each patient, hidden ones among them.
    service.comment(conn, team.alerts["stranger"], "dr.elsewhere", "hidden")
    service.comment(conn, team.alerts["ben"], "dr.team", "second")
    service.acknowledge(conn, team.alerts["ana"], "dr.team")
    resumed = _open(http, {**team.nurse, "Last-Event-ID": str(last.id)})
    try:
        replayed = resumed.alert_events(lambda e: e.data["event"] == "acknowledged")
        service.comment(conn, team.alerts["ben"], "dr.team", "live again")
        live = resumed.alert_events(lambda e: e.data["event"] == "comment")
    finally:
        resumed.close()
    assert [(e.data["patient_id"], e.data["event"]) for e in replayed] == [(team.ids["ben"], "comment"),
                                                                           (team.ids["ana"], "acknowledged")]
    ids = [e.id for e in replayed + live]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[0] > last.id  # nothing twice, nothing old


def test_replayed_and_live_patients_are_audited(http: httpx.Client, conn: psycopg.Connection, team: Team) -> None:
    newest = conn.execute("SELECT max(id) FROM alert_events").fetchone()[0]
    service.comment(conn, team.alerts["ana"], "dr.team", "before")
    reader = _open(http, {**team.nurse, "Last-Event-ID": str(newest)})
    try:
        reader.alert_events(lambda e: e.data["patient_id"] == team.ids["ana"])
        service.comment(conn, team.alerts["ben"], "dr.team", "after")
        reader.alert_events(lambda e: e.data["patient_id"] == team.ids["ben"])
        request_id = reader.response.headers["x-request-id"]
    finally:
        reader.close()
    named = sorted(p for (ids,) in conn.execute("SELECT patient_ids FROM audit_log WHERE request_id = %s",
                                                (request_id,)).fetchall() for p in ids)
    assert named == sorted([team.ids["ana"], team.ids["ben"]])


def test_an_idle_stream_sends_keep_alive_comments(http: httpx.Client, team: Team) -> None:
    reader = _open(http, team.nurse)
    try:
        block = reader.next(within_s=3.0)
    finally:
        reader.close()
    assert block is not None and block.comments == ["keep-alive"] and block.event is None


def test_many_idle_streams_hold_no_pooled_connection(http: httpx.Client, server: LiveServer, team: Team,
                                                     api_settings: CloudSettings) -> None:
    hub = server.app.state.alert_stream  # type: ignore[attr-defined]
    wait_until(lambda: hub.subscribers == 0, 5, "earlier tests' streams to be gone")
    streams = [_open(http, team.nurse) for _ in range(api_settings.api_pool_max * 3)]
    try:
        started = time.monotonic()
        response = http.get("/v1/inbox", headers=team.nurse)
        assert response.status_code == 200 and time.monotonic() - started < 2.0
        stats = server.app.state.pool.get_stats()  # type: ignore[attr-defined]
        assert stats["pool_size"] <= api_settings.api_pool_max
        assert hub.subscribers == len(streams)
    finally:
        for reader in streams:
            reader.close()
    # A client that goes away is noticed (at the latest by the next keep-alive) and unsubscribed.
    wait_until(lambda: hub.subscribers == 0, 5, "closed streams to be unsubscribed")


def test_the_stream_needs_a_token_and_is_not_for_administrators(http: httpx.Client, auth: TokenFactory) -> None:
    assert http.get("/v1/stream").status_code == 401
    refused = http.get("/v1/stream", headers=auth("admin"))
    assert refused.status_code == 403 and refused.headers["content-type"].startswith("application/problem+json")


def test_a_stream_ends_when_its_token_expires(http: httpx.Client, team: Team, auth: TokenFactory,
                                             unique_id: str) -> None:
    short = auth("care_team", sub=f"{unique_id}-nurse", care_teams=(f"{unique_id}-team",), ttl_s=2)
    reader = _open(http, short)
    started = time.monotonic()
    try:
        while (block := reader.next(within_s=5.0)) is not None:
            assert block.comments == ["keep-alive"]
    finally:
        reader.close()
    assert 1.0 < time.monotonic() - started < 4.0


def test_a_revoked_consent_silences_the_patient_on_an_open_stream(http: httpx.Client, conn: psycopg.Connection,
                                                                  team: Team, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_route, "CONSENT_RECHECK_S", 0.0)  # every event checked again
    reader = _open(http, team.nurse)
    try:
        service.comment(conn, team.alerts["ana"], "dr.team", "before")
        reader.alert_events(lambda e: e.data["patient_id"] == team.ids["ana"])
        conn.execute("UPDATE consents SET revoked_at = now(), revoked_by = %s WHERE patient_id = %s",
                     (team.ids["ana"], team.ids["ana"]))
        service.comment(conn, team.alerts["ana"], "dr.team", "after the revocation")
        service.comment(conn, team.alerts["ben"], "dr.team", "still ours")
        events = reader.alert_events(lambda e: e.data["patient_id"] == team.ids["ben"])
    finally:
        reader.close()
    assert [e.data["patient_id"] for e in events] == [team.ids["ben"]]


def test_a_patient_streams_their_own_alerts_and_a_gateway_nothing(http: httpx.Client, conn: psycopg.Connection,
                                                                  team: Team, auth: TokenFactory) -> None:
    assert http.get("/v1/stream", headers=auth("gateway", sub="gw-1")).status_code == 403
    reader = _open(http, auth("patient", patient=team.ids["ana"]))
    try:
        service.comment(conn, team.alerts["ben"], "dr.team", "not Ana's")
        service.comment(conn, team.alerts["ana"], "dr.team", "Ana's")
        events = reader.alert_events(lambda e: e.data["patient_id"] == team.ids["ana"])
    finally:
        reader.close()
    assert [e.data["patient_id"] for e in events] == [team.ids["ana"]]


def test_events_committed_while_the_listener_reconnects_still_arrive(http: httpx.Client, server: LiveServer,
                                                                     conn: psycopg.Connection, team: Team) -> None:
    hub = server.app.state.alert_stream  # type: ignore[attr-defined]
    reader = _open(http, team.nurse)
    try:
        killed = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s"
                              " AND application_name = %s", (hub.listener_pid, APPLICATION_NAME)).fetchall()
        assert killed == [(True,)]
        wait_until(lambda: not hub.listening.is_set(), 5, "the listener to notice")
        service.comment(conn, team.alerts["ana"], "dr.team", "while nobody listened")
        wait_until(lambda: hub.listening.is_set(), 10, "the listener to reconnect")
        events = reader.alert_events(lambda e: e.data["patient_id"] == team.ids["ana"])
    finally:
        reader.close()
    assert events[-1].data["event"] == "comment"


def test_an_event_that_commits_after_a_newer_one_is_still_sent(http: httpx.Client, database_url: str,
                                                               team: Team) -> None:
    reader = _open(http, team.nurse)
    try:
        with psycopg.connect(database_url) as slow, psycopg.connect(database_url) as quick:
            for connection in (slow, quick):
                connection.execute("SELECT 1")  # an open transaction: service.comment only makes a savepoint
            service.comment(slow, team.alerts["ana"], "dr.team", "takes its id first, commits last")
            service.comment(quick, team.alerts["ben"], "dr.team", "takes its id second, commits first")
            quick.commit()
            before = reader.alert_events(lambda e: (e.data["patient_id"], e.data["event"]) == (team.ids["ben"],
                                                                                                 "comment"))
            slow.commit()
        late = reader.alert_events(lambda e: (e.data["patient_id"], e.data["event"]) == (team.ids["ana"], "comment"))
    finally:
        reader.close()
    assert (team.ids["ana"], "comment") not in [(e.data["patient_id"], e.data["event"]) for e in before]
    assert late[-1].id is not None and before[-1].id is not None and late[-1].id < before[-1].id


@pytest.mark.bench
def test_fan_out_to_many_idle_streams(server: LiveServer, conn: psycopg.Connection, team: Team) -> None:
    """Prints how long one event takes to reach every one of N idle streams of one care team, the first time
    (each stream checks consent for the patient, with a pooled connection for a moment) and the second
    (decided already)."""
    import asyncio

    streams = 200

    async def run() -> list[float]:
        limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            async def follow(ready: asyncio.Event, got: list[list[float]], index: int) -> None:
                async with client.stream("GET", "/v1/stream", headers=team.nurse) as response:
                    lines = response.aiter_lines()
                    async for line in lines:
                        if "connected" in line:
                            ready.set()
                            break
                    async for line in lines:
                        if line.startswith("data:") and team.ids["ana"] in line:
                            got[index].append(time.monotonic())
                            if len(got[index]) == 2:
                                return
            readies = [asyncio.Event() for _ in range(streams)]
            got: list[list[float]] = [[] for _ in range(streams)]
            tasks = [asyncio.create_task(follow(readies[i], got, i)) for i in range(streams)]
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
            figures = []
            for text in ("first", "second"):
                started = time.monotonic()
                await asyncio.to_thread(service.comment, conn, team.alerts["ana"], "dr.team", text)
                n = len(figures) + 1
                await eventually(lambda n=n: all(len(g) >= n for g in got), 60, f"every stream to have event {n}")
                figures.append((max(g[len(figures)] for g in got) - started) * 1000)
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            return figures

    first, second = asyncio.run(run())
    print(f"\none alert event to {streams} idle streams of one care team: all had it after {first:.0f} ms"
          f" (consent checked by each stream), {second:.0f} ms (already decided)")
    assert first < 5000 and second < 2000


@pytest.mark.parametrize("header", [b"\xb2", b"99999999999999999999"])
def test_a_last_event_id_that_is_no_event_id_is_ignored(http: httpx.Client, team: Team, header: bytes) -> None:
    # A superscript two passes str.isdigit() but not int(); 20 digits are past every bigint id: neither is a 500.
    _open(http, {**team.nurse, "Last-Event-ID": header}).close()  # type: ignore[dict-item]
