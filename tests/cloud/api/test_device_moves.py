"""Moving a device between patients (issue 14, item 5): a clinician cannot take another care team's
patient's cuff; an administrator can, and the move is audited with both patients; ``rpm-cloud assign``
(an operator on the server) still moves devices and is audited the same way."""

from __future__ import annotations

import os
import subprocess

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.cloud.api.conftest import World
from tests.e2e.processes import command

pytestmark = pytest.mark.integration


def open_assignees(conn: psycopg.Connection, uid: str) -> list[tuple[int | None, str]]:
    return conn.execute("SELECT user_index, patient_id FROM device_assignments WHERE device_uid = %s"
                        " AND (valid_to IS NULL OR valid_to > now()) ORDER BY user_index NULLS FIRST",
                        (uid,)).fetchall()


def audit_row(conn: psycopg.Connection, request_id: str) -> tuple[list[str], str, dict | None]:
    row = conn.execute("SELECT patient_ids, outcome, detail FROM audit_log WHERE request_id = %s",
                       (request_id,)).fetchone()
    assert row is not None, "no audit row for the request"
    return row[0], row[1], row[2]


def test_a_clinician_cannot_take_another_teams_patients_cuff(client: TestClient, world: World,
                                                             conn: psycopg.Connection) -> None:
    theirs, mine = world.patients["other"], world.patients["consented"]
    cuff = world.devices["other"]["blood_pressure"]
    for body in ({"patient_id": mine}, {"patient_id": mine, "user_index": 1}):
        response = client.post(f"/v1/devices/{cuff}/assignments", json=body, headers=world.headers["clinician"])
        assert response.status_code == 403, response.text
        assert "administrator" in response.json()["detail"]
        patients, outcome, detail = audit_row(conn, response.headers["x-request-id"])
        assert (set(patients), outcome) == ({mine, theirs}, "forbidden")  # the other team's patient sees the try
        assert detail is not None and detail["device_uid"] == cuff and detail["displaced"] == [theirs]
    assert open_assignees(conn, cuff) == [(None, theirs)], "the cuff still reports to its own patient"
    # Unassigning it is as invisible as a missing assignment.
    response = client.delete(f"/v1/devices/{cuff}/assignments", headers=world.headers["clinician"])
    assert response.status_code == 404
    assert open_assignees(conn, cuff) == [(None, theirs)]


def test_an_admin_move_is_audited_with_both_patients(client: TestClient, world: World,
                                                     conn: psycopg.Connection) -> None:
    theirs, mine = world.patients["other"], world.patients["consented"]
    cuff = world.devices["other"]["blood_pressure"]
    response = client.post(f"/v1/devices/{cuff}/assignments", json={"patient_id": mine},
                           headers=world.headers["admin"])
    assert response.status_code == 201, response.text
    assert set(response.json()) == {"assignment_id", "device_uid", "user_index", "patient_id", "valid_from",
                                    "readings_claimed", "closed_assignments"}, "counts, never clinical data"
    assert open_assignees(conn, cuff) == [(None, mine)]
    patients, outcome, detail = audit_row(conn, response.headers["x-request-id"])
    assert (patients, outcome) == ([mine, theirs], "allowed")
    assert detail["displaced"] == [theirs] and detail["patient_id"] == mine and detail["device_uid"] == cuff

    # The administrators' log shows what moved; each patient's own trail shows the access, not the other.
    log = client.get("/v1/audit", params={"patient_id": theirs}, headers=world.headers["admin"]).json()["entries"]
    assert any(e["request_id"] == response.headers["x-request-id"] and e["detail"]["patient_id"] == mine
               for e in log)
    trail = client.get(f"/v1/patients/{world.patients['own']}/audit", headers=world.headers["patient"]).json()
    assert all("detail" not in e for e in trail["entries"])


def test_the_cli_still_moves_devices_and_is_audited(world: World, conn: psycopg.Connection,
                                                    database_url: str) -> None:
    theirs, mine = world.patients["other"], world.patients["readings_only"]
    cuff = world.devices["other"]["blood_pressure"]
    env = {"RPM_DATABASE_URL": database_url}
    moved = subprocess.run([*command("rpm-cloud"), "assign", cuff, mine], env={**os.environ, **env},
                           capture_output=True, text=True, timeout=60)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert open_assignees(conn, cuff) == [(None, mine)]
    row = conn.execute("SELECT role, action, patient_ids, detail FROM audit_log WHERE action = 'rpm-cloud assign'"
                       " AND detail->>'device_uid' = %s", (cuff,)).fetchone()
    assert row is not None and row[0] == "operator" and row[2] == [mine, theirs] and row[3]["displaced"] == [theirs]

    gone = subprocess.run([*command("rpm-cloud"), "assign", cuff, "--unassign"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert open_assignees(conn, cuff) == []
    assert conn.execute("SELECT patient_ids FROM audit_log WHERE action = 'rpm-cloud assign --unassign'"
                        " AND detail->>'device_uid' = %s", (cuff,)).fetchone() == ([mine],)
