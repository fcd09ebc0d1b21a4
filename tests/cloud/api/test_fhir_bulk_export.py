"""FHIR Bulk Data export, fetched as a Bulk Data client does over real HTTP (uvicorn on a socket, httpx):
kick-off with ``Prefer: respond-async``, poll the status URL, download every file of the manifest. Every
line parses and validates as its FHIR resource (fhir.resources, R4B), the counts match the database, and
only what the caller's consents allow is there; the job and its files are the owner's alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.operationoutcome import OperationOutcome

from cloud.api.app import create_app
from cloud.settings import CloudSettings
from cloud.twin import fhir
from tests.cloud.api.conftest import TokenFactory, World, build_world, grant, seed_patient
from tests.cloud.api.ui_live_server import LiveServer
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bulk-export")


@pytest.fixture(scope="module")
def server(api_settings: CloudSettings, export_dir: Path) -> Iterator[LiveServer]:
    settings = api_settings.model_copy(update={"bulk_export_dir": export_dir, "bulk_export_lease_s": 5.0})
    with LiveServer(create_app(settings)) as live:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def ward(conn: psycopg.Connection, unique_id: str, auth: TokenFactory) -> World:
    """The API tests' world, plus ``revoked``: a patient whose consent to the team was revoked."""
    world = build_world(conn, unique_id, auth)
    revoked = world.patients["revoked"] = f"{unique_id}-revoked"
    world.devices["revoked"] = seed_patient(conn, revoked)
    consent = grant(conn, revoked, world.team, ["readings", "alerts", "twin"])
    conn.execute("UPDATE consents SET revoked_at = now(), revoked_by = %s WHERE id = %s", (revoked, consent))
    return world


def kick_off(http: httpx.Client, path: str, headers: dict[str, str], **params: Any) -> str:
    response = http.get(path, params=params, headers={**headers, **ASYNC})
    assert response.status_code == 202, response.text
    location = response.headers["content-location"]
    assert location.startswith(str(http.base_url).rstrip("/") + "/fhir/$export-status/")
    return location


def wait_for_manifest(http: httpx.Client, status_url: str, headers: dict[str, str]) -> dict[str, Any]:
    """Poll as a client does: 202 (with X-Progress) until 200 and the manifest."""
    progress: list[str] = []

    def done() -> dict[str, Any] | None:
        response = http.get(status_url, headers=headers)
        if response.status_code == 202:
            progress.append(response.headers["x-progress"])
            assert response.headers["retry-after"]
            return None
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["expires"]
        return response.json()

    return wait_until(done, 60, f"the export at {status_url} to complete", step=0.2)


