"""The gateway's own disk: is the data directory usable, how much room is left, and what a storage
error means in plain words.

SQLite reports a full disk as ``SQLITE_FULL`` ("database or disk is full"), a card gone read-only as
``SQLITE_READONLY`` or an I/O error, and Python's file calls raise ``OSError`` with ``ENOSPC``,
``EROFS`` or ``EACCES``. :func:`classify` turns each into one of three kinds the outbox acts on:
``full`` (room may come back: refuse new readings, keep acking), ``unwritable`` (the gateway cannot
do its job: say so, exit so systemd notices) and ``damaged`` (the file is corrupt: move it aside).

The **reserve** is a plain file of ``reserve_bytes`` next to the outbox. On a full disk SQLite
cannot even delete: a DELETE writes pages to the WAL, and a checkpoint grows the database file.
Deleting the reserve gives exactly that room back, so acks (which free space) still apply; the
reserve is made again once the disk has room for it.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import Literal

from gateway.errors import GatewayError

StorageKind = Literal["full", "unwritable", "damaged", "other"]

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_UNWRITABLE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
_SQLITE_UNWRITABLE = {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM,
                      sqlite3.SQLITE_AUTH}
_SQLITE_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


class StorageError(GatewayError):
    """The data directory or the outbox file cannot be used; the message names the path and the cause."""


def classify(err: BaseException) -> StorageKind:
    """What a storage exception means for the gateway."""
    if isinstance(err, sqlite3.Error):
        code = getattr(err, "sqlite_errorcode", None)
        if code is None:
            return "other"
        primary = code & 0xFF  # extended codes (SQLITE_IOERR_WRITE, SQLITE_READONLY_DBMOVED…) keep the primary low
        if primary == sqlite3.SQLITE_FULL:
            return "full"
        if primary in _SQLITE_DAMAGED:
            return "damaged"
        if primary in _SQLITE_UNWRITABLE:
            return "unwritable"
        return "other"
    if isinstance(err, OSError):
        if err.errno in _FULL_ERRNOS:
            return "full"
        if err.errno in _UNWRITABLE_ERRNOS:
            return "unwritable"
    return "other"


def describe(err: BaseException) -> str:
    """The error in plain words, without a traceback (``database or disk is full``, ``Read-only file
    system``), never a secondary error that hides it."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use in ``directory``'s filesystem."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def check_data_dir(directory: Path) -> None:
    """Raise :class:`StorageError` naming the path and the cause unless ``directory`` exists (or can be
    made), is a directory, and a file can really be written and removed there (a read-only mount
    passes ``os.access`` for root; only a write tells)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"data directory {directory} cannot be created: {describe(err)}") from None
    if not directory.is_dir():
        raise StorageError(f"data directory {directory} is not a directory")
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"rpm")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        if classify(err) != "full":  # a full disk is a state the gateway lives with, not a start failure
            raise StorageError(f"data directory {directory} is not writable: {describe(err)}") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def check_file(path: Path) -> None:
    """Raise :class:`StorageError` when ``path`` exists but cannot be read and written, or is not a file."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_file():
        raise StorageError(f"outbox {path} is not a regular file")
    try:
        with open(path, "r+b") as handle:
            handle.read(1)
    except OSError as err:
        raise StorageError(f"outbox {path} cannot be opened for reading and writing: {describe(err)}") from None


class Reserve:
    """A file of ``size`` bytes that holds room on the disk for acks and checkpoints (see module doc)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    @property
    def held(self) -> bool:
        try:
            return self.size == 0 or self.path.stat().st_size >= self.size
        except OSError:
            return False

    def ensure(self, headroom: int) -> bool:
        """Make the reserve if it is missing and the disk has its size plus ``headroom`` free; True if held."""
        if self.held:
            return True
        try:
            if free_bytes(self.path.parent) < self.size + headroom:
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, self.size)
                except OSError as err:
                    if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.pwrite(fd, b"\0" * self.size, 0)  # a filesystem without fallocate: write the bytes
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            self.release()
            return False
        return True

    def release(self) -> bool:
        """Give the reserve's room back to the disk; True if there was a reserve to release."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        except OSError:
            return False
        return True
