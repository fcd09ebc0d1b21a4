"""``rpm-cloud assign``: which patient a device (and user index) belongs to, from when; the unassigned queue.

Readings from a device nobody is assigned to are stored with ``patient_id NULL`` and listed by
``rpm-cloud assign --list``. Assigning a device from a time closes the assignment in force for the
same device and user index at that time, and backfills ``patient_id`` of the readings (and their
observations) already stored for that device/user from that time on, while they are unassigned.
Unassigning closes the assignment at a time; readings stored after it queue again.

``user_index`` None means every user of the device; a user-specific assignment wins over it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from cloud.settings import get_settings


class AssignmentError(Exception):
    """An assignment that cannot be made (unknown patient, nothing to unassign, bad time)."""


@dataclass(frozen=True, slots=True)
class AssignmentResult:
    assignment_id: int
    readings_backfilled: int
    observations_backfilled: int
    closed: int
    """Earlier open assignments of the same device/user closed at ``valid_from``."""


_LOCK_DEVICE = "SELECT pg_advisory_xact_lock(hashtext('rpm.assign:' || %s))"


def _transport_of(uid: str) -> str:
    prefix = uid.split(":", 1)[0]
    return prefix if prefix in ("ble", "usb") else "unknown"


def assign_device(conn: psycopg.Connection, device_uid: str, patient_id: str, *, user_index: int | None = None,
                  valid_from: datetime | None = None, create_patient: bool = False,
                  display_name: str | None = None, created_by: str | None = None) -> AssignmentResult:
    """Assign in one transaction on ``conn``; returns what was backfilled."""
    valid_from = valid_from or datetime.now(UTC)
    with conn.transaction():
        # Two assigners of one device serialise here, so "close the open one" sees the other's row.
        conn.execute(_LOCK_DEVICE, (device_uid,))
        if create_patient:
            conn.execute("INSERT INTO patients (id, display_name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING",
                         (patient_id, display_name))
        elif conn.execute("SELECT 1 FROM patients WHERE id = %s", (patient_id,)).fetchone() is None:
            raise AssignmentError(f"no patient {patient_id!r} (use --create-patient)")
        # A device assigned before it ever sent anything: its row is created here, ingest completes it.
        conn.execute("INSERT INTO devices (uid, transport, profile) VALUES (%s, %s, 'unknown')"
                     " ON CONFLICT (uid) DO NOTHING", (device_uid, _transport_of(device_uid)))
        closed = conn.execute(
            "UPDATE device_assignments SET valid_to = %s"
            " WHERE device_uid = %s AND user_index IS NOT DISTINCT FROM %s"
            "   AND valid_from < %s AND (valid_to IS NULL OR valid_to > %s)",
            (valid_from, device_uid, user_index, valid_from, valid_from)).rowcount
        later = conn.execute(
            "SELECT min(valid_from) FROM device_assignments WHERE device_uid = %s"
            " AND user_index IS NOT DISTINCT FROM %s AND valid_from >= %s",
            (device_uid, user_index, valid_from)).fetchone()
        valid_to = later[0] if later else None
        row = conn.execute(
            "INSERT INTO device_assignments (device_uid, user_index, patient_id, valid_from, valid_to, created_by)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (device_uid, user_index, patient_id, valid_from, valid_to, created_by)).fetchone()
        assert row is not None
        backfilled = conn.execute(
            "UPDATE readings SET patient_id = %s"
            " WHERE device_uid = %s AND patient_id IS NULL AND measured_at >= %s"
            "   AND (%s::timestamptz IS NULL OR measured_at < %s)"
            "   AND (%s::smallint IS NULL OR user_index = %s)"
            " RETURNING id",
            (patient_id, device_uid, valid_from, valid_to, valid_to, user_index, user_index)).fetchall()
        ids = [r[0] for r in backfilled]
        observations = 0
        if ids:
            observations = conn.execute("UPDATE observations SET patient_id = %s WHERE reading_id = ANY(%s)",
                                        (patient_id, ids)).rowcount
    return AssignmentResult(row[0], len(ids), observations, closed)


def unassign_device(conn: psycopg.Connection, device_uid: str, *, user_index: int | None = None,
                    at: datetime | None = None) -> int:
    """Close the open assignment(s) of this device/user at ``at``; returns how many were closed."""
    at = at or datetime.now(UTC)
    with conn.transaction():
        conn.execute(_LOCK_DEVICE, (device_uid,))
        closed = conn.execute(
            "UPDATE device_assignments SET valid_to = %s WHERE device_uid = %s"
            " AND user_index IS NOT DISTINCT FROM %s AND valid_from < %s AND (valid_to IS NULL OR valid_to > %s)",
            (at, device_uid, user_index, at, at)).rowcount
    if closed == 0:
        raise AssignmentError(f"{device_uid} (user {user_index}) has no assignment open at {at.isoformat()}")
    return closed


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
    parser.add_argument("--database-url", default=None, help="default: RPM_DATABASE_URL")


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def main(args: argparse.Namespace) -> int:
    url = args.database_url or get_settings().database_url
    try:
        with psycopg.connect(url) as conn:
            if args.list:
                for row in list_unassigned(conn):
                    print(f"{row['device_uid']}\tuser={row['user_index']}\t{row['profile']}\t{row['readings']} "
                          f"reading(s)\t{row['first_measured_at']:%Y-%m-%d %H:%M} .. "
                          f"{row['last_measured_at']:%Y-%m-%d %H:%M}\tvia {row['gateway_id']}")
                return 0
            if not args.device_uid or (not args.unassign and not args.patient_id):
                print("error: give DEVICE_UID PATIENT_ID, or DEVICE_UID --unassign, or --list")
                return 2
            if args.unassign:
                closed = unassign_device(conn, args.device_uid, user_index=args.user_index,
                                         at=_aware(args.valid_from))
                print(f"closed {closed} assignment(s) of {args.device_uid}")
                return 0
            result = assign_device(conn, args.device_uid, args.patient_id, user_index=args.user_index,
                                   valid_from=_aware(args.valid_from), create_patient=args.create_patient,
                                   display_name=args.name, created_by="rpm-cloud assign")
            print(f"assigned {args.device_uid} (user {args.user_index}) to {args.patient_id}; backfilled "
                  f"{result.readings_backfilled} reading(s), {result.observations_backfilled} observation(s)")
            return 0
    except AssignmentError as err:
        print(f"error: {err}")
        return 2
    except psycopg.OperationalError as err:
        print(f"error: cannot reach the database: {str(err).strip().splitlines()[0]}")
        return 2