def download(http: httpx.Client, manifest: dict[str, Any], headers: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Every file of the manifest, line by line: each line one resource that validates as its type."""
    files: dict[str, list[dict[str, Any]]] = {}
    for output in manifest["output"]:
        with http.stream("GET", output["url"], headers={**headers, "Accept": "application/fhir+ndjson"}) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("application/fhir+ndjson")
            lines = [line for line in response.iter_lines() if line]
        resources = []
        for line in lines:
            resource = json.loads(line)
            assert resource["resourceType"] == output["type"]
            get_fhir_model_class(output["type"]).model_validate(resource)
            resources.append(resource)
        assert len(resources) == output["count"], output
        files[output["type"]] = resources
    return files


def _patients_in(resources: list[dict[str, Any]]) -> set[str]:
    text = json.dumps(resources)
    return {ref.split('"')[0] for ref in text.split('"Patient/')[1:]}


def _db_reading_ids(conn: psycopg.Connection, patients: list[str]) -> set[str]:
    return {r[0] for r in conn.execute("SELECT id FROM readings WHERE patient_id = ANY(%s)", (patients,))}


def test_a_care_team_export_matches_the_database_and_the_consents(http: httpx.Client, ward: World,
                                                                  conn: psycopg.Connection) -> None:
    clinician = ward.headers["clinician"]
    status_url = kick_off(http, f"/fhir/Group/{ward.team}/$export", clinician, _outputFormat="application/fhir+ndjson")
    manifest = wait_for_manifest(http, status_url, clinician)
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["request"].endswith(f"/fhir/Group/{ward.team}/$export?_outputFormat=application%2Ffhir%2Bndjson")
    assert [o["type"] for o in manifest["output"]] == ["Patient", "Device", "Observation", "Flag"]
    files = download(http, manifest, clinician)

    p = ward.patients
    with_readings = sorted([p["consented"], p["readings_only"]])
    assert sorted(r["identifier"][0]["value"] for r in files["Patient"]) == with_readings
    # Observations: exactly the stored readings of the patients whose readings the team may see.
    observed = {r["identifier"][0]["value"] for r in files["Observation"]}
    assert observed == _db_reading_ids(conn, with_readings)
    per_reading = conn.execute("SELECT count(*) + count(*) FILTER (WHERE kind = 'blood_pressure') FROM readings"
                               " WHERE patient_id = ANY(%s)", (with_readings,)).fetchone()
    assert per_reading is not None and len(files["Observation"]) == per_reading[0]  # a cuff: panel and pulse
    # Flags only where the consent covers alerts.
    alerts = {f"alert-{r[0]}" for r in conn.execute("SELECT id FROM alerts WHERE patient_id = %s", (p["consented"],))}
    assert alerts and {r["id"] for r in files["Flag"]} == alerts
    measuring = {r["identifier"][0]["value"] for r in files["Device"] if r["id"].startswith("dev-")}
    assert measuring == {uid for name in ("consented", "readings_only") for uid in ward.devices[name].values()}
    # Every Device an Observation or Device names (measuring device, gateway) is in the export.
    devices = {f"Device/{r['id']}" for r in files["Device"]}
    named = {ref for r in files["Observation"] + files["Device"] for ref in
             [r.get("device", {}).get("reference"), r.get("parent", {}).get("reference"),
              *(e["valueReference"]["reference"] for e in r.get("extension", []) if "valueReference" in e
                and e["valueReference"]["reference"].startswith("Device/"))] if ref}
    assert named and named <= devices, named - devices
    # Nobody else: not the revoked patient, not the other team's, not the patient with no consent.
    everything = [r for resources in files.values() for r in resources]
    assert _patients_in(everything) == {fhir.fhir_id(patient) for patient in with_readings}
    blob = json.dumps(everything)
    for name in ("revoked", "other", "own"):
        assert p[name] not in blob and fhir.fhir_id(p[name]) not in blob, name

    # Audited per patient: the kick-off (everyone the job may export), the export itself, each download.
    kick = conn.execute("SELECT patient_ids, status FROM audit_log WHERE action = %s AND subject = %s",
                        ("GET /fhir/Group/{group_id}/$export", f"{ward.team.removesuffix('-team')}-dr")).fetchone()
    assert kick is not None and sorted(kick[0]) == with_readings and kick[1] == 202
    job_id = status_url.rsplit("/", 1)[1]
    written = conn.execute("SELECT patient_ids FROM audit_log WHERE action = 'EXPORT fhir bulk job'"
                           " AND request_id = %s", (job_id,)).fetchone()
    assert written is not None and sorted(written[0]) == with_readings
    downloads = conn.execute("SELECT count(*) FROM audit_log WHERE action = %s AND patient_ids @> %s",
                             ("GET /fhir/$export-file/{job_id}/{name}", [p["consented"]])).fetchone()
    assert downloads == (4,)


def test_a_patient_exports_their_own_record_and_since_limits_observations(http: httpx.Client, ward: World,
                                                                            conn: psycopg.Connection) -> None:
    patient = ward.headers["patient"]
    grant(conn, ward.patients["own"], ward.other_team, ["readings"])  # a grant to find in the Consent file
    manifest = wait_for_manifest(http, kick_off(http, "/fhir/Patient/$export", patient,
                                                _type="Patient,Observation,Consent"), patient)
    files = download(http, manifest, patient)
    assert set(files) == {"Patient", "Observation", "Consent"}
    # The patient's own grants, as /fhir/Consent shows them (a care team's export has none).
    granted = {f"consent-{r[0]}" for r in conn.execute("SELECT id FROM consents WHERE patient_id = %s",
                                                       (ward.patients["own"],))}
    assert {r["id"] for r in files["Consent"]} == granted
    assert {r["identifier"][0]["value"] for r in files["Observation"]} == _db_reading_ids(conn, [ward.patients["own"]])
    assert _patients_in(files["Observation"]) == {fhir.fhir_id(ward.patients["own"])}
    # _since after every stored reading: the patient again, no Observation file (an empty file is not listed).
    latest = conn.execute("SELECT max(stored_at) FROM readings WHERE patient_id = %s",
                          (ward.patients["own"],)).fetchone()
    assert latest is not None
    since = latest[0].isoformat()
    manifest = wait_for_manifest(http, kick_off(http, "/fhir/Patient/$export", patient, _since=since), patient)
    types = {o["type"] for o in manifest["output"]}
    assert "Observation" not in types and {"Patient", "Device"} <= types


def test_only_the_owner_sees_the_job_and_its_files(http: httpx.Client, ward: World, auth: TokenFactory,
                                                   export_dir: Path) -> None:
    clinician = ward.headers["clinician"]
    status_url = kick_off(http, f"/fhir/Group/{ward.team}/$export", clinician)
    manifest = wait_for_manifest(http, status_url, clinician)
    file_url = manifest["output"][0]["url"]
    colleague = auth("clinician", sub="another-doctor", care_teams=(ward.team,))  # same team, not the owner
    for headers in (colleague, ward.headers["care_team"], ward.headers["patient"]):
        for response in (http.get(status_url, headers=headers), http.get(file_url, headers=headers),
                         http.delete(status_url, headers=headers)):
            assert response.status_code == 404, response.text
            assert response.headers["content-type"].startswith("application/fhir+json")
            OperationOutcome.model_validate(response.json())
    assert http.get(status_url, headers=ward.headers["admin"]).status_code == 403
    assert http.get(file_url).status_code == 401  # requiresAccessToken: a bare URL gives nothing
    # Names are looked up, never joined blindly to a path.
    job_id = status_url.rsplit("/", 1)[1]
    for name in ("..%2F..%2Fetc%2Fpasswd", "Patient.ndjson.part", "Consent.ndjson", "Encounter.ndjson"):
        assert http.get(f"/fhir/$export-file/{job_id}/{name}", headers=clinician).status_code == 404
    assert http.get("/fhir/$export-status/not-a-uuid", headers=clinician).status_code == 404
    assert http.get(file_url, headers=clinician).status_code == 200


def test_cancel_deletes_the_files_and_the_job(http: httpx.Client, ward: World, export_dir: Path) -> None:
    clinician = ward.headers["clinician"]
    status_url = kick_off(http, f"/fhir/Group/{ward.team}/$export", clinician)
    manifest = wait_for_manifest(http, status_url, clinician)
    job_dir = export_dir / status_url.rsplit("/", 1)[1]
    assert sorted(p.name for p in job_dir.iterdir()) == sorted(f"{o['type']}.ndjson" for o in manifest["output"])
    assert http.delete(status_url, headers=clinician).status_code == 202
    assert not job_dir.exists()
    assert http.get(status_url, headers=clinician).status_code == 404
    assert http.get(manifest["output"][0]["url"], headers=clinician).status_code == 404
    assert http.delete(status_url, headers=clinician).status_code == 404  # once


@pytest.mark.parametrize(("params", "headers", "word"), [
    ({}, {"Accept": "application/fhir+json"}, "respond-async"),
    ({"_type": "Patient,Encounter"}, ASYNC, "Encounter"),
    ({"_type": "AuditEvent"}, ASYNC, "AuditEvent"),
    ({"_since": "yesterday"}, ASYNC, "_since"),
    ({"_since": "2026-01-01"}, ASYNC, "_since"),
    ({"_since": "0001-01-01T00:00:00+05:00"}, ASYNC, "_since"),  # before year 1 in UTC: out of range, not a 500
    ({"_since": "9999-12-31T23:00:00-05:00"}, ASYNC, "_since"),
    ({"_outputFormat": "text/csv"}, ASYNC, "_outputFormat"),
    ({"_typeFilter": "Observation?code=1"}, ASYNC, "_typeFilter"),
])
def test_a_bad_kick_off_is_a_400_operation_outcome(http: httpx.Client, ward: World, params: dict[str, str],
                                                   headers: dict[str, str], word: str) -> None:
    response = http.get(f"/fhir/Group/{ward.team}/$export", params=params,
                        headers={**ward.headers["clinician"], **headers})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = OperationOutcome.model_validate(response.json())
    assert word in (outcome.issue[0].diagnostics or "")


def test_kick_off_authorisation(http: httpx.Client, ward: World) -> None:
    lenient = {**ASYNC, "Prefer": "respond-async, handling=lenient"}
    ok = http.get(f"/fhir/Group/{ward.team}/$export", params={"_typeFilter": "x"},
                  headers={**ward.headers["clinician"], **lenient})
    assert ok.status_code == 202, ok.text
    other = http.get(f"/fhir/Group/{ward.other_team}/$export", headers={**ward.headers["clinician"], **ASYNC})
    missing = http.get("/fhir/Group/no-such-team/$export", headers={**ward.headers["clinician"], **ASYNC})
    assert other.status_code == missing.status_code == 404  # a team one is not in answers like none
    assert other.json()["issue"][0]["diagnostics"] == missing.json()["issue"][0]["diagnostics"]
    for role in ("patient", "admin", "gateway"):
        assert http.get(f"/fhir/Group/{ward.team}/$export", headers={**ward.headers[role], **ASYNC}).status_code == 403
    assert http.get("/fhir/Patient/$export", headers={**ward.headers["admin"], **ASYNC}).status_code == 403
    assert http.get("/fhir/Patient/$export", headers=ASYNC).status_code == 401
