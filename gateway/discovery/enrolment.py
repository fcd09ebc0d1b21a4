"""Which devices this gateway may read: a patient's gateway must never take the neighbour's scale.

A health device the gateway hears (BLE, during a pairing window or while the gateway is unclaimed) or
finds plugged in (USB) becomes a **candidate**: stored with what it is (make, model, type, signal),
never connected. A person confirms or ignores each one: on the gateway's local page, with
``rpm-gateway pair``, or in the workspace (the cloud's ``devices.confirmed`` / ``devices.ignored`` in the
gateway's config document, applied by :meth:`EnrolmentStore.apply_decisions`). Only a confirmed
(enrolled) device is read. Unpair forgets a device here; the readings it gave stay in the record.
Devices listed in the TOML (``[[ble.enrolled]]``) are enrolled while listed.

A USB meter that tells its own serial number only in a session (ASTM, TaiDoc) and whose USB descriptor
has none is proposed under its port (``usb:<vid>:<pid>:<port>``). Its first session after confirmation
links the serial it reports to that uid (:meth:`EnrolmentStore.admit`), and from then on its readings
carry the confirmed uid on any port, so the cloud, which bound and assigned the confirmed uid, files
them for the patient; a second meter of the same model reports another serial and is a candidate of
its own.

The store is SQLite in the service's data dir, every change committed before a call returns (an
enrolment survives a restart or power loss); reads go to the file, so ``rpm-gateway pair`` in a
terminal and the running service see each other's decisions at once. Every decision is also written
to a history table (who — ``local``, ``pair``, ``config``, ``manual`` — and when).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.contract import MAX_CANDIDATES_IN_STATUS, Candidate
from gateway.discovery.ble_config import EnrolledBleDevice
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

STORE_FILE = "enrolment.sqlite"
MAX_CANDIDATES = 200
"""Candidates kept (the least recently heard go first): a busy radio street cannot fill the disk."""
HEARD_WRITE_INTERVAL_S = 60.0
"""A candidate heard again updates its row (signal, last heard) at most this often: advertisements
arrive several times a second and every commit is an fsync."""
MAX_HEARD_TRACKED = 1024
"""Above this many uids with a write throttle, the expired throttles are forgotten (bounded memory)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    uid TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('candidate', 'enrolled', 'ignored')),
    transport TEXT NOT NULL, profile TEXT, make TEXT, model TEXT, name TEXT, rssi INTEGER,
    user_index INTEGER, user_slots INTEGER, first_heard TEXT, last_heard TEXT,
    source TEXT, decided_at TEXT);
CREATE TABLE IF NOT EXISTS decisions (
    at TEXT NOT NULL, uid TEXT NOT NULL, decision TEXT NOT NULL, source TEXT NOT NULL, user_index INTEGER);
