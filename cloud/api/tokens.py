"""Bearer tokens: verify (JWKS in production, the HS256 dev key in development) and mint dev tokens.

``rpm-cloud token --role clinician --care-team X [--patient P] [--sub S] [--ttl 8h]`` prints a token
signed with ``RPM_JWT_DEV_KEY``. Production sets ``RPM_JWT_JWKS_URL``: tokens are then verified against
the issuer's published keys (RS256/ES256) with issuer, audience, expiry and ``RPM_JWT_LEEWAY_S`` of
clock skew, and the dev key is never accepted. With ``RPM_OIDC_ISSUER`` set (workspace sign-in) and no
JWKS URL, the keys are the ones the issuer's discovery document names (``jwks_uri``), and the issuer
checked is the OIDC issuer unless ``RPM_JWT_ISSUER`` says otherwise.

Claims read: ``sub``, ``role`` (patient, clinician, care_team, admin, gateway), ``care_teams`` (list;
``care_team`` as a single string is accepted too) and ``patient`` (the record a patient token owns;
defaults to ``sub``).
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from cloud.errors import CloudError
from cloud.settings import CloudSettings, get_settings

ROLES = ("patient", "clinician", "care_team", "admin", "gateway")
_ASYMMETRIC = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


class TokenError(CloudError):
    """The bearer token is missing, malformed, badly signed, expired or for another audience."""


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: str
    care_teams: tuple[str, ...] = ()
    patient_id: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


DISCOVERY_PATH = "/.well-known/openid-configuration"
_DISCOVERY_RETRY_S = 10.0


def expected_issuer(settings: CloudSettings) -> str:
    """The ``iss`` tokens must carry: ``RPM_JWT_ISSUER`` when set, else the OIDC issuer, else the dev default."""
    if settings.oidc_issuer and "jwt_issuer" not in settings.model_fields_set:
        return settings.oidc_issuer
    return settings.jwt_issuer


def discover(issuer: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The issuer's OpenID Provider Metadata (OpenID Connect Discovery 1.0 §4), checked to name that issuer."""
    url = issuer.rstrip("/") + DISCOVERY_PATH
    try:
        response = httpx.get(url, timeout=timeout_s, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise TokenError(f"the OpenID provider's discovery document ({url}) could not be read: {exc}") from exc
    # §4.3: the issuer in the document must be identical to the one configured, or another party could
    # hand out keys for it.
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        raise TokenError(f"the discovery document at {url} is not for issuer {issuer!r}")
    if not isinstance(document.get("jwks_uri"), str):
        raise TokenError(f"the discovery document at {url} names no jwks_uri")
    return document


class TokenVerifier:
    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self.issuer = expected_issuer(settings)
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True) if settings.jwt_jwks_url else None
        self._discovery_lock = threading.Lock()
        self._discovery_failed_at = -_DISCOVERY_RETRY_S

    def _issuer_keys(self) -> jwt.PyJWKClient | None:
        """The JWKS client: configured, or found through the OIDC issuer's discovery on first use.

        Not at start-up: the API comes up while the provider is unreachable, and a failed discovery is
        retried at most every few seconds rather than on every request.
        """
        if self._jwks is not None or not self.settings.oidc_issuer:
            return self._jwks
        with self._discovery_lock:
            if self._jwks is None:
                if time.monotonic() - self._discovery_failed_at < _DISCOVERY_RETRY_S:
                    raise TokenError("the OpenID provider's keys are unavailable (discovery failed); retry later")
                try:
                    document = discover(self.settings.oidc_issuer)
                except TokenError:
                    self._discovery_failed_at = time.monotonic()
                    raise
                self._jwks = jwt.PyJWKClient(document["jwks_uri"], cache_keys=True)
        return self._jwks

    def verify(self, token: str) -> Principal:
        options = {"require": ["exp", "iat", "sub", "iss", "aud"]}
        try:
            if self.settings.first_time_key and jwt.get_unverified_header(token).get("kid") == FIRST_TIME_KID:
                return self._verify_first_time(token, options)
            jwks = self._issuer_keys()
            if jwks is not None:
                key: Any = jwks.get_signing_key_from_jwt(token).key
                algorithms = _ASYMMETRIC
            elif self.settings.jwt_dev_key:
                key, algorithms = self.settings.jwt_dev_key, ["HS256"]
            else:
                raise TokenError("no token verification configured "
                                 "(set RPM_OIDC_ISSUER, RPM_JWT_JWKS_URL or RPM_JWT_DEV_KEY)")
            claims = jwt.decode(token, key, algorithms=algorithms, audience=self.settings.jwt_audience,
                                issuer=self.issuer, leeway=self.settings.jwt_leeway_s, options=options)
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc)) from exc
        return principal_from_claims(claims)


    def _verify_first_time(self, token: str, options: dict[str, Any]) -> Principal:
        """A first-time link's token: the API's own key, its own issuer, a patient and nothing else (the key
        id only picks the key; HS256 is the one algorithm accepted, so an asymmetric key cannot be misused)."""
        assert self.settings.first_time_key
        claims = jwt.decode(token, self.settings.first_time_key, algorithms=["HS256"],
                            audience=self.settings.jwt_audience, issuer=FIRST_TIME_ISSUER,
                            leeway=self.settings.jwt_leeway_s, options=options)
        if claims.get("role") != "patient" or not claims.get("patient"):
            raise TokenError("a first-time token is a patient's token only")
        return principal_from_claims(claims)


