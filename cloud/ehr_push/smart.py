"""SMART Backend Services authorisation (SMART App Launch IG 2.x, "Backend Services"): the client proves who
it is with a JWT signed by its private key (``client_assertion``, RFC 7523) in a ``client_credentials`` grant.

The assertion: header ``alg`` RS384 or ES384, ``kid`` the registered key, ``typ`` JWT; claims ``iss`` = ``sub``
= the client id, ``aud`` = the token URL, ``exp`` at most five minutes ahead, a fresh ``jti`` every time (the
server refuses a replay). The access token is cached until ``REFRESH_BEFORE_S`` before its ``expires_in``;
:meth:`TokenSource.invalidate` drops it when the FHIR server answers 401, so the next request gets another.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt

from cloud.ehr_push import TokenError
from cloud.ehr_push.config import PushConfig

ASSERTION_LIFETIME_S = 240
"""Under the five minutes the IG allows, so a clock a little ahead of the server's still passes."""
REFRESH_BEFORE_S = 30.0
"""A cached token is replaced this long before it expires, so no request leaves with a token about to lapse."""
DEFAULT_EXPIRES_IN_S = 300.0
"""When the token answer has no ``expires_in`` (the IG says SHOULD), assume the five minutes it recommends."""
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def client_assertion(config: PushConfig, now: float | None = None) -> str:
    """A signed client assertion for one token request."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": config.client_id,
        "sub": config.client_id,
        "aud": config.token_url,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_S,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, config.key, algorithm=config.algorithm, headers={"kid": config.key_id, "typ": "JWT"})


class TokenSource:
    """The access token for the FHIR endpoint, fetched when needed and cached until shortly before expiry."""

    def __init__(self, config: PushConfig, client: httpx.Client, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._client = client
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._valid_until = 0.0
        self.fetched = 0

    def get(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._valid_until:
                self._token, lifetime = self._fetch()
                self._valid_until = self._clock() + max(lifetime - REFRESH_BEFORE_S, lifetime / 2)
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (the server refused it) unless another thread already replaced it."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _fetch(self) -> tuple[str, float]:
        form = {
            "grant_type": "client_credentials",
            "scope": self._config.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(self._config),
        }
        response = self._client.post(self._config.token_url, data=form, headers={"Accept": "application/json"})
        if response.status_code != 200:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise TokenError(
                f"the token endpoint answered {response.status_code}: {_oauth_error(response)}",
                retry_after_s=retry_after,
            )
        try:
            body: Any = response.json()
        except ValueError as exc:
            raise TokenError("the token endpoint answered 200 with a body that is not JSON") from exc
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenError("the token endpoint's answer has no access_token")
        if str(body.get("token_type", "")).lower() != "bearer":
            raise TokenError(f"the token endpoint gave a token of type {body.get('token_type')!r}, not bearer")
        expires_in = body.get("expires_in", DEFAULT_EXPIRES_IN_S)
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else DEFAULT_EXPIRES_IN_S
        self.fetched += 1
        return token, lifetime


def _oauth_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or "(no body)"
    if isinstance(body, dict) and body.get("error"):
        return f"{body['error']}: {body.get('error_description', '')}".strip(": ")
    return str(body)[:300]


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (RFC 9110: delay-seconds or an HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
