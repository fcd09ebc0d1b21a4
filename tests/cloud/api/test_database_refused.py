"""A database that refuses the work itself is not a database that is down (issue 21): TimescaleDB refuses an
UPDATE that would decompress more than its tuple limit with SQLSTATE 53400, and retrying never helps.
``rpm-cloud assign`` used to say "cannot reach the database" and the API "503, retry later". The refusal
is raised here by a trigger with TimescaleDB's own SQLSTATE and message, on a real PostgreSQL."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient

from cloud.db.pool import failure_line, is_transient
from cloud.devices.assignment import add_arguments, main
from tests.cloud.api.conftest import World

pytestmark = pytest.mark.integration


@pytest.fixture
def refusing(conn: psycopg.Connection) -> Iterator[str]:
    """A device prefix whose assignments the database refuses as TimescaleDB's decompression limit does."""
    prefix = f"ble:limit-{uuid.uuid4().hex[:8]}"
    function = f"refuse_{uuid.uuid4().hex[:8]}"
    conn.execute(f"""CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.device_uid LIKE '{prefix}%' THEN
                RAISE EXCEPTION 'tuple decompression limit exceeded by operation'
                    USING ERRCODE = 'configuration_limit_exceeded';
            END IF;
            RETURN NEW;
        END $$""")
    conn.execute(f"CREATE TRIGGER {function} BEFORE INSERT ON device_assignments FOR EACH ROW EXECUTE FUNCTION"
                 f" {function}()")
    yield prefix
    conn.execute(f"DROP TRIGGER {function} ON device_assignments")
    conn.execute(f"DROP FUNCTION {function}()")


def test_the_cli_says_the_database_refused_not_that_it_cannot_be_reached(
        refusing: str, world: World, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    code = main(parser.parse_args([f"{refusing}:cuff", world.patients["own"], "--database-url", database_url]))
    out = capsys.readouterr().out
    assert code == 2
    assert "the database refused the work (SQLSTATE 53400): tuple decompression limit exceeded" in out, out
    assert "cannot reach" not in out


def test_the_api_answers_500_not_503_retry_later(refusing: str, world: World, client: TestClient) -> None:
    response = client.post(f"/v1/devices/{refusing}:cuff/assignments", json={"patient_id": world.patients["consented"]},
                           headers=world.headers["clinician"])
    assert response.status_code == 500, response.text
    assert "Retry-After" not in response.headers
    problem = response.json()
    assert problem["type"].endswith("database-refused") and "53400" in problem["detail"]
    assert "retrying will not help" in problem["detail"]


@pytest.mark.unit
def test_which_failures_are_worth_retrying() -> None:
    assert is_transient(psycopg.OperationalError("connection refused"))  # no SQLSTATE: never connected
    for transient in ("AdminShutdown", "CannotConnectNow", "TooManyConnections", "SerializationFailure",
                      "DeadlockDetected"):
        assert is_transient(getattr(psycopg.errors, transient)("x")), transient
    for refused in ("ConfigurationLimitExceeded", "DiskFull", "OutOfMemory", "QueryCanceled"):
        error = getattr(psycopg.errors, refused)("why")
        assert not is_transient(error), refused
        assert failure_line(error).startswith("the database refused the work (SQLSTATE")
