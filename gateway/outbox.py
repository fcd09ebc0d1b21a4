"""The gateway's outbox: every reading a device delivered, kept on disk until the cloud acks it.

SQLite in WAL mode with ``synchronous=FULL``: :meth:`Outbox.put` returns only after the reading's
transaction reached the disk, so a driver that moves on after the sink returned can lose power at any
moment without losing the reading. A reading leaves only when the cloud's :class:`~gateway.contract.Ack`
lists it as accepted (the cloud acks after its own database commit; a broker PUBACK is not enough).
Readings the cloud rejects move to ``quarantine`` with the reason and are never sent again.

The outbox is bounded by ``[outbox] max_readings``; when full, the ``when_full`` policy decides, and
says so in the log every time: ``drop_oldest`` deletes the oldest unacked reading (a gateway that has
been offline for months keeps the recent weeks), ``refuse_new`` raises :class:`OutboxFullError` to
the device session (which then leaves the record on the device for the next session).

Batches are chosen for a backlog that never starves live readings: most of a batch is the oldest
sendable readings, a share is the newest, so a reading taken now travels in the next batch even while
a month of backlog drains. A batch not acked within the ack timeout becomes sendable again (ids are
deterministic and the cloud is idempotent, so a duplicate is harmless).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.contract import Ack, Reading

log = logging.getLogger(__name__)

# The share of a batch kept for the newest readings while a backlog drains.
LIVE_SHARE = 0.25
# Batches stay well under the contract's MAX_PAYLOAD_BYTES (4 MiB), whatever batch_max says.
DEFAULT_MAX_BATCH_BYTES = 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    stored_at REAL NOT NULL,
    sent_at REAL,
    batch_id TEXT
);
CREATE INDEX IF NOT EXISTS readings_sendable ON readings (sent_at, seq);
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    reason TEXT NOT NULL,
    quarantined_at REAL NOT NULL
);
-- Ids the cloud has confirmed: a device that sends its whole memory again (cuffs, USB meters) does
-- not send those readings over the network again. Forgotten after remember_delivered_s; a forgotten
-- id that comes back is only sent once more (the cloud stores it once).
CREATE TABLE IF NOT EXISTS delivered (
    id TEXT PRIMARY KEY,
    acked_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS delivered_age ON delivered (acked_at);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class OutboxError(Exception):
    """The outbox could not take or give a reading."""


class OutboxFullError(OutboxError):
    """The outbox is at ``max_readings`` and the policy is ``refuse_new``: the reading was not stored."""


@dataclass(frozen=True, slots=True)
class OutboxBatch:
    batch_id: str
    ids: list[str]
    payloads: list[str]
    """Each reading's JSON exactly as stored (the wire form, so a batch is assembled without re-encoding)."""

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, slots=True)
class AckOutcome:
    accepted: int
    quarantined: int
    unknown: int
    """Ids the ack named that were not (or no longer) here: an ack for a re-sent batch."""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    oldest_age_s: float | None
    quarantined: int
    full: bool
    dropped: int
    refused: int


@dataclass(frozen=True, slots=True)
class QuarantinedReading:
    id: str
    reason: str
    quarantined_at: float


