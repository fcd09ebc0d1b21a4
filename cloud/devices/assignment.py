"""``rpm-cloud assign``: which patient a device (and user index) belongs to, from when; the unassigned queue.

Readings from a device nobody is assigned to are stored with ``patient_id NULL`` and listed by
``rpm-cloud assign --list``. Assigning a device from a time closes the assignment in force for the
same device and user index at that time, and backfills ``patient_id`` of the readings (and their
observations) already stored for that device/user from that time on, while they are unassigned.
Unassigning closes the assignment at a time; readings stored after it queue again.

``user_index`` None means every user of the device; a user-specific assignment wins over it.

In the same transaction the patient's twin records a ``device_assigned`` event and the claimed
readings, rebuilt in contract form (``cloud.db.readings``), go through the in-transaction effects
(``cloud.effects``: twin, then alerts) in measured order, exactly as if ingest had just stored them
for this patient. A claimed reading measured longer ago than ``late_after_s`` is passed as late (it
reaches the patient's record now): the twin keeps a newer latest value and its alert is marked late,
never paged as if it were now. The alert messages the effects return go to the delivery outbox
(``alert_deliveries``, channel mqtt) in the same transaction, for the scheduler's sender to publish.
Re-running an assignment that is already in force changes nothing.

Who may make a change is the caller's policy, not this module's: ``assign_device`` and
``unassign_device`` take an ``authorise`` callback and call it under the device's lock, before
anything changes, with the patients whose data the change redirects (:class:`AssignmentChange`). A
callback that raises leaves everything as it was. The API passes its care-team/consent/role check;
``rpm-cloud assign`` (an operator on the server) passes none and writes an audit row naming the
same patients.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from pydantic import BaseModel, ConfigDict, ValidationError

from cloud.alerts import queries as alert_queries
from cloud.alerts.delivery import Notification
from cloud.db.readings import StoredReading, load_stored_readings
from cloud.devices.operator import exit_code_of, os_user
from cloud.effects import apply_new_readings
from cloud.errors import CloudError
from cloud.settings import get_settings
from cloud.twin import service as twin
from gateway.contract import Alert

log = logging.getLogger(__name__)


class AssignmentError(CloudError):
    """An assignment that cannot be made (unknown patient, nothing to unassign, bad time)."""


@dataclass(frozen=True, slots=True)
class AssignmentChange:
    """What an assignment or unassignment would change, handed to ``authorise`` before it does.

    ``displaced``: every other patient whose assignment of this device the change closes, truncates
    or overrides from ``at`` on, so that their readings from then on would go elsewhere (or queue).
    Assigning one user index of a device displaces the patient the whole device (user index None) is
    assigned to, since a user-specific assignment wins over it in ingest. ``patient_id`` is the
    patient the device goes to (None for an unassignment).
    """

    device_uid: str
    user_index: int | None
    patient_id: str | None
    displaced: frozenset[str]
    at: datetime

    @property
    def patients(self) -> list[str]:
        """Every patient the change touches, the new one first (what its audit row names)."""
        ordered = [self.patient_id] if self.patient_id else []
        return ordered + sorted(self.displaced - {self.patient_id})

    def audit_detail(self) -> dict[str, Any]:
        return {"device_uid": self.device_uid, "user_index": self.user_index, "patient_id": self.patient_id,
                "displaced": sorted(self.displaced), "at": self.at.isoformat()}


Authorise = Callable[[AssignmentChange], None]
"""Raises to refuse a change; called under the device's lock, inside the change's transaction."""


@dataclass(frozen=True, slots=True)
class AssignmentResult:
    assignment_id: int
    readings_backfilled: int
    observations_backfilled: int
    closed: int
    """Earlier open assignments of the same device/user closed at ``valid_from``."""
    created: bool = True
    """False when the same assignment was already in force (a re-run): nothing changed."""
    alerts_queued: int = 0
    """Alert messages the effects produced for the claimed readings, queued for MQTT delivery."""
    unpublished: tuple[Notification, ...] = ()
    """Notifications of the effects that are not alert messages (none today): the caller publishes them."""
    unreadable: tuple[str, ...] = ()
    """Claimed reading ids whose rows no longer make a valid reading: assigned, but the effects did not see them."""
    change: AssignmentChange | None = None
    """What was authorised: the device, the new patient and the displaced ones."""


_LOCK_DEVICE = "SELECT pg_advisory_xact_lock(hashtext('rpm.assign:' || %s))"


def _transport_of(uid: str) -> str:
    prefix = uid.split(":", 1)[0]
    return prefix if prefix in ("ble", "usb") else "unknown"


# The assignments the new one [valid_from, valid_to) overlaps for the same user index (the one in force
# at valid_from, which it closes) or, for one user of the device, the whole-device ones it overrides.
_DISPLACED = """
SELECT DISTINCT patient_id FROM device_assignments
 WHERE device_uid = %(uid)s AND patient_id IS DISTINCT FROM %(patient)s
   AND (user_index IS NOT DISTINCT FROM %(user)s OR (%(user)s::smallint IS NOT NULL AND user_index IS NULL))
   AND (valid_to IS NULL OR valid_to > %(from)s)
   AND (%(to)s::timestamptz IS NULL OR valid_from < %(to)s)
