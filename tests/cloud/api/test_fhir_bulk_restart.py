"""A bulk export survives its API process being killed: the job is not complete and hands out no file while
nobody runs it, the next process takes it again when its lease lapses and completes it with the right counts;
a job interrupted too often fails cleanly (500 OperationOutcome, no files); an expired one is cleaned away;
a running one cancelled stops and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.operationoutcome import OperationOutcome

from cloud.api.app import create_app
from cloud.api.tokens import mint_token
from cloud.fhir_bulk import queries
from cloud.fhir_bulk.worker import ExportWorkers
from cloud.settings import CloudSettings
from tests.cloud.api.bulk_seed import add_team_patients, finished_export, load_glucose
from tests.cloud.api.conftest import TokenFactory
from tests.cloud.api.ui_live_server import LiveServer
from tests.e2e.processes import command, running, wait_for

pytestmark = pytest.mark.integration
ASYNC = {"Prefer": "respond-async"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _job_row(conn: psycopg.Connection, job_id: str) -> tuple[Any, ...]:
    row = conn.execute("SELECT state, attempts, (SELECT count(*) FROM bulk_export_files f WHERE f.job_id = j.id)"
                       " FROM bulk_export_jobs j WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row


def test_a_killed_export_is_not_complete_and_the_next_process_finishes_it(
        fresh_database_url: str, unique_id: str, tmp_path: Path) -> None:
    team = f"{unique_id}-team"
    export_dir = tmp_path / "exports"
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        devices = add_team_patients(conn, team, [f"{unique_id}-p{i:02d}" for i in range(40)])
        readings = load_glucose(conn, devices, days=7)
    key = f"restart-{unique_id}-dev-key-0123456789abcdef"
    token = mint_token(CloudSettings(jwt_dev_key=key), role="clinician", sub=f"{unique_id}-dr", care_teams=(team,),
                       patient=None, ttl_s=600)
    headers = {"Authorization": f"Bearer {token}"}
    port = free_port()
    env = {"RPM_DATABASE_URL": fresh_database_url, "RPM_JWT_DEV_KEY": key, "RPM_BULK_EXPORT_DIR": str(export_dir),
           "RPM_BULK_EXPORT_LEASE_S": "2"}
    base = f"http://127.0.0.1:{port}"
    logs = [tmp_path / "api-1.log", tmp_path / "api-2.log"]

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    with running([*command("rpm-cloud"), "api", "--port", str(port)], env, logs[0]) as first:
        wait_for(up, 30, "the first API process", logs)
        kick = httpx.get(f"{base}/fhir/Group/{team}/$export", params={"_type": "Patient,Observation"},
                         headers={**headers, **ASYNC}, timeout=10)
        assert kick.status_code == 202, kick.text
        status_url = kick.headers["content-location"]
        job_id = status_url.rsplit("/", 1)[1]
        part = export_dir / job_id / "Observation.ndjson.part"

        def mid_observations() -> str | None:
            response = httpx.get(status_url, headers=headers, timeout=5)
            assert response.status_code == 202, f"finished before it could be killed: {response.text[:200]}"
            progress = response.headers["x-progress"]
            if progress.startswith("Observation ") and not progress.startswith("Observation 0%") and part.exists():
                return progress
            return None

        progress = wait_for(mid_observations, 60, "the export to be half-way through its Observations", logs)
        first.send_signal(signal.SIGKILL)  # no shutdown: the job keeps its lease, its file stays half-written
        first.wait(10)

    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        state, attempts, listed = _job_row(conn, job_id)
        assert (state, attempts, listed) == ("running", 1, 0), progress
        assert not (export_dir / job_id / "Observation.ndjson").exists()  # only the temporary name

        with running([*command("rpm-cloud"), "api", "--port", str(port)], env, logs[1]):
            wait_for(up, 30, "the second API process", logs)

            def manifest() -> dict[str, Any] | None:
                response = httpx.get(status_url, headers=headers, timeout=5)
                if response.status_code == 202:
                    return None
                assert response.status_code == 200, response.text
                return response.json()

            done = wait_for(manifest, 120, "the restarted export to complete", logs)
            counts = {o["type"]: o["count"] for o in done["output"]}
            assert counts == {"Patient": 40, "Observation": readings}
            observation = next(o["url"] for o in done["output"] if o["type"] == "Observation")
            with httpx.stream("GET", observation, headers=headers, timeout=60) as response:
                assert response.status_code == 200
                lines = sum(1 for line in response.iter_lines() if line)
            assert lines == readings
        state, attempts, listed = _job_row(conn, job_id)
        assert (state, attempts, listed) == ("complete", 2, 2)
        assert not part.exists()
        assert sorted(os.listdir(export_dir / job_id)) == ["Observation.ndjson", "Patient.ndjson"]


def test_a_job_interrupted_too_often_fails_cleanly(client: TestClient, conn: psycopg.Connection, unique_id: str,
                                                   auth: TokenFactory, api_settings: CloudSettings,
                                                   tmp_path: Path) -> None:
    team = f"{unique_id}-team"
    add_team_patients(conn, team, [f"{unique_id}-p"])
    headers = auth("clinician", sub=f"{unique_id}-dr", care_teams=(team,))
    job_id = uuid.uuid4()
    # Queued and marked as a job whose worker died for the last allowed time, in one transaction, so that
    # the app's own worker never sees it queued.
    with conn.transaction():
        queries.create_job(conn, job_id=job_id, owner_subject=f"{unique_id}-dr", owner_role="clinician",
                           level="group", group_id=team, care_teams=[team], own_patient=None, types=["Patient"],
                           since=None, request_url="http://x/fhir/Group/t/$export", directory=str(tmp_path / "job"),
                           ttl_s=3600)
        conn.execute("UPDATE bulk_export_jobs SET state = 'running', worker = 'dead', lease_until = now() - interval"
                     " '1 second', attempts = %s WHERE id = %s", (api_settings.bulk_export_max_attempts, job_id))
    assert queries.fail_exhausted(conn, api_settings.bulk_export_max_attempts) in ([job_id], [])
    response = client.get(f"/fhir/$export-status/{job_id}", headers=headers)
    assert response.status_code == 500, response.text
    outcome = OperationOutcome.model_validate(response.json())
    assert "interrupted 3 times" in (outcome.issue[0].diagnostics or "")
    assert not (tmp_path / "job").exists()


def test_an_expired_export_is_cleaned_and_gone(client: TestClient, conn: psycopg.Connection, unique_id: str,
                                               auth: TokenFactory, api_settings: CloudSettings,
                                               tmp_path: Path) -> None:
    team = f"{unique_id}-team"
    add_team_patients(conn, team, [f"{unique_id}-p"])
    headers = auth("clinician", sub=f"{unique_id}-dr", care_teams=(team,))
    job_id = finished_export(conn, subject=f"{unique_id}-dr", role="clinician", team=team, directory=tmp_path)
    job_dir = tmp_path / uuid.UUID(job_id).hex
    assert client.get(f"/fhir/$export-status/{job_id}", headers=headers).status_code == 200
    assert (job_dir / "Patient.ndjson").exists()
    conn.execute("UPDATE bulk_export_jobs SET expires_at = now() - interval '1 second' WHERE id = %s", (job_id,))
    with psycopg.connect(api_settings.database_url, autocommit=True) as worker_conn:
        ExportWorkers(api_settings, threads=0).clean_up(worker_conn)
    assert not job_dir.exists()
    assert _job_row(conn, job_id)[0] == "expired"
    assert client.get(f"/fhir/$export-status/{job_id}", headers=headers).status_code == 404
    assert client.get(f"/fhir/$export-file/{job_id}/Patient.ndjson", headers=headers).status_code == 404


def test_cancelling_a_running_export_stops_it_and_deletes_its_files(
        fresh_database_url: str, unique_id: str, tmp_path: Path, auth: TokenFactory,
        api_settings: CloudSettings) -> None:
    team = f"{unique_id}-team"
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        devices = add_team_patients(conn, team, [f"{unique_id}-p{i:02d}" for i in range(30)])
        load_glucose(conn, devices, days=7)
    headers = auth("clinician", sub=f"{unique_id}-dr", care_teams=(team,))
    settings = api_settings.model_copy(update={"database_url": fresh_database_url, "bulk_export_dir": tmp_path,
                                               "bulk_export_lease_s": 1.5})
    with LiveServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        kick = http.get(f"/fhir/Group/{team}/$export", headers={**headers, **ASYNC})
        assert kick.status_code == 202, kick.text
        status_url = kick.headers["content-location"]
        job_id = status_url.rsplit("/", 1)[1]

        def observations_under_way() -> bool:
            response = http.get(status_url, headers=headers)
            assert response.status_code == 202, "finished before it could be cancelled"
            return response.headers["x-progress"].startswith("Observation ")

        wait_for(observations_under_way, 60, "the export to reach its Observations")
        assert http.delete(status_url, headers=headers).status_code == 202
        assert http.get(status_url, headers=headers).status_code == 404
        # The worker notices at its next lease renewal, stops, and leaves nothing behind.
        wait_for(lambda: not (tmp_path / job_id).exists(), 30, "the job's folder to be removed")
        with psycopg.connect(fresh_database_url, autocommit=True) as conn:
            assert _job_row(conn, job_id) == ("cancelled", 1, 0)
        # And it goes on to the next job.
        again = http.get(f"/fhir/Group/{team}/$export", params={"_type": "Patient"}, headers={**headers, **ASYNC})
        assert again.status_code == 202

        def complete() -> bool:
            return http.get(again.headers["content-location"], headers=headers).status_code == 200

        wait_for(complete, 60, "the next export to complete")


def test_a_consent_revoked_between_kick_off_and_run_leaves_the_patient_out(
        fresh_database_url: str, unique_id: str, auth: TokenFactory, api_settings: CloudSettings,
        tmp_path: Path) -> None:
    team = f"{unique_id}-team"
    kept, revoked = f"{unique_id}-kept", f"{unique_id}-revoked"
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        load_glucose(conn, add_team_patients(conn, team, [kept, revoked]), days=1)
    headers = auth("clinician", sub=f"{unique_id}-dr", care_teams=(team,))
    # No worker in this app (and a database of its own): the job waits until this test runs it.
    settings = api_settings.model_copy(update={"database_url": fresh_database_url, "bulk_export_dir": tmp_path,
                                               "bulk_export_workers": 0})
    with TestClient(create_app(settings)) as client, psycopg.connect(fresh_database_url, autocommit=True) as conn:
        kick = client.get(f"/fhir/Group/{team}/$export", headers={**headers, **ASYNC})
        assert kick.status_code == 202, kick.text
        status_url = kick.headers["content-location"]
        assert client.get(status_url, headers=headers).headers["x-progress"] == "queued"
        conn.execute("UPDATE consents SET revoked_at = now(), revoked_by = %s WHERE patient_id = %s",
                     (revoked, revoked))
        assert ExportWorkers(settings, threads=0).run_one(conn, "test-worker")
        manifest = client.get(status_url, headers=headers).json()
        lines = [client.get(o["url"], headers=headers).text for o in manifest["output"]]
    assert {o["type"]: o["count"] for o in manifest["output"]}["Patient"] == 1
    assert kept in "".join(lines) and revoked not in "".join(lines)
