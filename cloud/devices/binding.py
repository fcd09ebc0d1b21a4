"""Which gateway a device speaks through, and the one audited way to move it: :func:`rebind_device`.

``devices.bound_gateway_id`` is set by ingest on a device's first contact (the gateway that sent its
first reading) and then refuses that device's readings from any other gateway as a security event
(``cloud.ingest.writer``). A cuff that really moved (a new gateway in the home, a replaced one) is
moved here, by a person, with a reason: ``rpm-cloud rebind DEVICE GATEWAY --reason ...`` or the
admin API. Each call writes one ``audit_log`` row naming the patients the device is assigned to now,
with what changed in its ``detail`` (device, previous and new gateway, reason; migration 0510), so
their audit trail shows who moved their device where and why.
"""

from __future__ import annotations

import argparse
import re
import uuid
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from cloud.devices.operator import exit_code_of, os_user
from cloud.errors import CloudError
from cloud.settings import get_settings

_GATEWAY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")  # gateway.contract.Identifier
REASON_MAX = 500


class BindingError(CloudError):
    """A rebind that cannot be made (bad gateway id, no reason)."""


@dataclass(frozen=True, slots=True)
class RebindResult:
    device_uid: str
    previous_gateway_id: str | None
    gateway_id: str
    changed: bool
    """False when the device was already bound to ``gateway_id`` (still audited)."""
    gateway_known: bool
    """Whether ``gateway_id`` has ever connected (a new gateway may be bound to before it does)."""
    audit_id: int


def rebind_device(conn: psycopg.Connection, device_uid: str, gateway_id: str, actor: str, reason: str, *,
                  role: str = "admin", action: str = "rebind device", request_id: str | None = None) -> RebindResult:
    """Bind ``device_uid`` to ``gateway_id``, in a transaction (a savepoint inside the caller's).

    ``actor`` is who asked (a token's subject, ``os:<login>`` for an operator), ``reason`` why
    (required). The audit row gets ``role``, ``action`` (an API route passes its template) and
    ``request_id``. A device never seen yet gets its row here (ingest completes it). Readings from the
    previous gateway are refused from the commit on; readings already stored stay as they are.
    Raises :class:`BindingError` for a malformed gateway id or device uid, or an empty reason.
    """
    if not _GATEWAY_ID.match(gateway_id):
        raise BindingError(f"{gateway_id!r} is not a gateway id")
    reason = " ".join(reason.split())
    if not reason:
        raise BindingError("a rebind needs a reason")
    if not device_uid or len(device_uid) > 128 or "\x00" in device_uid:
        raise BindingError(f"{device_uid!r} is not a device uid")
    with conn.transaction():
        prefix = device_uid.split(":", 1)[0]
        conn.execute("INSERT INTO devices (uid, transport, profile) VALUES (%s, %s, 'unknown')"
                     " ON CONFLICT (uid) DO NOTHING", (device_uid, prefix if prefix in ("ble", "usb") else "unknown"))
        # The row lock orders this against ingest binding the same device on first contact.
        row = conn.execute("SELECT bound_gateway_id FROM devices WHERE uid = %s FOR UPDATE", (device_uid,)).fetchone()
        previous = row[0] if row else None
        conn.execute("UPDATE devices SET bound_gateway_id = %s, bound_at = now(), bound_by = %s WHERE uid = %s",
                     (gateway_id, actor, device_uid))
        known = conn.execute("SELECT 1 FROM gateways WHERE id = %s", (gateway_id,)).fetchone() is not None
        patients = [r[0] for r in conn.execute(
            "SELECT DISTINCT patient_id FROM device_assignments WHERE device_uid = %s"
            " AND valid_from <= now() AND (valid_to IS NULL OR valid_to > now()) ORDER BY 1", (device_uid,))]
        detail = {"device_uid": device_uid, "from_gateway_id": previous, "to_gateway_id": gateway_id,
                  "reason": reason[:REASON_MAX]}
        audit = conn.execute(
            "INSERT INTO audit_log (subject, role, care_teams, action, patient_ids, outcome, status, request_id,"
            " detail) VALUES (%s, %s, '{}', %s, %s, 'allowed', NULL, %s, %s) RETURNING id",
            (actor, role, action, patients, request_id or f"cli-{uuid.uuid4().hex}", Jsonb(detail))).fetchone()
    assert audit is not None
    return RebindResult(device_uid, previous, gateway_id, previous != gateway_id, known, audit[0])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device_uid", help="e.g. ble:a4:c1:38:00:00:01")
    parser.add_argument("gateway_id", help="the gateway the device speaks through from now on")
    parser.add_argument("--reason", required=True, help="why (kept in the audit log)")
    parser.add_argument("--actor", default=None, help="who asks (default: os:<login>)")
    parser.add_argument("--database-url", default=None, help="default: RPM_DATABASE_URL")


def main(args: argparse.Namespace) -> int:
    url = args.database_url or get_settings().database_url
    actor = args.actor or f"os:{os_user()}"
    results: list[RebindResult] = []

    def rebind() -> int:
        with psycopg.connect(url) as conn:
            results.append(rebind_device(conn, args.device_uid, args.gateway_id, actor, args.reason,
                                         role="operator", action="rpm-cloud rebind"))
        return 0

    if exit_code_of(rebind, BindingError):
        return 2
    (result,) = results
    if not result.changed:
        print(f"{result.device_uid} was already bound to {result.gateway_id} (audited: #{result.audit_id})")
    else:
        print(f"{result.device_uid}: bound to {result.gateway_id} (was {result.previous_gateway_id or 'unbound'});"
              f" audit #{result.audit_id}")
    if not result.gateway_known:
        print(f"warning: gateway {result.gateway_id} has never connected")
    return 0