"""


def assign_device(conn: psycopg.Connection, device_uid: str, patient_id: str, *, user_index: int | None = None,
                  valid_from: datetime | None = None, create_patient: bool = False,
                  display_name: str | None = None, created_by: str | None = None,
                  late_after: timedelta | None = None, authorise: Authorise | None = None) -> AssignmentResult:
    """Assign in one transaction on ``conn`` (a savepoint inside the caller's); returns what was backfilled.

    ``late_after``: a claimed reading measured longer ago than this is late (default: the settings'
    ``late_after_s``, as in ingest). ``authorise`` is called with the change under the device's lock
    before anything is written; if it raises, nothing is.
    """
    valid_from = valid_from or datetime.now(UTC)
    late_after = late_after if late_after is not None else timedelta(seconds=get_settings().late_after_s)
    with conn.transaction():
        # Two assigners of one device serialise here, so "close the open one" sees the other's row, and
        # what is authorised is what is changed.
        conn.execute(_LOCK_DEVICE, (device_uid,))
        later = conn.execute(
            "SELECT min(valid_from) FROM device_assignments WHERE device_uid = %s"
            " AND user_index IS NOT DISTINCT FROM %s AND valid_from > %s",
            (device_uid, user_index, valid_from)).fetchone()
        valid_to = later[0] if later else None
        displaced = conn.execute(_DISPLACED, {"uid": device_uid, "patient": patient_id, "user": user_index,
                                              "from": valid_from, "to": valid_to}).fetchall()
        change = AssignmentChange(device_uid, user_index, patient_id, frozenset(r[0] for r in displaced), valid_from)
        if authorise is not None:
            authorise(change)
        if create_patient:
            conn.execute("INSERT INTO patients (id, display_name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING",
                         (patient_id, display_name))
        elif conn.execute("SELECT 1 FROM patients WHERE id = %s", (patient_id,)).fetchone() is None:
            raise AssignmentError(f"no patient {patient_id!r} (use --create-patient)")
        # A device assigned before it ever sent anything: its row is created here, ingest completes it.
        conn.execute("INSERT INTO devices (uid, transport, profile) VALUES (%s, %s, 'unknown')"
                     " ON CONFLICT (uid) DO NOTHING", (device_uid, _transport_of(device_uid)))
        # An assignment "since ever" starts at -infinity (the column's default), which Python cannot hold.
        current = conn.execute(
            "SELECT id, patient_id, nullif(valid_from, '-infinity'), valid_to FROM device_assignments"
            " WHERE device_uid = %s"
            " AND user_index IS NOT DISTINCT FROM %s AND valid_from <= %s AND (valid_to IS NULL OR valid_to > %s)"
            " ORDER BY valid_from DESC LIMIT 1",
            (device_uid, user_index, valid_from, valid_from)).fetchone()
        closed = 0
        if current is not None and current[1] == patient_id and current[3] == valid_to:
            # Already covered from valid_from up to the next assignment: a re-run changes nothing.
            assignment_id, created = current[0], False
        else:
            if current is not None and current[2] == valid_from:
                raise AssignmentError(
                    f"{device_uid} (user {user_index}) already has an assignment from {valid_from.isoformat()}"
                    f" (to {current[1]!r}); unassign it or choose another time")
            closed = conn.execute(
                "UPDATE device_assignments SET valid_to = %s"
                " WHERE device_uid = %s AND user_index IS NOT DISTINCT FROM %s"
                "   AND valid_from < %s AND (valid_to IS NULL OR valid_to > %s)",
                (valid_from, device_uid, user_index, valid_from, valid_from)).rowcount
            row = conn.execute(
                "INSERT INTO device_assignments (device_uid, user_index, patient_id, valid_from, valid_to, created_by)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (device_uid, user_index, patient_id, valid_from, valid_to, created_by)).fetchone()
            assert row is not None
            assignment_id, created = row[0], True
            # Before the readings' events: the twin knows the device when its readings arrive.
            twin.record_device_assigned(conn, patient_id, device_uid, user_index=user_index, valid_from=valid_from,
                                        by=created_by)
        backfilled = conn.execute(
            "UPDATE readings SET patient_id = %s"
            " WHERE device_uid = %s AND patient_id IS NULL AND measured_at >= %s"
            "   AND (%s::timestamptz IS NULL OR measured_at < %s)"
            "   AND (%s::smallint IS NULL OR user_index = %s)"
            " RETURNING id, measured_at",
            (patient_id, device_uid, valid_from, valid_to, valid_to, user_index, user_index)).fetchall()
        ids = [r[0] for r in backfilled]
        observations = 0
        queued, unpublished, unreadable = 0, (), ()
        if ids:
            # Their values are unassigned too (ingest stores a reading's patient on its values). Saying so,
            # and the time range, lets TimescaleDB touch only the chunks of that range and, in a compressed
            # chunk, only the unassigned segment's batches (segmentby patient_id, orderby measured_at):
            # by reading id alone it decompressed every chunk, past its tuple limit on a large database.
            times = [r[1] for r in backfilled]
            observations = conn.execute(
                "UPDATE observations SET patient_id = %s WHERE reading_id = ANY(%s) AND patient_id IS NULL"
                " AND measured_at >= %s AND measured_at <= %s",
                (patient_id, ids, min(times), max(times))).rowcount
            queued, unpublished, unreadable = _apply_effects_to_claimed(conn, ids, late_after)
    return AssignmentResult(assignment_id, len(ids), observations, closed, created, queued, unpublished, unreadable,
                            change)


def _apply_effects_to_claimed(conn: psycopg.Connection, reading_ids: list[str], late_after: timedelta
                              ) -> tuple[int, tuple[Notification, ...], tuple[str, ...]]:
    """The effects on the claimed readings, as ingest applies them to new ones; their alert messages queued."""
    loaded = load_stored_readings(conn, reading_ids)
    for err in loaded.unreadable:
        log.warning("assignment: %s; assigned, but not seen by the twin or the alerts", err)
    now = datetime.now(UTC)
    stored = [_late_now(item, now, late_after) for item in loaded.readings]
    notifications = apply_new_readings(conn, stored, now)
    outbox: list[tuple[Any, ...]] = []
    unpublished: list[Notification] = []
    for note in notifications:
        try:
            alert = Alert.model_validate_json(note.payload)
        except ValidationError:
            unpublished.append(note)
            continue
        # No MQTT client here (a CLI, an API request): the scheduler's sender publishes from the outbox.
        outbox.append(("mqtt", None, note.topic, int(alert.alert_id), alert.status, note.payload, now))
    alert_queries.insert_deliveries(conn, outbox)
    return len(outbox), tuple(unpublished), tuple(err.reading_id for err in loaded.unreadable)


def _late_now(item: StoredReading, now: datetime, late_after: timedelta) -> StoredReading:
    # It reaches the patient's record now: judged by its age now, as ingest judges a reading on arrival.
    if item.late or now - item.reading.measured_at <= late_after:
        return item
    return replace(item, late=True)


_CLOSING = ("SELECT DISTINCT patient_id FROM device_assignments WHERE device_uid = %s"
            " AND user_index IS NOT DISTINCT FROM %s AND valid_from < %s AND (valid_to IS NULL OR valid_to > %s)")


def unassign_device(conn: psycopg.Connection, device_uid: str, *, user_index: int | None = None,
                    at: datetime | None = None, authorise: Authorise | None = None) -> int:
    """Close the open assignment(s) of this device/user at ``at``; returns how many were closed.

    ``authorise`` gets the change (its ``displaced``: the patients whose assignments close; empty when
    there is none, so the caller can answer as for a missing one) before anything is written.
    """
    at = at or datetime.now(UTC)
    with conn.transaction():
        conn.execute(_LOCK_DEVICE, (device_uid,))
        if authorise is not None:
            closing = conn.execute(_CLOSING, (device_uid, user_index, at, at)).fetchall()
            authorise(AssignmentChange(device_uid, user_index, None, frozenset(r[0] for r in closing), at))
        closed = conn.execute(
            "UPDATE device_assignments SET valid_to = %s WHERE device_uid = %s"
            " AND user_index IS NOT DISTINCT FROM %s AND valid_from < %s AND (valid_to IS NULL OR valid_to > %s)",
            (at, device_uid, user_index, at, at)).rowcount
    if closed == 0:
        raise AssignmentError(f"{device_uid} (user {user_index}) has no assignment open at {at.isoformat()}")
    return closed


def audit_operator_change(conn: psycopg.Connection, action: str, change: AssignmentChange) -> None:
    """The audit row of a change made on the server (``rpm-cloud assign``), in the caller's transaction:
    the operator is the OS user, the patients are every one the change touched, as the API records them."""
    conn.execute(
        "INSERT INTO audit_log (subject, role, care_teams, action, patient_ids, outcome, status, request_id, detail)"
        " VALUES (%s, 'operator', '{}', %s, %s, 'allowed', NULL, %s, %s)",
        (f"os:{os_user()}", action, change.patients, f"cli-{uuid.uuid4().hex}",
         json.dumps(change.audit_detail())))


def list_unassigned(conn: psycopg.Connection) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT device_uid, user_index, profile, model, gateway_id, readings, first_measured_at, last_measured_at"
        " FROM unassigned_devices ORDER BY last_stored_at DESC")
    names = [c.name for c in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device_uid", nargs="?", help="e.g. ble:a4:c1:38:00:00:01")
    parser.add_argument("patient_id", nargs="?", help="the patient to assign the device to")
    parser.add_argument("--user-index", type=int, default=None, help="user of a multi-user cuff or scale")
    parser.add_argument("--from", dest="valid_from", type=datetime.fromisoformat, default=None,
                        help="ISO time the assignment starts (default now; readings from then on are backfilled)")
    parser.add_argument("--create-patient", action="store_true", help="create the patient if it does not exist")
    parser.add_argument("--name", default=None, help="display name of a created patient")
    parser.add_argument("--unassign", action="store_true", help="close the device's assignment (at --from or now)")
    parser.add_argument("--list", action="store_true", help="list devices with unassigned readings")
    parser.add_argument("--batch", metavar="FILE", default=None,
                        help="assignments as JSON lines ('-': standard input), each with device_uid, patient_id"
                             " and optionally user_index, valid_from, create_patient, name; all or none are made")
    parser.add_argument("--database-url", default=None, help="default: RPM_DATABASE_URL")


class BatchLine(BaseModel):
    """One line of ``rpm-cloud assign --batch``: the same fields as the command's arguments."""

    model_config = ConfigDict(extra="forbid")

    device_uid: str
    patient_id: str
    user_index: int | None = None
    valid_from: datetime | None = None
    create_patient: bool = False
    name: str | None = None


def read_batch(lines: Iterable[str]) -> list[BatchLine]:
    """The batch's assignments, every line checked before anything is changed (blank lines skipped)."""
    batch: list[BatchLine] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            batch.append(BatchLine.model_validate_json(line))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "line"
            raise AssignmentError(f"line {number}: {where}: {first['msg']}") from None
    return batch


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _assign_as_operator(conn: psycopg.Connection, line: BatchLine) -> list[str]:
    """One operator assignment, made and audited; returns what to tell the operator."""
    result = assign_device(conn, line.device_uid, line.patient_id, user_index=line.user_index,
                           valid_from=_aware(line.valid_from), create_patient=line.create_patient,
                           display_name=line.name, created_by="rpm-cloud assign")
    if result.change is not None:
        audit_operator_change(conn, "rpm-cloud assign", result.change)
    if not result.created:
        return [f"{line.device_uid} (user {line.user_index}) is already assigned to {line.patient_id} from then;"
                f" backfilled {result.readings_backfilled} reading(s)"]
    return [f"assigned {line.device_uid} (user {line.user_index}) to {line.patient_id}; backfilled "
            f"{result.readings_backfilled} reading(s), {result.observations_backfilled} observation(s); "
            f"{result.alerts_queued} alert message(s) queued"] + [
        f"warning: reading {reading_id} was assigned but its stored row is not a valid reading;"
        " the twin and the alerts did not see it" for reading_id in result.unreadable]


def _read_batch_file(name: str) -> list[BatchLine]:
    if name == "-":
        return read_batch(sys.stdin)
    try:
        with open(name, encoding="utf-8") as stream:
            return read_batch(stream)
    except OSError as err:
        raise AssignmentError(f"cannot read {name}: {err.strerror}") from None


def main(args: argparse.Namespace) -> int:
    return exit_code_of(lambda: _run(args), AssignmentError)


def _run(args: argparse.Namespace) -> int:
    url = args.database_url or get_settings().database_url
    if args.batch is not None and (args.device_uid or args.unassign or args.list):
        print("error: --batch takes its assignments from FILE only")
        return 2
    batch = _read_batch_file(args.batch) if args.batch is not None else None
    with psycopg.connect(url) as conn:
        if batch is not None:
            # One transaction (each assignment a savepoint in it): one that fails leaves all unmade.
            said: list[str] = []
            with conn.transaction():
                for number, line in enumerate(batch, 1):
                    try:
                        said += _assign_as_operator(conn, line)
                    except AssignmentError as err:
                        raise AssignmentError(f"assignment {number} ({line.device_uid}): {err}") from None
            print("\n".join([*said, f"{len(batch)} assignment(s) made"]))
            return 0
        if args.list:
            for row in list_unassigned(conn):
                print(f"{row['device_uid']}\tuser={row['user_index']}\t{row['profile']}\t{row['readings']} "
                      f"reading(s)\t{row['first_measured_at']:%Y-%m-%d %H:%M} .. "
                      f"{row['last_measured_at']:%Y-%m-%d %H:%M}\tvia {row['gateway_id']}")
            return 0
        if not args.device_uid or (not args.unassign and not args.patient_id):
            print("error: give DEVICE_UID PATIENT_ID, or DEVICE_UID --unassign, or --list, or --batch FILE")
            return 2
        if args.unassign:
            changes: list[AssignmentChange] = []
            closed = unassign_device(conn, args.device_uid, user_index=args.user_index,
                                     at=_aware(args.valid_from), authorise=changes.append)
            audit_operator_change(conn, "rpm-cloud assign --unassign", changes[0])
            print(f"closed {closed} assignment(s) of {args.device_uid}")
            return 0
        print("\n".join(_assign_as_operator(conn, BatchLine(
            device_uid=args.device_uid, patient_id=args.patient_id, user_index=args.user_index,
            valid_from=args.valid_from, create_patient=args.create_patient, name=args.name))))
        return 0
