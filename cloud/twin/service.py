"""The digital twin's Python API (used by ingest's effects, the alerts, and the clinician API).

Every change is an event appended to ``twin_events`` and folded into ``twins.state`` in the caller's
transaction; the twin row is locked first (``FOR UPDATE``, in patient order), which also serialises
alert evaluation per patient across ingest workers.

Functions take a psycopg connection and run inside ``conn.transaction()``: on an autocommit
connection that is its own transaction; inside the caller's transaction it is a savepoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cloud.db.alert_rules import effective_rules
from cloud.errors import CloudError
from cloud.twin import queries
from cloud.twin.state import adherence, apply_events, empty_state, replay

TwinEvent = tuple[str, Mapping[str, Any]]


class TwinError(CloudError):
    """Base of the twin's errors."""


class PatientNotFound(TwinError):
    pass


def _json_ready(data: Mapping[str, Any]) -> dict[str, Any]:
    # What the fold sees must be exactly what a replay will read back from jsonb.
    return json.loads(json.dumps(data, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def lock(conn: Any, patient_ids: Sequence[str]) -> dict[str, tuple[int, dict]]:
    """Lock (creating where missing) the twin rows of these patients until the transaction ends."""
    return queries.lock_twins(conn, patient_ids)


def append_events(conn: Any, events_by_patient: Mapping[str, Sequence[TwinEvent]],
                  at: datetime | None = None, *,
                  locked: Mapping[str, tuple[int, dict]] | None = None) -> dict[str, int]:
    """Append events per patient and fold them into each twin; return the new versions.

    ``locked``: what :func:`lock` returned earlier in this transaction (saves locking and reading again).
    """
    at = at or datetime.now(UTC)
    wanted = {p: e for p, e in events_by_patient.items() if e}
    if not wanted:
        return {}
    versions: dict[str, int] = {}
    rows: list[tuple[str, int, str, dict]] = []
    twins: list[tuple[str, int, dict]] = []
    with conn.transaction():
        if locked is None or not set(wanted) <= set(locked):
            locked = queries.lock_twins(conn, list(wanted))
        for patient_id in sorted(wanted):
            version, state = locked[patient_id]
            ready = [(event_type, _json_ready(data)) for event_type, data in wanted[patient_id]]
            # The state was just read from the database: fold into it directly.
            new_state = apply_events(state or empty_state(patient_id), ready, in_place=True)
            rows.extend((patient_id, version + 1 + i, t, d) for i, (t, d) in enumerate(ready))
            versions[patient_id] = version + len(ready)
            twins.append((patient_id, versions[patient_id], new_state))
        queries.append(conn, rows, twins, at)
    return versions


def get_twin(conn: Any, patient_id: str, now: datetime | None = None) -> dict[str, Any]:
    """The twin as the API shows it: stored state, version, adherence as of ``now``, thresholds in force.

    ``thresholds_in_force`` is every enabled rule with this patient's overrides applied; ``state``
    holds only what events changed (``state.thresholds``: overrides the care team set).
    """
    now = now or datetime.now(UTC)
    if not queries.patient_exists(conn, patient_id):
        raise PatientNotFound(patient_id)
    row = queries.twin_row(conn, patient_id)
    state = row["state"] if row and row["state"] else empty_state(patient_id)
    return {
        "patient_id": patient_id,
        "version": row["version"] if row else 0,
        "updated_at": row["updated_at"] if row else None,
        "state": state,
        "adherence": adherence(state, now.astimezone(UTC).date()),
        "thresholds_in_force": [rule.as_dict() for rule in effective_rules(conn, patient_id) if rule.enabled],
    }


def twin_events(conn: Any, patient_id: str, since_version: int = 0, limit: int | None = 1000) -> list[dict]:
    """The append-only history: ``[{version, at, event_type, data}]`` after ``since_version``."""
    return queries.events(conn, patient_id, since_version, limit)


def replay_twin(conn: Any, patient_id: str) -> dict[str, Any]:
    """Rebuild the state from the whole event history (equals the stored state: tested)."""
    history = queries.events(conn, patient_id, 0, None)
    return replay(patient_id, [(e["event_type"], e["data"]) for e in history])


def record_device_assigned(conn: Any, patient_id: str, device_uid: str, *, user_index: int | None = None,
                           valid_from: datetime | None = None, by: str | None = None) -> int:
    """Note in the twin that a device (user index) was assigned to the patient; returns the new version.

    Call it in the transaction that inserts the ``device_assignments`` row.
    """
    data = {"device_uid": device_uid, "user_index": user_index,
            "valid_from": valid_from.isoformat() if valid_from else None, "by": by}
    return append_events(conn, {patient_id: [("device_assigned", data)]})[patient_id]


def record_threshold_changed(conn: Any, patient_id: str, rule_id: str, rule: Mapping[str, Any],
                             by: str | None) -> int:
    return append_events(conn, {patient_id: [("threshold_changed", {"rule_id": rule_id, "rule": rule,
                                                                     "by": by})]})[patient_id]
