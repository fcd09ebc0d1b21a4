"""The EHR push's test world: a migrated database of each test's own (the push's watermark is one row per
database), readings stored by the real ingest writer (``cloud.ingest.writer.BatchWriter``), a care team whose
EHR is the test server (tests/ehr_server), and settings that point the push at it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from cloud.ingest.validation import ValidatedBatch
from cloud.ingest.writer import BatchWriter
from cloud.settings import CloudSettings
from gateway.contract import Reading
from tests.cloud.alerts.scripted_patient import add_patient, bp, make_reading
from tests.ehr_server.server import EhrServer, ehr_server  # noqa: F401  (the session fixture)
from tests.fhir_validator.medplum import medplum_validate  # noqa: F401  (the second validator)

TEAM = "cardiology-ehr"


@dataclass
class Ward:
    """Patients of the push team (and one of another team), their devices, and how to store readings."""

    conn: psycopg.Connection
    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    writer: BatchWriter = field(default_factory=lambda: BatchWriter(late_after_s=6 * 3600))
    _batches: int = 0

    def add(
        self, patient_id: str, team: str | None = TEAM, kinds: Sequence[str] = ("blood_pressure", "glucose")
    ) -> dict[str, str]:
        self.devices[patient_id] = add_patient(
            self.conn, patient_id, kinds=kinds, assigned_at=datetime.now(UTC) - timedelta(days=30)
        )
        # The assignment holds from the beginning, so readings measured before the test's day belong too.
        self.conn.execute("UPDATE device_assignments SET valid_from = '-infinity' WHERE patient_id = %s", (patient_id,))
        if team:
            self.conn.execute(
                "INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                (patient_id, team, ["readings", "alerts"], patient_id),
            )
        return self.devices[patient_id]

    def store(self, readings: Sequence[Reading], gateway_id: str = "gw-home-1") -> None:
        """Through the real ingest writer, as one gateway batch (one transaction, with the gateway's row)."""
        self._batches += 1
        batch = ValidatedBatch(
            topic=f"rpm/v1/gw/{gateway_id}/readings",
            ack_gateway=gateway_id,
            batch_id=f"b{self._batches}",
            readings=list(readings),
        )
        with psycopg.connect(self.conn.info.dsn) as conn:
            result = self.writer.write(conn, [batch], datetime.now(UTC))
        [(_, ack)] = result.acks
        assert len(ack.accepted) == len(readings), ack

    def blood_pressure(self, patient_id: str, count: int, flags: Sequence[str] = ()) -> list[Reading]:
        start = datetime.now(UTC) - timedelta(hours=count + 1)
        return [
            bp(self.devices[patient_id]["blood_pressure"], start + timedelta(hours=i), 120 + i, 80, 64 + i, flags=flags)
            for i in range(count)
        ]

    def glucose(self, patient_id: str, count: int) -> list[Reading]:
        start = datetime.now(UTC) - timedelta(hours=count + 1)
        return [
            make_reading(
                self.devices[patient_id]["glucose"], "glucose", start + timedelta(hours=i), {"glucose": 100 + i}
            )
            for i in range(count)
        ]


@pytest.fixture
def db(fresh_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Cardiology'), ('elsewhere', 'Elsewhere')", (TEAM,))
        yield conn


@pytest.fixture
def ward(db: psycopg.Connection) -> Ward:
    return Ward(db)


@pytest.fixture
def ehr(ehr_server: EhrServer) -> EhrServer:  # noqa: F811
    ehr_server.reset()
    return ehr_server


def push_settings(
    database_url: str, ehr: EhrServer, key_file: Path | None = None, kid: str | None = None, **overrides: object
) -> CloudSettings:
    values: dict[str, object] = dict(
        database_url=database_url,
        ehr_push_fhir_url=ehr.fhir_url,
        ehr_push_token_url=ehr.token_url,
        ehr_push_client_id=ehr.client_id,
        ehr_push_key_file=key_file or ehr.ec_key_file,
        ehr_push_key_id=kid or ehr.ec_kid,
        ehr_push_care_teams=TEAM,
        # medplum's router refuses a transaction with conditional creates past 8 entries
        # ("Transaction requires strict isolation but has too many entries").
        ehr_push_max_entries=8,
        ehr_push_timeout_s=5.0,
        ehr_push_lease_s=10.0,
        ehr_push_poll_s=0.2,
        ehr_push_settle_s=0.0,
    )
    values.update(overrides)
    return CloudSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(fresh_database_url: str, ehr: EhrServer) -> CloudSettings:
    return push_settings(fresh_database_url, ehr)