class Outbox:
    """A durable, bounded queue of readings keyed by their deterministic id. Thread-safe."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_readings: int = 1_000_000,
        when_full: Literal["drop_oldest", "refuse_new"] = "drop_oldest",
        clock: Callable[[], float] | None = None,
        remember_delivered_s: float = 90 * 86400,
    ) -> None:
        self.path = Path(path)
        self.remember_delivered_s = remember_delivered_s
        self.max_readings = max_readings
        self.when_full = when_full
        self._now = clock or time.time
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) so each put is
        # one durable commit and nothing is left half-done by an implicit transaction.
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._depth = self._db.execute("SELECT count(*) FROM readings").fetchone()[0]
        self._closed = False

    # ------------------------------------------------------------------------------------ writing

    def put(self, reading: Reading) -> bool:
        """Store one reading durably; True if new, False if its id was already here (or quarantined)."""
        return self.put_many([reading]) == 1

    def put_many(self, readings: Iterable[Reading]) -> int:
        """Store readings in one durable transaction; returns how many were new (neither here, quarantined,
        nor already delivered)."""
        rows = [(r.id, r.model_dump_json(exclude_none=True)) for r in readings]
        if not rows:
            return 0
        with self._lock:
            self._check_open()
            now = self._now()
            added = refused = 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for reading_id, payload in rows:
                    if self._db.execute("SELECT 1 FROM quarantine WHERE id = ?", (reading_id,)).fetchone():
                        continue
                    if self._db.execute("SELECT 1 FROM delivered WHERE id = ?", (reading_id,)).fetchone():
                        continue
                    if self._depth >= self.max_readings and not self._make_room(reading_id):
                        refused += 1
                        continue
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO readings (id, payload, stored_at) VALUES (?, ?, ?)",
                        (reading_id, payload, now),
                    )
                    if cursor.rowcount == 1:
                        added += 1
                        self._depth += 1
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._depth = self._db.execute("SELECT count(*) FROM readings").fetchone()[0]
                raise
        if refused:
            raise OutboxFullError(
                f"outbox full ({self.max_readings} readings, when_full=refuse_new): {refused} reading(s) refused"
            )
        return added

    def _make_room(self, reading_id: str) -> bool:
        """Apply the when_full policy for one incoming reading (inside the put transaction)."""
        if self._db.execute("SELECT 1 FROM readings WHERE id = ?", (reading_id,)).fetchone():
            return True  # a duplicate needs no room
        if self.when_full == "refuse_new":
            self._bump("refused")
            log.warning("outbox full (%d readings): refusing reading %s (when_full=refuse_new)",
                        self.max_readings, reading_id)
            return False
        oldest = self._db.execute("SELECT seq, id FROM readings ORDER BY seq LIMIT 1").fetchone()
        if oldest is None:
            return True
        self._db.execute("DELETE FROM readings WHERE seq = ?", (oldest[0],))
        self._depth -= 1
        self._bump("dropped")
        log.warning("outbox full (%d readings): dropped oldest reading %s to keep %s (when_full=drop_oldest)",
                    self.max_readings, oldest[1], reading_id)
        return True

    def _bump(self, name: str) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET value = value + 1",
            (name,),
        )

    # ------------------------------------------------------------------------------------ sending

    def sendable_count(self, ack_timeout_s: float, limit: int) -> int:
        """How many readings (up to ``limit``) are neither acked nor in flight."""
        cutoff = self._now() - ack_timeout_s
        with self._lock:
            self._check_open()
            unsent = self._db.execute(
                "SELECT count(*) FROM (SELECT 1 FROM readings WHERE sent_at IS NULL LIMIT ?)", (limit,)
            ).fetchone()[0]
            if unsent >= limit:
                return limit
            expired = self._db.execute(
                "SELECT count(*) FROM (SELECT 1 FROM readings WHERE sent_at < ? LIMIT ?)", (cutoff, limit - unsent)
            ).fetchone()[0]
        return unsent + expired

    def take_batch(self, batch_id: str, limit: int, ack_timeout_s: float,
                   max_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> OutboxBatch | None:
        """Mark up to ``limit`` sendable readings (at most ``max_bytes`` of JSON, but always at least
        one) as in flight under ``batch_id`` and return them.

        Order: batches whose ack timed out first (they are the oldest), then the oldest unsent readings,
        with ``LIVE_SHARE`` of the batch kept for the newest unsent ones.
        """
        now = self._now()
        cutoff = now - ack_timeout_s
        chosen: dict[int, tuple[str, str]] = {}
        used = 0

        def add(seq: int, rid: str, payload: str) -> bool:
            nonlocal used
            if seq in chosen:
                return True
            if len(chosen) >= limit or (chosen and used + len(payload) + 1 > max_bytes):
                return False
            chosen[seq] = (rid, payload)
            used += len(payload) + 1
            return True

        with self._lock:
            self._check_open()
            for row in self._db.execute(
                "SELECT seq, id, payload FROM readings WHERE sent_at < ? ORDER BY sent_at, seq LIMIT ?",
                (cutoff, limit),
            ):
                if not add(*row):
                    break
            room = limit - len(chosen)
            if room > 0:
                live = max(1, int(room * LIVE_SHARE)) if room > 1 else 0
                oldest_budget = max_bytes - int(max_bytes * LIVE_SHARE)
                for row in self._db.execute(
                    "SELECT seq, id, payload FROM readings WHERE sent_at IS NULL ORDER BY seq LIMIT ?",
                    (room - live,),
                ):
                    # Leave the live share of the bytes too, not only of the count.
                    if chosen and used + len(row[2]) + 1 > oldest_budget:
                        break
                    if not add(*row):
                        break
                for row in self._db.execute(
                    "SELECT seq, id, payload FROM readings WHERE sent_at IS NULL ORDER BY seq DESC LIMIT ?",
                    (limit,),
                ):
                    if not add(*row):
                        break
            if not chosen:
                return None
            seqs = sorted(chosen)
            # Being in flight is not durable state worth an fsync: after a crash everything is sendable
            # again, which is right (nothing in flight was acked).
            self._db.execute("PRAGMA synchronous=OFF")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "UPDATE readings SET sent_at = ?, batch_id = ? WHERE seq = ?", [(now, batch_id, s) for s in seqs]
                )
                self._db.execute("COMMIT")
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
        return OutboxBatch(batch_id, [chosen[s][0] for s in seqs], [chosen[s][1] for s in seqs])

    def release(self, batch_ids: Sequence[str] | None = None) -> int:
        """Make in-flight readings sendable again at once (all, or those of ``batch_ids``): after a
        reconnect to a broker that lost its session, the acks for them will never come."""
        with self._lock:
            self._check_open()
            if batch_ids is None:
                cursor = self._db.execute(
                    "UPDATE readings SET sent_at = NULL, batch_id = NULL WHERE sent_at IS NOT NULL"
                )
            else:
                cursor = self._db.executemany(
                    "UPDATE readings SET sent_at = NULL, batch_id = NULL WHERE batch_id = ?", [(b,) for b in batch_ids]
                )
            return cursor.rowcount

    def apply_ack(self, ack: Ack) -> AckOutcome:
        """Delete what the cloud accepted; move what it rejected to quarantine with its reason."""
        now = self._now()
        accepted = quarantined = unknown = 0
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for chunk in _chunks(ack.accepted, 500):
                    marks = ",".join("?" * len(chunk))
                    cursor = self._db.execute(f"DELETE FROM readings WHERE id IN ({marks})", chunk)
                    accepted += cursor.rowcount
                    unknown += len(chunk) - cursor.rowcount
                    self._db.executemany("INSERT OR REPLACE INTO delivered (id, acked_at) VALUES (?, ?)",
                                         [(reading_id, now) for reading_id in chunk])
                for rejection in ack.rejected:
                    row = self._db.execute("SELECT payload FROM readings WHERE id = ?", (rejection.id,)).fetchone()
                    if row is None:
                        unknown += 1
                        continue
                    self._db.execute(
                        "INSERT OR REPLACE INTO quarantine (id, payload, reason, quarantined_at) VALUES (?, ?, ?, ?)",
                        (rejection.id, row[0], rejection.reason, now),
                    )
                    self._db.execute("DELETE FROM readings WHERE id = ?", (rejection.id,))
                    quarantined += 1
                    log.warning("cloud rejected reading %s: %s (quarantined, not retried)", rejection.id,
                                rejection.reason)
                self._db.execute("DELETE FROM delivered WHERE acked_at < ?", (now - self.remember_delivered_s,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth -= accepted + quarantined
        return AckOutcome(accepted, quarantined, unknown)

    # ------------------------------------------------------------------------------------ looking

    def depth(self) -> int:
        return self._depth

    def is_full(self) -> bool:
        return self._depth >= self.max_readings

    def contains(self, reading_id: str) -> bool:
        with self._lock:
            self._check_open()
            return self._db.execute("SELECT 1 FROM readings WHERE id = ?", (reading_id,)).fetchone() is not None

    def ids(self) -> list[str]:
        with self._lock:
            self._check_open()
            return [row[0] for row in self._db.execute("SELECT id FROM readings ORDER BY seq")]

    def quarantined(self) -> list[QuarantinedReading]:
        with self._lock:
            self._check_open()
            return [
                QuarantinedReading(*row)
                for row in self._db.execute("SELECT id, reason, quarantined_at FROM quarantine ORDER BY quarantined_at")
            ]

    def stats(self) -> OutboxStats:
        with self._lock:
            self._check_open()
            oldest = self._db.execute("SELECT stored_at FROM readings ORDER BY seq LIMIT 1").fetchone()
            quarantined = self._db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return OutboxStats(
            depth=self._depth,
            oldest_age_s=None if oldest is None else round(max(0.0, self._now() - oldest[0]), 3),
            quarantined=quarantined,
            full=self._depth >= self.max_readings,
            dropped=counters.get("dropped", 0),
            refused=counters.get("refused", 0),
        )

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError("the outbox is closed")


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])
