"""The gateway fleet's HTTP side against real PostgreSQL (and the real broker for published config): the
signed bootstrap poll refuses what the contract says it must (bad signature, replay, clock skew, another
key, oversize or garbage bodies) with a 4xx and never a 500; claiming is authorised on the patient before
the code is looked at; credentials are delivered until the gateway's status shows it used them; a config
document is validated with the gateway's own schema (422 naming the key) and published retained."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from cloud.api.app import create_app
from cloud.fleet.broker_passwords import check_mosquitto_hash
from cloud.ingest.queries import UPSERT_GATEWAY_STATUS
from cloud.settings import CloudSettings
from gateway.contract import config_topic
from tests.cloud.api.conftest import TokenFactory, grant
from tests.cloud.fleet.signed_polls import POLL, FakeGateway

pytestmark = pytest.mark.integration
BROKER_FOR_GATEWAYS = "mqtt://broker.example.test:8883"


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("broker") / "external.passwd"


def fleet_settings(api_settings: CloudSettings, mqtt_url: str, password_file: Path, **more: Any) -> CloudSettings:
    return api_settings.model_copy(update={"gateway_broker_url": BROKER_FOR_GATEWAYS, "mqtt_url": mqtt_url,
                                           "broker_password_file": password_file, "bootstrap_retry_after_s": 7.0,
                                           "bootstrap_poll_burst": 1000, **more})


@pytest.fixture(scope="module")
def fleet(api_settings: CloudSettings, mqtt_broker: Any, password_file: Path) -> Iterator[TestClient]:
    with TestClient(create_app(fleet_settings(api_settings, mqtt_broker.url, password_file)),
                    raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def team(conn: psycopg.Connection, unique_id: str, auth: TokenFactory) -> dict[str, Any]:
    """A care team with a consenting patient, and a patient of another team."""
    team_id = f"{unique_id}-team"
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Heart failure'), (%s, 'Other')",
                 (team_id, f"{team_id}-other"))
    patient, stranger = f"{unique_id}-ana", f"{unique_id}-zoe"
    for p in (patient, stranger):
        conn.execute("INSERT INTO patients (id) VALUES (%s)", (p,))
    grant(conn, patient, team_id, ["readings", "alerts", "twin"])
    grant(conn, stranger, f"{team_id}-other", ["readings"])
    return {"team": team_id, "patient": patient, "stranger": stranger,
            "nurse": auth("care_team", sub=f"{unique_id}-nurse", care_teams=(team_id,)),
            "admin": auth("admin", sub=f"{unique_id}-admin"),
            "patient_token": auth("patient", patient=patient)}


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    return response.json()


def claimed_gateway(fleet: TestClient, team: dict[str, Any], tmp_path: Path) -> FakeGateway:
    gateway = FakeGateway.make(tmp_path)
    assert gateway.poll(fleet).status_code == 202
    answer = fleet.post("/v1/gateways/claim", json={"code": gateway.identity.claim_code, "patient_id": team["patient"]},
                        headers=team["nurse"])
    assert answer.status_code == 201, answer.text
    return gateway


def report_status(conn: psycopg.Connection, gateway_id: str, **fields: Any) -> None:
    """What ingest does with a gateway's retained status (the same statement)."""
    status = {"v": 1, "gateway_id": gateway_id, "online": True, "at": datetime.now(UTC).isoformat(), **fields}
    conn.execute(UPSERT_GATEWAY_STATUS, (gateway_id, datetime.now(UTC), Jsonb(status)))


# ---------------------------------------------------------------------------------------------- the poll

def test_an_unclaimed_gateway_is_pinned_audited_and_told_to_wait(fleet: TestClient, conn: psycopg.Connection,
                                                                   tmp_path: Path) -> None:
    gateway = FakeGateway.make(tmp_path)
    answer = gateway.poll(fleet)
    assert answer.status_code == 202 and answer.json() == {"state": "unclaimed", "retry_after_s": 7.0}
    row = conn.execute("SELECT public_key, claim_code_sha256 FROM gateway_identities WHERE gateway_id = %s",
                       (gateway.gateway_id,)).fetchone()
    assert row is not None and bytes(row[0]) == gateway.identity.public_key_raw
    assert row[1] == gateway.identity.claim_code_sha256
    audited = conn.execute("SELECT subject, detail ->> 'event' FROM audit_log WHERE subject = %s",
                           (gateway.gateway_id,)).fetchall()
    assert audited == [(gateway.gateway_id, "identity pinned")]
    assert gateway.poll(fleet).status_code == 202  # a fresh nonce: fine


