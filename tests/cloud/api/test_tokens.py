"""Bearer tokens: dev tokens (HS256) from ``rpm-cloud token``, and production verification against a
JWKS served over real HTTP (issuer, audience, expiry, leeway; the dev key is then refused)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from cloud.api.tokens import TokenError, TokenVerifier, mint_token, parse_ttl
from cloud.cli import main as rpm_cloud
from cloud.settings import CloudSettings

pytestmark = pytest.mark.unit
DEV = CloudSettings(jwt_dev_key="unit-test-key-0123456789abcdef0123")


def test_dev_token_round_trips_its_claims() -> None:
    token = mint_token(DEV, role="clinician", sub="dr.who", care_teams=["cardio", "renal"])
    principal = TokenVerifier(DEV).verify(token)
    assert (principal.subject, principal.role, principal.care_teams) == ("dr.who", "clinician", ("cardio", "renal"))
    assert principal.patient_id is None


def test_patient_token_owns_its_record() -> None:
    principal = TokenVerifier(DEV).verify(mint_token(DEV, role="patient", sub="login-7", patient="p-7"))
    assert principal.patient_id == "p-7"


@pytest.mark.parametrize("change", ["expired", "audience", "issuer", "key", "role"])
def test_bad_tokens_are_refused(change: str) -> None:
    now = time.time()
    settings = DEV
    claims = {"sub": "x", "role": "clinician", "iss": DEV.jwt_issuer, "aud": DEV.jwt_audience, "iat": int(now),
              "exp": int(now) + 60}
    key = DEV.jwt_dev_key
    if change == "expired":
        claims["exp"] = int(now) - DEV.jwt_leeway_s - 5
    elif change == "audience":
        claims["aud"] = "someone-else"
    elif change == "issuer":
        claims["iss"] = "evil"
    elif change == "key":
        key = "another-key-entirely-0123456789abcdef"
    elif change == "role":
        claims["role"] = "superuser"
    with pytest.raises(TokenError):
        TokenVerifier(settings).verify(jwt.encode(claims, key, algorithm="HS256"))


def test_leeway_accepts_a_token_just_expired() -> None:
    token = mint_token(DEV, role="admin", sub="ops", ttl_s=1, now=time.time() - 10)
    assert TokenVerifier(DEV).verify(token).role == "admin"  # 9 s late, leeway 30 s


def test_without_any_key_configured_every_token_is_refused() -> None:
    token = mint_token(DEV, role="admin", sub="ops")
    with pytest.raises(TokenError):
        TokenVerifier(CloudSettings(jwt_dev_key=None, jwt_jwks_url=None)).verify(token)


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[tuple[str, rsa.RSAPrivateKey]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    document = json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json", key
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_production_tokens_verify_against_the_issuers_jwks(jwks_server: tuple[str, rsa.RSAPrivateKey]) -> None:
    url, key = jwks_server
    settings = CloudSettings(jwt_jwks_url=url, jwt_issuer="https://idp.example", jwt_audience="rpm-api",
                             jwt_dev_key=DEV.jwt_dev_key)
    now = int(time.time())
    claims = {"sub": "nurse-1", "role": "care_team", "care_team": "renal", "iss": "https://idp.example",
              "aud": "rpm-api", "iat": now, "exp": now + 300}
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
    principal = TokenVerifier(settings).verify(token)
    assert principal.role == "care_team" and principal.care_teams == ("renal",)
    # With a JWKS configured, a token signed with the dev key is not accepted.
    dev_token = mint_token(settings, role="admin", sub="ops")
    with pytest.raises(TokenError):
        TokenVerifier(settings).verify(dev_token)


def test_ttl_parsing() -> None:
    assert [parse_ttl(t) for t in ("900", "15m", "8h", "2d")] == [900, 900, 28800, 172800]


def test_token_command_prints_a_verifiable_token(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from cloud.settings import get_settings

    monkeypatch.setenv("RPM_JWT_DEV_KEY", DEV.jwt_dev_key or "")
    get_settings.cache_clear()
    try:
        assert rpm_cloud(["token", "--role", "clinician", "--care-team", "cardio", "--sub", "dr.k", "--ttl", "1h"]) == 0
        token = capsys.readouterr().out.strip()
        principal = TokenVerifier(get_settings()).verify(token)
        assert (principal.subject, principal.care_teams) == ("dr.k", ("cardio",))
        assert rpm_cloud(["token", "--role", "clinician"]) == 2  # a clinician token needs a care team
    finally:
        get_settings.cache_clear()
