"""Test helpers for the browser test: the real API served by uvicorn on a free port, and a world to look at.

The server runs in a thread of the test process on a socket bound here (port 0), so there is no race for a
port and no subprocess to leak; the page reaches it over real HTTP like any browser.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from types import TracebackType

import psycopg
import uvicorn
from fastapi import FastAPI

from gateway.contract import Reading
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, make_reading, now, weight
from tests.waiting import wait_until


class LiveServer:
    """``with LiveServer(app) as server: server.url``: uvicorn serving ``app`` on 127.0.0.1 until exit."""

    def __init__(self, app: FastAPI) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="ui-live-server", daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        wait_until(lambda: self._server.started or not self._thread.is_alive(), 15, "uvicorn to start")
        if not self._server.started:
            raise RuntimeError("uvicorn did not start (see the log above)")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


@dataclass
class Ward:
    """One care team's patients, seeded so their triage order is known: ``expected_order``."""

    team: str
    patients: dict[str, str]
    expected_order: list[str]
    readings: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per patient, how many readings of each kind were stored (what the charts must show)."""
    reading_days: dict[str, int] = field(default_factory=dict)
    """Per patient, on how many UTC days it has readings (adherence: which depends on the hour the test runs)."""
    hostile_name: str = 'Steady <img src=x onerror="window.pwned=1">'
    """The ``steady`` patient's display name: markup the page must show as text."""


def _grant(conn: psycopg.Connection, patient_id: str, team: str) -> None:
    conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                 (patient_id, team, ["readings", "alerts", "twin"], patient_id))


def _glucose(device_uid: str, at: object, mg_dl: float) -> Reading:
    return make_reading(device_uid, "glucose", at, {"glucose": mg_dl})  # type: ignore[arg-type]


def seed_ward(conn: psycopg.Connection, prefix: str) -> Ward:
    """Four patients of one team and a stranger of another team.

    - ``crisis``: a week of BP, glucose and weight, then 190/125 mmHg now: an open critical alert;
    - ``hyper``: a week of glucose ending at 300 mg/dL: an open warning alert;
    - ``sparse``: readings on 2 days, no alert; ``steady``: readings on 20 days, no alert;
    - ``stranger``: consent to another team only, so never on this team's panel.
    """
    team, other = f"{prefix}-team", f"{prefix}-other"
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Heart failure clinic'), (%s, 'Elsewhere')",
                 (team, other))
    names = ("crisis", "hyper", "sparse", "steady", "stranger")
    patients = {name: f"{prefix}-{name}" for name in names}
    ward = Ward(team, patients, [patients[n] for n in ("crisis", "hyper", "sparse", "steady")])
    end = now()
    kinds = ("blood_pressure", "body_weight", "glucose")
    for name, patient_id in patients.items():
        # Only "sparse" wears an oximeter and has a thermometer: their charts show for that patient alone.
        devices = add_patient(conn, patient_id, kinds=(*kinds, "pulse_oximetry", "body_temperature")
                              if name == "sparse" else kinds)
        _grant(conn, patient_id, other if name == "stranger" else team)
        days = {"sparse": 2, "steady": 20}.get(name, 6)
        readings = [bp(devices["blood_pressure"], end - timedelta(days=d, hours=1), 124 + d % 4, 78 + d % 3)
                    for d in range(days, 0, -1)]
        readings += [weight(devices["body_weight"], end - timedelta(days=d, hours=2), 81.0 + d / 10)
                     for d in range(days, 0, -1)]
        readings += [_glucose(devices["glucose"], end - timedelta(days=d, hours=3), 100 + 7 * d)
                     for d in range(days, 0, -1)]
        ingest(conn, readings, patient_id)
        counts = {"blood_pressure": days, "body_weight": days, "glucose": days}
        if name == "sparse":  # normal values (SpO2 95-96 %, 36.6-36.9 Cel): no alert, the triage order stays
            vitals = [make_reading(devices["pulse_oximetry"], "pulse_oximetry", end - timedelta(days=d, hours=h),
                                   {"spo2": 95 + h % 2, "spo2_pulse_rate": 70}) for d in (2, 1) for h in (4, 5)]
            vitals += [make_reading(devices["body_temperature"], "body_temperature", end - timedelta(days=d, hours=h),
                                    {"body_temperature": 36.6 + h / 10}) for d in (2, 1) for h in (1, 3)]
            ingest(conn, vitals, patient_id)
            readings += vitals
            counts |= {"spo2": 4, "body_temperature": 4}
        if name == "crisis":
            readings.append(bp(devices["blood_pressure"], end - timedelta(minutes=5), 190, 125))
            ingest(conn, readings[-1:], patient_id)
            counts["blood_pressure"] += 1
        if name == "hyper":
            readings.append(_glucose(devices["glucose"], end - timedelta(minutes=20), 300))
            ingest(conn, readings[-1:], patient_id)
            counts["glucose"] += 1
        ward.reading_days[patient_id] = len({r.measured_at.astimezone(UTC).date() for r in readings})
        ward.readings[patient_id] = counts
    conn.execute("UPDATE patients SET display_name = %s WHERE id = %s", (ward.hostile_name, patients["steady"]))
    return ward


def seed_continuous_glucose(conn: psycopg.Connection, patient_id: str, team: str, readings: int) -> list[Reading]:
    """A patient with a CGM-like meter: one glucose reading every 5 minutes, the newest 10 minutes ago."""
    devices = add_patient(conn, patient_id, kinds=("glucose",))
    _grant(conn, patient_id, team)
    end = now() - timedelta(minutes=10)
    stored = [_glucose(devices["glucose"], end - timedelta(minutes=5 * i), 90 + (i * 37) % 120)
              for i in range(readings)]
    ingest(conn, stored, patient_id)
    return stored


def seed_readings_only_patient(conn: psycopg.Connection, patient_id: str, team: str) -> None:
    """A patient in crisis who shares readings, not alerts, with ``team``: the page must not show the alert."""
    devices = add_patient(conn, patient_id, kinds=("blood_pressure",))
    conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                 (patient_id, team, ["readings"], patient_id))
    ingest(conn, [bp(devices["blood_pressure"], now() - timedelta(minutes=3), 185, 100)], patient_id)