CREATE TABLE IF NOT EXISTS applied_config (id INTEGER PRIMARY KEY CHECK (id = 1), document TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    device_uid TEXT PRIMARY KEY, confirmed_uid TEXT NOT NULL, profile TEXT, serial TEXT, model TEXT,
    learned_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS identities_confirmed ON identities (confirmed_uid);
"""
# identities (issue 19): a USB meter is found by its port's USB facts (``usb:<vid>:<pid>:<port>`` when the
# descriptor has no serial number) but tells its own serial number only once a session talks to it. Each
# row says: the meter that reported ``device_uid`` (``usb:<vid>:<pid>:<its serial>``) is the device
# confirmed as ``confirmed_uid``, and its readings carry that uid, on whichever port it is plugged into.
# A row whose two uids are equal is a meter proposed (or confirmed) under its own serial.
_COLUMNS = ("uid, state, transport, profile, make, model, name, rssi, user_index, user_slots, first_heard, "
            "last_heard, source, decided_at")


class EnrolmentError(GatewayError):
    """A decision about a device that cannot be made (no such candidate)."""


class UnknownDeviceError(EnrolmentError, KeyError):
    """The uid is not a candidate (or enrolled device) of this gateway."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown device"


def normalise_uid(key: str) -> str:
    """A device key as the store keeps it: ``ble:<ADDRESS>`` (addresses compare upper-case), ``usb:…``
    as written; a bare BLE address (``aa:05:…``, as ``[[ble.enrolled]]`` and older callers give) gets
    its ``ble:`` prefix."""
    key = key.strip()
    transport, sep, rest = key.partition(":")
    if sep and transport.lower() in ("ble", "usb", "ant"):
        transport = transport.lower()
        return f"ble:{rest.upper()}" if transport == "ble" else f"{transport}:{rest}"
    return f"ble:{key.upper()}"


def _transport(uid: str) -> str:
    return uid.partition(":")[0]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class EnrolledDevice:
    uid: str
    profile: str | None
    name: str | None
    source: str
    """``pair`` (``rpm-gateway pair``), ``local`` (the local page), ``config`` (the TOML or the cloud's
    config document) or ``manual``."""
    enrolled_at: datetime | None = None
    make: str | None = None
    model: str | None = None
    user_index: int | None = None

    @property
    def address(self) -> str:
        """The BLE address (the uid without ``ble:``); other transports: the uid."""
        return self.uid[4:] if self.uid.startswith("ble:") else self.uid

    @property
    def transport(self) -> str:
        return _transport(self.uid)


@dataclass(frozen=True, slots=True)
class HeardDevice:
    """What discovery knows about a health device it heard or found, before anyone decided about it."""

    uid: str
    transport: str
    profile: str
    type: str | None = None
    make: str | None = None
    model: str | None = None
    name: str | None = None
    rssi: int | None = None
    user_index: int | None = None
    user_slots: int | None = None


@dataclass(frozen=True, slots=True)
class LearnedIdentity:
    """A meter's own identity and the uid it was confirmed under (see ``identities`` above)."""

    device_uid: str
    confirmed_uid: str
    profile: str | None
    serial: str | None
    model: str | None
    learned_at: datetime


@dataclass(frozen=True, slots=True)
class Admission:
    """What :meth:`EnrolmentStore.admit` decided about a device that reported who it is."""

    uid: str | None
    """The uid its readings carry; None: it is not read."""
    reason: str
    """``enrolled`` (confirmed under its own identity), ``linked`` (a meter confirmed earlier under another
    uid), ``learned`` (first session on the confirmed port: now linked), ``ignored``, ``candidate``."""


@dataclass
class DecisionChanges:
    """What applying a config document's device lists changed."""

    confirmed: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.confirmed or self.ignored or self.forgotten)


