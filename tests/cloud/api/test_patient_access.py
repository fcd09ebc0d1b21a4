"""Who sees my data and who looked, through the API over real PostgreSQL: a care team's invite code shared by the
patient (once, hashed, wrong guesses limited), a 30-day share that stops by itself, a revocation the team's next
request already sees, the access log in plain words and paged, single-use first-time links, the request to close
the account, /v1/me, the development provider's patient sign-in, and hostile input answered 4xx, never 500."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import psycopg
import pytest
from fastapi.testclient import TestClient

from cloud.api import patient_queries
from cloud.api.app import create_app
from cloud.api.routes.patient_access import normalise_invite_code
from cloud.demo.oidc import DevOpenIdProvider, DevUser
from cloud.settings import CloudSettings
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, now
from tests.cloud.api.conftest import TokenFactory, grant
from tests.cloud.api.test_oidc_signin import pkce

pytestmark = pytest.mark.integration
CODE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")


class Clinic:
    """A patient with a cuff and readings, two care teams (North, South), a named clinician in each."""

    def __init__(self, conn: psycopg.Connection, auth: TokenFactory, unique_id: str) -> None:
        self.conn = conn
        self.pid = f"{unique_id}-pt"
        self.devices = add_patient(conn, self.pid)
        ingest(conn, [bp(self.devices["blood_pressure"], now() - timedelta(hours=d), 128, 80) for d in (30, 20, 2)],
               self.pid)
        self.north, self.south = f"{unique_id}-north", f"{unique_id}-south"
        conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Team North'), (%s, 'Team South')",
                     (self.north, self.south))
        self.ada, self.bo = f"{unique_id}-ada", f"{unique_id}-bo"
        conn.execute("INSERT INTO care_team_members (care_team_id, subject, role) VALUES (%s, %s, 'clinician'),"
                     " (%s, %s, 'care_team')", (self.north, self.ada, self.south, self.bo))
        patient_queries.name_member(conn, self.north, self.ada, "Dr Ada")
        self.patient = auth("patient", patient=self.pid)
        self.dr_ada = auth("clinician", sub=self.ada, care_teams=(self.north,))
        self.nurse_bo = auth("care_team", sub=self.bo, care_teams=(self.south,))

    def invite(self, client: TestClient, headers: dict[str, str] | None = None, team: str | None = None) -> str:
        response = client.post(f"/v1/care-teams/{team or self.north}/invites", json={"expires_in_days": 7},
                               headers=headers or self.dr_ada)
        assert response.status_code == 201, response.text
        return response.json()["code"]

    def share(self, client: TestClient, code: str, **extra: object) -> httpx.Response:
        return client.post(f"/v1/patients/{self.pid}/consents", json={"invite_code": code, **extra},
                           headers=self.patient)

    def readings(self, client: TestClient, headers: dict[str, str]) -> int:
        return client.get(f"/v1/patients/{self.pid}/readings", headers=headers).status_code


@pytest.fixture
def clinic(conn: psycopg.Connection, auth: TokenFactory, unique_id: str) -> Clinic:
    return Clinic(conn, auth, unique_id)


def test_an_invite_code_shares_with_its_team_once_and_is_stored_hashed(client: TestClient, clinic: Clinic) -> None:
    code = clinic.invite(client)
    assert CODE.match(code)
    stored = clinic.conn.execute("SELECT code_hash, care_team_id, created_by FROM care_team_invites"
                                 " WHERE care_team_id = %s", (clinic.north,)).fetchall()
    assert stored == [(hashlib.sha256(code.replace("-", "").encode()).hexdigest(), clinic.north, clinic.ada)]
    assert clinic.readings(client, clinic.dr_ada) == 404  # nothing shared yet

    # Typed as people type it: lower case, a space for the dash.
    shared = clinic.share(client, code.lower().replace("-", " "))
    assert shared.status_code == 201, shared.text
    consent = shared.json()
    assert consent["care_team_id"] == clinic.north and consent["scopes"] == ["alerts", "readings", "twin"]
    assert clinic.readings(client, clinic.dr_ada) == 200
    assert clinic.readings(client, clinic.nurse_bo) == 404  # the code was North's, not South's
    again = clinic.share(client, code)
    assert again.status_code == 422 and again.json()["type"] == "/problems/invalid-invite-code"

    access = client.get(f"/v1/patients/{clinic.pid}/access", headers=clinic.patient).json()
    [north] = access["grants"]
    assert (north["consent_id"], north["care_team_name"]) == (consent["id"], "Team North")
    assert north["scopes_text"] == "readings, alerts and your record summary"
    assert north["members"] == [{"subject": clinic.ada, "name": "Dr Ada", "role": "clinician"}]
    assert access["past"] == []
    # The grant is audited with the invite and the consent it made, never the code itself.
    (detail,) = clinic.conn.execute(
        "SELECT detail FROM audit_log WHERE patient_ids @> ARRAY[%s] AND action LIKE 'POST %%consents'"
        " AND outcome = 'allowed'", (clinic.pid,)).fetchone()
    assert detail["consent_id"] == consent["id"] and detail["care_team_id"] == clinic.north
    assert code.replace("-", "") not in str(detail) and code not in str(detail)


def test_wrong_invite_codes_are_limited_per_patient(client: TestClient, clinic: Clinic, conn: psycopg.Connection,
                                                     auth: TokenFactory, unique_id: str) -> None:
    code = clinic.invite(client)
    wrong = "0000-0000" if code != "0000-0000" else "1111-1111"
    malformed = clinic.share(client, "no code!")
    assert malformed.status_code == 422  # cannot be a code: not a guess, not counted
    for _ in range(5):  # RPM_INVITE_ATTEMPTS_MAX
        answer = clinic.share(client, wrong)
        assert answer.status_code == 422 and answer.json()["type"] == "/problems/invalid-invite-code"
    limited = clinic.share(client, code)  # even the right code, until the window has passed
    assert limited.status_code == 429 and limited.json()["type"] == "/problems/too-many-attempts"
    assert 0 < int(limited.headers["Retry-After"]) <= 900
    assert conn.execute("SELECT used_at FROM care_team_invites WHERE care_team_id = %s",
                        (clinic.north,)).fetchone() == (None,)
    # Another patient is not held back by this one's guesses.
    other = f"{unique_id}-other"
    add_patient(conn, other)
    other_try = client.post(f"/v1/patients/{other}/consents", json={"invite_code": wrong},
                            headers=auth("patient", patient=other))
    assert other_try.status_code == 422
    # The window passes (the attempts made a quarter of an hour earlier): the right code works.
    conn.execute("UPDATE invite_code_attempts SET at = at - interval '16 minutes' WHERE patient_id = %s",
                 (clinic.pid,))
    assert clinic.share(client, code).status_code == 201
    counted = conn.execute("SELECT count(*) FILTER (WHERE NOT ok), count(*) FILTER (WHERE ok)"
                           " FROM invite_code_attempts WHERE patient_id = %s", (clinic.pid,)).fetchone()
    assert counted == (5, 1)


def test_concurrent_wrong_guesses_cannot_overrun_the_limit(client: TestClient, clinic: Clinic,
                                                           conn: psycopg.Connection) -> None:
    # Twelve guesses at once: the per-patient lock counts them one after another, so exactly five are tried.
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda i: clinic.share(client, f"{i:04d}-0000").status_code, range(12)))
    assert sorted(answers) == [422] * 5 + [429] * 7
    assert conn.execute("SELECT count(*) FROM invite_code_attempts WHERE patient_id = %s",
                        (clinic.pid,)).fetchone() == (5,)


def test_an_expired_invite_code_shares_nothing(client: TestClient, clinic: Clinic, conn: psycopg.Connection) -> None:
    code = clinic.invite(client)
    conn.execute("UPDATE care_team_invites SET created_at = now() - interval '9 days',"
                 " expires_at = now() - interval '1 second' WHERE care_team_id = %s", (clinic.north,))
    assert clinic.share(client, code).status_code == 422
    assert clinic.readings(client, clinic.dr_ada) == 404


def test_a_30_day_share_stops_by_itself(client: TestClient, clinic: Clinic, conn: psycopg.Connection) -> None:
    until = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    shared = clinic.share(client, clinic.invite(client), scopes=["readings"], expires_at=until)
    assert shared.status_code == 201, shared.text
    consent = shared.json()
    assert consent["scopes"] == ["readings"]
    assert clinic.readings(client, clinic.dr_ada) == 200
    assert client.get(f"/v1/patients/{clinic.pid}/twin", headers=clinic.dr_ada).status_code == 404  # not shared
    # Thirty days pass.
    conn.execute("UPDATE consents SET granted_at = now() - interval '30 days', expires_at = now() - interval '1 second'"
                 " WHERE id = %s", (consent["id"],))
    assert clinic.readings(client, clinic.dr_ada) == 404
    access = client.get(f"/v1/patients/{clinic.pid}/access", headers=clinic.patient).json()
    assert access["grants"] == []
    [past] = access["past"]
    assert past["consent_id"] == consent["id"] and past["revoked_at"] is None and past["scopes_text"] == "readings"


def test_revoking_stops_that_team_on_its_next_request(client: TestClient, clinic: Clinic,
                                                      conn: psycopg.Connection) -> None:
    north = clinic.share(client, clinic.invite(client)).json()
    south = clinic.share(client, clinic.invite(client, clinic.nurse_bo, clinic.south)).json()
    assert clinic.readings(client, clinic.dr_ada) == clinic.readings(client, clinic.nurse_bo) == 200
    revoked = client.delete(f"/v1/patients/{clinic.pid}/consents/{north['id']}", headers=clinic.patient)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert clinic.readings(client, clinic.dr_ada) == 404
    assert clinic.readings(client, clinic.nurse_bo) == 200
    access = client.get(f"/v1/patients/{clinic.pid}/access", headers=clinic.patient).json()
    assert [g["consent_id"] for g in access["grants"]] == [south["id"]]
    assert [(p["consent_id"], p["revoked_at"] is not None) for p in access["past"]] == [(north["id"], True)]
    detail = conn.execute("SELECT detail FROM audit_log WHERE action = 'DELETE /v1/patients/{patient_id}/consents/"
                          "{consent_id}' AND patient_ids @> ARRAY[%s]", (clinic.pid,)).fetchone()
    assert detail == ({"consent_id": north["id"]},)


def test_the_access_log_says_who_looked_at_what_in_plain_words(client: TestClient, clinic: Clinic,
                                                               auth: TokenFactory) -> None:
    clinic.share(client, clinic.invite(client))
    assert client.get(f"/v1/patients/{clinic.pid}/summaries/blood-pressure", headers=clinic.dr_ada).status_code == 200
    assert clinic.readings(client, clinic.nurse_bo) == 404  # South has no share: refused
    assert client.get(f"/v1/patients/{clinic.pid}/overview", headers=clinic.patient).status_code == 200  # not listed
    log = client.get(f"/v1/patients/{clinic.pid}/access-log", headers=clinic.patient)
    assert log.status_code == 200
    entries = log.json()["entries"]
    assert [(e["who"], e["what"], e["outcome_text"]) for e in entries[:2]] == [
        (clinic.bo, "your readings", "was refused"),  # South never had a share: its name is not the patient's to see
        ("Dr Ada (Team North)", "your blood pressure readings", "looked"),
    ]
    assert all("patient" not in e["who"].lower() for e in entries)
    # Paged: one entry a page, the second page starts after the first.
    first = client.get(f"/v1/patients/{clinic.pid}/access-log", params={"limit": 1}, headers=clinic.patient).json()
    assert first["entries"] == entries[:1] and first["next_before"] is not None
    second = client.get(f"/v1/patients/{clinic.pid}/access-log", params={"limit": 1, "before": first["next_before"]},
                        headers=clinic.patient).json()
    assert second["entries"] == entries[1:2]
    # Only the patient reads it.
    assert client.get(f"/v1/patients/{clinic.pid}/access-log", headers=clinic.dr_ada).status_code == 404


def test_a_first_time_link_signs_the_patient_in_once(client: TestClient, clinic: Clinic,
                                                      conn: psycopg.Connection) -> None:
    grant(conn, clinic.pid, clinic.north, ["readings"])
    made = client.post(f"/v1/patients/{clinic.pid}/first-time-links", headers=clinic.dr_ada)
    assert made.status_code == 201, made.text
    url = made.json()["url"]
    assert url.startswith("http://127.0.0.1:8080/ui/me#first-time=")
    expires = datetime.fromisoformat(made.json()["expires_at"])
    assert timedelta(hours=23, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=24)
    token = url.split("#first-time=", 1)[1]
    assert conn.execute("SELECT count(*) FROM first_time_links WHERE token_hash = %s",
                        (hashlib.sha256(token.encode()).hexdigest(),)).fetchone() == (1,)

    redeemed = client.post(f"/v1/first-time-links/{token}/redeem")
    assert redeemed.status_code == 200, redeemed.text
    body = redeemed.json()
    assert body["patient_id"] == clinic.pid and body["expires_in"] == 900
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert client.get(f"/v1/patients/{clinic.pid}/overview", headers=bearer).status_code == 200
    assert client.get("/v1/me", headers=bearer).json()["patient_id"] == clinic.pid
    # Whoever holds the link (the clinician who made it, too) may look, never change who sees the record.
    before = conn.execute("SELECT count(*) FROM consents WHERE patient_id = %s", (clinic.pid,)).fetchone()
    for method, path, body in (
            ("POST", f"/v1/patients/{clinic.pid}/consents", {"care_team_id": clinic.south, "scopes": ["readings"]}),
            ("DELETE", f"/v1/patients/{clinic.pid}/consents/1", None),
            ("POST", f"/v1/patients/{clinic.pid}/closure-request", {"reason": "x"})):
        refused = client.request(method, path, json=body, headers=bearer)
        assert refused.status_code == 403, (method, path, refused.text)
    assert conn.execute("SELECT count(*) FROM consents WHERE patient_id = %s", (clinic.pid,)).fetchone() == before
    again = client.post(f"/v1/first-time-links/{token}/redeem")
    assert again.status_code == 410 and again.json()["type"] == "/problems/link-gone"
    # Both uses audited, naming the patient, without a bearer token.
    rows = conn.execute("SELECT role, outcome, status FROM audit_log WHERE action = 'POST /v1/first-time-links/{token}"
                        "/redeem' AND patient_ids @> ARRAY[%s] ORDER BY id", (clinic.pid,)).fetchall()
    assert rows == [("link", "allowed", 200), ("link", "refused", 410)]
    log = client.get(f"/v1/patients/{clinic.pid}/access-log", headers=clinic.patient).json()["entries"]
    assert ("Someone with your first-time sign-in link", "signed in with a first-time link", "changed") in [
        (e["who"], e["what"], e["outcome_text"]) for e in log]

    # Expired before use: 410 as well; unknown: 404; not a token at all: 422.
    late = client.post(f"/v1/patients/{clinic.pid}/first-time-links", json={"expires_in_hours": 1},
                       headers=clinic.dr_ada).json()["url"].split("#first-time=", 1)[1]
    conn.execute("UPDATE first_time_links SET created_at = now() - interval '2 hours',"
                 " expires_at = now() - interval '1 second' WHERE token_hash = %s",
                 (hashlib.sha256(late.encode()).hexdigest(),))
    assert client.post(f"/v1/first-time-links/{late}/redeem").status_code == 410
    assert client.post(f"/v1/first-time-links/{'x' * 43}/redeem").status_code == 404
    assert client.post("/v1/first-time-links/bad%20token%21%21%21%21%21%21%21%21%21%21%21/redeem").status_code == 422
    # Made by the care team only: the patient sees the record but may not (403); another team: 404.
    assert client.post(f"/v1/patients/{clinic.pid}/first-time-links", headers=clinic.patient).status_code == 403
    assert client.post(f"/v1/patients/{clinic.pid}/first-time-links", headers=clinic.nurse_bo).status_code == 404


def test_redeeming_is_refused_before_use_where_an_external_issuer_signs_tokens(
        api_settings: CloudSettings, clinic: Clinic, conn: psycopg.Connection) -> None:
    token = "t" * 43
    patient_queries.create_first_time_link(conn, clinic.pid, hashlib.sha256(token.encode()).hexdigest(), "dr",
                                           datetime.now(UTC) + timedelta(hours=1))
    settings = api_settings.model_copy(update={"oidc_issuer": "http://127.0.0.1:9"})
    with TestClient(create_app(settings), raise_server_exceptions=False) as issuer_client:
        answer = issuer_client.post(f"/v1/first-time-links/{token}/redeem")
    assert answer.status_code == 503 and answer.json()["type"] == "/problems/first-time-links-unavailable"
    assert conn.execute("SELECT used_at FROM first_time_links WHERE patient_id = %s",
                        (clinic.pid,)).fetchone() == (None,)  # still usable where it can be honoured


def test_with_its_own_key_the_api_honours_first_time_links_beside_an_external_issuer(
        api_settings: CloudSettings, clinic: Clinic, conn: psycopg.Connection) -> None:
    token = "k" * 43
    patient_queries.create_first_time_link(conn, clinic.pid, hashlib.sha256(token.encode()).hexdigest(), "dr",
                                           datetime.now(UTC) + timedelta(hours=1))
    key = "first-time-key-for-tests-0123456789abcdef"
    settings = api_settings.model_copy(update={"oidc_issuer": "http://127.0.0.1:9", "jwt_dev_key": None,
                                               "first_time_key": key})
    with TestClient(create_app(settings), raise_server_exceptions=False) as issuer_client:
        answer = issuer_client.post(f"/v1/first-time-links/{token}/redeem")
        assert answer.status_code == 200, answer.text
        bearer = {"Authorization": f"Bearer {answer.json()['access_token']}"}
        assert issuer_client.get(f"/v1/patients/{clinic.pid}/overview", headers=bearer).status_code == 200
        # The key signs a patient's token and nothing else, and only with this key.
        now = int(datetime.now(UTC).timestamp())
        forged = {"sub": "dr", "role": "clinician", "care_teams": [clinic.north], "iss": "rpm-api:first-time-link",
                  "aud": settings.jwt_audience, "iat": now, "exp": now + 60}
        as_clinician = jwt.encode(forged, key, algorithm="HS256", headers={"kid": "rpm-first-time"})
        other_key = jwt.encode({**forged, "role": "patient", "patient": clinic.pid, "sub": clinic.pid},
                               "another-key-another-key-another-key!!", algorithm="HS256",
                               headers={"kid": "rpm-first-time"})
        for refused in (as_clinician, other_key):
            got = issuer_client.get(f"/v1/patients/{clinic.pid}/overview",
                                    headers={"Authorization": f"Bearer {refused}"})
            assert got.status_code == 401, got.text


def test_a_closure_request_says_what_is_kept_and_is_made_once(client: TestClient, clinic: Clinic,
                                                              conn: psycopg.Connection) -> None:
    path = f"/v1/patients/{clinic.pid}/closure-request"
    before = client.get(path, headers=clinic.patient).json()
    assert before["status"] == "none" and before["requested_at"] is None
    assert any("law on medical records" in kept for kept in before["kept"])
    assert any("log of who looked" in kept for kept in before["kept"]) and before["removed"]
    asked = client.post(path, json={"reason": "  moving abroad  "}, headers=clinic.patient)
    assert asked.status_code == 202 and asked.json()["status"] == "pending"
    assert asked.json()["reason"] == "moving abroad"
    twice = client.post(path, headers=clinic.patient)
    assert twice.status_code == 202 and twice.json()["requested_at"] == asked.json()["requested_at"]
    assert client.get(path, headers=clinic.patient).json()["requested_at"] == asked.json()["requested_at"]
    assert conn.execute("SELECT count(*) FROM closure_requests WHERE patient_id = %s", (clinic.pid,)).fetchone() == (1,)
    assert client.post(path, headers=clinic.dr_ada).status_code == 404
    assert client.post(path, json={"reason": "x" * 2001}, headers=clinic.patient).status_code == 422
    assert client.post(path, json={"reason": "a\u0000b"}, headers=clinic.patient).status_code == 422


def test_me_says_who_the_token_is(client: TestClient, clinic: Clinic, auth: TokenFactory,
                                  conn: psycopg.Connection) -> None:
    me = client.get("/v1/me", headers=clinic.patient).json()
    assert me == {"role": "patient", "subject": clinic.pid, "name": None, "patient_id": clinic.pid,
                  "display_name": f"Patient {clinic.pid}", "timezone": "UTC"}
    doctor = client.get("/v1/me", headers=clinic.dr_ada).json()
    assert (doctor["role"], doctor["subject"], doctor.get("patient_id")) == ("clinician", clinic.ada, None)
    assert client.get("/v1/me", headers=auth("gateway", sub="gw-1")).status_code == 403
    assert client.get("/v1/me").status_code == 401
    audited = conn.execute("SELECT role FROM audit_log WHERE action = 'GET /v1/me' AND subject = ANY(%s)"
                           " ORDER BY id", ([clinic.pid, clinic.ada],)).fetchall()
    assert audited == [("patient",), ("clinician",)]


def test_hostile_input_gets_a_typed_4xx_never_a_500(client: TestClient, clinic: Clinic, auth: TokenFactory) -> None:
    consents = f"/v1/patients/{clinic.pid}/consents"
    cases = [
        ("POST", consents, {"invite_code": "ABCD-EFGH", "care_team_id": clinic.north, "scopes": ["readings"]}, 422),
        ("POST", consents, {}, 422),
        ("POST", consents, {"care_team_id": clinic.north}, 422),  # the id form still needs scopes
        ("POST", consents, {"invite_code": "A" * 41}, 422),
        ("POST", consents, {"invite_code": "ABCD-EFGH", "scopes": ["everything"]}, 422),
        ("POST", consents, {"invite_code": "ABCD-EFGH", "expires_at": "2001-01-01T00:00:00Z"}, 422),
        ("POST", consents, {"invite_code": "ABCD-EFGH", "expires_at": "2099-01-01T00:00:00"}, 422),  # no zone
        ("POST", consents, {"invite_code": "ÅBCD-EFGH"}, 422),
        ("DELETE", f"{consents}/abc", None, 422),
        ("DELETE", f"{consents}/999999999", None, 404),
        ("GET", f"/v1/patients/{clinic.pid}/access-log?before=0", None, 422),
        ("GET", f"/v1/patients/{clinic.pid}/access-log?limit=100000", None, 422),
        ("GET", f"/v1/patients/{clinic.pid}/access-log?before=abc", None, 422),
        ("GET", f"/v1/patients/{'x' * 500}/overview", None, 404),
        ("GET", "/v1/patients/%27%3B%20DROP%20TABLE%20consents%3B--/access", None, 404),
    ]
    for method, path, body, want in cases:
        response = client.request(method, path, json=body, headers=clinic.patient)
        assert response.status_code == want, f"{method} {path} {body}: {response.status_code} {response.text[:200]}"
        assert response.headers["content-type"].startswith("application/problem+json")
    invites = f"/v1/care-teams/{clinic.north}/invites"
    for body, want in (({"expires_in_days": 0}, 422), ({"expires_in_days": 91}, 422), ({"expires_in_days": "x"}, 422)):
        assert client.post(invites, json=body, headers=clinic.dr_ada).status_code == want
    assert client.post(invites, headers=clinic.nurse_bo).status_code == 403  # not South's clinician's team
    assert client.post(invites, headers=clinic.patient).status_code == 403
    ghost = f"{clinic.north}-ghost"
    assert client.post(f"/v1/care-teams/{ghost}/invites",
                       headers=auth("clinician", sub="dr", care_teams=(ghost,))).status_code == 404
    links = f"/v1/patients/{clinic.pid}/first-time-links"
    grant(clinic.conn, clinic.pid, clinic.north, ["readings"])
    for body in ({"expires_in_hours": 0}, {"expires_in_hours": 73}, {"expires_in_hours": "soon"}, [1, 2]):
        answer = client.post(links, json=body, headers=clinic.dr_ada)
        assert answer.status_code == 422, f"{body}: {answer.text[:200]}"


@pytest.mark.unit
def test_invite_codes_are_read_the_crockford_way() -> None:
    assert normalise_invite_code(" abcd-efgh ") == "ABCDEFGH"
    assert normalise_invite_code("OIL0-1234") == "0110" + "1234"  # O -> 0, I and L -> 1
    for bad in ("ABCD-EFG", "ABCD-EFGHJ", "ABCU-EFGH", "ABCD_EFGH", "", "ÅBCD-EFGH"):
        assert normalise_invite_code(bad) is None, bad


# --- the development provider's patient -----------------------------------------------------------------

@pytest.fixture
def patient_provider(unique_id: str) -> Iterator[tuple[DevOpenIdProvider, DevUser]]:
    clinician = DevUser("dr.demo", role="clinician", care_teams=("t",), name="Dr Demo")
    patient = DevUser(f"{unique_id}-pt", role="patient", patient=f"{unique_id}-pt", name="Ana Souza")
    with DevOpenIdProvider([clinician, patient], audience="rpm-api",
                           redirect_uris=("http://127.0.0.1:9/ui", "http://127.0.0.1:9/ui/me")) as provider:
        yield provider, patient


def test_the_development_provider_signs_a_patient_in_by_their_link(
        patient_provider: tuple[DevOpenIdProvider, DevUser], api_settings: CloudSettings, clinic: Clinic) -> None:
    provider, patient = patient_provider
    page = "http://127.0.0.1:9/ui/me"
    http = httpx.Client(base_url=provider.issuer, timeout=5)
    # The link names the patient and a registered page, never any other address.
    evil = http.get("/login", params={"login_hint": patient.sub, "return_to": "http://evil.example/"})
    assert evil.status_code == 400 and "location" not in evil.headers
    assert http.get("/login", params={"login_hint": "nobody", "return_to": page}).status_code == 400
    login = http.get("/login", params={"login_hint": patient.sub, "return_to": page})
    assert login.status_code == 302 and login.headers["location"] == page
    assert provider.login_url(patient.sub, page) == str(login.request.url)
    # The page's own authorization request (no hint) then finds the patient's provider session.
    verifier, challenge = pkce()
    code = http.get("/authorize", params={"response_type": "code", "client_id": "rpm-ui", "redirect_uri": page,
                                          "scope": "openid profile", "state": "s", "nonce": "n",
                                          "code_challenge": challenge, "code_challenge_method": "S256"})
    assert code.status_code == 302, code.text
    got = parse_qs(urlsplit(code.headers["location"]).query)
    tokens = http.post("/token", data={"grant_type": "authorization_code", "code": got["code"][0],
                                       "redirect_uri": page, "client_id": "rpm-ui", "code_verifier": verifier}).json()
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert (claims["role"], claims["patient"], claims["name"]) == ("patient", patient.sub, "Ana Souza")
    id_claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert id_claims["sub"] == patient.sub
    # The API, trusting this provider, knows the patient and their record.
    settings = api_settings.model_copy(update={"oidc_issuer": provider.issuer, "jwt_dev_key": None})
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        me = api.get("/v1/me", headers=bearer).json()
        assert (me["role"], me["patient_id"], me["name"], me["display_name"]) == (
            "patient", clinic.pid, "Ana Souza", f"Patient {clinic.pid}")
        assert api.get(f"/v1/patients/{clinic.pid}/overview", headers=bearer).status_code == 200


def test_the_patient_takes_their_data_as_fhir_and_formula_safe_csv(client: TestClient, clinic: Clinic,
                                                                   conn: psycopg.Connection) -> None:
    # A device string a spreadsheet would run as a formula: the patient's CSV makes it inert text.
    conn.execute("UPDATE devices SET model = %s WHERE uid = %s", ('=HYPERLINK("http://evil.example")',
                                                                  clinic.devices["blood_pressure"]))
    exported = client.get(f"/v1/patients/{clinic.pid}/readings", params={"format": "csv"}, headers=clinic.patient)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == 9  # three cuff readings, three values each
    assert {r["device_model"] for r in rows} == {"'=HYPERLINK(\"http://evil.example\")"}
    bundle = client.get(f"/fhir/Patient/{clinic.pid}/$everything", headers=clinic.patient)
    assert bundle.status_code == 200
    resources = [e["resource"]["resourceType"] for e in bundle.json()["entry"]]
    assert bundle.json()["resourceType"] == "Bundle" and "Patient" in resources
    assert resources.count("Observation") >= 3