@pytest.mark.parametrize(("case", "status"), [
    ("not json", 400), ("json list", 400), ("missing nonce", 400), ("public key not base64", 400),
    ("short public key", 400), ("no signature", 401), ("another scheme", 401), ("signature of other bytes", 401),
    ("signed by another key", 401), ("body changed after signing", 401), ("naive time", 400),
    ("a service user's name", 400), ("a time with no UTC form", 400), ("arrays nested 30000 deep", 400),
    ("NUL in the software version", 400),
])
def test_a_bad_poll_is_a_4xx_problem_never_a_500(fleet: TestClient, tmp_path: Path, case: str, status: int) -> None:
    gateway = FakeGateway.make(tmp_path)
    body = gateway.body()
    headers = gateway.headers(body)
    if case == "not json":
        body = b"\xff{not json"
        headers = gateway.headers(body)
    elif case == "json list":
        body = b"[1, 2]"
        headers = gateway.headers(body)
    elif case == "missing nonce":
        document = json.loads(body)
        del document["nonce"]
        body = json.dumps(document).encode()
        headers = gateway.headers(body)
    elif case == "public key not base64":
        body = gateway.body(public_key="***")
        headers = gateway.headers(body)
    elif case == "short public key":
        body = gateway.body(public_key="AAAA")
        headers = gateway.headers(body)
    elif case == "no signature":
        del headers["X-RPM-Signature"]
    elif case == "another scheme":
        headers["X-RPM-Signature"] = headers["X-RPM-Signature"].replace("ed25519=", "hmac=")
    elif case == "signature of other bytes":
        headers = gateway.headers(body + b" ")
    elif case == "signed by another key":
        headers = FakeGateway.make(tmp_path).headers(body)
    elif case == "body changed after signing":
        body = body.replace(b'"nonce":"', b'"nonce":"0')
    elif case == "a service user's name":
        body = gateway.body(gateway_id="api")
        headers = gateway.headers(body)
    elif case == "naive time":
        body = gateway.body(at=datetime.now().isoformat())
        headers = gateway.headers(body)
    elif case == "a time with no UTC form":  # astimezone raises OverflowError
        body = gateway.body(at="9999-12-31T23:59:59-01:00")
        headers = gateway.headers(body)
    elif case == "arrays nested 30000 deep":  # json.loads raises RecursionError; within the body limit
        body = b"[" * 30_000
        headers = gateway.headers(body)
    elif case == "NUL in the software version":  # PostgreSQL text refuses it
        body = gateway.body(software_version="1.0\u0000")
        headers = gateway.headers(body)
    problem(fleet.post(POLL, content=body, headers=headers), status)


def test_a_replayed_poll_is_refused(fleet: TestClient, tmp_path: Path) -> None:
    gateway = FakeGateway.make(tmp_path)
    body = gateway.body()
    assert fleet.post(POLL, content=body, headers=gateway.headers(body)).status_code == 202
    assert "used before" in problem(fleet.post(POLL, content=body, headers=gateway.headers(body)), 401)["detail"]