FIRST_TIME_KID = "rpm-first-time"
FIRST_TIME_ISSUER = "rpm-api:first-time-link"


def can_sign_first_time_tokens(settings: CloudSettings) -> bool:
    """With its own first-time key, or as a development API that verifies its development key (no external issuer)."""
    development = bool(settings.jwt_dev_key) and not settings.jwt_jwks_url and not settings.oidc_issuer
    return bool(settings.first_time_key) or development


def mint_first_time_token(settings: CloudSettings, patient_id: str, ttl_s: int) -> str:
    """The short patient token a first-time link gives (:func:`can_sign_first_time_tokens` must hold)."""
    # Marked first_time on both paths: such a token may read the record, never write (cloud.api.deps).
    issued = int(time.time())
    claims = {"sub": patient_id, "role": "patient", "patient": patient_id, "aud": settings.jwt_audience,
              "iat": issued, "exp": issued + int(ttl_s), "first_time": True}
    if settings.first_time_key:
        return jwt.encode({**claims, "iss": FIRST_TIME_ISSUER}, settings.first_time_key, algorithm="HS256",
                          headers={"kid": FIRST_TIME_KID})
    if not settings.jwt_dev_key:
        raise TokenError("neither RPM_FIRST_TIME_KEY nor RPM_JWT_DEV_KEY is set: first-time tokens cannot be signed")
    return jwt.encode({**claims, "iss": settings.jwt_issuer}, settings.jwt_dev_key, algorithm="HS256")


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    role = claims.get("role")
    if role not in ROLES:
        raise TokenError(f"token role must be one of {', '.join(ROLES)}")
    teams = claims.get("care_teams", claims.get("care_team", ()))
    if isinstance(teams, str):
        teams = [teams]
    if not isinstance(teams, list | tuple) or not all(isinstance(t, str) for t in teams):
        raise TokenError("care_teams must be a list of strings")
    patient = claims.get("patient") or (claims["sub"] if role == "patient" else None)
    return Principal(subject=str(claims["sub"]), role=role, care_teams=tuple(teams),
                     patient_id=patient if role == "patient" else None, claims=claims)


def mint_token(settings: CloudSettings, *, role: str, sub: str, care_teams: tuple[str, ...] | list[str] = (),
               patient: str | None = None, ttl_s: int = 8 * 3600, now: float | None = None) -> str:
    """A development token signed with ``settings.jwt_dev_key`` (HS256)."""
    if not settings.jwt_dev_key:
        raise TokenError("RPM_JWT_DEV_KEY is not set; development tokens need it")
    if role not in ROLES:
        raise TokenError(f"role must be one of {', '.join(ROLES)}")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {"sub": sub, "role": role, "iss": settings.jwt_issuer, "aud": settings.jwt_audience,
                              "iat": issued, "exp": issued + int(ttl_s)}
    if care_teams:
        claims["care_teams"] = list(care_teams)
    if patient:
        claims["patient"] = patient
    return jwt.encode(claims, settings.jwt_dev_key, algorithm="HS256")


_TTL = re.compile(r"^(\d+)([smhd]?)$")


def parse_ttl(text: str) -> int:
    match = _TTL.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"bad ttl {text!r}: use e.g. 900, 15m, 8h, 2d")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", required=True, choices=ROLES)
    parser.add_argument("--care-team", action="append", default=[], dest="care_teams",
                        help="care team id (repeatable)")
    parser.add_argument("--patient", help="the patient record a patient token owns")
    parser.add_argument("--sub", help="subject (default: the patient id, else 'dev-<role>')")
    parser.add_argument("--ttl", type=parse_ttl, default=8 * 3600, help="lifetime, e.g. 900, 15m, 8h, 2d")


def main(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.role in ("clinician", "care_team") and not args.care_teams:
        print("rpm-cloud token: --care-team is required for clinician and care_team tokens", file=sys.stderr)
        return 2
    if args.role == "patient" and not (args.patient or args.sub):
        print("rpm-cloud token: --patient is required for a patient token", file=sys.stderr)
        return 2
    sub = args.sub or args.patient or f"dev-{args.role}"
    try:
        print(mint_token(settings, role=args.role, sub=sub, care_teams=args.care_teams, patient=args.patient,
                         ttl_s=args.ttl))
    except TokenError as exc:
        print(f"rpm-cloud token: {exc}", file=sys.stderr)
        return 2
    return 0
