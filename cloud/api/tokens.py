"""Bearer tokens: verify (JWKS in production, the HS256 dev key in development) and mint dev tokens.

``rpm-cloud token --role clinician --care-team X [--patient P] [--sub S] [--ttl 8h]`` prints a token
signed with ``RPM_JWT_DEV_KEY``. Production sets ``RPM_JWT_JWKS_URL``: tokens are then verified against
the issuer's published keys (RS256/ES256) with issuer, audience, expiry and ``RPM_JWT_LEEWAY_S`` of
clock skew, and the dev key is never accepted.

Claims read: ``sub``, ``role`` (patient, clinician, care_team, admin, gateway), ``care_teams`` (list;
``care_team`` as a single string is accepted too) and ``patient`` (the record a patient token owns;
defaults to ``sub``).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

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


class TokenVerifier:
    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True) if settings.jwt_jwks_url else None

    def verify(self, token: str) -> Principal:
        options = {"require": ["exp", "iat", "sub", "iss", "aud"]}
        try:
            if self._jwks is not None:
                key: Any = self._jwks.get_signing_key_from_jwt(token).key
                algorithms = _ASYMMETRIC
            elif self.settings.jwt_dev_key:
                key, algorithms = self.settings.jwt_dev_key, ["HS256"]
            else:
                raise TokenError("no token verification configured (set RPM_JWT_JWKS_URL or RPM_JWT_DEV_KEY)")
            claims = jwt.decode(token, key, algorithms=algorithms, audience=self.settings.jwt_audience,
                                issuer=self.settings.jwt_issuer, leeway=self.settings.jwt_leeway_s, options=options)
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc)) from exc
        return principal_from_claims(claims)


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
