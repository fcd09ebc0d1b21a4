"""The gateway's outbox: every reading a device delivered, kept on disk until the cloud acks it.

SQLite in WAL mode with ``synchronous=FULL``: :meth:`Outbox.put` returns only after the reading's
transaction reached the disk, so a driver that moves on after the sink returned can lose power at any
moment without losing the reading. A reading leaves only when the cloud's :class:`~gateway.contract.Ack`
lists it as accepted (the cloud acks after its own database commit; a broker PUBACK is not enough).
Readings the cloud rejects move to ``quarantine`` with the reason and are never sent again. Device
records the gateway itself could not turn into readings go to ``device_quarantine`` (same database,
same durability) with their bytes and reason, so the driver can move past them.

The outbox is bounded by ``[outbox] max_readings``, a byte budget (``max_bytes``) and the disk
itself. When a bound is reached the ``when_full`` policy decides: ``refuse_new`` (the default) never
drops a stored reading; a reading of a device that keeps its records raises :class:`OutboxFullError`
to the device session, which leaves the record on the device for the next session, and a live
reading (nothing will give it again, see :func:`kept_by_device`) is counted as lost, once per
reading. ``drop_oldest`` (opt-in) deletes the oldest unacked reading to keep the new one and counts
each drop. A full *disk* always refuses. Counters count readings, never attempts, and the storage
state (``ok``/``low``/``full``/``unwritable``) says in plain words what is wrong.

A full disk must not stop the acks that free it: SQLite needs room even to delete (WAL frames, a
checkpoint that grows the file), so a reserve file (``reserve_bytes``, :class:`gateway.store.disk.Reserve`)
is given back when an ack, a checkpoint or an in-flight mark hits ``SQLITE_FULL``, and made again
when the disk has room. The WAL is checkpointed often (``wal_autocheckpoint``) and capped
(``journal_size_limit``), so it stays small. A damaged file is found at open (``quick_check``),
moved aside and salvaged (:mod:`gateway.store.salvage`); :attr:`Outbox.recovery` says what happened.

Batches are chosen for a backlog that never starves live readings: most of a batch is the oldest
sendable readings, a share is the newest, so a reading taken now travels in the next batch even while
a month of backlog drains. While the uplink drains a backlog it asks for the present apart
(:meth:`Outbox.take_live_batch`: what was stored in the last minutes, in a small message that ingest
takes ahead of backlogs) and for the backlog without it (``take_batch(..., min_age_s=...)``). A batch
not acked within the ack timeout becomes sendable again (ids are deterministic and the cloud is
idempotent, so a duplicate is harmless).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from gateway.contract import Ack, ClockJudgement, Reading
from gateway.errors import GatewayError
from gateway.profiles import PROFILES
from gateway.store.disk import Reserve, StorageError, check_file, classify, describe, free_bytes
from gateway.store.salvage import (
    Damage,
    SalvageReport,
    integrity_problem,
    move_aside,
    salvage_rows,
    salvage_sources,
    table_names,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_RESERVE_BYTES = 4 * 1024 * 1024
# A checkpoint every 32 pages keeps the WAL near 128 KiB; after a checkpoint the file is cut back to
# this limit, so a long backlog never leaves a large -wal behind.
WAL_AUTOCHECKPOINT_PAGES = 32
WAL_SIZE_LIMIT = 512 * 1024
# Room a write may need beyond its rows (WAL frames until the next checkpoint, index pages).
WAL_HEADROOM = 256 * 1024
# Room on the disk the outbox never takes: the device positions and enrolment stores write there too
# (a meter whose position cannot be saved is read again and again).
OTHERS_HEADROOM = 128 * 1024
# Pages freed by acks beyond this are given back to the disk by maintain().
SHRINK_ABOVE = 256 * 1024
# What a stored reading costs beyond its JSON: the row, the unique index on id, the sendable index.
ROW_OVERHEAD = 128
# Profiles whose devices keep no memory of what they sent (the profile table says so): a reading
# refused is gone for good. Every other device keeps its records (RACP meters, cuffs and scales that
# re-send their memory, ASTM and TaiDoc meters), so a refused reading is read again later.
LIVE_PROFILES = frozenset(profile.name for profile in PROFILES if not profile.keeps_records)
StorageState = Literal["ok", "low", "full", "unwritable"]


def kept_by_device(reading: Reading) -> bool:
    """Does the device still hold this record if the outbox cannot take it (True), or is a refused
    reading lost (False: live heart rate, a streaming scale)?"""
    if (reading.device_time is None and reading.clock.judgement is ClockJudgement.GATEWAY
            and "clock_unset" not in reading.flags):
        # A window of a live stream (an oximeter's continuous samples), timed by the gateway by design:
        # the device keeps no record of it, whatever else its profile stores.
        return False
    return reading.kind != "heart_rate" and reading.device.profile not in LIVE_PROFILES

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
-- Records a device sent that the gateway could not turn into a reading (the codec or the contract
-- refused them). Kept with their bytes for review; the driver moved past them as if stored. The id is
-- the record's own identity (device, profile, bytes), so a record a device sends again every session
-- (cuffs and meters re-send their memory) is quarantined once.
CREATE TABLE IF NOT EXISTS device_quarantine (
    id TEXT PRIMARY KEY,
    device_uid TEXT NOT NULL,
    profile TEXT NOT NULL,
    raw TEXT NOT NULL,
    reason TEXT NOT NULL,
    position TEXT,
    quarantined_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS device_quarantine_device ON device_quarantine (device_uid);
"""


