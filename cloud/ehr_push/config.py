"""The push's settings, checked as a whole when it starts: every problem in one error, not the first only."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cloud.ehr_push import PushConfigError
from cloud.settings import CloudSettings

MIN_RSA_BITS = 2048
REQUIRED = {
    "ehr_push_fhir_url": "RPM_EHR_PUSH_FHIR_URL",
    "ehr_push_token_url": "RPM_EHR_PUSH_TOKEN_URL",
    "ehr_push_client_id": "RPM_EHR_PUSH_CLIENT_ID",
    "ehr_push_key_file": "RPM_EHR_PUSH_KEY_FILE",
    "ehr_push_key_id": "RPM_EHR_PUSH_KEY_ID",
    "ehr_push_care_teams": "RPM_EHR_PUSH_CARE_TEAMS",
}


@dataclass(frozen=True)
class PushConfig:
    fhir_url: str
    token_url: str
    client_id: str
    key: Any  # an RSA or EC private key object of ``cryptography``
    algorithm: str  # RS384 or ES384
    key_id: str
    scope: str
    care_teams: tuple[str, ...]
    batch_size: int
    max_entries: int
    timeout_s: float
    lease_s: float
    poll_s: float
    backoff_max_s: float
    settle_s: float


def push_configured(settings: CloudSettings) -> bool:
    """Whether the deployment asked for a push at all (any of its endpoints set)."""
    return bool(settings.ehr_push_fhir_url or settings.ehr_push_token_url)


def _url_problem(name: str, value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{name} must be an http(s) URL, not {value!r}"
    if parts.query or parts.fragment:
        return f"{name} must have no query or fragment"
    if parts.scheme == "http" and not _loopback(parts.hostname):
        # SMART Backend Services require TLS; plain http only to this machine (a test server, a local proxy).
        return f"{name} must be https (http only on a loopback address): {value!r}"
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _load_key(path: Path) -> tuple[Any, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PushConfigError(f"RPM_EHR_PUSH_KEY_FILE {str(path)!r} cannot be read: {exc.strerror or exc}") from exc
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PushConfigError(f"RPM_EHR_PUSH_KEY_FILE {str(path)!r} is not an unencrypted PEM private key") from exc
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise PushConfigError(
                f"RPM_EHR_PUSH_KEY_FILE holds a {key.key_size}-bit RSA key; RS384 needs {MIN_RSA_BITS} bits or more"
            )
        return key, "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise PushConfigError(
                f"RPM_EHR_PUSH_KEY_FILE holds an EC key on {key.curve.name}; ES384 needs P-384 (secp384r1)"
            )
        return key, "ES384"
    raise PushConfigError(
        "RPM_EHR_PUSH_KEY_FILE must hold an RSA or EC P-384 key (SMART Backend Services sign with RS384 or ES384)"
    )


def load_push_config(settings: CloudSettings) -> PushConfig:
    """The push's configuration; :class:`PushConfigError` naming every missing or wrong setting."""
    if not push_configured(settings):
        raise PushConfigError(
            "EHR push is not configured: set RPM_EHR_PUSH_FHIR_URL, RPM_EHR_PUSH_TOKEN_URL,"
            " RPM_EHR_PUSH_CLIENT_ID, RPM_EHR_PUSH_KEY_FILE, RPM_EHR_PUSH_KEY_ID and"
            " RPM_EHR_PUSH_CARE_TEAMS"
        )
    problems = [f"{env} is not set" for field, env in REQUIRED.items() if not getattr(settings, field)]
    for field in ("ehr_push_fhir_url", "ehr_push_token_url"):
        env = REQUIRED[field]
        value = getattr(settings, field)
        problem = value and _url_problem(env, value)
        if problem:
            problems.append(problem)
    teams = tuple(t.strip() for t in (settings.ehr_push_care_teams or "").split(",") if t.strip())
    if settings.ehr_push_care_teams and not teams:
        problems.append("RPM_EHR_PUSH_CARE_TEAMS names no care team")
    if not settings.ehr_push_scope.strip():
        problems.append("RPM_EHR_PUSH_SCOPE is empty")
    if settings.ehr_push_lease_s < 2 * settings.ehr_push_timeout_s:
        # One attempt can take a token request and the Bundle (twice, after a 401): a lease shorter than two
        # timeouts would let another worker resend a Bundle still in flight.
        problems.append(
            f"RPM_EHR_PUSH_LEASE_S ({settings.ehr_push_lease_s:g}) must be at least twice"
            f" RPM_EHR_PUSH_TIMEOUT_S ({settings.ehr_push_timeout_s:g})"
        )
    key, algorithm = None, ""
    if settings.ehr_push_key_file:
        try:
            key, algorithm = _load_key(settings.ehr_push_key_file)
        except PushConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise PushConfigError("EHR push settings: " + "; ".join(problems))
    assert settings.ehr_push_fhir_url and settings.ehr_push_token_url and settings.ehr_push_client_id
    assert settings.ehr_push_key_id
    return PushConfig(
        fhir_url=settings.ehr_push_fhir_url.rstrip("/"),
        token_url=settings.ehr_push_token_url,
        client_id=settings.ehr_push_client_id,
        key=key,
        algorithm=algorithm,
        key_id=settings.ehr_push_key_id,
        scope=" ".join(settings.ehr_push_scope.split()),
        care_teams=teams,
        batch_size=settings.ehr_push_batch_size,
        max_entries=settings.ehr_push_max_entries,
        timeout_s=settings.ehr_push_timeout_s,
        lease_s=settings.ehr_push_lease_s,
        poll_s=settings.ehr_push_poll_s,
        backoff_max_s=settings.ehr_push_backoff_max_s,
        settle_s=settings.ehr_push_settle_s,
    )
