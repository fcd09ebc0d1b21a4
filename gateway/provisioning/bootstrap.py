"""The signed poll of the cloud's bootstrap endpoint (``POST /bootstrap/v1/poll``, contract issue 19).

The body is JSON (gateway id, raw public key, SHA-256 of the claim code, a random nonce, the time,
a CSR for a client certificate, software and config versions) and ``X-RPM-Signature: ed25519=<base64>``
signs its exact bytes: the cloud pins the first key it sees for a gateway id, and refuses replays
(nonce) and stale requests (``at`` within 5 minutes). Answers: 202 ``unclaimed`` with ``retry_after_s``
until a care-team member claims the gateway, then 200 ``provisioned`` with the broker URL and
credentials (a password, or a certificate for the CSR: the key never leaves the gateway) and the
remote config document.

:func:`provision` polls until provisioned: it honours ``retry_after_s`` (with ±20 % jitter, so a
fleet that booted together does not poll together), says a failure once in plain words and then
retries quietly with exponential backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway import __version__
from gateway.mqtt.backoff import ExponentialBackoff
from gateway.provisioning.credentials import MqttCredentials
from gateway.provisioning.files import ProvisioningError, read_private, write_private
from gateway.provisioning.identity import SIGNATURE_HEADER, GatewayIdentity

log = logging.getLogger(__name__)

ERROR_BACKOFF = ExponentialBackoff(5.0, 300.0, jitter=(0.5, 1.0))
RETRY_AFTER_BOUNDS_S = (1.0, 3600.0)
"""A ``retry_after_s`` outside this is clamped (a cloud bug must neither hammer it nor park the gateway)."""
MAX_ANSWER_BYTES = 1024 * 1024


class BootstrapUnreachable(ProvisioningError):
    """The endpoint cannot be reached (DNS, connection, TLS, timeout)."""


class BootstrapRefused(ProvisioningError):
    """The endpoint answered, but not with a bootstrap answer (4xx/5xx, or a body that is not one)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unclaimed(BaseModel):
    model_config = ConfigDict(extra="ignore")
    state: Literal["unclaimed"]
    retry_after_s: float = 30.0


class Provisioned(BaseModel):
    model_config = ConfigDict(extra="ignore")
    state: Literal["provisioned"]
    gateway_id: str
    patient_id: str | None = None
    mqtt: MqttCredentials | None = None
    """None once the credentials were delivered (the cloud sends them until it sees the first status)."""
    config: dict[str, Any] | None = None
    config_version: int | None = None


class BootstrapClient:
    def __init__(self, url: str, identity: GatewayIdentity, gateway_id: str, *, client_key_path: Path,
                 ca_file: Path | None = None, timeout_s: float = 15.0) -> None:
        self.url = url
        self.identity = identity
        self.gateway_id = gateway_id
        self.client_key_path = client_key_path
        self.timeout_s = timeout_s
        self._context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    def csr_pem(self) -> str:
        """A CSR (CN = gateway id) for a P-256 key made here once, 0600: the key never leaves the gateway."""
        if self.client_key_path.exists():
            key = serialization.load_pem_private_key(read_private(self.client_key_path), password=None)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            write_private(self.client_key_path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ProvisioningError(f"{self.client_key_path} is not an EC private key")
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.gateway_id)]))
               .sign(key, hashes.SHA256()))
        return csr.public_bytes(serialization.Encoding.PEM).decode()

    def body(self, config_version: int | None) -> bytes:
        document = {
            "gateway_id": self.gateway_id,
            "public_key": self.identity.public_key_b64,
            "claim_code_sha256": self.identity.claim_code_sha256,
            "nonce": secrets.token_hex(16),
            "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "csr": self.csr_pem(),
            "software_version": __version__,
            "config_version": config_version,
        }
        return json.dumps(document, separators=(",", ":")).encode()

    def poll(self, config_version: int | None = None) -> Unclaimed | Provisioned:
        """One signed poll (blocking: call it on a thread)."""
        body = self.body(config_version)
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", SIGNATURE_HEADER: self.identity.signature_header(body),
            "User-Agent": f"rpm-gateway/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self._context) as answer:
                status, raw = answer.status, answer.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as err:
            raise BootstrapRefused(self._refusal(err.code, err.read(4096)), err.code) from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise BootstrapUnreachable(f"cannot reach the cloud's bootstrap endpoint {self.url}: {reason}") from None
        if len(raw) > MAX_ANSWER_BYTES:
            raise BootstrapRefused(f"the bootstrap endpoint {self.url} sent more than {MAX_ANSWER_BYTES} bytes", status)
        try:
            document = json.loads(raw)
            if status == 202 or (isinstance(document, dict) and document.get("state") == "unclaimed"):
                return Unclaimed.model_validate(document)
            if status == 200:
                return Provisioned.model_validate(document)
        except (ValueError, ValidationError) as err:
            detail = err.errors()[0]["msg"] if isinstance(err, ValidationError) else "not JSON"
            raise BootstrapRefused(f"the bootstrap endpoint {self.url} answered {status} with something that is not "
                                   f"a bootstrap answer ({detail})", status) from None
        raise BootstrapRefused(f"the bootstrap endpoint {self.url} answered {status}", status)

    def _refusal(self, status: int, body: bytes) -> str:
        try:
            detail = json.loads(body).get("detail")
        except (ValueError, AttributeError):
            detail = None
        detail = f" ({' '.join(str(detail).split())[:300]})" if detail else ""
        if status == 409:
            return (f"the cloud already knows gateway {self.gateway_id} with another key{detail}: this box's "
                    "identity.key is not the one that was first registered (restored from another box?); an "
                    "administrator must release the gateway id in the cloud")
        if status == 401:
            return (f"the cloud refused this gateway's signed request{detail}; check that the gateway's clock is "
                    "right (within 5 minutes)")
        return f"the bootstrap endpoint {self.url} refused the request with HTTP {status}{detail}"


async def provision(client: BootstrapClient, *, config_version: Callable[[], int | None] = lambda: None,
                    on_problem: Callable[[str | None], None] = lambda _: None,
                    on_waiting: Callable[[], None] = lambda: None, cap_s: float | None = None,
                    rng: Callable[[], float] = random.random) -> Provisioned:
    """Poll until provisioned. ``on_problem(sentence)`` hears a failure (once per distinct failure;
    None once it is over), ``on_waiting()`` each unclaimed answer."""
    failures = 0
    last_problem: str | None = None
    while True:
        try:
            answer = await asyncio.to_thread(client.poll, config_version())
        except ProvisioningError as err:
            failures += 1
            problem = str(err)
            delay = ERROR_BACKOFF.delay(failures, rng)
            if problem != last_problem:
                log.warning("provisioning: %s; trying again (quietly) with backoff", problem)
                on_problem(problem)
            else:
                log.debug("provisioning: %s (again, %d times); next try in %.0f s", problem, failures, delay)
            last_problem = problem
            await asyncio.sleep(min(delay, cap_s) if cap_s else delay)
            continue
        if last_problem is not None:
            log.info("provisioning: the bootstrap endpoint answers again")
            on_problem(None)
            last_problem = None
        failures = 0
        if isinstance(answer, Provisioned):
            return answer
        on_waiting()
        low, high = RETRY_AFTER_BOUNDS_S
        wait = min(high, max(low, answer.retry_after_s)) * (0.8 + 0.4 * rng())
        await asyncio.sleep(min(wait, cap_s) if cap_s else wait)
