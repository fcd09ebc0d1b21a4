"""Ingest's queue: small messages before a backlog, round robin per gateway, bounded, PUBACKs in order."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import psycopg
import pytest

from cloud.ingest.lanes import AckOrder, Lanes
from gateway.contract import PRIORITY_PAYLOAD_BYTES
from tests.cloud.ingest.ingest_traffic import bp_reading
from tests.waiting import wait_until


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes


SMALL, LARGE = b"s" * 100, b"L" * (PRIORITY_PAYLOAD_BYTES + 1)


def drain(lanes: Lanes[Msg]) -> list[Msg]:
    out = []
    while True:
        try:
            out.append(lanes.get_nowait())
        except queue.Empty:
            return out


@pytest.mark.unit
def test_small_messages_come_out_before_a_backlog_that_arrived_first() -> None:
    lanes: Lanes[Msg] = Lanes(100, PRIORITY_PAYLOAD_BYTES)
    backlog = [Msg("gw/a", LARGE), Msg("gw/b", LARGE)]
    fresh = Msg("gw/c", SMALL)
    for m in [*backlog, fresh]:
        lanes.put(m)
    assert drain(lanes) == [fresh, *backlog]
    assert lanes.qsize() == 0 and lanes.unfinished_tasks == 3


@pytest.mark.unit
def test_small_messages_are_taken_round_robin_per_gateway() -> None:
    lanes: Lanes[Msg] = Lanes(100, PRIORITY_PAYLOAD_BYTES)
    flood = [Msg("gw/noisy", b"%d" % i) for i in range(5)]
    other = Msg("gw/quiet", SMALL)
    for m in [*flood, other]:
        lanes.put(m)
    out = drain(lanes)
    assert out.index(other) == 1  # second, not behind all five of the noisy gateway's
    assert [m for m in out if m.topic == "gw/noisy"] == flood  # each gateway's own order is kept


@pytest.mark.unit
def test_only_small_or_only_large_on_request() -> None:
    lanes: Lanes[Msg] = Lanes(100, PRIORITY_PAYLOAD_BYTES)
    lanes.put(Msg("gw/a", LARGE))
    with pytest.raises(queue.Empty):
        lanes.get_nowait(large=False)
    lanes.put(Msg("gw/b", SMALL))
    assert lanes.get_large_nowait().topic == "gw/a"
    with pytest.raises(queue.Empty):
        lanes.get_large_nowait()
    assert lanes.get(timeout=0.1).topic == "gw/b"


@pytest.mark.unit
def test_the_queue_is_bounded_and_a_blocked_put_goes_through_once_the_writer_takes_one() -> None:
    lanes: Lanes[Msg] = Lanes(2, PRIORITY_PAYLOAD_BYTES)
    lanes.put(Msg("a", SMALL))
    lanes.put(Msg("b", LARGE))
    with pytest.raises(queue.Full):
        lanes.put_nowait(Msg("c", SMALL))
    with pytest.raises(queue.Full):
        lanes.put(Msg("c", SMALL), timeout=0.05)
    assert lanes.qsize() == 2
    unblocked = threading.Event()

    def put_later() -> None:
        lanes.put(Msg("d", LARGE))
        unblocked.set()

    threading.Thread(target=put_later, daemon=True).start()
    assert not unblocked.wait(0.1)
    lanes.get_nowait()
    assert unblocked.wait(5)


@pytest.mark.unit
def test_pubacks_leave_in_arrival_order_whatever_order_the_commits_come_in() -> None:
    sent: list[int] = []
    order = AckOrder(lambda mid, qos: sent.append(mid))
    for mid in (1, 2, 3, 4):
        order.received(1, mid, 1)
    order.received(1, 5, 0)  # QoS 0 has no PUBACK
    assert order.done(iter([(1, 3, 1), (1, 4, 1)]), generation=1) == 0  # committed first, taken out of order
    assert sent == []
    assert order.done(iter([(1, 1, 1)]), generation=1) == 1
    assert sent == [1]
    assert order.done(iter([(1, 2, 1)]), generation=1) == 3
    assert sent == [1, 2, 3, 4] and order.waiting() == 0


@pytest.mark.unit
def test_deliveries_of_an_older_connection_are_never_acknowledged_on_a_new_one() -> None:
    sent: list[int] = []
    order = AckOrder(lambda mid, qos: sent.append(mid))
    order.received(1, 7, 1)  # arrived before a reconnect, never committed on that connection
    order.received(2, 7, 1)  # the broker's redelivery, same packet id on the new connection
    order.received(2, 8, 1)
    order.done(iter([(2, 7, 1), (2, 8, 1)]), generation=2)
    assert sent == [7, 8] and order.waiting() == 0


@pytest.mark.integration
def test_a_crisis_that_arrives_behind_a_backlog_is_committed_before_it(ingest_settings, start_worker,
                                                                        gateway) -> None:  # type: ignore[no-untyped-def]
    """The writer is held on a table lock while a backlog and then one fresh reading arrive; once it
    can write, the fresh reading's message goes in the first group and the backlog after it."""
    settings = ingest_settings.model_copy(update={"ingest_batch_max": 100})
    worker = start_worker(settings)
    committed: list[list[str]] = []
    worker.on_commit = lambda result: committed.append([ack.batch_id for _, ack in result.acks])
    probe = gateway.batch([bp_reading("ble:lanes:probe")])
    backlog = [gateway.batch([bp_reading("ble:lanes:01") for _ in range(60)]) for _ in range(8)]
    assert all(len(b.model_dump_json()) > PRIORITY_PAYLOAD_BYTES for b in backlog)
    crisis = gateway.batch([bp_reading("ble:lanes:02", systolic=190)])
    with psycopg.connect(settings.database_url) as blocker:
        blocker.execute("LOCK TABLE readings IN EXCLUSIVE MODE")
        gateway.publish(probe)
        with psycopg.connect(settings.database_url, autocommit=True) as watcher:
            wait_until(lambda: watcher.execute("SELECT count(*) FROM pg_locks WHERE NOT granted"
                                               " AND relation = 'readings'::regclass").fetchone()[0], 10,
                       "the writer waiting on the lock with the probe")
        for batch in [*backlog, crisis]:
            gateway.publish(batch)
        wait_until(lambda: worker._queue.qsize() == len(backlog) + 1, 10, "backlog and crisis queued")
        blocker.rollback()
    wait_until(lambda: sum(len(c) for c in committed) == len(backlog) + 2, 30, "all committed")
    assert committed[0] == [probe.batch_id]
    assert crisis.batch_id in committed[1], committed
    assert backlog[-1].batch_id not in committed[1]
    # Every delivery acknowledged to the broker, in order, although committed out of it.
    wait_until(lambda: worker._acks.waiting() == 0, 5, "every PUBACK sent")
    assert worker.healthy()
