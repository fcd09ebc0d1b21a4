"""Small durable per-device state that drivers keep between sessions (last sequence number read,
last record index, learnt channel ids). SQLite in WAL mode, committed before the call returns."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


class DeviceStateStore:
    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
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

    def close(self) -> None:
        with self._lock:
            self._db.close()
