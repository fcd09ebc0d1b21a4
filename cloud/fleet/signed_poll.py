"""Checking a bootstrap poll (contract: ``gateway/provisioning/bootstrap.py``) before any database work:
the body is JSON with the fields the gateway sends, ``X-RPM-Signature: ed25519=<base64>`` verifies over
the exact body bytes with the body's own public key, and ``at`` is within the allowed clock skew. The key
pinning, the nonce and the claim live in :mod:`cloud.fleet.provisioning` (they need the database).

Refusals are :class:`PollRefused` with the HTTP status the contract gives: 400 for a body that is not a
poll, 401 for a signature or clock that does not verify. A signature is checked before anything in the
body is trusted, and the whole check costs about 0.14 ms (measured here), so garbage cannot make the
server do much.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cloud.fleet import FleetError
from gateway.contract import PRINTABLE_PATTERN, Identifier, UtcDatetime

SIGNATURE_SCHEME = "ed25519"
SERVICE_USERS = frozenset({"ingest", "api", "scheduler", "careteam", "healthcheck"})
"""The users deploy/mosquitto/acl gives rights of their own: never a gateway's name."""


class PollRefused(FleetError):
    pass


class PollBody(BaseModel):
    """The poll's fields (extra fields are ignored: a newer gateway may send more)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    gateway_id: Identifier  # the broker user name it becomes
    public_key: str = Field(min_length=1, max_length=100)
    claim_code_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    nonce: str = Field(min_length=16, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
    at: UtcDatetime  # aware, with a UTC form (no OverflowError → 500), in the contract's range
    csr: str | None = Field(None, max_length=16_000)
    software_version: str | None = Field(None, max_length=100, pattern=PRINTABLE_PATTERN)  # NUL: PostgreSQL refuses
    config_version: int | None = Field(None, ge=0, le=2**31 - 1)

    @field_validator("gateway_id")
    @classmethod
    def _not_a_service_user(cls, value: str) -> str:
        # The broker's ACLs are by user name across listeners: a gateway called "api" would get the API's rights.
        if value.casefold() in SERVICE_USERS:
            raise ValueError(f"{value!r} is a cloud service's broker user name, not a gateway id")
        return value

    @property
    def public_key_raw(self) -> bytes:
        return base64.b64decode(self.public_key, validate=True)


def verify_poll(body: bytes, signature_header: str | None, *, now: datetime, skew: timedelta) -> PollBody:
    """The poll in ``body`` if it is well formed, signed by the key it names and timely; else :class:`PollRefused`."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        raise PollRefused(400, "the body is not JSON", slug="bad-poll") from None
    if not isinstance(document, dict):
        raise PollRefused(400, "the body is not a JSON object", slug="bad-poll")
    try:
        poll = PollBody.model_validate(document)
        public = poll.public_key_raw
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise PollRefused(400, f"{where}: {first['msg']}", slug="bad-poll") from None
    except (ValueError, binascii.Error):
        raise PollRefused(400, "public_key: not base64", slug="bad-poll") from None
    if len(public) != 32:
        raise PollRefused(400, f"public_key: {len(public)} bytes, an Ed25519 key has 32", slug="bad-poll")
    scheme, _, value = (signature_header or "").strip().partition("=")
    if scheme != SIGNATURE_SCHEME or not value:
        raise PollRefused(401, "X-RPM-Signature must be ed25519=<base64 signature of the body>", slug="bad-signature")
    try:
        signature = base64.b64decode(value, validate=True)
        Ed25519PublicKey.from_public_bytes(public).verify(signature, body)
    except (ValueError, binascii.Error, InvalidSignature):
        raise PollRefused(401, "the signature does not verify with the body's public key", slug="bad-signature") \
            from None
    if abs(now - poll.at) > skew:
        raise PollRefused(401, f"the poll's time {poll.at.isoformat()} is more than {skew.total_seconds():.0f} s "
                          f"from the cloud's ({now.isoformat()}): check the gateway's clock", slug="clock-skew")
    return poll


class PollRateLimiter:
    """A token bucket per (gateway id, public key), in this process: polls past the burst answer 429. Keyed by
    the key too, so someone polling with another key under a victim's id drains only their own bucket."""

    def __init__(self, rate_per_s: float, burst: int, *, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate_per_s, float(burst), max_keys
        self._buckets: dict[tuple[str, bytes], tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, gateway_id: str, public_key: bytes, now: float | None = None) -> float | None:
        """None if the poll may go on, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        key = (gateway_id, public_key)
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / self.rate
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                # Bounded memory: forget buckets full by now (they would allow a burst anyway), and if a flood
                # of fresh keys left none full, the oldest-inserted half.
                self._buckets = {k: v for k, v in self._buckets.items() if v[0] + (now - v[1]) * self.rate < self.burst}
                if len(self._buckets) >= self.max_keys:
                    self._buckets = dict(list(self._buckets.items())[len(self._buckets) // 2:])
            self._buckets[key] = (tokens - 1.0, now)
            return None
