"""Which BLE devices this gateway may connect to: a patient's gateway must never take the neighbour's scale.

Devices are enrolled during a pairing window (``rpm-gateway pair --seconds 120``: every health device
advertising in the window is enrolled) or by address in the config (``[[ble.enrolled]]``). The store
is SQLite, committed before a call returns, so an enrolment survives a restart or power loss.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.discovery.ble_config import EnrolledBleDevice, normalise_address

STORE_FILE = "enrolment.sqlite"


@dataclass(frozen=True, slots=True)
class EnrolledDevice:
    address: str
    profile: str | None
    name: str | None
    source: str
    """``pair`` (seen in a pairing window), ``config`` (listed in the config) or ``manual``."""
    enrolled_at: datetime | None = None


class EnrolmentStore:
    def __init__(self, path: str | Path, configured: Iterable[EnrolledBleDevice] = ()) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS ble_enrolment ("
            " address TEXT PRIMARY KEY, profile TEXT, name TEXT, source TEXT NOT NULL, enrolled_at TEXT NOT NULL)"
        )
        self._configured = {d.address: d for d in configured}

    @classmethod
    def for_config(cls, config: GatewayConfig) -> EnrolmentStore:
        return cls(Path(config.data_dir) / STORE_FILE, config.ble.enrolled)

    def enrol(
        self, address: str, *, profile: str | None = None, name: str | None = None, source: str = "manual"
    ) -> bool:
        """Enrol ``address``; False if it already was (its first enrolment is kept)."""
        address = normalise_address(address)
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO ble_enrolment (address, profile, name, source, enrolled_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (address) DO NOTHING",
                (address, profile, name, source, datetime.now(UTC).isoformat()),
            )
            return cursor.rowcount == 1

    def remove(self, address: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM ble_enrolment WHERE address = ?", (normalise_address(address),))
            return cursor.rowcount == 1

    def is_enrolled(self, address: str) -> bool:
        address = normalise_address(address)
        if address in self._configured:
            return True
        with self._lock:
            row = self._db.execute("SELECT 1 FROM ble_enrolment WHERE address = ?", (address,)).fetchone()
        return row is not None

    def profile_for(self, address: str) -> str | None:
        """The profile fixed at enrolment (config or pairing), if any."""
        address = normalise_address(address)
        configured = self._configured.get(address)
        if configured is not None and configured.profile:
            return configured.profile
        with self._lock:
            row = self._db.execute("SELECT profile FROM ble_enrolment WHERE address = ?", (address,)).fetchone()
        return row[0] if row else None

    def list(self) -> list[EnrolledDevice]:
        with self._lock:
            rows = self._db.execute(
                "SELECT address, profile, name, source, enrolled_at FROM ble_enrolment ORDER BY enrolled_at, address"
            ).fetchall()
        stored = [EnrolledDevice(a, p, n, s, datetime.fromisoformat(t)) for a, p, n, s, t in rows]
        seen = {d.address for d in stored}
        from_config = [
            EnrolledDevice(d.address, d.profile, d.name, "config")
            for d in self._configured.values()
            if d.address not in seen
        ]
        return from_config + stored

    def close(self) -> None:
        with self._lock:
            self._db.close()
