"""Stored readings back in contract form: ``readings`` + ``observations`` (+ ``devices``) rows → ``Reading``.

Ingest hands its in-transaction effects (``cloud.effects``) the contract ``Reading`` it just stored, as
a :class:`StoredReading`. Work that reaches readings later (an assignment claiming queued readings)
rebuilds the same objects from the rows here, so the effects see what ingest would have shown them:
values in canonical units with their originals, flags, device time, clock judgement, sequence and raw
frame. The device's model, serial and manufacturer come from its ``devices`` row (the newest the
device reported), which is what the gateway sent unless the device changed them since.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from pydantic import ValidationError

from cloud.errors import CloudError
from gateway.contract import Reading, Transport

_READINGS = """
SELECT r.id, r.patient_id, r.gateway_id, r.late, r.device_uid, r.user_index, r.kind, r.measured_at,
       r.received_at, r.device_time, r.clock_judgement, r.clock_offset_s, r.sequence, r.flags, r.raw,
       d.transport, d.profile, d.model, d.serial, d.manufacturer
  FROM readings r
  LEFT JOIN devices d ON d.uid = r.device_uid
 WHERE r.id = ANY(%s)
 ORDER BY r.measured_at, r.id
"""

_OBSERVATIONS = """
SELECT reading_id, metric, value, value_list, unit, original_value, original_unit
  FROM observations
 WHERE reading_id = ANY(%s)
 ORDER BY reading_id, metric
"""

_TRANSPORTS = {t.value for t in Transport}


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading as stored: the contract ``Reading``, the patient it was filed under, its gateway."""

    reading: Reading
    patient_id: str | None
    gateway_id: str
    late: bool
    """Measured long before it arrived (a meter's memory downloaded days later)."""


class StoredReadingError(CloudError, ValueError):
    """A stored row that no longer makes a valid contract ``Reading`` (e.g. edited by hand)."""

    def __init__(self, reading_id: str, reason: str) -> None:
        super().__init__(f"reading {reading_id}: {reason}")
        self.reading_id = reading_id
        self.reason = reason


@dataclass(slots=True)
class LoadedReadings:
    readings: list[StoredReading] = field(default_factory=list)
    """In measured order (ties by id)."""
    unreadable: list[StoredReadingError] = field(default_factory=list)


def _transport(row: dict[str, Any]) -> str:
    # A device row created by an assignment before the device ever sent anything says 'unknown' until
    # ingest completes it; the uid's prefix names the transport then.
    if row["transport"] in _TRANSPORTS:
        return str(row["transport"])
    return row["device_uid"].split(":", 1)[0]


def _value(obs: dict[str, Any]) -> dict[str, Any]:
    is_list = obs["value_list"] is not None
    value: dict[str, Any] = {"value": list(obs["value_list"]) if is_list else obs["value"], "unit": obs["unit"]}
    if obs["original_value"] is not None:
        value["original_value"] = obs["original_value"]
    if obs["original_unit"] is not None:
        value["original_unit"] = obs["original_unit"]
    return value


def reading_from_rows(row: dict[str, Any], observations: Sequence[dict[str, Any]]) -> StoredReading:
    """One ``readings`` row (joined with its ``devices`` columns) and its ``observations`` rows as a
    :class:`StoredReading`; raises :class:`StoredReadingError` when they do not make a valid reading."""
    device = {"uid": row["device_uid"], "transport": _transport(row), "profile": row["profile"] or "unknown",
              "model": row["model"], "serial": row["serial"], "manufacturer": row["manufacturer"]}
    try:
        reading = Reading.model_validate({
            "id": row["id"], "device": device, "user_index": row["user_index"], "kind": row["kind"],
            "measured_at": row["measured_at"], "received_at": row["received_at"], "device_time": row["device_time"],
            "clock": {"judgement": row["clock_judgement"], "offset_s": row["clock_offset_s"]},
            "sequence": row["sequence"], "values": {o["metric"]: _value(o) for o in observations},
            "flags": list(row["flags"] or ()), "raw": row["raw"] or "",
        })
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "reading"
        raise StoredReadingError(row["id"], f"{where}: {first['msg']}") from err
    return StoredReading(reading, row["patient_id"], row["gateway_id"], bool(row["late"]))


def load_stored_readings(conn: psycopg.Connection, reading_ids: Sequence[str]) -> LoadedReadings:
    """The readings with these ids as the in-transaction effects see them, in measured order; rows that no
    longer make a valid reading are listed in ``unreadable`` rather than stopping the others."""
    loaded = LoadedReadings()
    if not reading_ids:
        return loaded
    ids = list(reading_ids)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_READINGS, (ids,)).fetchall()
        by_reading: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for obs in cur.execute(_OBSERVATIONS, (ids,)):
            by_reading[obs["reading_id"]].append(obs)
    for row in rows:
        try:
            loaded.readings.append(reading_from_rows(row, by_reading.get(row["id"], ())))
        except StoredReadingError as err:
            loaded.unreadable.append(err)
    return loaded
