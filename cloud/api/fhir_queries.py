"""SQL for the FHIR surface's search and read routes (``cloud.api.routes.fhir``): readings with the columns
the PHD mapping needs, keyset pages over them, gateways, consents and a patient's audit rows.

Readings come in the shape :func:`cloud.twin.fhir.observations_from_row` takes, with ``gateway_id``,
``clock_judgement``, ``clock_offset_s``, ``received_at`` and ``entry_method`` (migration 0620) besides.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cloud.api.queries import _ACTIVE, _DIGEST, _dicts

_READING = """
SELECT r.id, r.patient_id, r.device_uid, r.gateway_id, r.kind, r.measured_at, r.received_at, r.device_time,
       r.clock_judgement, r.clock_offset_s, r.flags, r.body_site,
       r.entry_method,
       coalesce((SELECT json_object_agg(o.metric, json_build_object('value', o.value, 'unit', o.unit))
                   FROM observations o WHERE o.reading_id = r.id AND o.value IS NOT NULL), '{}') AS values
  FROM readings r
"""


def reading_page(conn: Any, patient_id: str, *, metrics: Sequence[str] | None, kinds: Sequence[str] | None,
                 device_uids: Sequence[str] | None, ranges: Sequence[tuple[str, datetime]], descending: bool,
                 start: tuple[datetime, str] | None, limit: int) -> list[dict[str, Any]]:
    """A patient's readings in (measured_at, id) order, descending or not, from ``start`` inclusive (the
    keyset position of a page: stable while readings arrive, unlike an offset)."""
    conditions = ["r.patient_id = %s"]
    params: list[Any] = [patient_id]
    if kinds is not None or metrics is not None:
        conditions.append("(r.kind = ANY(%s) OR EXISTS (SELECT 1 FROM observations o"
                          " WHERE o.reading_id = r.id AND o.metric = ANY(%s)))")
        params += [list(kinds or ()), list(metrics or ())]
    if device_uids is not None:
        conditions.append("r.device_uid = ANY(%s)")
        params.append(list(device_uids))
    for op, instant in ranges:
        assert op in ("<", "<=", ">", ">=")  # from the route's fixed mapping of FHIR prefixes
        conditions.append(f"r.measured_at {op} %s")
        params.append(instant)
    if start is not None:
        conditions.append(f"(r.measured_at, r.id) {'<=' if descending else '>='} (%s, %s)")
        params += list(start)
    order = "DESC" if descending else "ASC"
    params.append(limit)
    return _dicts(conn, f"{_READING} WHERE {' AND '.join(conditions)}"
                        f" ORDER BY r.measured_at {order}, r.id {order} LIMIT %s", params)


def reading(conn: Any, reading_id: str) -> dict[str, Any] | None:
    rows = _dicts(conn, f"{_READING} WHERE r.id = %s", (reading_id,))
    return rows[0] if rows else None


def devices_by_digest(conn: Any, digests: Sequence[str]) -> list[str]:
    """The uids of the devices with these Device-id digests (migration 0550's index)."""
    rows = conn.execute(f"SELECT uid FROM devices WHERE {_DIGEST.format('uid')} = ANY(%s)", (list(digests),))
    return [r[0] for r in rows.fetchall()]


def gateway_statuses(conn: Any, gateway_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    rows = conn.execute("SELECT id, status FROM gateways WHERE id = ANY(%s)", (list(gateway_ids),)).fetchall()
    return {gateway_id: status for gateway_id, status in rows}


def gateway_seen_by(conn: Any, digest: str, *, own_patient: str | None,
                    care_teams: Sequence[str]) -> dict[str, Any] | None:
    """The gateway with this digest and one patient the caller may see (own, or consented for readings) one
    of whose readings it relayed: the gateway an Observation's gatewayDevice extension names. ``gateways``
    holds every gateway that ever sent (ingest upserts it); the reading is found by readings_gateway_stored."""
    rows = _dicts(
        conn,
        f"""
        SELECT g.id AS gateway_id, g.status,
               (SELECT r.patient_id FROM readings r
                 WHERE r.gateway_id = g.id AND r.patient_id IS NOT NULL
                   AND (r.patient_id = %(own)s OR r.patient_id IN (
                        SELECT c.patient_id FROM consents c WHERE c.care_team_id = ANY(%(teams)s)
                           AND 'readings' = ANY(c.scopes) AND {_ACTIVE}))
                 LIMIT 1) AS patient_id
          FROM gateways g
         WHERE {_DIGEST.format('g.id')} = %(digest)s
         LIMIT 1
        """,
        {"own": own_patient, "teams": list(care_teams), "digest": digest},
    )
    return rows[0] if rows else None


_CONSENT = """
SELECT c.id, c.patient_id, c.care_team_id, t.name AS care_team_name, c.scopes, c.granted_at, c.granted_by,
       c.expires_at, c.revoked_at, c.revoked_by
  FROM consents c LEFT JOIN care_teams t ON t.id = c.care_team_id
"""


def consents(conn: Any, patient_id: str) -> list[dict[str, Any]]:
    return _dicts(conn, f"{_CONSENT} WHERE c.patient_id = %s ORDER BY c.granted_at DESC, c.id DESC", (patient_id,))


def consent(conn: Any, consent_row_id: int) -> dict[str, Any] | None:
    rows = _dicts(conn, f"{_CONSENT} WHERE c.id = %s", (consent_row_id,))
    return rows[0] if rows else None


_AUDIT = ("SELECT id, at, subject, role, care_teams, action, cardinality(patient_ids) AS patients_in_request,"
          " outcome, status, request_id FROM audit_log")


def audit_rows(conn: Any, patient_id: str, *, before_id: int | None, limit: int) -> list[dict[str, Any]]:
    """The patient's audit rows, newest first (``before_id`` the keyset of the next page). Other patients a
    row names are counted, never returned (as ``cloud.api.queries.audit_trail``)."""
    return _dicts(conn, f"{_AUDIT} WHERE patient_ids @> ARRAY[%(p)s::text]"
                        " AND (%(before)s::bigint IS NULL OR id < %(before)s) ORDER BY id DESC LIMIT %(limit)s",
                  {"p": patient_id, "before": before_id, "limit": limit})


def audit_row(conn: Any, row_id: int, patient_id: str) -> dict[str, Any] | None:
    rows = _dicts(conn, f"{_AUDIT} WHERE id = %s AND patient_ids @> ARRAY[%s::text]", (row_id, patient_id))
    return rows[0] if rows else None
