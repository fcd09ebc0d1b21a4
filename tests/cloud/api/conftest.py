from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.api.tokens import mint_token
from cloud.settings import CloudSettings
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, make_reading, midday, now, weight

DEV_KEY = "test-dev-key-not-secret-0123456789abcdef"


@pytest.fixture(scope="session")
def api_settings(database_url: str) -> CloudSettings:
    return CloudSettings(database_url=database_url, jwt_dev_key=DEV_KEY, api_pool_max=4)


TEST_CLIENT_STREAM_S = 0.3
"""The test client reads every response to its end, so its ``/v1/stream`` responses end after this
(real streaming is tested over real HTTP: tests/cloud/api/test_stream.py)."""


@pytest.fixture(scope="session")
def client(api_settings: CloudSettings) -> Iterator[TestClient]:
    settings = api_settings.model_copy(update={"stream_max_s": TEST_CLIENT_STREAM_S})
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


TokenFactory = Callable[..., dict[str, str]]


@pytest.fixture(scope="session")
def auth(api_settings: CloudSettings) -> TokenFactory:
    """``auth(role, sub=..., care_teams=..., patient=...)`` -> Authorization header."""
    def headers(role: str, sub: str | None = None, care_teams: tuple[str, ...] = (), patient: str | None = None,
                ttl_s: int = 600) -> dict[str, str]:
        token = mint_token(api_settings, role=role, sub=sub or patient or f"{role}-user", care_teams=care_teams,
                           patient=patient, ttl_s=ttl_s)
        return {"Authorization": f"Bearer {token}"}
    return headers


@dataclass
class World:
    """Patients seen from one care team: ``own`` (the patient token's record, no consent to the team),
    ``consented`` (all scopes), ``readings_only`` (scope readings), ``other`` (consent to another team)."""

    team: str
    other_team: str
    patients: dict[str, str]
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    devices: dict[str, dict[str, str]] = field(default_factory=dict)


def grant(conn: psycopg.Connection, patient_id: str, team: str, scopes: list[str]) -> int:
    row = conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)"
                       " RETURNING id", (patient_id, team, scopes, patient_id)).fetchone()
    assert row is not None
    return row[0]


def seed_patient(conn: psycopg.Connection, patient_id: str) -> dict[str, str]:
    """A patient with a cuff, a scale and a meter, a week of readings and one open crisis alert."""
    devices = add_patient(conn, patient_id, kinds=("blood_pressure", "body_weight", "glucose"))
    end = now()
    readings = [bp(devices["blood_pressure"], midday(d) - timedelta(hours=1), 128, 82) for d in range(6, 0, -1)]
    readings += [weight(devices["body_weight"], midday(d) - timedelta(hours=2), 80 + d / 10) for d in range(6, 0, -1)]
    readings += [make_reading(devices["glucose"], "glucose", midday(d) - timedelta(hours=3), {"glucose": 110 + d})
                 for d in range(6, 0, -1)]
    ingest(conn, readings, patient_id)
    ingest(conn, [bp(devices["blood_pressure"], end - timedelta(minutes=5), 190, 125)], patient_id)
    return devices


def build_world(conn: psycopg.Connection, unique_id: str, auth: TokenFactory) -> World:
    team, other_team = f"{unique_id}-team", f"{unique_id}-other-team"
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Cardiology'), (%s, 'Elsewhere')", (team, other_team))
    patients = {name: f"{unique_id}-{name}" for name in ("own", "consented", "readings_only", "other")}
    w = World(team, other_team, patients)
    for name, patient_id in patients.items():
        w.devices[name] = seed_patient(conn, patient_id)
    grant(conn, patients["consented"], team, ["readings", "alerts", "twin"])
    grant(conn, patients["readings_only"], team, ["readings"])
    grant(conn, patients["other"], other_team, ["readings", "alerts", "twin"])
    w.headers = {
        "patient": auth("patient", patient=patients["own"]),
        "clinician": auth("clinician", sub=f"{unique_id}-dr", care_teams=(team,)),
        "care_team": auth("care_team", sub=f"{unique_id}-nurse", care_teams=(team,)),
        "admin": auth("admin", sub=f"{unique_id}-admin"),
        "gateway": auth("gateway", sub=f"{unique_id}-gw"),
    }
    return w


@pytest.fixture
def world(conn: psycopg.Connection, unique_id: str, auth: TokenFactory) -> World:
    return build_world(conn, unique_id, auth)
