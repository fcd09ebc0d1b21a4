"""The EHR the push tests send to: ``server.mjs`` (@medplum/fhir-router over its MemoryRepository, a SMART
Backend Services token endpoint verifying client assertions with jose), pinned in tests/ehr_server/package.json
and its package-lock.json. ``ehr_server`` is a session fixture: it installs the packages with ``npm ci --prefix
tests/ehr_server`` when ``node_modules`` is missing and npm exists, else skips with the reason (as
tests/fhir_validator/medplum.py), registers a fresh EC P-384 and RSA key pair, starts Node on a free port and
stops it after the session. Tests reset its store with :meth:`EhrServer.reset`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

HERE = Path(__file__).resolve().parent
ROUTER = HERE / "node_modules" / "@medplum" / "fhir-router" / "package.json"
NPM_TIMEOUT_S = 300
CLIENT_ID = "rpm-push-test"


@dataclass
class EhrServer:
    base: str
    client_id: str
    ec_key_file: Path
    rsa_key_file: Path
    ec_kid: str
    rsa_kid: str

    @property
    def fhir_url(self) -> str:
        return f"{self.base}/fhir"

    @property
    def token_url(self) -> str:
        return f"{self.base}/auth/token"

    def _control(self, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if body is None and name == "stats":
            response = httpx.get(f"{self.base}/_control/{name}", timeout=10)
        else:
            response = httpx.post(f"{self.base}/_control/{name}", json=body or {}, timeout=10)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        self._control("reset")

    def stats(self) -> dict[str, Any]:
        return self._control("stats")

    def fail_next(self, *faults: dict[str, Any]) -> None:
        """The next POSTs to /fhir answer these (``{"status": 503}``, ``{"status": 429, "retryAfter": 1}``;
        ``body`` a JSON answer of its own, ``raw`` a text one)."""
        self._control("faults", {"faults": list(faults)})

    def hold_next_answer(self, milliseconds: int) -> None:
        """The next committed transaction is answered only after this long (kill the client meanwhile)."""
        self._control("faults", {"holdMs": milliseconds})

    def revoke_tokens(self) -> None:
        self._control("revoke")

    def token(self, scope: str = "system/*.cruds") -> str:
        """An access token got as a SMART backend client does (the tests' own reads of the server)."""
        key = serialization.load_pem_private_key(self.ec_key_file.read_bytes(), password=None)
        now = int(time.time())
        assertion = jwt.encode(
            {
                "iss": self.client_id,
                "sub": self.client_id,
                "aud": self.token_url,
                "exp": now + 60,
                "jti": uuid.uuid4().hex,
            },
            key,
            algorithm="ES384",
            headers={"kid": self.ec_kid},
        )
        response = httpx.post(
            self.token_url,
            data={
                "grant_type": "client_credentials",
                "scope": scope,
                "client_assertion": assertion,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            },
            timeout=10,
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def search(self, resource_type: str, **params: str) -> list[dict[str, Any]]:
        """Every resource of a search (one page of up to 1000)."""
        response = httpx.get(
            f"{self.fhir_url}/{resource_type}",
            params={"_count": "1000", **params},
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=10,
        )
        response.raise_for_status()
        return [e["resource"] for e in response.json().get("entry") or ()]


def _write_keys(directory: Path) -> tuple[Path, Path, Path]:
    ec_key = ec.generate_private_key(ec.SECP384R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = serialization.PrivateFormat.PKCS8
    ec_file, rsa_file = directory / "ec384.pem", directory / "rsa.pem"
    for key, path in ((ec_key, ec_file), (rsa_key, rsa_file)):
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption()))
        path.chmod(0o600)
    ec_jwk = json.loads(ECAlgorithm.to_jwk(ec_key.public_key())) | {"kid": "ec-1", "alg": "ES384", "use": "sig"}
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key())) | {"kid": "rsa-1", "alg": "RS384", "use": "sig"}
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps({"keys": [ec_jwk, rsa_jwk]}))
    return ec_file, rsa_file, jwks


@pytest.fixture(scope="session")
def ehr_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EhrServer]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the test EHR (@medplum/fhir-router) runs on Node")
    if not ROUTER.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: the test EHR needs @medplum/fhir-router and jose from npm")
        done = subprocess.run(
            [npm, "ci", "--prefix", str(HERE), "--no-audit", "--no-fund", "--ignore-scripts"],
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0 or not ROUTER.exists():
            pytest.skip(f"npm ci --prefix tests/ehr_server failed (no registry?): {done.stderr.strip()[-400:]}")
    directory = tmp_path_factory.mktemp("ehr-server")
    ec_file, rsa_file, jwks = _write_keys(directory)
    log = (directory / "server.log").open("w")
    process = subprocess.Popen(
        [node, str(HERE / "server.mjs")],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={
            "PATH": str(Path(node).parent),
            "EHR_CLIENT_ID": CLIENT_ID,
            "EHR_JWKS_FILE": str(jwks),
            "EHR_TOKEN_TTL_S": "300",
        },
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the server prints its port once it listens (EOF: it died)
        if not line:
            log.flush()
            raise AssertionError(f"the test EHR did not start: {(directory / 'server.log').read_text()[-2000:]}")
        port = json.loads(line)["port"]
        yield EhrServer(f"http://127.0.0.1:{port}", CLIENT_ID, ec_file, rsa_file, "ec-1", "rsa-1")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
