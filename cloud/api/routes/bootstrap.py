"""``POST /bootstrap/v1/poll``: the gateway's signed poll (contract: ``gateway/provisioning/bootstrap.py``).

No bearer token: the request is authenticated by its Ed25519 signature over the exact body bytes
(``cloud.api.body_limit.SIGNED_PATHS`` lets its body through without one). In order, each cheap step
before the next costlier one: the body is read up to ``RPM_BOOTSTRAP_MAX_BODY_BYTES`` (413 past it), parsed
and its signature and clock checked (400 / 401), the (gateway id, key) pair rate-limited in this process
(429 with ``Retry-After``), and only then the database: key pinning (409), nonce (401), claim and
credentials (:mod:`cloud.fleet.provisioning`). Every answer that is not 200/202 is problem+json, whose
``detail`` the gateway logs in its one sentence.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from cloud.api.fleet_models import PollProvisioned, PollUnclaimed
from cloud.api.problems import ApiProblem, problem_responses
from cloud.fleet import FleetError
from cloud.fleet.provisioning import handle_poll
from cloud.fleet.signed_poll import PollRateLimiter, verify_poll
from cloud.settings import CloudSettings

router = APIRouter(tags=["gateways"])
_POLL_SCHEMA = {
    "required": True,
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["gateway_id", "public_key", "claim_code_sha256", "nonce", "at"],
        "properties": {"gateway_id": {"type": "string"}, "public_key": {"type": "string", "description": "raw "
                       "Ed25519 public key, base64"}, "claim_code_sha256": {"type": "string"},
                       "nonce": {"type": "string"}, "at": {"type": "string", "format": "date-time"},
                       "csr": {"type": "string", "description": "PEM, CN = gateway id"},
                       "software_version": {"type": "string"}, "config_version": {"type": "integer"}}}}},
}


def _limiter(request: Request, settings: CloudSettings) -> PollRateLimiter:
    limiter = getattr(request.app.state, "bootstrap_limiter", None)
    if limiter is None:
        limiter = request.app.state.bootstrap_limiter = PollRateLimiter(settings.bootstrap_polls_per_s,
                                                                        settings.bootstrap_poll_burst)
    return limiter


async def _bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiProblem(413, f"a poll is at most {limit} bytes", slug="payload-too-large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiProblem(413, f"a poll is at most {limit} bytes", slug="payload-too-large")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/bootstrap/v1/poll", openapi_extra={"requestBody": _POLL_SCHEMA},
             summary="A gateway's signed poll: 202 unclaimed (retry_after_s), 200 provisioned (broker URL, "
                     "credentials until delivered, config document)",
             responses={200: {"model": PollProvisioned, "description": "Claimed: provisioned"},
                        202: {"model": PollUnclaimed, "description": "Not claimed yet"},
                        **problem_responses(400, 401, 409, 413, 429, 503, "default",
                                            when={401: "Bad signature, clock or a replayed nonce",
                                                  409: "Another key is registered for this gateway id"})})
async def poll(request: Request) -> JSONResponse:
    settings: CloudSettings = request.app.state.settings
    body = await _bounded_body(request, settings.bootstrap_max_body_bytes)
    now = datetime.now(UTC)
    try:
        checked = verify_poll(body, request.headers.get("x-rpm-signature"), now=now,
                              skew=timedelta(seconds=settings.bootstrap_clock_skew_s))
    except FleetError as err:
        raise ApiProblem(err.status, err.detail, slug=err.slug) from None
    wait = _limiter(request, settings).allow(checked.gateway_id, checked.public_key_raw)
    if wait is not None:
        raise ApiProblem(429, "too many polls from this gateway", slug="too-many-polls",
                         headers={"Retry-After": str(max(1, round(wait)))})

    def work() -> tuple[int, dict[str, Any]]:
        with request.app.state.pool.connection() as conn:
            return handle_poll(conn, settings, checked, request_id=request.state.request_id)

    try:
        status, answer = await run_in_threadpool(work)
    except FleetError as err:
        raise ApiProblem(err.status, err.detail, slug=err.slug) from None
    return JSONResponse(answer, status_code=status)