class EnrolmentStore:
    """Candidates, enrolled and ignored devices, keyed by uid (``ble:<address>``, ``usb:<vid>:<pid>:<serial>``).

    Methods taking a ``key`` accept a uid or a bare BLE address."""

    def __init__(self, path: str | Path, configured: Iterable[EnrolledBleDevice] = (), *,
                 on_change: Callable[[], Any] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._migrate_ble_enrolment()
        self._configured = {normalise_uid(d.address): d for d in configured}
        self.on_change = on_change
        """Called (no arguments) after anything a status would show changed: a new candidate, a decision."""
        self._clock = clock
        self._window_until = 0.0
        self.unclaimed: Callable[[], bool] = lambda: False
        """While it says True, every health device heard is collected as a candidate (no window needed):
        the runtime points it at its provisioning state (waiting to be claimed)."""
        self._heard_written: dict[str, float] = {}
        self._heard_pending: dict[str, tuple[int | None, datetime]] = {}

    @classmethod
    def for_config(cls, config: GatewayConfig, *, on_change: Callable[[], Any] | None = None) -> EnrolmentStore:
        """The store in the service's data dir (``config.data_dir``), never the current directory."""
        return cls(Path(config.data_dir) / STORE_FILE, config.ble.enrolled, on_change=on_change)

    def _migrate_ble_enrolment(self) -> None:
        # Stores written before candidates (issue 19) held BLE addresses only; they stay enrolled.
        with self._lock:
            legacy = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ble_enrolment'").fetchone()
            if legacy is None:
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO devices (uid, state, transport, profile, name, source, decided_at)"
                " SELECT 'ble:' || upper(address), 'enrolled', 'ble', profile, name, source, enrolled_at"
                " FROM ble_enrolment WHERE true ON CONFLICT (uid) DO NOTHING")
            self._db.execute("DROP TABLE ble_enrolment")
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------------------- decisions

    def enrol(self, key: str, *, profile: str | None = None, name: str | None = None, source: str = "manual",
              user_index: int | None = None, make: str | None = None, model: str | None = None) -> bool:
        """Enrol ``key`` (a candidate or not); False if it already was (its first enrolment is kept)."""
        uid = normalise_uid(key)
        now = _now().isoformat()
        with self._lock:
            row = self._db.execute("SELECT state FROM devices WHERE uid = ?", (uid,)).fetchone()
            if row is not None and row[0] == "enrolled":
                return False
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO devices (uid, state, transport, profile, make, model, name, user_index, source,"
                " decided_at) VALUES (?, 'enrolled', ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (uid) DO UPDATE SET state = 'enrolled', source = excluded.source,"
                " decided_at = excluded.decided_at, user_index = excluded.user_index,"
                " profile = coalesce(devices.profile, excluded.profile), name = coalesce(devices.name, excluded.name),"
                " make = coalesce(devices.make, excluded.make), model = coalesce(devices.model, excluded.model)",
                (uid, _transport(uid), profile, make, model, name, user_index, source, now))
            self._record(uid, "confirmed", source, user_index, now)
            self._db.execute("COMMIT")
        log.info("enrolled %s (%s%s) by %s", uid, profile or "profile from its advertisement",
                 "" if user_index is None else f", user {user_index}", source)
        self._changed()
        return True

    def confirm(self, key: str, *, source: str, user_index: int | None = None) -> EnrolledDevice:
        """Confirm a candidate (or an ignored device): from now on it is read. UnknownDeviceError if this
        gateway never heard it (a local decision is about a device on the list, never a typed address)."""
        uid = normalise_uid(key)
        with self._lock:
            row = self._db.execute("SELECT state, profile, name FROM devices WHERE uid = ?", (uid,)).fetchone()
        if row is None:
            raise UnknownDeviceError(f"{uid}: not a device this gateway has heard")
        if row[0] != "enrolled":
            self.enrol(uid, source=source, user_index=user_index)
        return self.enrolled(uid) or EnrolledDevice(uid, row[1], row[2], source)

    def ignore(self, key: str, *, source: str) -> bool:
        """Never read it, never propose it again (until someone confirms it). False if it already was ignored."""
        uid = normalise_uid(key)
        now = _now().isoformat()
        with self._lock:
            row = self._db.execute("SELECT state FROM devices WHERE uid = ?", (uid,)).fetchone()
            if row is not None and row[0] == "ignored":
                return False
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO devices (uid, state, transport, source, decided_at) VALUES (?, 'ignored', ?, ?, ?)"
                " ON CONFLICT (uid) DO UPDATE SET state = 'ignored', source = excluded.source,"
                " decided_at = excluded.decided_at, user_index = NULL",
                (uid, _transport(uid), source, now))
            self._record(uid, "ignored", source, None, now)
            self._db.execute("COMMIT")
        log.info("ignoring %s from now on (%s)", uid, source)
        self._changed()
        return True

    def remove(self, key: str, *, source: str = "manual") -> bool:
        """Unpair / forget: the device is not read any more and, heard again in a pairing window, is a
        candidate again. The readings it gave stay where they are (outbox, cloud). False if unknown."""
        uid = normalise_uid(key)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute("DELETE FROM devices WHERE uid = ?", (uid,))
            if cursor.rowcount:
                self._record(uid, "forgotten", source, None, _now().isoformat())
                # An unpaired device's meter, plugged in again, is proposed again (not read as before).
                self._db.execute("DELETE FROM identities WHERE confirmed_uid = ? OR device_uid = ?", (uid, uid))
            self._db.execute("COMMIT")
        self._heard_written.pop(uid, None)
        if cursor.rowcount:
            log.info("forgot %s (%s)", uid, source)
            self._changed()
        return cursor.rowcount == 1

    unpair = remove

    def apply_decisions(self, confirmed: Iterable[Any], ignored: Iterable[str], unpaired: Iterable[str] = (),
                        *, source: str = "config") -> DecisionChanges:
        """Apply a config document's ``devices`` lists (the TOML's or the cloud's) as *changes*: a uid the
        document confirms or ignores and the previous one did not is confirmed or ignored; one the
        previous document decided and this one no longer lists is forgotten if that decision still
        stands (the workspace's unpair); ``unpaired`` uids are forgotten whoever confirmed them. The same
        document applied again (every start) changes nothing, so a later local decision stands.

        ``confirmed`` items are uids or objects with ``uid`` and ``user_index`` (the config's entries)."""
        wanted_confirmed: dict[str, int | None] = {}
        for item in confirmed:
            uid = item if isinstance(item, str) else item.uid
            index = None if isinstance(item, str) else getattr(item, "user_index", None)
            wanted_confirmed[normalise_uid(uid)] = index
        wanted_ignored = {normalise_uid(uid) for uid in ignored} - wanted_confirmed.keys()
        forget = {normalise_uid(uid) for uid in unpaired}
        with self._lock:
            row = self._db.execute("SELECT document FROM applied_config WHERE id = 1").fetchone()
        previous = json.loads(row[0]) if row else {"confirmed": {}, "ignored": [], "unpaired": []}
        before_confirmed: dict[str, int | None] = previous["confirmed"]
        before_ignored, before_unpaired = set(previous["ignored"]), set(previous["unpaired"])
        changes = DecisionChanges()
        for uid, index in wanted_confirmed.items():
            if uid not in before_confirmed or before_confirmed[uid] != index:
                current = self.enrolled(uid)
                if current is None or current.user_index != index:
                    if current is not None:
                        self._set_user_index(uid, index, source)
                    else:
                        self.enrol(uid, source=source, user_index=index)
                    changes.confirmed.append(uid)
        for uid in sorted(wanted_ignored - before_ignored):
            if self.ignore(uid, source=source):
                changes.ignored.append(uid)
        dropped = (before_confirmed.keys() - wanted_confirmed.keys()) | (before_ignored - wanted_ignored)
        for uid in sorted(dropped - wanted_ignored - wanted_confirmed.keys()):
            if self._decided_by(uid) == source and self.remove(uid, source=source):
                changes.forgotten.append(uid)
        for uid in sorted(forget - before_unpaired):
            if self.remove(uid, source=source):
                changes.forgotten.append(uid)
        document = {"confirmed": wanted_confirmed, "ignored": sorted(wanted_ignored), "unpaired": sorted(forget)}
        with self._lock:
            self._db.execute("INSERT INTO applied_config (id, document) VALUES (1, ?)"
                             " ON CONFLICT (id) DO UPDATE SET document = excluded.document", (json.dumps(document),))
        return changes

    def _set_user_index(self, uid: str, index: int | None, source: str) -> None:
        now = _now().isoformat()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE devices SET user_index = ?, source = ?, decided_at = ? WHERE uid = ?",
                             (index, source, now, uid))
            self._record(uid, "confirmed", source, index, now)
            self._db.execute("COMMIT")
        self._changed()

    def _decided_by(self, uid: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT source FROM devices WHERE uid = ? AND state <> 'candidate'",
                                   (uid,)).fetchone()
        return row[0] if row else None

    def _record(self, uid: str, decision: str, source: str, user_index: int | None, at: str) -> None:
        self._db.execute("INSERT INTO decisions (at, uid, decision, source, user_index) VALUES (?, ?, ?, ?, ?)",
                         (at, uid, decision, source, user_index))

    def history(self, key: str | None = None) -> list[tuple[datetime, str, str, str]]:
        """Decisions, oldest first: (at, uid, ``confirmed``/``ignored``/``forgotten``, source); also
        ``identified`` (source ``session``) when a confirmed port's meter first told its serial number."""
        query = "SELECT at, uid, decision, source FROM decisions"
        args: tuple[str, ...] = ()
        if key is not None:
            query, args = query + " WHERE uid = ?", (normalise_uid(key),)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY rowid", args).fetchall()
        return [(datetime.fromisoformat(at), uid, decision, source) for at, uid, decision, source in rows]

    # ------------------------------------------------------------------------------- identities

    def _state(self, uid: str) -> str | None:
        if uid in self._configured:
            return "enrolled"
        row = self._db.execute("SELECT state FROM devices WHERE uid = ?", (uid,)).fetchone()
        return row[0] if row else None

    def admit(self, reported: str, *, via: str | None, profile: str, serial: str | None = None,
              model: str | None = None) -> Admission:
        """A device reported its own identity (``usb:<vid>:<pid>:<its serial>``) mid-session on a port whose
        uid is ``via``: under which uid are its readings filed, if at all? In this order: an ignored meter
        (or one linked to an ignored device) is never read; one confirmed under its own uid carries it;
        one linked earlier carries the uid it was confirmed under, whichever port it is on now; a meter on
        a confirmed port that has no meter linked yet is that port's device (linked now, durably, before
        any reading is taken); anything else is a candidate of its own (a second identical meter, or
        another meter on a confirmed port) and is not read until someone confirms it."""
        uid = normalise_uid(reported)
        port = normalise_uid(via) if via is not None else None
        now = _now().isoformat()
        with self._lock:
            own = self._state(uid)
            if own == "ignored":
                return Admission(None, "ignored")
            if own == "enrolled":
                self._db.execute(
                    "INSERT INTO identities (device_uid, confirmed_uid, profile, serial, model, learned_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_uid) DO UPDATE SET"
                    " confirmed_uid = excluded.confirmed_uid, serial = excluded.serial,"
                    " model = coalesce(excluded.model, identities.model)",
                    (uid, uid, profile, serial, model, now))
                return Admission(uid, "enrolled")
            link = self._db.execute("SELECT confirmed_uid FROM identities WHERE device_uid = ?", (uid,)).fetchone()
            if link is not None and link[0] != uid:
                linked = self._state(link[0])
                if linked == "enrolled":
                    return Admission(link[0], "linked")
                if linked == "ignored":
                    return Admission(None, "ignored")
            if port is not None and port != uid and self._state(port) == "enrolled":
                # Checked and linked in one write transaction: `rpm-gateway pair` shares the file.
                self._db.execute("BEGIN IMMEDIATE")
                taken = self._db.execute("SELECT 1 FROM identities WHERE confirmed_uid = ? AND device_uid <> ?",
                                         (port, port)).fetchone()
                if taken is None:
                    self._db.execute(
                        "INSERT INTO identities (device_uid, confirmed_uid, profile, serial, model, learned_at)"
                        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_uid) DO UPDATE SET"
                        " confirmed_uid = excluded.confirmed_uid, profile = excluded.profile,"
                        " serial = excluded.serial, model = excluded.model, learned_at = excluded.learned_at",
                        (uid, port, profile, serial, model, now))
                    # Proposed on its own earlier (found on another port): it is the confirmed one now.
                    self._db.execute("DELETE FROM devices WHERE uid = ? AND state = 'candidate'", (uid,))
                    self._record(port, "identified", "session", None, now)
                self._db.execute("COMMIT")
                if taken is None:
                    log.info("%s is the meter confirmed as %s; its readings carry %s on any port", uid, port, port)
                    self._changed()
                    return Admission(port, "learned")
            # Kept so a second meter of a kind, once confirmed under its own uid, is recognised on any port.
            self._db.execute(
                "INSERT INTO identities (device_uid, confirmed_uid, profile, serial, model, learned_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_uid) DO NOTHING",
                (uid, uid, profile, serial, model, now))
        return Admission(None, "candidate")

    def withdraw_candidate(self, key: str) -> bool:
        """Drop a candidate nobody decided about (a port proposed before its meter said who it is, now
        proposed under its own serial or known as a confirmed one): one device, one entry to decide."""
        uid = normalise_uid(key)
        with self._lock:
            cursor = self._db.execute("DELETE FROM devices WHERE uid = ? AND state = 'candidate'", (uid,))
        self._heard_written.pop(uid, None)
        self._heard_pending.pop(uid, None)
        if cursor.rowcount:
            self._changed()
        return cursor.rowcount == 1

    def admits(self, key: str) -> bool:
        """Would a device reporting (or confirmed as) ``key`` be read: enrolled, or linked to an enrolled uid?"""
        uid = normalise_uid(key)
        with self._lock:
            state = self._state(uid)
            if state is not None and state != "candidate":
                return state == "enrolled"
            link = self._db.execute("SELECT confirmed_uid FROM identities WHERE device_uid = ?", (uid,)).fetchone()
            return link is not None and self._state(link[0]) == "enrolled"

    def knows_meters_like(self, port_uid: str, profile: str) -> bool:
        """Is a confirmed device of this kind (same ``usb:<vid>:<pid>:`` and profile) known by its own serial?
        Then a port of that kind not confirmed itself may be the same meter plugged in elsewhere: the USB
        manager opens it to let the meter say who it is (nothing is read unless :meth:`admit` says so)."""
        prefix = ":".join(normalise_uid(port_uid).split(":")[:3]) + ":"
        with self._lock:
            rows = self._db.execute(
                "SELECT confirmed_uid FROM identities WHERE substr(device_uid, 1, ?) = ? AND profile = ?",
                (len(prefix), prefix, profile)).fetchall()
            return any(self._state(confirmed) == "enrolled" for (confirmed,) in rows)

    def identities(self, confirmed: str | None = None) -> list[LearnedIdentity]:
        """Meters known by their own serial, with the uid each one's readings carry (oldest first)."""
        query = "SELECT device_uid, confirmed_uid, profile, serial, model, learned_at FROM identities"
        args: tuple[str, ...] = ()
        if confirmed is not None:
            query, args = query + " WHERE confirmed_uid = ?", (normalise_uid(confirmed),)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY learned_at, device_uid", args).fetchall()
        return [LearnedIdentity(d, c, p, s, m, datetime.fromisoformat(t)) for d, c, p, s, m, t in rows]

    # ------------------------------------------------------------------------------- candidates

    def open_window(self, seconds: float) -> None:
        """Collect the BLE health devices heard in the next ``seconds`` as candidates."""
        self._window_until = max(self._window_until, self._clock() + seconds)
        log.info("pairing window open for %.0f s", seconds)
        self._changed()

    def close_window(self) -> None:
        self._window_until = 0.0

    def window_remaining_s(self) -> float:
        return max(0.0, self._window_until - self._clock())

    def collecting(self) -> bool:
        """Is a BLE health device heard now a candidate? (A USB device plugged in always is.)"""
        return self._clock() < self._window_until or self.unclaimed()

    def heard(self, device: HeardDevice) -> bool:
        """Discovery heard (or found plugged in) a health device that is not enrolled. Stored as a
        candidate unless it is ignored; True when it is new (logged once, status changed)."""
        uid = normalise_uid(device.uid)
        at = _now()
        last_write = self._heard_written.get(uid)
        if last_write is not None and self._clock() - last_write < HEARD_WRITE_INTERVAL_S:
            self._heard_pending[uid] = (device.rssi, at)
            return False
        with self._lock:
            row = self._db.execute("SELECT state FROM devices WHERE uid = ?", (uid,)).fetchone()
            if row is not None and row[0] != "candidate":
                return False
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                f"INSERT INTO devices ({_COLUMNS}) VALUES (?, 'candidate', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)"
                " ON CONFLICT (uid) DO UPDATE SET rssi = excluded.rssi, last_heard = excluded.last_heard,"
                " name = coalesce(excluded.name, devices.name), make = coalesce(excluded.make, devices.make),"
                " model = coalesce(excluded.model, devices.model),"
                " user_slots = coalesce(excluded.user_slots, devices.user_slots)",
                (uid, device.transport, device.profile, device.make, device.model, device.name, device.rssi,
                 device.user_index, device.user_slots, at.isoformat(), at.isoformat()))
            self._db.execute(
                "DELETE FROM devices WHERE state = 'candidate' AND uid NOT IN"
                " (SELECT uid FROM devices WHERE state = 'candidate' ORDER BY last_heard DESC LIMIT ?)",
                (MAX_CANDIDATES,))
            self._db.execute("COMMIT")
        self._heard_written[uid] = self._clock()
        self._heard_pending.pop(uid, None)
        if len(self._heard_written) > MAX_HEARD_TRACKED:  # rotating addresses: forget throttles that ran out
            horizon = self._clock() - HEARD_WRITE_INTERVAL_S
            self._heard_written = {key: when for key, when in self._heard_written.items() if when >= horizon}
            self._heard_pending = {key: value for key, value in self._heard_pending.items()
                                   if key in self._heard_written}
        if row is None:
            log.info("candidate %s (%s, %s, %s dBm): waiting to be confirmed", uid, device.profile,
                     device.name or device.model or "no name", device.rssi)
            self._changed()
            return True
        return False

    def candidates(self) -> list[Candidate]:
        """Waiting candidates in the order they were first heard (numbers a person picks from stay put;
        at most what a status carries: the most recently heard)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT uid, transport, profile, make, model, name, rssi, user_index, user_slots, first_heard,"
                " last_heard FROM devices WHERE state = 'candidate' ORDER BY last_heard DESC, uid LIMIT ?",
                (MAX_CANDIDATES_IN_STATUS,)).fetchall()
        found = []
        for uid, transport, profile, make, model, name, rssi, user_index, user_slots, first, last in rows:
            pending = self._heard_pending.get(uid)
            if pending is not None:
                rssi, last = pending[0], pending[1].isoformat()
            try:
                found.append(Candidate(uid=uid, transport=transport, profile=profile or "unknown",
                                       type=device_type(profile), make=make, model=model, name=name, rssi=rssi,
                                       user_index=user_index, user_slots=user_slots,
                                       first_heard=datetime.fromisoformat(first),
                                       last_heard=datetime.fromisoformat(last)))
            except ValueError as err:  # a row a status cannot carry (an out-of-range signal): skip it, say so
                log.warning("candidate %s not shown: %s", uid, err)
        return sorted(found, key=lambda c: (c.first_heard, c.uid))

    def candidate(self, key: str) -> Candidate | None:
        uid = normalise_uid(key)
        return next((c for c in self.candidates() if c.uid == uid), None)

    def is_ignored(self, key: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM devices WHERE uid = ? AND state = 'ignored'",
                                   (normalise_uid(key),)).fetchone()
        return row is not None

    # ------------------------------------------------------------------------------- enrolled

    def is_enrolled(self, key: str) -> bool:
        uid = normalise_uid(key)
        if uid in self._configured:
            return True
        with self._lock:
            row = self._db.execute("SELECT 1 FROM devices WHERE uid = ? AND state = 'enrolled'", (uid,)).fetchone()
        return row is not None

    def profile_for(self, key: str) -> str | None:
        """The profile fixed at enrolment (config or candidate), if any."""
        uid = normalise_uid(key)
        configured = self._configured.get(uid)
        if configured is not None and configured.profile:
            return configured.profile
        with self._lock:
            row = self._db.execute("SELECT profile FROM devices WHERE uid = ? AND state = 'enrolled'",
                                   (uid,)).fetchone()
        return row[0] if row else None

    def enrolled(self, key: str) -> EnrolledDevice | None:
        uid = normalise_uid(key)
        return next((d for d in self.list() if d.uid == uid), None)

    def list(self) -> list[EnrolledDevice]:
        """Enrolled devices: those the config lists first, then the store's in enrolment order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT uid, profile, name, source, decided_at, make, model, user_index FROM devices"
                " WHERE state = 'enrolled' ORDER BY decided_at, uid").fetchall()
        stored = [EnrolledDevice(u, p, n, s, datetime.fromisoformat(t) if t else None, mk, md, ui)
                  for u, p, n, s, t, mk, md, ui in rows]
        seen = {d.uid for d in stored}
        from_config = [EnrolledDevice(uid, d.profile, d.name, "config")
                       for uid, d in self._configured.items() if uid not in seen]
        return from_config + stored

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # a status consumer's bug never undoes a decision already committed
                log.exception("enrolment change callback failed")

    def close(self) -> None:
        with self._lock:
            self._db.close()


# What a candidate is, in the words a patient uses. Keyed by the profile table's names; a test keeps it
# covering every profile (gateway.profiles), so a new profile without words fails there, not on a page.
DEVICE_TYPES: dict[str, str] = {
    "ble.blood_pressure": "Blood pressure monitor",
    "ble.glucose": "Glucose meter",
    "ble.weight_scale": "Weighing scale",
    "ble.heart_rate": "Heart rate monitor",
    "ble.pulse_oximeter": "Pulse oximeter",
    "ble.thermometer": "Thermometer",
    "serial.astm": "Glucose meter",
    "serial.taidoc": "Blood pressure and glucose meter",
    "serial.ad_scale": "Weighing scale",
    "serial.ant_hrm": "Heart rate monitor (ANT+ stick)",
}


def device_type(profile: str | None) -> str | None:
    if profile is None:
        return None
    return DEVICE_TYPES.get(profile) or profile.partition(".")[2].replace("_", " ").capitalize() or None