@pytest.mark.parametrize("minutes", [-6, 6])
def test_a_poll_outside_the_clock_window_is_refused(fleet: TestClient, tmp_path: Path, minutes: int) -> None:
    gateway = FakeGateway.make(tmp_path)
    at = (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
    assert "clock" in problem(gateway.poll(fleet, at=at), 401)["detail"]
    near = (datetime.now(UTC) + timedelta(minutes=minutes * 4 / 6)).isoformat()
    assert gateway.poll(fleet, at=near).status_code == 202


def test_an_oversize_poll_is_refused_before_it_is_read(fleet: TestClient, tmp_path: Path) -> None:
    gateway = FakeGateway.make(tmp_path)
    body = gateway.body(software_version="x" * 70_000)
    problem(fleet.post(POLL, content=body, headers=gateway.headers(body)), 413)


def test_another_key_for_a_known_id_is_409_until_an_administrator_releases_it(
        fleet: TestClient, conn: psycopg.Connection, team: dict[str, Any], tmp_path: Path) -> None:
    first = claimed_gateway(fleet, team, tmp_path)
    impostor = FakeGateway.make(tmp_path, gateway_id=first.gateway_id)
    assert "another key" in problem(impostor.poll(fleet), 409)["detail"]
    assert problem(fleet.delete(f"/v1/gateways/{first.gateway_id}/identity", headers=team["nurse"]), 403)
    released = fleet.delete(f"/v1/gateways/{first.gateway_id}/identity", headers=team["admin"])
    assert released.status_code == 200, released.text
    assert released.json()["claim_released"] is True and released.json()["patient_id"] == team["patient"]
    # The new key is pinned, and its gateway is NOT the patient's: it must be claimed again.
    assert impostor.poll(fleet).status_code == 202
    assert problem(first.poll(fleet), 409)
    history = conn.execute("SELECT count(*) FROM gateway_identities WHERE gateway_id = %s", (first.gateway_id,)
                           ).fetchone()
    assert history == (2,)
    problem(fleet.delete("/v1/gateways/gw-never-seen-anywhere/identity", headers=team["admin"]), 404)


def test_polls_past_the_burst_get_429_with_retry_after(api_settings: CloudSettings, mqtt_broker: Any,
                                                       password_file: Path, tmp_path: Path) -> None:
    settings = fleet_settings(api_settings, mqtt_broker.url, password_file, bootstrap_poll_burst=3,
                              bootstrap_polls_per_s=0.01)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        gateway, other = FakeGateway.make(tmp_path), FakeGateway.make(tmp_path)
        assert [gateway.poll(client).status_code for _ in range(3)] == [202, 202, 202]
        refused = gateway.poll(client)
        problem(refused, 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert other.poll(client).status_code == 202  # one gateway's bucket is its own
        # Another key under the same id drains only its own bucket.
        assert problem(FakeGateway.make(tmp_path, gateway_id=gateway.gateway_id).poll(client), 409)


# ---------------------------------------------------------------------------------------------- claim

def test_claim_then_credentials_until_the_gateway_is_seen_using_them(
        fleet: TestClient, conn: psycopg.Connection, team: dict[str, Any], tmp_path: Path, password_file: Path) -> None:
    gateway = FakeGateway.make(tmp_path)
    assert gateway.poll(fleet).status_code == 202
    typed = gateway.identity.claim_code.lower().replace("-", " ").replace("0", "o").replace("1", "l")
    claimed = fleet.post("/v1/gateways/claim", json={"code": typed, "patient_id": team["patient"]},
                         headers=team["nurse"])
    assert claimed.status_code == 201, claimed.text
    assert claimed.json() == {"gateway_id": gateway.gateway_id, "patient_id": team["patient"],
                              "care_team_id": team["team"], "claimed": True}
    first = gateway.poll(fleet)
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["state"] == "provisioned" and answer["patient_id"] == team["patient"]
    mqtt_answer = answer["mqtt"]
    assert mqtt_answer["url"] == BROKER_FOR_GATEWAYS and mqtt_answer["username"] == gateway.gateway_id
    password = mqtt_answer["password"]
    line = next(x for x in password_file.read_text().splitlines() if x.startswith(gateway.gateway_id + ":"))
    assert check_mosquitto_hash(password, line.split(":", 1)[1])
    assert not check_mosquitto_hash(password + "x", line.split(":", 1)[1])
    # Until the gateway's status shows it connected, every poll carries the same password.
    assert gateway.poll(fleet).json()["mqtt"]["password"] == password
    report_status(conn, gateway.gateway_id)
    assert gateway.poll(fleet).json()["mqtt"] is None
    stored = conn.execute("SELECT pending_password, delivered_at FROM gateway_credentials WHERE gateway_id = %s",
                          (gateway.gateway_id,)).fetchone()
    assert stored is not None and stored[0] is None and stored[1] is not None
    assert password not in json.dumps(conn.execute("SELECT row_to_json(c) FROM gateway_credentials c"
                                                   " WHERE gateway_id = %s", (gateway.gateway_id,)).fetchone())
    # A broker that lost its file gets the line back when the refused gateway asks again.
    password_file.write_text("")
    assert gateway.poll(fleet).json()["mqtt"] is None
    assert line in password_file.read_text().splitlines()


def test_rotation_issues_a_new_password_and_revokes_the_old_once_the_gateway_is_back(
        fleet: TestClient, conn: psycopg.Connection, team: dict[str, Any], tmp_path: Path, password_file: Path) -> None:
    gateway = claimed_gateway(fleet, team, tmp_path)
    old = gateway.poll(fleet).json()["mqtt"]["password"]
    report_status(conn, gateway.gateway_id)
    rotated = fleet.post(f"/v1/gateways/{gateway.gateway_id}/credentials/rotate", headers=team["nurse"])
    assert rotated.status_code == 200, rotated.text
    line = next(x for x in password_file.read_text().splitlines() if x.startswith(gateway.gateway_id + ":"))
    assert not check_mosquitto_hash(old, line.split(":", 1)[1])
    new = gateway.poll(fleet).json()["mqtt"]["password"]
    assert new != old and check_mosquitto_hash(new, line.split(":", 1)[1])
    states = conn.execute("SELECT revoked_at IS NOT NULL FROM gateway_credentials WHERE gateway_id = %s ORDER BY id",
                          (gateway.gateway_id,)).fetchall()
    assert states == [(False,), (False,)]
    report_status(conn, gateway.gateway_id)
    states = conn.execute("SELECT revoked_at IS NOT NULL, delivered_at IS NOT NULL FROM gateway_credentials"
                          " WHERE gateway_id = %s ORDER BY id", (gateway.gateway_id,)).fetchall()
    assert states == [(True, True), (False, True)]
    problem(fleet.post(f"/v1/gateways/{gateway.gateway_id}/credentials/rotate", headers=team["patient_token"]), 403)


def test_a_claim_is_authorised_on_the_patient_before_the_code_is_looked_at(
        fleet: TestClient, conn: psycopg.Connection, team: dict[str, Any], tmp_path: Path, auth: TokenFactory) -> None:
    gateway = FakeGateway.make(tmp_path)
    assert gateway.poll(fleet).status_code == 202
    code = gateway.identity.claim_code
    # Another team's patient, a missing patient: 404 whatever the code; the patient themself: 403.
    hidden = problem(fleet.post("/v1/gateways/claim", json={"code": code, "patient_id": team["stranger"]},
                                headers=team["nurse"]), 404)
    missing = problem(fleet.post("/v1/gateways/claim", json={"code": "AAAA-AAAA-AAAA", "patient_id": "nobody-at-all"},
                                 headers=team["nurse"]), 404)
    assert hidden["detail"] == missing["detail"]
    problem(fleet.post("/v1/gateways/claim", json={"code": code, "patient_id": team["patient"]},
                       headers=team["patient_token"]), 403)
    wrong = problem(fleet.post("/v1/gateways/claim", json={"code": "ZZZZ-ZZZZ-ZZZZ", "patient_id": team["patient"]},
                               headers=team["nurse"]), 404)
    assert "no gateway waits" in wrong["detail"]
    assert conn.execute("SELECT count(*) FROM gateway_claims WHERE gateway_id = %s", (gateway.gateway_id,)
                        ).fetchone() == (0,)
    audited = conn.execute("SELECT outcome, patient_ids FROM audit_log WHERE action = 'POST /v1/gateways/claim'"
                           " AND subject = %s ORDER BY id", (f"{team['team'].removesuffix('-team')}-nurse",)).fetchall()
    assert [o for o, _ in audited] == ["not_found", "not_found", "not_found"]
    assert audited[0][1] == [team["stranger"]]


def test_wrong_claim_codes_are_rate_limited_per_caller(fleet: TestClient, team: dict[str, Any], tmp_path: Path,
                                                      auth: TokenFactory, unique_id: str) -> None:
    gateway = FakeGateway.make(tmp_path)
    assert gateway.poll(fleet).status_code == 202
    guesser = auth("care_team", sub=f"{unique_id}-guesser", care_teams=(team["team"],))
    for _ in range(10):
        code = "".join(secrets.choice("ABCDEFGHJKMNPQRSTVWXYZ") for _ in range(12))
        problem(fleet.post("/v1/gateways/claim", json={"code": code, "patient_id": team["patient"]}, headers=guesser),
                404)
    # Even the right code now waits: the limit is on the caller, not the code.
    right = {"code": gateway.identity.claim_code, "patient_id": team["patient"]}
    limited = fleet.post("/v1/gateways/claim", json=right, headers=guesser)
    problem(limited, 429)
    ok = fleet.post("/v1/gateways/claim", json=right, headers=team["nurse"])
    assert ok.status_code == 201, ok.text


def test_a_released_claim_keeps_its_history_and_the_gateway_waits_again(
        fleet: TestClient, conn: psycopg.Connection, team: dict[str, Any], tmp_path: Path, password_file: Path) -> None:
    gateway = claimed_gateway(fleet, team, tmp_path)
    assert gateway.poll(fleet).status_code == 200
    uid = f"ble:{secrets.token_hex(6).upper()}"
    confirmed = fleet.post(f"/v1/gateways/{gateway.gateway_id}/devices/{uid}/confirm", headers=team["nurse"])
    assert confirmed.status_code == 200, confirmed.text
    released = fleet.delete(f"/v1/gateways/{gateway.gateway_id}/claim", headers=team["nurse"])
    assert released.status_code == 200, released.text
    assert released.json()["devices_unpaired"] == [uid] and released.json()["config_version"] == 2
    # The next patient's box does not read (or file under this patient) the last one's cuff.
    assert conn.execute("SELECT count(*) FROM device_assignments WHERE device_uid = %s AND patient_id = %s"
                        " AND (valid_to IS NULL OR valid_to > now())", (uid, team["patient"])).fetchone() == (0,)
    devices = conn.execute("SELECT document -> 'devices' FROM gateway_configs WHERE gateway_id = %s AND version = 2",
                           (gateway.gateway_id,)).fetchone()
    assert devices == ({"confirmed": [], "ignored": [], "unpaired": [uid]},)
    assert gateway.poll(fleet).status_code == 202
    assert not any(x.startswith(gateway.gateway_id + ":") for x in password_file.read_text().splitlines())
    rows = conn.execute("SELECT patient_id, released_at IS NOT NULL FROM gateway_claims WHERE gateway_id = %s",
                        (gateway.gateway_id,)).fetchall()
    assert rows == [(team["patient"], True)]


# ---------------------------------------------------------------------------------------------- certificates

def make_ca(tmp: Path) -> tuple[Path, Path, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RPM gateway test CA")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "ca.crt", tmp / "ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, cert


def test_a_certificate_deployment_signs_the_gateways_csr_and_refuses_another_name(
        api_settings: CloudSettings, mqtt_broker: Any, password_file: Path, team: dict[str, Any],
        tmp_path: Path) -> None:
    ca_cert, ca_key, ca = make_ca(tmp_path)
    settings = fleet_settings(api_settings, mqtt_broker.url, password_file, gateway_credentials="certificate",
                              gateway_ca_cert=ca_cert, gateway_ca_key=ca_key)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        gateway = claimed_gateway(client, team, tmp_path)
        answer = gateway.poll(client).json()["mqtt"]
        assert "password" not in answer
        cert = x509.load_pem_x509_certificate(answer["client_cert_pem"].encode())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == gateway.gateway_id
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert timedelta(days=364) < lifetime < timedelta(days=366)
        csr_key = serialization.load_pem_private_key(gateway.client.client_key_path.read_bytes(), None)
        assert cert.public_key() == csr_key.public_key()  # type: ignore[union-attr]
        # A CSR for another gateway's name is refused.
        other = FakeGateway.make(tmp_path)
        claimed = claimed_gateway(client, team, tmp_path / "o")
        foreign = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, other.gateway_id)])).sign(ec.generate_private_key(ec.SECP256R1()),
                                                                              hashes.SHA256())
        refused = claimed.poll(client, csr=foreign.public_bytes(serialization.Encoding.PEM).decode())
        assert "common name" in problem(refused, 400)["detail"]


