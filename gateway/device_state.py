"""Small durable per-device state that drivers keep between sessions (last sequence number read,
last record index, learnt channel ids). SQLite in WAL mode, committed before the call returns.

Some of it is a *resume position* in a device's memory (:data:`POSITION_KEYS`): where the next
session starts reading. When the outbox loses readings it had (a damaged file moved aside), those
positions are forgotten so memory devices are read from the start again; reading ids are
deterministic and the cloud de-duplicates, so nothing is stored twice. Learnt pairings (an ANT+
strap's channel id) are not positions and stay.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

# The keys drivers keep their resume positions under (a test ties them to the drivers' constants):
# the glucose meter's last RACP sequence number and the TaiDoc meter's record anchor.
POSITION_KEYS = ("glucose_last_sequence", "taidoc.anchor")


class DeviceStateStore:
    def __init__(self, path: str | Path) -> None:
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

    def delete(self, uid: str, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM device_state WHERE uid=? AND key=?", (uid, key))

    def forget_positions(self, keys: tuple[str, ...] = POSITION_KEYS) -> list[str]:
        """Forget every device's resume position (durably); returns the uids whose position went."""
        marks = ",".join("?" * len(keys))
        with self._lock:
            uids = [row[0] for row in self._db.execute(
                f"SELECT DISTINCT uid FROM device_state WHERE key IN ({marks}) ORDER BY uid", keys)]
            self._db.execute(f"DELETE FROM device_state WHERE key IN ({marks})", keys)
        return uids

    def close(self) -> None:
        with self._lock:
            self._db.close()
