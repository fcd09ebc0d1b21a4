"""Connection pools (psycopg_pool) for the cloud services.

Every connection is checked before it is handed out, so a database restart costs one failed check
per stale connection instead of one failed transaction; callers still retry on
``psycopg.OperationalError`` because a server can go away mid-transaction.
"""

from __future__ import annotations

import psycopg
from psycopg_pool import ConnectionPool


def _configure(conn: psycopg.Connection) -> None:
    # Readings carry UTC instants; keep the session in UTC so naive device_time round-trips unchanged.
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()


def open_pool(database_url: str, *, min_size: int = 1, max_size: int = 4, name: str = "rpm",
              timeout_s: float = 5.0) -> ConnectionPool:
    """An open pool; it does not wait for the database (ingest must start while the database is down)."""
    pool = ConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        timeout=timeout_s,
        configure=_configure,
        check=ConnectionPool.check_connection,
        reconnect_timeout=24 * 3600,
        open=False,
    )
    pool.open(wait=False)
    return pool