class OutboxError(GatewayError):
    """The outbox could not take or give a reading."""


class OutboxFullError(OutboxError):
    """The reading was not stored: a cap (``max_readings``, ``max_bytes``) with ``refuse_new``, or the
    disk is full. The device keeps the record; the driver must not move past it."""


class StorageUnwritableError(OutboxError):
    """The outbox cannot be written at all (read-only card, permission, I/O error): not stored."""


@dataclass(frozen=True, slots=True)
class AckedReading:
    """A reading the cloud confirmed, for the drivers' resume positions (see :meth:`Outbox.on_acked`)."""

    id: str
    device_uid: str | None
    sequence: int | None


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
    """Readings of devices with memory refused (each once): they stay on the device."""
    lost: int = 0
    """Live readings that could not be stored (each once): gone for good."""
    expired: int = 0
    """Readings removed by ``max_age_days``."""
    waiting_on_devices: int = 0
    """Readings refused since the start that no device has given again yet."""
    state: StorageState = "ok"
    message: str | None = None
    """The storage state in plain words (None when all is well)."""
    bytes_used: int = 0
    """The outbox files on disk (database and WAL)."""
    budget_bytes: int = 0
    free_bytes: int | None = None
    device_quarantined: int = 0
    """Device records the gateway could not turn into readings (see :meth:`Outbox.quarantine_record`)."""
    device_quarantine_evicted: int = 0
    """Quarantined device records deleted to keep the newest ``max_quarantined_per_device`` per device."""


@dataclass(frozen=True, slots=True)
class QuarantinedReading:
    id: str
    reason: str
    quarantined_at: float


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    """A device record the gateway could not turn into a reading."""

    device_uid: str
    profile: str
    raw: str
    """The record's bytes as hex."""
    reason: str
    position: str | None = None
    quarantined_at: float = 0.0

    @property
    def id(self) -> str:
        key = json.dumps([self.device_uid, self.profile, self.raw, None if self.raw else self.position],
                         separators=(",", ":"))
        return hashlib.sha256(key.encode()).hexdigest()[:32]