# ---------------------------------------------------------------------------------------------- remote config

class Retained:
    """The retained message on one gateway's config topic, read as a subscriber would."""

    def __init__(self, url: str, gateway_id: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.messages: list[dict[str, Any]] = []
        self.got = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cfg-{secrets.token_hex(4)}")
        self.client.on_connect = lambda c, *_: c.subscribe(config_topic(gateway_id), qos=1)

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            self.messages.append({"retain": message.retain, **json.loads(message.payload)})
            self.got.set()
        self.client.on_message = on_message
        self.client.connect(host, int(port))
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_a_config_is_validated_by_the_gateways_schema_versioned_and_published_retained(
        fleet: TestClient, conn: psycopg.Connection, team: dict[str, Any], tmp_path: Path, mqtt_broker: Any) -> None:
    gateway = claimed_gateway(fleet, team, tmp_path)
    path = f"/v1/gateways/{gateway.gateway_id}/config"
    bad = problem(fleet.put(path, json={"config": {"status_interval_s": -1}}, headers=team["nurse"]), 422)
    assert "status_interval_s" in bad["detail"]
    local_only = problem(fleet.put(path, json={"config": {"mqtt": {"ca_file": "/etc/passwd"}}}, headers=team["nurse"]),
                         422)
    assert "mqtt.ca_file" in local_only["detail"] and "own TOML" in local_only["detail"]
    problem(fleet.put(path, json={"config": {"nonsense": 1}}, headers=team["nurse"]), 422)
    problem(fleet.put(path, json={"config": {"status_interval_s": 5}}, headers=team["patient_token"]), 403)
    first = fleet.put(path, json={"config": {"status_interval_s": 5}, "reason": "faster"}, headers=team["nurse"])
    assert first.status_code == 200, first.text
    assert first.json()["version"] == 1 and first.json()["published"] is True
    second = fleet.put(path, json={"config": {"status_interval_s": 10}}, headers=team["admin"])
    assert second.json()["version"] == 2 and second.json()["acknowledged"] is False
    watcher = Retained(mqtt_broker.url, gateway.gateway_id)
    try:
        assert watcher.got.wait(10)
        assert watcher.messages[0] == {"retain": True, "version": 2, "config": {"status_interval_s": 10}}
    finally:
        watcher.close()
    # The gateway says it runs version 2: acknowledged; the bootstrap answer carries the same document.
    report_status(conn, gateway.gateway_id, config={"version": 2})
    got = fleet.get(path, headers=team["nurse"]).json()
    assert got["acknowledged"] is True and got["running_version"] == 2 and got["set_by"].endswith("-admin")
    answer = gateway.poll(fleet).json()
    assert (answer["config_version"], answer["config"]) == (2, {"status_interval_s": 10})
    audited = conn.execute("SELECT status, detail ->> 'version' FROM audit_log WHERE action = %s"
                           " AND %s = ANY(patient_ids) ORDER BY id", ("PUT /v1/gateways/{gateway_id}/config",
                                                                      team["patient"])).fetchall()
    assert [s for s, _ in audited] == [422, 422, 422, 403, 200, 200]
    assert [v for _, v in audited][-2:] == ["1", "2"]


def test_the_fleet_view_filters_and_shows_devices_candidates_and_problems(
        fleet: TestClient, conn: psycopg.Connection, team: dict[str, Any], tmp_path: Path, auth: TokenFactory,
        unique_id: str) -> None:
    quiet, busy = claimed_gateway(fleet, team, tmp_path / "q"), claimed_gateway(fleet, team, tmp_path / "b")
    heard = datetime.now(UTC).isoformat()
    report_status(conn, busy.gateway_id, outbox_depth=42, outbox_oldest_age_s=7200.0, version="0.9",
                  devices=[{"uid": "ble:AA", "profile": "ble.blood_pressure", "battery": 10}],
                  candidates=[{"uid": "ble:BB", "transport": "ble", "profile": "ble.weight_scale",
                               "first_heard": heard, "last_heard": heard}])
    report_status(conn, quiet.gateway_id)
    conn.execute("UPDATE gateways SET last_seen = now() - interval '2 days',"
                 " status = jsonb_set(status, '{online}', 'false') WHERE id = %s", (quiet.gateway_id,))
    listed = fleet.get("/v1/gateways", headers=team["nurse"]).json()["gateways"]
    mine = {g["gateway_id"]: g for g in listed}
    assert {quiet.gateway_id, busy.gateway_id} <= set(mine)
    b = mine[busy.gateway_id]
    assert (b["online"], b["outbox_depth"], b["software_version"], b["candidates_count"]) == (True, 42, "0.9", 1)
    assert b["devices"][0]["problems"] == ["battery_low"] and "device_problems" in b["problems"]
    assert b["since"] is not None and b["patient_id"] == team["patient"]
    assert mine[quiet.gateway_id]["state"] == "offline" and "not_online" in mine[quiet.gateway_id]["problems"]
    offline = fleet.get("/v1/gateways", params={"offline_over_s": 86400}, headers=team["nurse"]).json()["gateways"]
    assert {g["gateway_id"] for g in offline} & {quiet.gateway_id, busy.gateway_id} == {quiet.gateway_id}
    backlog = fleet.get("/v1/gateways", params={"backlog_over_s": 3600}, headers=team["nurse"]).json()["gateways"]
    assert {g["gateway_id"] for g in backlog} & {quiet.gateway_id, busy.gateway_id} == {busy.gateway_id}
    page = fleet.get("/v1/gateways", params={"limit": 1}, headers=team["admin"]).json()
    assert len(page["gateways"]) == 1 and page["next_offset"] == 1
    stranger = auth("clinician", sub=f"{unique_id}-elsewhere", care_teams=(f"{team['team']}-other",))
    seen = {g["gateway_id"] for g in fleet.get("/v1/gateways", headers=stranger).json()["gateways"]}
    assert not seen & {quiet.gateway_id, busy.gateway_id}
    problem(fleet.get(f"/v1/gateways/{busy.gateway_id}", headers=stranger), 404)
    problem(fleet.get(f"/v1/gateways/{busy.gateway_id}/candidates", headers=stranger), 404)
    candidates = fleet.get(f"/v1/gateways/{busy.gateway_id}/candidates", headers=team["patient_token"]).json()
    assert [c["uid"] for c in candidates["candidates"]] == ["ble:BB"]
    problem(fleet.get("/v1/gateways", headers=team["patient_token"]), 403)


def test_confirm_binds_and_assigns_to_the_gateways_patient_and_unpair_ends_it_with_history_kept(
        fleet: TestClient, conn: psycopg.Connection, team: dict[str, Any], tmp_path: Path) -> None:
    gateway = claimed_gateway(fleet, team, tmp_path)
    uid = f"ble:{secrets.token_hex(6).upper()}"
    usb = f"usb:0000:0000:{tmp_path}/ttyMeter"  # a port path: slashes in the uid
    base = f"/v1/gateways/{gateway.gateway_id}/devices"
    confirmed = fleet.post(f"{base}/{uid}/confirm", json={"user_index": 2}, headers=team["nurse"])
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["patient_id"] == team["patient"] and confirmed.json()["version"] == 1
    ignored = fleet.post(f"{base}/{usb}/ignore", headers=team["nurse"])
    assert ignored.status_code == 200 and ignored.json()["uid"] == usb, ignored.text
    bound = conn.execute("SELECT bound_gateway_id FROM devices WHERE uid = %s", (uid,)).fetchone()
    assert bound == (gateway.gateway_id,)
    assert conn.execute("SELECT patient_id, user_index FROM device_assignments WHERE device_uid = %s"
                        " AND valid_to IS NULL", (uid,)).fetchall() == [(team["patient"], 2)]
    document = fleet.get(f"/v1/gateways/{gateway.gateway_id}/config", headers=team["nurse"]).json()
    assert document["version"] == 2
    assert document["config"]["devices"] == {"confirmed": [{"uid": uid, "user_index": 2}], "ignored": [usb],
                                             "unpaired": []}
    unpaired = fleet.post(f"{base}/{uid}/unpair", headers=team["nurse"])
    assert unpaired.status_code == 200 and unpaired.json()["closed_assignments"] == 1, unpaired.text
    assert conn.execute("SELECT count(*) FROM device_assignments WHERE device_uid = %s AND valid_to IS NOT NULL",
                        (uid,)).fetchone() == (1,)
    devices = fleet.get(f"/v1/gateways/{gateway.gateway_id}/config", headers=team["nurse"]).json()["config"]["devices"]
    assert devices == {"confirmed": [], "ignored": [usb], "unpaired": [uid]}
    # The patient sees the gateway but does not decide for the care team; another team's member sees nothing.
    problem(fleet.post(f"{base}/{uid}/confirm", headers=team["patient_token"]), 403)
    assert fleet.get(f"/v1/gateways/{gateway.gateway_id}/config", headers=team["patient_token"]).status_code == 200
    problem(fleet.post(f"/v1/gateways/gw-nobody-knows/devices/{uid}/confirm", headers=team["admin"]), 404)
