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


TRANSIENT_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300", "40001", "40P01")
"""Connection failures, a server shutting down or starting, too many connections, a serialisation failure
or deadlock: the same work can succeed later. Other ``OperationalError``s (TimescaleDB's decompression
limit, 53400; a full disk, 53100; out of memory, 53200) are the database refusing the work itself."""


def is_transient(err: psycopg.Error) -> bool:
    """Whether retrying ``err``'s work can succeed (no SQLSTATE: the connection itself failed)."""
    state = err.sqlstate
    return state is None or state.startswith(TRANSIENT_SQLSTATES)


def failure_line(err: psycopg.Error) -> str:
    """One line for a command's ``error:`` output: unreachable, or refused with its SQLSTATE and reason."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if is_transient(err):
        return f"cannot reach the database: {first}"
    return f"the database refused the work (SQLSTATE {err.sqlstate}): {first}"
