"""A damaged outbox: found at start, moved aside (never deleted), and what can be read salvaged.

Damage a power cut or a failing SD card leaves: a truncated file, garbage pages in the middle, a
corrupt header, a ``-wal`` that belongs to another database. :func:`integrity_problem` opens the file
read-only and runs ``PRAGMA quick_check`` (seconds for a large outbox; it reads every page once);
sqlite3's own ``.recover`` is not in Python's module, so :func:`salvage_rows` reads each table by
rowid ranges and, where a range raises ``DatabaseError``, halves it down to single rows, so one
unreadable page costs only the rows on it.

What salvage cannot bring back the devices give again: the gateway resets the device positions (see
:mod:`gateway.drivers.device_state`) so memory devices are read from the start; reading ids are deterministic
and the cloud de-duplicates, so a record read twice is stored once.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

SIDE_FILES = ("-wal", "-shm")
_RANGE = 512
# Rowids are dense in the outbox (AUTOINCREMENT) but a damaged b-tree can hide its maximum: probe this
# many ranges without a readable row past the highest rowid known before concluding the table ends.
_EMPTY_RANGES_BEFORE_END = 16


@dataclass(frozen=True, slots=True)
class SalvageReport:
    """What happened to a damaged outbox (shown in the log and the status)."""

    problem: str
    moved_to: Path
    salvaged: int
    """Readings carried over into the fresh outbox."""
    unreadable: int
    """Rows (of any table) that could not be read."""
    at: datetime


@dataclass(frozen=True, slots=True)
class Damage:
    problem: str
    """What is wrong, in plain words."""
    foreign_wal: bool = False
    """The ``-wal`` belongs to another database: read the main file alone, it is sound."""


def integrity_problem(path: Path) -> Damage | None:
    """None if the outbox at ``path`` is sound (or absent or empty), else what is wrong."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        foreign = _foreign_wal(path)
        if foreign is not None:
            return Damage(foreign, foreign_wal=True)
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as err:
        return Damage(f"{err}")
    if tables and "readings" not in tables:
        return Damage(f"the file holds another database (tables {', '.join(sorted(tables))}), not an outbox")
    problems = [row[0] for row in rows if row[0] != "ok"]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return Damage(f"integrity check failed: {problems[0]}{more}")
    return None


def _foreign_wal(path: Path) -> str | None:
    """Does the ``-wal`` belong to another database? SQLite cannot tell and would apply its pages over
    ours. The readings' AUTOINCREMENT counter only grows, so a WAL whose view of the
    database is older (a smaller AUTOINCREMENT counter) or of another schema than the main file alone
    is not this file's."""
    def view(uri: str) -> tuple[int, int | None, bool] | None:
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
                pages = db.execute("PRAGMA page_count").fetchone()[0]
                names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                seq = None
                if "sqlite_sequence" in names:
                    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
                    seq = None if row is None else int(row[0])
                return int(pages), seq, "readings" in names
        except sqlite3.DatabaseError:
            return None

    alone = view(f"file:{path}?mode=ro&immutable=1")
    merged = view(f"file:{path}?mode=ro")
    if alone is None or merged is None or not alone[2]:
        return None  # nothing to compare with: the integrity check judges
    if not merged[2]:
        return "the -wal file belongs to another database (it hides the outbox's tables)"
    if alone[1] is not None and (merged[1] is None or merged[1] < alone[1]):
        return "the -wal file belongs to another database (it would roll the outbox back)"
    return None


