"""Small durable per-device state that drivers keep between sessions (last sequence number read,
last record index, learnt channel ids). SQLite in WAL mode, committed before the call returns.

Some of it is a *download cursor* in a device's memory (:data:`POSITION_KEYS`): how far the gateway
has read. When the outbox loses readings it had (a damaged file moved aside), those cursors are
forgotten; reading ids are deterministic and the cloud de-duplicates, so nothing is stored twice.
Learnt pairings (an ANT+ strap's channel id) are not positions and stay.

Where a device numbers its records (RACP sequence numbers), the position a session resumes from is
the *acked* one (:data:`ACKED_SEQUENCE_KEY`, kept by :class:`AckedPositions`): the last record the
cloud acknowledged, never past a record stored locally and not yet acknowledged (ARCHITECTURE point 4:
the device's memory is the second copy until the cloud's ack). A reading the outbox loses before its
ack (a cap, a damaged file, a torn write) is then read from the device again. The acked position
survives a damaged outbox, so a salvage falls back to it rather than to the start. The acked position
follows the cloud's acks through :class:`gateway.store.acked_positions.AckedPositions` (gateway core: it
listens to the outbox); this store, which drivers use, knows nothing of the outbox.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# The keys drivers keep their resume positions under (a test ties them to the drivers' constants):
# the glucose meter's last RACP sequence number and the TaiDoc meter's record anchor.
SEQUENCE_CURSOR_KEY = "glucose_last_sequence"
POSITION_KEYS = (SEQUENCE_CURSOR_KEY, "taidoc.anchor")
# Devices that number no records (TaiDoc meters): the gateway's own count of the device's records it
# committed, oldest first, used as the record's position. Not a download cursor into the device (a
# lost outbox does not reset it: positions must keep increasing), so it is not in POSITION_KEYS.
RECORD_ORDINAL_KEY = "record_ordinal"
CURSOR_KEYS = (SEQUENCE_CURSOR_KEY, RECORD_ORDINAL_KEY)
# The highest sequence number n such that every record up to n the gateway took from the device is held
# by the cloud or needs no upload (quarantined, a control-solution test): where a new session resumes.
ACKED_SEQUENCE_KEY = "acked_sequence"


class DeviceStateStore:
    def __init__(self, path: str | Path) -> None:
        self.follows_acks = False
        """True once an :class:`AckedPositions` keeps this store's acked positions following the cloud's
        acks (the gateway's runtime): sequence-numbered drivers then resume from the acked position.
        False (a store used with a sink that is no outbox): they resume from their download cursor."""
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # A meter download writes its position once per record: without these the -wal grows to SQLite's
        # default checkpoint of 1000 pages (4 MiB) and stays that size, room a small card does not have.
        self._db.execute("PRAGMA wal_autocheckpoint=16")
        self._db.execute("PRAGMA journal_size_limit=65536")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS device_state ("
            " uid TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
            " PRIMARY KEY (uid, key))"
        )
        # Records stored in the outbox and not yet acked, by the device's own position: a record the
        # outbox loses stays here (another file), so it holds the acked position back until read again.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS held_positions ("
            " uid TEXT NOT NULL, position INTEGER NOT NULL, reading_id TEXT NOT NULL,"
            " PRIMARY KEY (uid, reading_id))"
        )
        # What a driver needs to resume from a position (a TaiDoc anchor), kept per position so a session
        # can resume from the acked position rather than from the last record stored.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS position_marks ("
            " uid TEXT NOT NULL, position INTEGER NOT NULL, value TEXT NOT NULL,"
            " PRIMARY KEY (uid, position))"
        )

    def get(self, uid: str, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM device_state WHERE uid=? AND key=?", (uid, key)).fetchone()
        return default if row is None else json.loads(row[0])

    def set(self, uid: str, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO device_state (uid, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (uid, key) DO UPDATE SET value = excluded.value",
                (uid, key, json.dumps(value)),
            )

    def advance(self, uid: str, values: dict[str, Any], mark: tuple[int, Any] | None = None) -> None:
        """Set several keys and, optionally, the resume mark of a position, in one durable transaction
        (one fsync per record a download commits, not three)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO device_state (uid, key, value) VALUES (?, ?, ?)"
                    " ON CONFLICT (uid, key) DO UPDATE SET value = excluded.value",
                    [(uid, key, json.dumps(value)) for key, value in values.items()],
                )
                if mark is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO position_marks (uid, position, value) VALUES (?, ?, ?)",
                        (uid, mark[0], json.dumps(mark[1])),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def mark_at(self, uid: str, position: int) -> Any:
        """The resume mark kept for ``position`` (None if there is none)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM position_marks WHERE uid=? AND position=?",
                                   (uid, position)).fetchone()
        return None if row is None else json.loads(row[0])

    def forget_marks_below(self, uid: str, position: int) -> None:
        """Marks below the acked position are never resumed from again."""
        with self._lock:
            self._db.execute("DELETE FROM position_marks WHERE uid=? AND position<?", (uid, position))

    def delete(self, uid: str, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM device_state WHERE uid=? AND key=?", (uid, key))

    def uids_with(self, key: str) -> list[str]:
        """The devices that have a value under ``key``."""
        with self._lock:
            return [row[0] for row in self._db.execute(
                "SELECT uid FROM device_state WHERE key=? ORDER BY uid", (key,))]

    def hold(self, uid: str, position: int, reading_id: str) -> None:
        """Note a record stored locally whose reading the cloud has not acked yet (durably)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO held_positions (uid, position, reading_id) VALUES (?, ?, ?)",
                             (uid, position, reading_id))

    def release(self, uid: str, reading_ids: Iterable[str]) -> None:
        """The cloud holds these readings now (acked, or quarantined by it): they hold nothing back."""
        with self._lock:
            self._db.executemany("DELETE FROM held_positions WHERE uid=? AND reading_id=?",
                                 [(uid, rid) for rid in reading_ids])

    def held(self, uid: str) -> list[tuple[int, str]]:
        """(position, reading id) of the device's records stored but not acked, lowest position first."""
        with self._lock:
            return [(int(p), r) for p, r in self._db.execute(
                "SELECT position, reading_id FROM held_positions WHERE uid=? ORDER BY position, reading_id",
                (uid,))]

    def forget_positions(self, keys: tuple[str, ...] = POSITION_KEYS) -> list[str]:
        """Forget every device's download cursor (durably); returns the uids whose cursor went. The acked
        positions and the held records stay: they say what the cloud holds, which a lost outbox does not
        change, so sequence-numbered devices are read again from there."""
        marks = ",".join("?" * len(keys))
        with self._lock:
            uids = [row[0] for row in self._db.execute(
                f"SELECT DISTINCT uid FROM device_state WHERE key IN ({marks}) ORDER BY uid", keys)]
            self._db.execute(f"DELETE FROM device_state WHERE key IN ({marks})", keys)
        return uids

    def close(self) -> None:
        with self._lock:
            self._db.close()
