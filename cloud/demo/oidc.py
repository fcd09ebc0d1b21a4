"""A development OpenID provider: the demo's sign-in, and the real provider the sign-in tests run against.

Built from authlib's server components (``AuthorizationServer``, the RFC 6749 authorization-code and
refresh-token grants, RFC 7636 PKCE, OpenID Connect Core's ``OpenIDCode``) behind a stdlib HTTP server in
a thread, on 127.0.0.1 only:

- ``/.well-known/openid-configuration`` (discovery), ``/jwks.json``;
- ``/authorize``: the authorization code flow for one public client (the ``/ui`` page), PKCE with S256
  required, ``state`` echoed, ``nonce`` required and put in the ID token. It signs a configured user in
  *without a form* (``login_hint`` picks one of several) and keeps a provider session in a cookie, so
  ``prompt=none`` answers ``login_required`` once that session has ended;
- ``/token``: code for tokens (public client, no secret; the code once only) and refresh-token rotation
  (a refresh token works once); answers CORS for the page's origin, since the page calls it itself;
- ``/logout``: RP-initiated logout 1.0, ends the provider session and returns to a registered address;
- ``/login?login_hint=<sub>&return_to=<registered redirect URI>``: starts a provider session for that user
  and goes to the page, so a sign-in link can name who signs in (the demo's patient: the page's own
  ``/authorize`` then finds that session) where the page sends no ``login_hint`` itself.

Access tokens are RS256 JWTs the API verifies like any issuer's: ``iss`` = this provider, ``aud`` = the
API's audience, ``sub``, ``role``, ``care_teams``, ``patient`` (a patient's record) and ``name``. Everything
is held in memory: a restart signs everyone out. Never a production identity provider: it authenticates
nobody.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from http import cookies
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jwt
from authlib.oauth2 import AuthorizationServer, OAuth2Error
from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request, grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from cryptography.hazmat.primitives.asymmetric import rsa

CODE_TTL_S = 120
REFRESH_TTL_S = 12 * 3600
SESSION_COOKIE = "dev_op_session"


@dataclass(frozen=True, slots=True)
class DevUser:
    """Who the provider signs in: the claims the API reads (``role``, ``care_teams``, ``patient``: the record a
    patient token owns) and a name to show."""

    sub: str
    role: str = "clinician"
    care_teams: tuple[str, ...] = ()
    name: str = ""
    patient: str | None = None


@dataclass(slots=True)
class _Client:
    client_id: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in ("openid", "profile", "offline_access"))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # a public client has none

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(_origin(u) for u in self.redirect_uris)


@dataclass(slots=True)
class _Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: DevUser
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


@dataclass(slots=True)
class _RefreshToken:
    token: str
    client_id: str
    scope: str
    user: DevUser
    expires_at: float
    revoked: bool = False

    def check_client(self, client: _Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return int(self.expires_at - time.time())

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at

    def is_revoked(self) -> bool:
        return self.revoked


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class _Payload(OAuth2Payload):
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._datalist[key].append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class _Request(OAuth2Request):
    """One HTTP request as authlib's framework-neutral ``OAuth2Request`` (query and form parameters)."""

    def __init__(self, method: str, uri: str, headers: dict[str, str], query: list[tuple[str, str]],
                 form: list[tuple[str, str]]) -> None:
        super().__init__(method, uri, headers=headers)
        self._args = dict(query)
        self._form = dict(form)
        self.payload = _Payload(query + form)

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class _S256Only(CodeChallenge):
    """PKCE required, and only S256: ``plain`` would hand the verifier to anyone who sees the redirect."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        if not grant.request.payload.data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge': PKCE is required", redirect_uri=redirect_uri)
        if grant.request.payload.data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256", redirect_uri=redirect_uri)
        super().validate_code_challenge(grant, redirect_uri)


class DevOpenIdProvider:
    """``with DevOpenIdProvider(users, redirect_uris=[...], audience=...) as op: op.issuer``.

    ``access_ttl_s`` is short in the tests (renewal must happen) and longer in the demo.
    """

    def __init__(self, users: list[DevUser], *, audience: str, redirect_uris: tuple[str, ...] = (),
                 client_id: str = "rpm-ui", post_logout_redirect_uris: tuple[str, ...] = (),
                 access_ttl_s: int = 900, host: str = "127.0.0.1", port: int = 0) -> None:
        if not users:
            raise ValueError("the development provider needs at least one user to sign in")
        self.users = {u.sub: u for u in users}
        self.default_user = users[0]
        self.audience = audience
        self.access_ttl_s = access_ttl_s
        self.client = _Client(client_id, tuple(redirect_uris), tuple(post_logout_redirect_uris or redirect_uris))
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex[:16]
        self._codes: dict[str, _Code] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._sessions: dict[str, DevUser] = {}
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, str]] = []
        """(method, path, grant_type or "") of every request served, for tests that check what the page asked."""
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self.issuer = f"http://{host}:{self._httpd.server_port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="dev-openid-provider", daemon=True)
        self._server = self._authorization_server()

    def allow_redirect_uri(self, uri: str) -> None:
        """Register the page's address (``<API>/ui``) for the sign-in answer and the return from sign-out: the API's
        address may be known only once the API is given this provider's."""
        self.client.redirect_uris = (*self.client.redirect_uris, uri)
        self.client.post_logout_redirect_uris = (*self.client.post_logout_redirect_uris, uri)

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> DevOpenIdProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> DevOpenIdProvider:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- keys and tokens -------------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def _private_jwk(self) -> dict[str, Any]:
        return {**jwt.algorithms.RSAAlgorithm.to_jwk(self._key, as_dict=True), "kid": self.kid, "alg": "RS256"}

    def access_token(self, user: DevUser, *, scope: str = "openid", ttl_s: int | None = None,
                     audience: str | None = None) -> str:
        """An access token for the API as this provider issues it (the demo prints one for curl)."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": user.sub, "aud": audience or self.audience,
                                  "iat": now, "exp": now + (ttl_s or self.access_ttl_s), "role": user.role,
                                  "scope": scope, "client_id": self.client.client_id, "jti": uuid.uuid4().hex}
        if user.care_teams:
            claims["care_teams"] = list(user.care_teams)
        if user.patient:
            claims["patient"] = user.patient
        if user.name:
            claims["name"] = user.name  # /v1/me greets by name; the API reads no other profile claim
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def _generate_token(self, grant_type: str, client: _Client, user: DevUser | None = None,
                        scope: str | None = None, expires_in: int | None = None,
                        include_refresh_token: bool = True) -> dict[str, Any]:
        assert user is not None  # both grants authenticate a user before asking for a token
        token: dict[str, Any] = {"token_type": "Bearer", "access_token": self.access_token(user, scope=scope or ""),
                                 "expires_in": self.access_ttl_s, "scope": scope or ""}
        if include_refresh_token:
            refresh = secrets.token_urlsafe(32)
            with self._lock:
                self._refresh[refresh] = _RefreshToken(refresh, client.client_id, scope or "", user,
                                                       time.time() + REFRESH_TTL_S)
            token["refresh_token"] = refresh
        return token

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks.json",
            "end_session_endpoint": f"{self.issuer}/logout",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "offline_access"],
            "claims_supported": ["sub", "name", "role", "care_teams", "patient"],
        }

    # --- authlib's server ------------------------------------------------------------------------------

    def _authorization_server(self) -> AuthorizationServer:
        provider = self

        class Server(AuthorizationServer):
            def query_client(self, client_id: str) -> _Client | None:
                return provider.client if client_id == provider.client.client_id else None

            def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
                pass  # access tokens are self-contained JWTs; refresh tokens are kept when made

            def create_oauth2_request(self, request: _Request) -> _Request:
                return request

            def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> tuple[
                    int, Any, list[tuple[str, str]]]:
                return status, body, list(headers)

            def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
                pass

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["none"]

            def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
                data = request.payload.data
                with provider._lock:
                    provider._codes[code] = _Code(
                        code, request.client.client_id, data.get("redirect_uri", ""), request.scope or "",
                        request.user, data.get("nonce"), data.get("code_challenge"),
                        data.get("code_challenge_method"), int(time.time()), time.time() + CODE_TTL_S)

            def query_authorization_code(self, code: str, client: _Client) -> _Code | None:
                with provider._lock:
                    found = provider._codes.get(code)
                if found is None or found.client_id != client.client_id or time.time() > found.expires_at:
                    return None
                return found

            def delete_authorization_code(self, authorization_code: _Code) -> None:
                with provider._lock:
                    provider._codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: _Code) -> DevUser:
                return authorization_code.user

        class RefreshGrant(grants.RefreshTokenGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
            INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: a stolen refresh token works once

            def authenticate_refresh_token(self, refresh_token: str) -> _RefreshToken | None:
                with provider._lock:
                    found = provider._refresh.get(refresh_token)
                if found is None or found.is_revoked() or found.is_expired():
                    return None
                return found

            def authenticate_user(self, refresh_token: _RefreshToken) -> DevUser:
                return refresh_token.user

            def revoke_old_credential(self, refresh_token: _RefreshToken) -> None:
                with provider._lock:
                    refresh_token.revoked = True

        class IdToken(OpenIDCode):
            def resolve_client_private_key(self, client: _Client) -> dict[str, Any]:
                return provider._private_jwk()

            def get_client_algorithm(self, client: _Client) -> str:
                return "RS256"

            def get_encode_header(self, client: _Client) -> dict[str, str]:
                return {"alg": "RS256", "kid": provider.kid}

            def get_client_claims(self, client: _Client) -> dict[str, Any]:
                return {"iss": provider.issuer, "aud": [client.client_id]}

            def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
                with provider._lock:
                    return any(c.nonce == nonce for c in provider._codes.values())

            def generate_user_info(self, user: DevUser, scope: str) -> UserInfo:
                info = UserInfo(sub=user.sub, role=user.role, care_teams=list(user.care_teams))
                if user.patient:
                    info["patient"] = user.patient
                if "profile" in scope.split():
                    info["name"] = user.name or user.sub
                return info

        server = Server(scopes_supported=["openid", "profile", "offline_access"])
        server.register_token_generator("default", self._generate_token)
        server.register_grant(CodeGrant, [_S256Only(required=True), IdToken(require_nonce=True)])
        server.register_grant(RefreshGrant)
        return server

    # --- HTTP ------------------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider._serve(self, "GET")

            def do_POST(self) -> None:
                provider._serve(self, "POST")

            def do_OPTIONS(self) -> None:
                provider._serve(self, "OPTIONS")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        form: list[tuple[str, str]] = []
        if method == "POST":
            length = int(handler.headers.get("Content-Length") or 0)
            if length > 64 * 1024:
                return self._send(handler, 413, {"error": "invalid_request", "error_description": "body too large"})
            form = parse_qsl(handler.rfile.read(length).decode("utf-8", "replace"), keep_blank_values=True)
        self.requests.append((method, parts.path, dict(form).get("grant_type", "")))
        request = _Request(method, f"{self.issuer}{handler.path}", dict(handler.headers.items()), query, form)
        cors = handler.headers.get("Origin") in self.client.origins
        routes = {("GET", "/.well-known/openid-configuration"): lambda: (200, self.discovery(), []),
                  ("GET", "/jwks.json"): lambda: (200, self.jwks(), []),
                  ("GET", "/authorize"): lambda: self._authorize(request, handler),
                  ("POST", "/token"): lambda: self._server.create_token_response(request),
                  ("GET", "/logout"): lambda: self._logout(request, handler),
                  ("GET", "/login"): lambda: self._login(request)}
        if method == "OPTIONS":
            return self._send(handler, 204, None, cors_origin=handler.headers.get("Origin") if cors else None,
                              extra=[("Access-Control-Allow-Methods", "GET, POST"),
                                     ("Access-Control-Allow-Headers", "Content-Type")])
        route = routes.get((method, parts.path))
        if route is None:
            return self._send(handler, 404, {"error": "not_found"})
        status, body, headers = route()
        self._send(handler, status, body, headers, cors_origin=handler.headers.get("Origin") if cors else None)

    def _session_user(self, handler: BaseHTTPRequestHandler) -> tuple[str | None, DevUser | None]:
        jar = cookies.SimpleCookie(handler.headers.get("Cookie") or "")
        sid = jar[SESSION_COOKIE].value if SESSION_COOKIE in jar else None
        with self._lock:
            return sid, self._sessions.get(sid) if sid else None

    def _authorize(self, request: _Request, handler: BaseHTTPRequestHandler) -> tuple[int, Any, list[tuple[str, str]]]:
        sid, user = self._session_user(handler)
        headers: list[tuple[str, str]] = []
        if user is None and request.payload.data.get("prompt") != "none":
            # The sign-in a real provider asks for with a form: here the hinted (or default) user, at once.
            user = self.users.get(request.payload.data.get("login_hint", ""), self.default_user)
            sid = secrets.token_urlsafe(24)
            with self._lock:
                self._sessions[sid] = user
            headers.append(("Set-Cookie", f"{SESSION_COOKIE}={sid}; Path=/; HttpOnly; SameSite=Lax"))
        try:
            grant = self._server.get_consent_grant(request, end_user=user)
        except OAuth2Error as error:
            status, body, error_headers = self._server.handle_error_response(request, error)
            return status, body, [*error_headers, *headers]
        status, body, grant_headers = self._server.create_authorization_response(request, grant_user=user,
                                                                                  grant=grant)
        return status, body, [*grant_headers, *headers]

    def login_url(self, sub: str, return_to: str) -> str:
        """A link that signs ``sub`` in at this provider and opens ``return_to`` (a registered redirect URI)."""
        return f"{self.issuer}/login?{urlencode({'login_hint': sub, 'return_to': return_to})}"

    def _login(self, request: _Request) -> tuple[int, Any, list[tuple[str, str]]]:
        data = request.payload.data
        user = self.users.get(data.get("login_hint", ""))
        back = data.get("return_to", "")
        if user is None:
            return 400, {"error": "invalid_request", "error_description": "login_hint names no user"}, []
        if back not in self.client.redirect_uris:  # never an open redirect, even in development
            return 400, {"error": "invalid_request", "error_description": "return_to is not a registered page"}, []
        sid = secrets.token_urlsafe(24)
        with self._lock:
            self._sessions[sid] = user
        return 302, "", [("Location", back), ("Set-Cookie", f"{SESSION_COOKIE}={sid}; Path=/; HttpOnly; SameSite=Lax")]

    def _logout(self, request: _Request, handler: BaseHTTPRequestHandler) -> tuple[int, Any, list[tuple[str, str]]]:
        sid, _ = self._session_user(handler)
        if sid:
            with self._lock:
                self._sessions.pop(sid, None)
        headers = [("Set-Cookie", f"{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")]
        back = request.payload.data.get("post_logout_redirect_uri")
        if back and back in self.client.post_logout_redirect_uris:
            return 302, "", [("Location", back), *headers]
        return 200, "signed out", headers

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: Any,
              headers: list[tuple[str, str]] | None = None, *, cors_origin: str | None = None,
              extra: list[tuple[str, str]] | None = None) -> None:
        if isinstance(body, dict):
            payload, kind = json.dumps(body).encode(), "application/json"
        else:
            payload, kind = (body or "").encode() if isinstance(body, str) else b"", "text/plain; charset=utf-8"
        handler.send_response(status)
        sent = {name.lower() for name, _ in headers or []}
        for name, value in headers or []:
            handler.send_header(name, value)
        if "content-type" not in sent:
            handler.send_header("Content-Type", kind)
        if "cache-control" not in sent:
            handler.send_header("Cache-Control", "no-store")
        if cors_origin:
            handler.send_header("Access-Control-Allow-Origin", cors_origin)
            handler.send_header("Vary", "Origin")
        for name, value in extra or []:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