def move_aside(path: Path, now: datetime | None = None) -> Path:
    """Rename the outbox and its side files to ``outbox.damaged-<UTC time>.sqlite`` (never delete)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.stem}.damaged-{stamp}{path.suffix}")
    counter = 1
    while target.exists():
        counter += 1
        target = path.with_name(f"{path.stem}.damaged-{stamp}-{counter}{path.suffix}")
    path.rename(target)
    for side in SIDE_FILES:
        source = path.with_name(path.name + side)
        if source.exists():
            source.rename(target.with_name(target.name + side))
    return target


def salvage_sources(path: Path, *, ignore_wal: bool = False) -> Iterator[sqlite3.Connection]:
    """Read-only views of the damaged file to salvage from, best first: the file as SQLite opens it
    (with its WAL unless ``ignore_wal``), then an in-memory image of the main file with a repaired
    header (magic, page size, rollback-journal mode) padded to whole pages, which reads a truncated
    file or one with a garbage header that SQLite refuses outright. Rows found in both are the same
    rows (the caller inserts with OR IGNORE)."""
    uri = f"file:{path}?mode=ro&immutable=1" if ignore_wal else f"file:{path}?mode=ro"
    for candidate in (uri, f"file:{path}?mode=ro&immutable=1"):
        try:
            db = sqlite3.connect(candidate, uri=True)
            db.execute("SELECT name FROM sqlite_master").fetchall()
        except sqlite3.DatabaseError:
            continue
        try:
            yield db
        finally:
            db.close()
        break
    image = _repaired_image(path)
    if image is not None:
        db = sqlite3.connect(":memory:")
        try:
            db.deserialize(image)
            yield db
        except sqlite3.DatabaseError as err:
            log.info("outbox salvage: the repaired image of %s does not open either (%s)", path.name, err)
        finally:
            db.close()


MAX_IMAGE_BYTES = 512 * 1024 * 1024
_MAGIC = b"SQLite format 3\x00"


def _repaired_image(path: Path) -> bytes | None:
    try:
        size = path.stat().st_size
        if size < 512 or size > MAX_IMAGE_BYTES:
            return None
        data = bytearray(path.read_bytes())
    except OSError:
        return None
    page_size = int.from_bytes(data[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if data[:16] != _MAGIC or page_size < 512 or page_size & (page_size - 1):
        # A header with garbage in it: rebuild it with the outbox's own settings (SQLite's default page
        # size, schema format 4, UTF-8); the pages after it are untouched.
        page_size = 4096
        header = bytearray(100)
        header[:16] = _MAGIC
        header[16:18] = page_size.to_bytes(2, "big")
        header[21], header[22], header[23] = 64, 32, 32
        header[44:48] = (4).to_bytes(4, "big")
        header[56:60] = (1).to_bytes(4, "big")
        data[:100] = header
    data[18] = data[19] = 1  # rollback-journal mode: an in-memory image cannot have a WAL
    pages = max(-(-len(data) // page_size), int.from_bytes(data[28:32], "big"))
    data[28:32] = pages.to_bytes(4, "big")
    data[92:96] = data[24:28]  # "version valid for" = change counter, so SQLite trusts the page count
    data.extend(bytes(pages * page_size - len(data)))
    return bytes(data)


def salvage_rows(db: sqlite3.Connection, table: str) -> tuple[list[str], list[tuple[object, ...]], int]:
    """(column names, readable rows with their rowid first, unreadable row count) of ``table`` in a
    damaged database. Never raises for damage: an unreadable table gives no rows."""
    try:
        columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
    except sqlite3.DatabaseError:
        return [], [], 0
    if not columns:
        return [], [], 0
    rows: list[tuple[object, ...]] = []
    unreadable = 0
    select = f"SELECT rowid, {', '.join(columns)} FROM {table} WHERE rowid >= ? AND rowid < ? ORDER BY rowid"
    start, top = _rowid_bounds(db, table)
    barren = 0
    # Past the highest rowid the file admits to, a range that fails is not rows lost: stop after a run
    # of ranges that give nothing readable.
    while start <= top or barren < _EMPTY_RANGES_BEFORE_END:
        got, lost = _read_range(db, select, start, start + _RANGE)
        rows.extend(got)
        if start <= top:
            unreadable += min(lost, top - start + 1)
        barren = 0 if got else barren + 1
        start += _RANGE
    return columns, rows, unreadable


def _rowid_bounds(db: sqlite3.Connection, table: str) -> tuple[int, int]:
    """(lowest, highest) rowid as far as the damaged file tells; acked rows leave the low end sparse."""
    def first(*queries: tuple[str, tuple[str, ...]]) -> int | None:
        for query, params in queries:
            try:
                row = db.execute(query, params).fetchone()
            except sqlite3.DatabaseError:
                continue
            if row is not None and row[0] is not None:
                return int(row[0])
        return None

    low = first((f"SELECT min(rowid) FROM {table}", ()))
    high = first((f"SELECT max(rowid) FROM {table}", ()), ("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)))
    return (low if low is not None else 1), (high if high is not None else 0)


def _read_range(db: sqlite3.Connection, select: str, low: int, high: int) -> tuple[list[tuple[object, ...]], int]:
    """Rows with ``low <= rowid < high``; a range that raises is halved down to single rows."""
    try:
        return db.execute(select, (low, high)).fetchall(), 0
    except sqlite3.DatabaseError:
        pass
    if high - low <= 1:
        return [], 1
    middle = (low + high) // 2
    first, first_lost = _read_range(db, select, low, middle)
    second, second_lost = _read_range(db, select, middle, high)
    return first + second, first_lost + second_lost


def table_names(db: sqlite3.Connection) -> list[str]:
    """Table names a damaged database's schema still shows."""
    try:
        names = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.DatabaseError:
        return []
    return [name for name in names if not name.startswith("sqlite_")]
