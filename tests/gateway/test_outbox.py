"""The outbox: durable before the sink returns, leaves only on ack, quarantine, bound policy, batches."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.codecs.common import Measurement, Quantity
from gateway.contract import Ack, Rejection
from gateway.drivers.base import DeviceInfo
from gateway.readings.normalise import to_reading
from gateway.store.outbox import Outbox, OutboxFullError, QuarantinedRecord, kept_by_device
from tests.gateway.reading_factory import bp_reading

pytestmark = pytest.mark.unit

WRITER = Path(__file__).with_name("outbox_writer_child.py")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox(tmp_path: Path, clock: FakeClock) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite", clock=clock)
    yield box
    box.close()


def test_the_same_reading_put_twice_is_stored_once(outbox: Outbox) -> None:
    assert outbox.put(bp_reading(1)) is True
    assert outbox.put(bp_reading(1)) is False
    assert outbox.depth() == 1
    assert outbox.ids() == [bp_reading(1).id]


def test_a_reading_survives_reopening_the_database(tmp_path: Path) -> None:
    first = Outbox(tmp_path / "o.sqlite")
    first.put(bp_reading(7))
    first.close()
    again = Outbox(tmp_path / "o.sqlite")
    assert again.ids() == [bp_reading(7).id] and again.depth() == 1
    again.close()


def test_outbox_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    box.close()


def test_only_accepted_ids_leave_the_outbox(outbox: Outbox) -> None:
    outbox.put_many(bp_reading(i) for i in range(5))
    batch = outbox.take_batch("b1", 10, ack_timeout_s=30)
    assert batch is not None and len(batch) == 5
    outcome = outbox.apply_ack(Ack(batch_id="b1", accepted=[bp_reading(0).id, bp_reading(3).id, "f" * 32]))
    assert (outcome.accepted, outcome.unknown) == (2, 1)
    assert set(outbox.ids()) == {bp_reading(i).id for i in (1, 2, 4)}


def test_rejected_reading_is_quarantined_with_reason_and_never_sent_again(outbox: Outbox, clock: FakeClock) -> None:
    outbox.put_many(bp_reading(i) for i in range(3))
    outbox.take_batch("b1", 10, ack_timeout_s=5)
    bad = bp_reading(1).id
    outcome = outbox.apply_ack(Ack(batch_id="b1", accepted=[bp_reading(0).id],
                                   rejected=[Rejection(id=bad, reason="device not enrolled")]))
    assert outcome.quarantined == 1
    assert [(q.id, q.reason) for q in outbox.quarantined()] == [(bad, "device not enrolled")]
    assert outbox.stats().quarantined == 1
    # The device reads the same record again: it does not come back to be retried.
    assert outbox.put(bp_reading(1)) is False
    clock.now += 60
    batch = outbox.take_batch("b2", 10, ack_timeout_s=5)
    assert batch is not None and batch.ids == [bp_reading(2).id]


def test_drop_oldest_keeps_the_newest_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_readings=3, when_full="drop_oldest")
    with caplog.at_level(logging.WARNING, logger="gateway.store.outbox"):
        for i in range(5):
            box.put(bp_reading(i))
    assert box.ids() == [bp_reading(i).id for i in (2, 3, 4)]
    stats = box.stats()
    assert stats.full and stats.dropped == 2 and stats.depth == 3
    dropped_logs = [r.getMessage() for r in caplog.records if "dropped oldest" in r.getMessage()]
    assert len(dropped_logs) == 2 and bp_reading(0).id in dropped_logs[0]
    box.close()


def test_refuse_new_keeps_the_backlog_and_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_readings=2, when_full="refuse_new")
    box.put(bp_reading(0))
    box.put(bp_reading(1))
    with caplog.at_level(logging.WARNING, logger="gateway.store.outbox"), pytest.raises(OutboxFullError):
        box.put(bp_reading(2))
    assert box.ids() == [bp_reading(0).id, bp_reading(1).id]
    assert box.put(bp_reading(1)) is False  # a duplicate is not refused: it needs no room
    assert box.stats().refused == 1 and box.stats().full
    assert any("refusing" in r.getMessage() for r in caplog.records)
    box.apply_ack(Ack(batch_id="x", accepted=[bp_reading(0).id]))
    assert not box.is_full() and box.put(bp_reading(2)) is True
    box.close()


def test_in_flight_readings_are_not_offered_again_until_the_ack_timeout(outbox: Outbox, clock: FakeClock) -> None:
    outbox.put_many(bp_reading(i) for i in range(4))
    first = outbox.take_batch("b1", 4, ack_timeout_s=10)
    assert first is not None and len(first) == 4
    assert outbox.take_batch("b2", 4, ack_timeout_s=10) is None
    assert outbox.sendable_count(10, 100) == 0
    clock.now += 11
    assert outbox.sendable_count(10, 100) == 4
    again = outbox.take_batch("b3", 4, ack_timeout_s=10)
    assert again is not None and sorted(again.ids) == sorted(first.ids)


def test_release_makes_a_lost_batch_sendable_at_once(outbox: Outbox) -> None:
    outbox.put_many(bp_reading(i) for i in range(6))
    a = outbox.take_batch("a", 3, ack_timeout_s=60)
    b = outbox.take_batch("b", 3, ack_timeout_s=60)
    assert a and b
    assert outbox.release(["a"]) == 3
    again = outbox.take_batch("c", 10, ack_timeout_s=60)
    assert again is not None and sorted(again.ids) == sorted(a.ids)


def test_a_live_reading_is_not_starved_by_a_backlog(outbox: Outbox) -> None:
    outbox.put_many(bp_reading(i) for i in range(2000))
    live = bp_reading(999_999)
    outbox.put(live)
    batch = outbox.take_batch("b1", 100, ack_timeout_s=30)
    assert batch is not None and len(batch) == 100
    assert live.id in batch.ids
    assert bp_reading(0).id in batch.ids  # and the backlog drains oldest first
    assert bp_reading(1500).id not in batch.ids


def test_during_a_backlog_the_present_is_taken_apart_from_it(outbox: Outbox, clock: FakeClock) -> None:
    outbox.put_many(bp_reading(i) for i in range(500))  # stored while the cloud was away
    assert not outbox.backlog_waiting(300, 600)
    clock.now += 3600
    assert outbox.backlog_waiting(300, 600)
    fresh = [bp_reading(1000 + i) for i in range(3)]
    outbox.put_many(fresh)

    live = outbox.take_live_batch("live", 300, limit=100, max_bytes=16 * 1024)
    assert live is not None and live.ids == [r.id for r in fresh]
    assert outbox.take_live_batch("again", 300, limit=100, max_bytes=16 * 1024) is None
    backlog = outbox.take_batch("old", 100, ack_timeout_s=600, min_age_s=300)
    assert backlog is not None and len(backlog) == 100
    assert not set(backlog.ids) & {r.id for r in fresh}
    assert bp_reading(0).id in backlog.ids and bp_reading(499).id in backlog.ids  # from both ends, as before


def test_a_live_batch_is_kept_small(outbox: Outbox, clock: FakeClock) -> None:
    outbox.put_many(bp_reading(i) for i in range(200))  # a meter's memory, stored just now
    live = outbox.take_live_batch("live", 300, limit=500, max_bytes=4000)
    assert live is not None and len(live) >= 2
    assert sum(len(p) + 1 for p in live.payloads) <= 4000
    assert live.ids == [bp_reading(i).id for i in range(200 - len(live), 200)]  # the newest, in order
    clock.now += 301
    assert outbox.take_live_batch("late", 300, limit=500, max_bytes=4000) is None  # no longer the present


def test_batch_payloads_are_the_readings_wire_json(outbox: Outbox) -> None:
    from gateway.contract import Reading

    outbox.put(bp_reading(3))
    batch = outbox.take_batch("b", 5, 30)
    assert batch is not None
    assert Reading.model_validate_json(batch.payloads[0]) == bp_reading(3).model_copy(
        update={"received_at": Reading.model_validate_json(batch.payloads[0]).received_at})


def test_stats_give_depth_and_age_of_the_oldest(outbox: Outbox, clock: FakeClock) -> None:
    assert outbox.stats().oldest_age_s is None
    outbox.put(bp_reading(1))
    clock.now += 42.5
    outbox.put(bp_reading(2))
    stats = outbox.stats()
    assert stats.depth == 2 and stats.oldest_age_s == pytest.approx(42.5)


def test_kill_9_mid_write_loses_nothing_committed_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    count = 3000
    child = subprocess.Popen([sys.executable, str(WRITER), str(path), str(count)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    committed: list[str] = []
    for line in child.stdout:
        committed.append(line.strip())
        if len(committed) == 200:
            break
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    # Whatever it printed after our read, and whatever it was writing when killed, may or may not be
    # there; what it reported committed must be.
    committed += [line.strip() for line in child.stdout.read().splitlines() if line.strip()]
    assert len(committed) < count, "the writer finished before the kill: the test proves nothing"
    box = Outbox(path)
    ids = box.ids()
    assert set(committed) <= set(ids)
    assert len(ids) == len(set(ids))
    assert len(ids) - len(committed) <= 1  # at most the one being written when killed
    box.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_batch_stays_under_its_byte_budget_but_always_carries_one(outbox: Outbox) -> None:
    outbox.put_many(bp_reading(i) for i in range(50))
    size = len(bp_reading(0).model_dump_json(exclude_none=True))
    batch = outbox.take_batch("b1", 50, 30, max_bytes=size * 10)
    assert batch is not None and 5 <= len(batch) <= 10
    assert sum(len(p) + 1 for p in batch.payloads) <= size * 10 + 20
    tiny = outbox.take_batch("b2", 50, 30, max_bytes=1)
    assert tiny is not None and len(tiny) == 1


def test_a_memory_read_again_after_delivery_is_not_sent_again(tmp_path: Path, clock: FakeClock) -> None:
    box = Outbox(tmp_path / "o.sqlite", clock=clock, remember_delivered_s=86400)
    box.put_many(bp_reading(i) for i in range(3))
    batch = box.take_batch("b1", 10, ack_timeout_s=30)
    assert batch is not None
    box.apply_ack(Ack(batch_id="b1", accepted=batch.ids))
    # The cuff sends its whole memory again on the next connection: nothing new to send.
    assert box.put_many(bp_reading(i) for i in range(4)) == 1
    assert box.ids() == [bp_reading(3).id]
    box.close()
    reopened = Outbox(tmp_path / "o.sqlite", clock=clock, remember_delivered_s=86400)
    assert reopened.put(bp_reading(0)) is False
    # Long after, the id is forgotten: sent once more, which the idempotent cloud stores once.
    clock.now += 2 * 86400
    reopened.apply_ack(Ack(batch_id="b2", accepted=[]))
    assert reopened.put(bp_reading(0)) is True
    reopened.close()


def test_a_device_sending_only_garbage_cannot_grow_the_device_quarantine_past_its_cap(
        tmp_path: Path, clock: FakeClock) -> None:
    outbox = Outbox(tmp_path / "outbox.db", clock=clock, max_quarantined_per_device=3)
    try:
        for n in range(5):
            clock.now += 1
            assert outbox.quarantine_record(QuarantinedRecord("ble:aa", "ble.heart_rate", f"{n:02x}", "bad frame"))
        other = QuarantinedRecord("ble:bb", "ble.glucose", "ff", "bad record")
        assert outbox.quarantine_record(other)
        assert not outbox.quarantine_record(other)  # the same record again is no new entry
        kept = outbox.quarantined_records("ble:aa")
        assert [record.raw for record in kept] == ["02", "03", "04"]  # the newest three
        assert [record.raw for record in outbox.quarantined_records("ble:bb")] == ["ff"]
        stats = outbox.stats()
        assert (stats.device_quarantined, stats.device_quarantine_evicted) == (4, 2)
    finally:
        outbox.close()
    reopened = Outbox(tmp_path / "outbox.db", clock=clock, max_quarantined_per_device=3)
    try:
        assert reopened.stats().device_quarantine_evicted == 2  # the count is durable
    finally:
        reopened.close()


def test_an_oximeters_live_window_is_lost_when_refused_but_its_stored_spot_check_waits_on_the_device() -> None:
    oximeter = DeviceInfo(uid="ble:0C:00:00:00:00:01", transport="ble", profile="ble.pulse_oximeter")
    now = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    spot = Measurement(profile="ble.pulse_oximeter", kind="pulse_oximetry", values={"spo2": Quantity(95, "%")},
                       device_time=datetime(2026, 3, 1, 7, 55))
    window = Measurement(profile="ble.pulse_oximeter", kind="pulse_oximetry", values={"spo2": Quantity(94, "%")},
                         flags=("averaged",), details={"window_start": (now - timedelta(minutes=1)).isoformat(),
                                                       "window_end": now.isoformat()})
    clockless = Measurement(profile="ble.pulse_oximeter", kind="pulse_oximetry", values={"spo2": Quantity(96, "%")},
                            raw=b"\x00\x60", details={"record_key": "0060#0"})
    assert kept_by_device(to_reading(oximeter, spot, None, now))
    assert not kept_by_device(to_reading(oximeter, window, None, now))
    assert kept_by_device(to_reading(oximeter, clockless, None, now))  # a stored record, timed by the gateway
