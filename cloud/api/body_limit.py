"""Request bodies are bounded and authenticated before they are read: a pure ASGI middleware.

FastAPI reads a route's whole body before it solves the route's dependencies, so without this an
anonymous client could make the API hold any body it streams (four 150 MiB POSTs took it to
1.9 GB). This middleware runs before any of that, on the raw ASGI messages:

- A request that announces a body (``Content-Length`` > 0 or ``Transfer-Encoding: chunked``) must
  carry a bearer token that verifies: every route of the API that takes a body needs one. Without it
  the answer is 401 at once, the body never read (the connection is closed rather than drained).
- ``Content-Length`` over the limit: 413 at once, the body never read.
- A chunked body is counted as it streams; past the limit reading stops with 413 (raised as a
  Starlette ``HTTPException``, which FastAPI passes through its body parsing untouched).

The limit is ``RPM_API_MAX_BODY_BYTES`` (64 KiB by default: the largest body a route takes is a
threshold override of a few hundred bytes); ``route_limits`` gives a larger one to the routes that
need it (none today), by method and path prefix.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.api.problems import BodyTooLarge, problem_response
from cloud.api.tokens import TokenError, TokenVerifier

# A refused body is never read: the server closes the connection instead of draining it.
_CLOSE = {"Connection": "close"}
SIGNED_PATHS = frozenset({"/bootstrap/v1/poll"})
"""Routes whose requests authenticate themselves by a signature over the body (the gateway's bootstrap poll,
cloud/api/routes/bootstrap.py): no bearer token is asked for; the size limit applies as to any other."""


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, verifier: TokenVerifier,
                 route_limits: Mapping[tuple[str, str], int] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.verifier = verifier
        self.route_limits = dict(route_limits or {})
        """(method, path prefix) -> limit, for the routes that take more than the default."""

    def limit_for(self, method: str, path: str) -> int:
        for (route_method, prefix), limit in self.route_limits.items():
            if method == route_method and path.startswith(prefix):
                return limit
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.limit_for(scope["method"], scope["path"])
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length_text = headers.get("content-length")
        try:
            length = int(length_text) if length_text is not None else None
        except ValueError:
            await self._refuse(scope, receive, send, 400, "Content-Length is not a number", "bad-request")
            return
        if (chunked or (length or 0) > 0) and scope["path"] not in SIGNED_PATHS:
            refusal = await self._authentication_refusal(headers)
            if refusal is not None:
                await self._refuse(scope, receive, send, 401, refusal, "unauthenticated",
                                   {"WWW-Authenticate": "Bearer"})
                return
        if length is not None and length > limit:
            await self._refuse(scope, receive, send, 413, f"the request body is larger than {limit} bytes",
                               "payload-too-large")
            return

        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:
            # Where a route reads the body without FastAPI's parsing (nothing today) the exception gets here.
            if started:
                raise
            await self._refuse(scope, receive, send, 413, str(exc.detail), "payload-too-large")

    async def _authentication_refusal(self, headers: Headers) -> str | None:
        """Why the request is not authenticated, or None: the token is verified, not just present."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "a bearer token is required"
        try:
            # Off the event loop: verification against a JWKS may fetch the issuer's keys.
            await run_in_threadpool(self.verifier.verify, token.strip())
        except TokenError as exc:
            return f"invalid bearer token: {exc}"
        return None

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str, slug: str,
                      headers: dict[str, str] | None = None) -> None:
        response = problem_response(Request(scope), status, detail, slug=slug, headers={**_CLOSE, **(headers or {})})
        await response(scope, receive, send)
