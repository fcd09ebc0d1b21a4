"""Test helpers: patients, devices and readings stored the way ingest stores them (readings and
observations rows), then the in-transaction effects (``cloud.effects``) run in the same transaction.

Until ``cloud.ingest`` exposes its writer, this is the stand-in for its insert; the pipeline test
(test_alert_pipeline.py) goes through the real ingest when it is importable.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cloud.alerts.delivery import Notification
from cloud.db.readings import StoredReading
from cloud.effects import apply_new_readings
from gateway.contract import Alert, Reading, compute_reading_id
from gateway.metrics import METRICS

# Random start: benchmark writer processes each have their own counter and must not collide.
_sequence = itertools.count(random.getrandbits(40))
PROFILE_OF = {"blood_pressure": "ble.blood_pressure", "glucose": "ble.glucose",
              "body_weight": "ble.weight_scale", "heart_rate": "ble.heart_rate",
              "pulse_oximetry": "ble.pulse_oximeter", "body_temperature": "ble.thermometer"}


def now() -> datetime:
    return datetime.now(UTC)


def midday(days_ago: int) -> datetime:
    """Noon UTC ``days_ago`` days back: readings a few hours either side stay on that UTC day whatever
    the hour the test runs (day counts such as adherence are per UTC day)."""
    return (now() - timedelta(days=days_ago)).replace(hour=12, minute=0, second=0, microsecond=0)


def add_patient(conn: Any, patient_id: str, *, kinds: Sequence[str] = ("blood_pressure",),
                assigned_at: datetime | None = None) -> dict[str, str]:
    """A patient with one assigned device per kind; returns {kind: device uid}."""
    conn.execute("INSERT INTO patients (id, display_name, sex, birth_date) VALUES (%s, %s, 'female', '1950-02-03')",
                 (patient_id, f"Patient {patient_id}"))
    devices = {}
    for kind in kinds:
        uid = f"ble:{patient_id}:{kind}"
        conn.execute("INSERT INTO devices (uid, transport, profile, battery) VALUES (%s, 'ble', %s, 80)",
                     (uid, PROFILE_OF[kind]))
        conn.execute("INSERT INTO device_assignments (device_uid, patient_id, created_at) VALUES (%s, %s, %s)",
                     (uid, patient_id, assigned_at or now()))
        devices[kind] = uid
    return devices


def make_reading(device_uid: str, kind: str, measured_at: datetime, values: dict[str, float],
                 flags: Sequence[str] = ()) -> Reading:
    sequence = next(_sequence)
    return Reading(
        id=compute_reading_id(device_uid, kind, None, sequence=sequence),
        device={"uid": device_uid, "transport": "ble", "profile": PROFILE_OF[kind]},
        kind=kind, measured_at=measured_at, received_at=now(), clock={"judgement": "device"},
        sequence=sequence, values={m: {"value": v, "unit": METRICS[m].unit} for m, v in values.items()},
        flags=list(flags),
    )


def bp(device_uid: str, at: datetime, systolic: float, diastolic: float, pulse: float = 70,
       flags: Sequence[str] = ()) -> Reading:
    return make_reading(device_uid, "blood_pressure", at,
                        {"systolic": systolic, "diastolic": diastolic, "pulse_rate": pulse}, flags)


def weight(device_uid: str, at: datetime, kg: float) -> Reading:
    return make_reading(device_uid, "body_weight", at, {"body_weight": kg})


def insert_readings(conn: Any, readings: Sequence[Reading], patient_id: str | None, *,
                    late: bool = False, gateway_id: str = "gw-test") -> list[StoredReading]:
    return insert_for_patients(conn, [(r, patient_id) for r in readings], late=late, gateway_id=gateway_id)


def insert_for_patients(conn: Any, pairs: Sequence[tuple[Reading, str | None]], *, late: bool = False,
                        gateway_id: str = "gw-test") -> list[StoredReading]:
    # COPY, as ingest does: one statement per table (statement triggers fire once, not per row).
    with conn.cursor() as cur:
        with cur.copy("COPY readings (id, patient_id, device_uid, gateway_id, batch_id, kind, measured_at,"
                      " received_at, clock_judgement, sequence, flags, late, body_site) FROM STDIN") as copy:
            for r, p in pairs:
                copy.write_row((r.id, p, r.device.uid, gateway_id, "b1", str(r.kind), r.measured_at, r.received_at,
                                "device", r.sequence, list(r.flags), late, r.body_site))
        with cur.copy("COPY observations (reading_id, patient_id, kind, metric, measured_at, value, unit, flags)"
                      " FROM STDIN") as copy:
            for r, p in pairs:
                for m, v in r.values.items():
                    copy.write_row((r.id, p, str(r.kind), m, r.measured_at, v.value, v.unit, list(r.flags)))
    return [StoredReading(r, p, gateway_id, late) for r, p in pairs]


def ingest(conn: Any, readings: Sequence[Reading], patient_id: str | None, *, late: bool = False) -> list[Notification]:
    """Store and apply the effects in one transaction, as ingest does; return the notifications."""
    with conn.transaction():
        stored = insert_readings(conn, readings, patient_id, late=late)
        return apply_new_readings(conn, stored, now())


def alerts_in(notifications: Sequence[Notification]) -> list[Alert]:
    return [Alert.model_validate_json(n.payload) for n in notifications]


def normal_week(device_uid: str, end: datetime, days: int = 7) -> list[Reading]:
    """Morning and evening readings of a well-controlled patient."""
    readings = []
    for day in range(days, 0, -1):
        for hours, sys_, dia in ((8, 118 + day % 3, 76), (20, 121 - day % 2, 78)):
            at = end - timedelta(days=day) + timedelta(hours=hours - 12)
            readings.append(bp(device_uid, at, sys_, dia))
    return readings