class Outbox:
    """A durable, bounded queue of readings keyed by their deterministic id. Thread-safe."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_readings: int = 1_000_000,
        when_full: Literal["drop_oldest", "refuse_new"] = "refuse_new",
        clock: Callable[[], float] | None = None,
        remember_delivered_s: float = 90 * 86400,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age_s: float | None = None,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        max_quarantined_per_device: int = 500,
    ) -> None:
        self.path = Path(path)
        self.max_quarantined_per_device = max_quarantined_per_device
        self.remember_delivered_s = remember_delivered_s
        self.max_readings = max_readings
        self.when_full = when_full
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._now = clock or time.time
        self._lock = threading.Lock()
        self.reserve = Reserve(self.path.with_name(self.path.name + ".reserve"), reserve_bytes)
        self.recovery: SalvageReport | None = None
        """Set when the file found at open was damaged: moved aside, and what was salvaged."""
        self._pending: dict[str, int] = {}
        """Counter increments not yet on disk (written with the next transaction that succeeds)."""
        self._refused_ids: set[str] = set()
        self._lost_ids: set[str] = set()
        self._full_reason: str | None = None
        self._unwritable: tuple[float, str] | None = None
        self._listeners: list[Callable[[list[AckedReading]], None]] = []
        self._shrunk = False
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_file(self.path)
        problem = integrity_problem(self.path)
        moved = None
        if problem is not None:
            moved = move_aside(self.path)
            log.error("outbox %s is damaged (%s): moved aside to %s; salvaging what can be read",
                      self.path, problem.problem, moved.name)
        try:
            self._db = self._connect()
        except sqlite3.Error as err:
            raise StorageError(f"outbox {self.path} cannot be opened: {describe(err)}") from None
        if moved is not None and problem is not None:
            self.recovery = self._salvage(moved, problem)
        self._depth = self._db.execute("SELECT count(*) FROM readings").fetchone()[0]
        self.reserve.ensure(WAL_HEADROOM)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) so each put is
        # one durable commit and nothing is left half-done by an implicit transaction.
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            # A new file gives pages freed by acks back to the disk (maintain), where the gateway's other
            # small stores (device positions, enrolment) need room too; on an older file this is a no-op.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.executescript(_SCHEMA)
            self._page_size = db.execute("PRAGMA page_size").fetchone()[0]
        except BaseException:
            db.close()
            raise
        return db

    def _salvage(self, damaged: Path, damage: Damage) -> SalvageReport:
        """Carry what can be read from the damaged file into this fresh one, table by table, from every
        view of it :func:`salvage_sources` offers (rows found twice are inserted once)."""
        salvaged = 0
        unreadable: int | None = None
        for source in salvage_sources(damaged, ignore_wal=damage.foreign_wal):
            count, lost = self._salvage_from(source, damaged)
            salvaged += count
            unreadable = lost if unreadable is None else min(unreadable, lost)
        report = SalvageReport(problem=damage.problem, moved_to=damaged, salvaged=salvaged, unreadable=unreadable or 0,
                               at=_utc(self._now()))
        log.warning("outbox salvage: %d reading(s) carried over from %s, %d row(s) unreadable", salvaged,
                    damaged.name, report.unreadable)
        return report

    def _salvage_from(self, source: sqlite3.Connection, damaged: Path) -> tuple[int, int]:
        salvaged = unreadable = 0
        fresh = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in table_names(source):
            if table not in fresh:
                continue
            columns, rows, lost = salvage_rows(source, table)
            unreadable += lost
            wanted = [c for c in columns if c in {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}]
            if not wanted:
                continue
            picks = [columns.index(c) + 1 for c in wanted]  # +1: the rowid comes first
            values = []
            for row in rows:
                record = dict(zip(wanted, (row[i] for i in picks), strict=True))
                if table == "readings":
                    if not _readable_reading(record):
                        unreadable += 1
                        continue
                    record["sent_at"] = record["batch_id"] = None  # nothing salvaged is in flight
                values.append(tuple(record[c] for c in wanted))
            marks = ", ".join("?" * len(wanted))
            statement = f"INSERT OR IGNORE INTO {table} ({', '.join(wanted)}) VALUES ({marks})"
            for start in range(0, len(values), 500):
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    cursor = self._db.executemany(statement, values[start:start + 500])
                    self._db.execute("COMMIT")
                except sqlite3.Error as err:
                    self._rollback()
                    log.error("outbox salvage: %s stopped at row %d of %s: %s (the rest stays in %s)", table, start,
                              len(values), describe(err), damaged.name)
                    unreadable += len(values) - start
                    break
                if table == "readings":
                    salvaged += cursor.rowcount
        return salvaged, unreadable

    # ------------------------------------------------------------------------------------ writing

    def put(self, reading: Reading) -> bool:
        """Store one reading durably; True if new, False if its id was already here (or quarantined), or
        if it is a live reading that could not be stored (counted in ``lost``)."""
        return self.put_many([reading]) == 1

    def put_many(self, readings: Iterable[Reading]) -> int:
        """Store readings in one durable transaction; returns how many were new (neither here, quarantined,
        nor already delivered).

        A reading that cannot be stored (a cap with ``refuse_new``, the byte budget, a full or unwritable
        disk) is never gone silently: if its device keeps its records (:func:`kept_by_device`) the call
        raises :class:`OutboxFullError` (:class:`StorageUnwritableError`) once the others are stored, so
        the driver leaves it on the device; a live reading is counted in ``lost`` (once per reading) and
        the call returns normally, since nothing can give it again.
        """
        rows = [(r.id, r.model_dump_json(exclude_none=True), kept_by_device(r)) for r in readings]
        if not rows:
            return 0
        with self._lock:
            self._check_open()
            now = self._now()
            added: list[str] = []
            refused: list[tuple[str, bool]] = []
            dropped = 0
            reason: str | None = None
            try:
                self._db.execute("BEGIN IMMEDIATE")
                used = self._used_db_bytes()
                disk = self._disk_refusal()
                for reading_id, payload, kept in rows:
                    if self._known(reading_id):
                        continue
                    cost = len(payload) + ROW_OVERHEAD
                    reason = disk or self._cap_refusal(len(added) - dropped, used, cost)
                    while reason is not None and disk is None and self.when_full == "drop_oldest":
                        freed = self._drop_oldest(reading_id)
                        if freed is None:
                            break
                        dropped += 1
                        used -= freed
                        reason = self._cap_refusal(len(added) - dropped, used, cost)
                    if reason is not None:
                        refused.append((reading_id, kept))
                        continue
                    self._db.execute("INSERT INTO readings (id, payload, stored_at) VALUES (?, ?, ?)",
                                     (reading_id, payload, now))
                    added.append(reading_id)
                    used += cost
                flushed = self._write_counters(dropped=dropped)
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                kind = classify(err)
                if kind not in ("full", "unwritable", "damaged"):
                    raise OutboxError(f"outbox {self.path}: {describe(err)}") from err
                reason = describe(err)
                self._storage_failed(kind, reason)
                added, dropped = [], 0
                refused = [(rid, kept) for rid, _, kept in rows if not self._known_outside_tx(rid)]
            else:
                self._depth += len(added) - dropped
                self._committed(flushed)
                for reading_id in added:
                    self._refused_ids.discard(reading_id)
                if added:
                    self._room_again()
            if refused:
                self._count_refused(refused, reason or "storage full")
        kept_refused = sum(1 for _, kept in refused if kept)
        if kept_refused:
            if self._unwritable is not None:
                raise StorageUnwritableError(f"outbox {self.path} cannot be written ({self._unwritable[1]}): "
                                             f"{kept_refused} reading(s) not saved; they stay on the device")
            raise OutboxFullError(f"storage full ({reason}): {kept_refused} reading(s) not saved; they stay on "
                                  "the device and are read again when there is room")
        return len(added)

    def _known(self, reading_id: str) -> bool:
        """Here already, quarantined by the cloud, or delivered: needs no room (inside a transaction)."""
        return any(
            self._db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (reading_id,)).fetchone()
            for table in ("readings", "quarantine", "delivered")
        )

    def _known_outside_tx(self, reading_id: str) -> bool:
        try:
            return self._known(reading_id)
        except sqlite3.Error:
            return False

    def _cap_refusal(self, new_rows: int, used: int, cost: int) -> str | None:
        """Why one more reading of ``cost`` bytes does not fit the caps (None if it does)."""
        if self._depth + new_rows >= self.max_readings:
            return f"the outbox holds its maximum of {self.max_readings} readings"
        if used + cost > self.max_bytes:
            return f"the outbox budget of {_size(self.max_bytes)} is used"
        return None

    def _disk_refusal(self) -> str | None:
        """Why the disk cannot take more readings now (None if it can). Pages freed by acks count as
        room (SQLite reuses them); while the reserve is given back, its size is kept free for acks."""
        try:
            disk = free_bytes(self.path.parent)
        except OSError:
            return None
        room = disk + self._free_db_bytes()
        needed = WAL_HEADROOM + (0 if self.reserve.held else self.reserve.size)
        if room < needed or disk < OTHERS_HEADROOM:
            return f"the disk is full ({_size(disk)} free)"
        return None

    def _drop_oldest(self, keep_id: str) -> int | None:
        """when_full=drop_oldest: delete the oldest unacked reading; its size, or None if there is none."""
        oldest = self._db.execute("SELECT seq, id, length(payload) FROM readings ORDER BY seq LIMIT 1").fetchone()
        if oldest is None:
            return None
        self._db.execute("DELETE FROM readings WHERE seq = ?", (oldest[0],))
        log.warning("outbox full: dropped oldest reading %s to keep %s (when_full=drop_oldest)", oldest[1], keep_id)
        return int(oldest[2]) + ROW_OVERHEAD

    def _count_refused(self, refused: list[tuple[str, bool]], reason: str) -> None:
        """Count each refused reading once: memory readings wait on their device, live ones are lost."""
        lost = 0
        for reading_id, kept in refused:
            if kept:
                if reading_id not in self._refused_ids:
                    self._refused_ids.add(reading_id)
                    self._pending["refused"] = self._pending.get("refused", 0) + 1
            elif reading_id not in self._lost_ids:
                if len(self._lost_ids) > 100_000:
                    self._lost_ids.clear()  # live ids never come back; the set only guards a re-offer
                self._lost_ids.add(reading_id)
                self._pending["lost"] = self._pending.get("lost", 0) + 1
                lost += 1
        if self._full_reason is None and self._unwritable is None:
            self._full_reason = reason
            log.error("storage full (%s): refusing new readings; devices with memory keep theirs until there is "
                      "room, live readings are lost and counted", reason)
        if lost:
            log.warning("storage full: %d live reading(s) could not be saved and are lost (%d in all)", lost,
                        self._counter("lost"))

    def _room_again(self) -> None:
        if self._full_reason is not None:
            log.warning("storage has room again: new readings are saved (was: %s)", self._full_reason)
            self._full_reason = None

    def _storage_failed(self, kind: str, reason: str) -> None:
        if kind == "full":
            return  # _count_refused says so once
        if self._unwritable is None:
            self._unwritable = (self._now(), reason)
            log.error("storage unwritable: outbox %s cannot be written (%s)", self.path, reason)

    def _write_counters(self, **increments: int) -> dict[str, int]:
        """Write pending counter increments (and these) inside the open transaction; returns what was
        written, to be forgotten from the pending ones once the transaction commits."""
        for name, value in increments.items():
            if value:
                self._pending[name] = self._pending.get(name, 0) + value
        written = {name: value for name, value in self._pending.items() if value}
        for name, value in written.items():
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
                (name, value, value),
            )
        return written

    def _committed(self, written: dict[str, int]) -> None:
        for name, value in written.items():
            self._pending[name] -= value
        if self._unwritable is not None:
            log.warning("storage writable again: outbox %s", self.path)
            self._unwritable = None

    def _rollback(self) -> None:
        # SQLite rolls a transaction back by itself on SQLITE_FULL and some I/O errors; a ROLLBACK then
        # raises "cannot rollback - no transaction is active", which would hide the real error.
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _write(self, work: Callable[[], object], what: str) -> object:
        """Run ``work`` in a durable transaction. On a full disk, give the reserve back, checkpoint the
        WAL into the database and try once more: acks and in-flight marks must work on a full disk."""
        for attempt in (1, 2):
            try:
                self._db.execute("BEGIN IMMEDIATE")
                result = work()
                written = self._write_counters()
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                kind = classify(err)
                if kind == "full" and attempt == 1:
                    released = self.reserve.release()
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    log.warning("storage full while %s: %s; %s", what, describe(err),
                                "gave the reserve back to make room" if released else "retrying after a checkpoint")
                    continue
                if kind in ("unwritable", "damaged"):
                    self._storage_failed(kind, describe(err))
                raise OutboxError(f"outbox {self.path}: {what} failed: {describe(err)}") from err
            self._committed(written)
            return result
        raise AssertionError("unreachable")

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
                   max_bytes: int = DEFAULT_MAX_BATCH_BYTES, *,
                   min_age_s: float | None = None) -> OutboxBatch | None:
        """Mark up to ``limit`` sendable readings (at most ``max_bytes`` of JSON, but always at least
        one) as in flight under ``batch_id`` and return them.

        Order: batches whose ack timed out first (they are the oldest), then the oldest unsent readings,
        with ``LIVE_SHARE`` of the batch kept for the newest unsent ones. ``min_age_s``: only unsent
        readings stored at least this long ago (the backlog; :meth:`take_live_batch` takes the rest).
        """
        now = self._now()
        cutoff = now - ack_timeout_s
        chosen: dict[int, tuple[str, str]] = {}
        used = 0
        # Rows stored later are filtered out as they are read, not by the query: the index is on
        # (sent_at, seq), and the newest rows are the few live ones.
        before = float("inf") if min_age_s is None else now - min_age_s

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
                for seq, rid, payload, stored_at in self._db.execute(
                    "SELECT seq, id, payload, stored_at FROM readings WHERE sent_at IS NULL ORDER BY seq LIMIT ?",
                    (room - live,),
                ):
                    if stored_at >= before:
                        break
                    # Leave the live share of the bytes too, not only of the count.
                    if chosen and used + len(payload) + 1 > oldest_budget:
                        break
                    if not add(seq, rid, payload):
                        break
                for seq, rid, payload, stored_at in self._db.execute(
                    "SELECT seq, id, payload, stored_at FROM readings WHERE sent_at IS NULL ORDER BY seq DESC"
                    " LIMIT ?", (limit if min_age_s is None else -1,),
                ):
                    if stored_at >= before:
                        continue
                    if not add(seq, rid, payload):
                        break
            return self._mark_in_flight(batch_id, chosen, now)

    def take_live_batch(self, batch_id: str, window_s: float, limit: int, max_bytes: int) -> OutboxBatch | None:
        """Mark the newest unsent readings stored within the last ``window_s`` (up to ``limit``, at
        most ``max_bytes`` of JSON but always one) as in flight and return them: what a device measured
        just now, sent in a small message of its own while a backlog drains."""
        now = self._now()
        since = now - window_s
        chosen: dict[int, tuple[str, str]] = {}
        used = 0
        with self._lock:
            self._check_open()
            for seq, rid, payload, stored_at in self._db.execute(
                "SELECT seq, id, payload, stored_at FROM readings WHERE sent_at IS NULL ORDER BY seq DESC LIMIT ?",
                (limit,),
            ):
                if stored_at < since or (chosen and used + len(payload) + 1 > max_bytes):
                    break
                chosen[seq] = (rid, payload)
                used += len(payload) + 1
            return self._mark_in_flight(batch_id, chosen, now)

    def backlog_waiting(self, window_s: float, ack_timeout_s: float) -> bool:
        """Whether a sendable reading was stored before the last ``window_s``: a backlog to drain."""
        now = self._now()
        with self._lock:
            self._check_open()
            if self._db.execute("SELECT 1 FROM readings WHERE sent_at < ? LIMIT 1", (now - ack_timeout_s,)).fetchone():
                return True
            oldest = self._db.execute(
                "SELECT stored_at FROM readings WHERE sent_at IS NULL ORDER BY seq LIMIT 1").fetchone()
        return oldest is not None and oldest[0] < now - window_s

    def _mark_in_flight(self, batch_id: str, chosen: dict[int, tuple[str, str]], now: float) -> OutboxBatch | None:
        if not chosen:
            return None
        seqs = sorted(chosen)
        # Being in flight is not durable state worth an fsync: after a crash everything is sendable
        # again, which is right (nothing in flight was acked).
        self._db.execute("PRAGMA synchronous=OFF")
        try:
            self._write(lambda: self._db.executemany(
                "UPDATE readings SET sent_at = ?, batch_id = ? WHERE seq = ?", [(now, batch_id, s) for s in seqs]
            ), "marking a batch in flight")
        finally:
            self._db.execute("PRAGMA synchronous=FULL")
        return OutboxBatch(batch_id, [chosen[s][0] for s in seqs], [chosen[s][1] for s in seqs])

    def release(self, batch_ids: Sequence[str] | None = None) -> int:
        """Make in-flight readings sendable again at once (all, or those of ``batch_ids``): after a
        reconnect to a broker that lost its session, the acks for them will never come."""
        with self._lock:
            self._check_open()
            if batch_ids is None:
                def work() -> sqlite3.Cursor:
                    return self._db.execute(
                        "UPDATE readings SET sent_at = NULL, batch_id = NULL WHERE sent_at IS NOT NULL")
            else:
                def work() -> sqlite3.Cursor:
                    return self._db.executemany(
                        "UPDATE readings SET sent_at = NULL, batch_id = NULL WHERE batch_id = ?",
                        [(b,) for b in batch_ids])
            cursor = self._write(work, "re-queueing readings")
            assert isinstance(cursor, sqlite3.Cursor)
            return cursor.rowcount

    def apply_ack(self, ack: Ack) -> AckOutcome:
        """Delete what the cloud accepted; move what it rejected to quarantine with its reason. Works on
        a full disk (the reserve is given back if need be); listeners (:meth:`on_acked`) then hear which
        readings of which device the cloud now holds."""
        now = self._now()
        confirmed: list[AckedReading] = []

        def work() -> AckOutcome:
            accepted = quarantined = unknown = 0
            confirmed.clear()
            for chunk in _chunks(ack.accepted, 500):
                marks = ",".join("?" * len(chunk))
                if self._listeners:
                    confirmed.extend(AckedReading(*row) for row in self._db.execute(
                        "SELECT id, json_extract(payload, '$.device.uid'), json_extract(payload, '$.sequence')"
                        f" FROM readings WHERE id IN ({marks})", chunk))
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
            return AckOutcome(accepted, quarantined, unknown)

        with self._lock:
            self._check_open()
            outcome = self._write(work, "applying an ack")
            assert isinstance(outcome, AckOutcome)
            self._depth -= outcome.accepted + outcome.quarantined
            if outcome.accepted + outcome.quarantined:
                self._room_again_if_any()
        for listener in list(self._listeners):
            try:
                listener(confirmed)
            except Exception:  # a listener's bug must not undo an applied ack
                log.exception("outbox: ack listener failed")
        return outcome

    def on_acked(self, listener: Callable[[list[AckedReading]], None]) -> None:
        """Call ``listener`` after each applied ack with the readings the cloud accepted (device uid and
        sequence from the stored payload), on the thread that applied it. This is where a driver's
        resume position can follow the cloud (issue 15 item 1)."""
        self._listeners.append(listener)

    def pending_positions(self, device_uid: str) -> list[int]:
        """Sequence numbers of this device's readings not yet acked by the cloud, oldest first."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT json_extract(payload, '$.sequence') FROM readings"
                " WHERE json_extract(payload, '$.device.uid') = ? AND json_extract(payload, '$.sequence') IS NOT NULL"
                " ORDER BY seq", (device_uid,)).fetchall()
        return [int(row[0]) for row in rows]

    def settled(self, reading_ids: Sequence[str]) -> set[str]:
        """Those of ``reading_ids`` the cloud has settled: confirmed (``delivered``) or rejected into
        ``quarantine``. An id neither here, nor settled, was lost before the cloud had it."""
        found: set[str] = set()
        with self._lock:
            self._check_open()
            for chunk in _chunks(list(reading_ids), 500):
                marks = ",".join("?" * len(chunk))
                for table in ("delivered", "quarantine"):
                    found.update(row[0] for row in self._db.execute(
                        f"SELECT id FROM {table} WHERE id IN ({marks})", chunk))
        return found

    def _room_again_if_any(self) -> None:
        """An ack freed pages: a disk-full refusal may be over (the next put finds out for sure)."""
        if self._full_reason is None or self._disk_refusal() is not None:
            return
        if self._cap_refusal(0, self._used_db_bytes(), ROW_OVERHEAD) is None:
            self._room_again()

    # ------------------------------------------------------------------------------------ upkeep

    def maintain(self) -> None:
        """Periodic upkeep (the runtime calls it every few seconds, off the event loop): expire readings
        past ``max_age_s``, write pending counters, checkpoint a WAL that grew, make the reserve again
        when there is room, and find out whether an unwritable outbox is writable again."""
        with self._lock:
            self._check_open()
            now = self._now()

            def work() -> int:
                expired = 0
                if self.max_age_s is not None:
                    expired = self._db.execute("DELETE FROM readings WHERE stored_at < ?",
                                               (now - self.max_age_s,)).rowcount
                free_pages = self._db.execute("PRAGMA freelist_count").fetchone()[0]
                if free_pages * self._page_size > SHRINK_ABOVE:
                    self._db.execute(f"PRAGMA incremental_vacuum({int(free_pages)})").fetchall()
                    self._shrunk = True
                return expired

            if _read_only_mount(self.path.parent):
                # A card the kernel remounted read-only: known without a write (and without wearing it).
                self._storage_failed("unwritable", "the filesystem is mounted read-only")
                return
            try:
                expired = self._write(work, "upkeep")
            except OutboxError as err:
                log.debug("outbox upkeep: %s", err)
                return
            if self._unwritable is not None and self._unwritable[1] == "the filesystem is mounted read-only":
                self._committed({})
            assert isinstance(expired, int)
            if expired:
                self._depth -= expired
                self._pending["expired"] = self._pending.get("expired", 0) + expired
                log.warning("outbox: %d reading(s) older than %.0f days removed (max_age_days)", expired,
                            (self.max_age_s or 0) / 86400)
            if self._wal_bytes() > WAL_SIZE_LIMIT or self._shrunk:
                # The checkpoint is also what cuts the database file after incremental_vacuum.
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._shrunk = False
            if not self.reserve.held and self.reserve.ensure(WAL_HEADROOM + self.reserve.size):
                log.info("storage: reserve of %s made again", _size(self.reserve.size))

    def unwritable_for(self) -> float | None:
        """Seconds the outbox has been unwritable (None while it is writable)."""
        return None if self._unwritable is None else max(0.0, self._now() - self._unwritable[0])

    def quarantine_record(self, record: QuarantinedRecord) -> bool:
        """Keep a device record that could not become a reading, durably (one fsync'd transaction);
        True if it is new, False if the same record (device, profile, bytes) was quarantined before."""
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO device_quarantine (id, device_uid, profile, raw, reason, position, "
                    "quarantined_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (record.id, record.device_uid, record.profile, record.raw, record.reason, record.position,
                     self._now()),
                )
                new = cursor.rowcount == 1
                written: dict[str, int] = {}
                if new:
                    # A device that sends nothing but garbage (a live stream of bad frames) must not fill
                    # the card with it: the newest records per device are kept, the evicted ones counted.
                    evicted = self._db.execute(
                        "DELETE FROM device_quarantine WHERE rowid IN (SELECT rowid FROM device_quarantine"
                        " WHERE device_uid = ? ORDER BY quarantined_at DESC, rowid DESC LIMIT -1 OFFSET ?)",
                        (record.device_uid, self.max_quarantined_per_device),
                    ).rowcount
                    written = self._write_counters(device_quarantine_evicted=evicted)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._committed(written)
        return new

    def quarantined_records(self, device_uid: str | None = None) -> list[QuarantinedRecord]:
        """Quarantined device records, oldest first (of one device, or all)."""
        query = "SELECT device_uid, profile, raw, reason, position, quarantined_at FROM device_quarantine"
        params: tuple[str, ...] = ()
        if device_uid is not None:
            query, params = query + " WHERE device_uid = ?", (device_uid,)
        with self._lock:
            self._check_open()
            rows = self._db.execute(query + " ORDER BY quarantined_at, rowid", params).fetchall()
        return [QuarantinedRecord(*row) for row in rows]

    def quarantined_record_counts(self) -> dict[str, tuple[str, int]]:
        """Per device uid: (profile, how many of its records are quarantined)."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT device_uid, max(profile), count(*) FROM device_quarantine GROUP BY device_uid"
            ).fetchall()
        return {uid: (profile, count) for uid, profile, count in rows}

    # ------------------------------------------------------------------------------------ looking

    def depth(self) -> int:
        return self._depth

    def is_full(self) -> bool:
        """New readings are being refused (a cap, the budget, the disk, or an unwritable outbox)."""
        return self._full_reason is not None or self._unwritable is not None or self._depth >= self.max_readings

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
            device_quarantined = self._db.execute("SELECT count(*) FROM device_quarantine").fetchone()[0]
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            for name, value in self._pending.items():
                counters[name] = counters.get(name, 0) + value
            used = self._used_db_bytes()
            disk = self._disk_refusal()
            cap = self._cap_refusal(0, used, ROW_OVERHEAD + 512)
            try:
                free: int | None = free_bytes(self.path.parent)
            except OSError:
                free = None
            on_disk = self._file_bytes()
        lost = sum(counters.get(name, 0) for name in ("lost", "dropped", "expired"))
        state, message = self._describe_state(disk, cap, used, free, lost)
        return OutboxStats(
            depth=self._depth,
            oldest_age_s=None if oldest is None else round(max(0.0, self._now() - oldest[0]), 3),
            quarantined=quarantined,
            full=state in ("full", "unwritable"),
            dropped=counters.get("dropped", 0),
            refused=counters.get("refused", 0),
            lost=counters.get("lost", 0),
            expired=counters.get("expired", 0),
            waiting_on_devices=len(self._refused_ids),
            state=state,
            message=message,
            bytes_used=on_disk,
            budget_bytes=self.max_bytes,
            free_bytes=free,
            device_quarantined=device_quarantined,
            device_quarantine_evicted=counters.get("device_quarantine_evicted", 0),
        )

    def _describe_state(self, disk: str | None, cap: str | None, used: int, free: int | None,
                        lost: int) -> tuple[StorageState, str | None]:
        waiting = f"{_count(self._depth)} reading{'s' if self._depth != 1 else ''} waiting to upload"
        lost_part = (f"; {_count(lost)} reading{'s' if lost != 1 else ''} lost (not saved, dropped or expired)"
                     if lost else "")
        on_devices = len(self._refused_ids)
        kept_part = (f"; {_count(on_devices)} reading{'s' if on_devices != 1 else ''} wait on the devices"
                     if on_devices else "")
        if self._unwritable is not None:
            return "unwritable", (f"Storage unwritable: {waiting}; new readings cannot be saved "
                                  f"({self.path.parent}: {self._unwritable[1]}){kept_part}{lost_part}")
        reason = self._full_reason if self._full_reason is not None else (disk or cap)
        if reason is not None and self._full_reason is None and disk is None and self.when_full == "drop_oldest":
            return "full", (f"Storage full: {waiting}; the oldest readings are dropped to keep new ones ({reason}, "
                            f"when_full = drop_oldest){lost_part}")
        if reason is not None:
            return "full", f"Storage full: {waiting}; new readings cannot be saved ({reason}){kept_part}{lost_part}"
        low = []
        if used >= 0.9 * self.max_bytes:
            low.append(f"{used * 100 // self.max_bytes}% of the outbox budget of {_size(self.max_bytes)} used")
        if self._depth >= 0.9 * self.max_readings:
            low.append(f"{_count(self._depth)} of at most {_count(self.max_readings)} readings")
        if free is not None and free < 4 * (WAL_HEADROOM + self.reserve.size):
            low.append(f"{_size(free)} free on the disk")
        if low:
            return "low", f"Storage low: {waiting}; {', '.join(low)}{lost_part}"
        return "ok", None

    def _used_db_bytes(self) -> int:
        """Bytes the database's live pages hold (pages freed by acks are reused, so they do not count)."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        return (pages - self._db.execute("PRAGMA freelist_count").fetchone()[0]) * self._page_size

    def _free_db_bytes(self) -> int:
        return self._db.execute("PRAGMA freelist_count").fetchone()[0] * self._page_size

    def _wal_bytes(self) -> int:
        try:
            return self.path.with_name(self.path.name + "-wal").stat().st_size
        except OSError:
            return 0

    def _file_bytes(self) -> int:
        try:
            return self.path.stat().st_size + self._wal_bytes()
        except OSError:
            return 0

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return (0 if row is None else int(row[0])) + self._pending.get(name, 0)

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


def _read_only_mount(directory: Path) -> bool:
    """Is ``directory`` on a read-only mount? Asked without writing (no wear on the card): statvfs, and
    the kernel's mount table, where ext4 shows ``emergency_ro`` after an error it did not report there."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return True
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            mounts = handle.read().splitlines()
    except OSError:
        return False
    target = str(directory.resolve())
    best: tuple[int, set[str]] | None = None
    for line in mounts:
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields:
            continue
        point = fields[4].replace("\\040", " ")
        if target == point or target.startswith(point.rstrip("/") + "/"):
            options = set(fields[5].split(",")) | set(fields[fields.index("-") + 3].split(","))
            if best is None or len(point) > best[0]:
                best = (len(point), options)
    return best is not None and bool(best[1] & {"ro", "emergency_ro"})


def _count(n: int) -> str:
    """8245 -> ``8 245`` (how the status writes numbers for people)."""
    return f"{n:,}".replace(",", " ")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{n} bytes"


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _readable_reading(row: dict[str, object]) -> bool:
    """A salvaged row is kept only if its payload is still the reading its id names."""
    try:
        reading = Reading.model_validate_json(str(row.get("payload")))
    except ValueError:
        return False
    return reading.id == row.get("id")
