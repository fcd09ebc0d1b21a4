"""RFC 9457 problem details (``application/problem+json``) for every error the API answers.

Each boundary translates errors once: the domain's typed errors (alerts, twin, tokens) and
FastAPI's validation errors become problems here; nothing else in the API formats an error. The
OpenAPI document says so too: :func:`problem_responses` documents a route's errors with the
``Problem`` schema, which :func:`install_problem_handlers` adds to the document's components.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, NotRequired

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import ConfigDict, TypeAdapter, with_config
from starlette.exceptions import HTTPException as StarletteHTTPException
from typing_extensions import TypedDict

from cloud.alerts import AlertNotFound, AlertStateError, InvalidOverride, RuleNotFound
from cloud.api.tokens import TokenError
from cloud.errors import CloudError
from cloud.twin.service import PatientNotFound

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class ValidationIssue(TypedDict):
    loc: list[str]
    msg: str
    type: str


@with_config(ConfigDict(use_attribute_docstrings=True))
class Problem(TypedDict):
    """RFC 9457 problem details. Some problems add members of their own."""

    type: str
    """``/problems/{slug}`` naming the kind of problem, or ``about:blank``."""
    title: str
    status: int
    detail: str
    instance: str
    """The request's path."""
    request_id: NotRequired[str]
    """As in the ``X-Request-ID`` header: quote it when reporting a problem."""
    errors: NotRequired[list[ValidationIssue]]
    """What was not valid (422 validation problems)."""


_WHEN = {
    400: "The request cannot be read (a bad cursor, search parameter or URL)",
    401: "No bearer token, or one that is not valid",
    403: "The caller's role may not do this",
    404: "No such resource, or one the caller may not see (the same answer for both)",
    409: "The resource is not in a state that allows this",
    413: "The request body is larger than the limit",
    422: "The request is not valid",
    503: "The database is unavailable, or the access could not be audited; retry later",
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def problem_responses(*statuses: int | str, when: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (``"default"``: any other error), each a problem;
    ``when`` says when a status comes where the general description does not fit."""
    described = {**_WHEN, **(when or {})}
    return {status: {"description": described.get(status, "An error") if isinstance(status, int) else "Any other error",
                     "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}}} for status in statuses}


def _document_problems(app: FastAPI) -> None:
    """Put the ``Problem`` schema the routes' error responses refer to in the document's components."""
    schema = TypeAdapter(Problem).json_schema(ref_template="#/components/schemas/{model}")
    components = {**schema.pop("$defs", {}), "Problem": schema}
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()  # built on the first call; later calls return FastAPI's kept copy
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        if "Problem" not in schemas:
            schemas.update(components)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


class ApiProblem(CloudError):
    def __init__(self, status: int, detail: str, *, slug: str | None = None, title: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.slug = status, detail, slug
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers
        self.extra = extra or {}


class BodyTooLarge(StarletteHTTPException, CloudError):
    """The request body grew past the limit while it was read (``cloud.api.body_limit``). A Starlette
    ``HTTPException``, because FastAPI passes those through its body parsing and turns others into 400."""

    def __init__(self, limit: int) -> None:
        # The rest of the body is never read: close the connection rather than let the server drain it.
        super().__init__(413, f"the request body is larger than {limit} bytes", headers={"Connection": "close"})
        self.limit = limit


def not_found(what: str = "resource") -> ApiProblem:
    # The same answer whether it does not exist or the caller may not see it: no existence leak.
    return ApiProblem(404, f"no such {what}", slug="not-found")


def forbidden(detail: str) -> ApiProblem:
    return ApiProblem(403, detail, slug="forbidden")


def problem_response(request: Request, status: int, detail: str, *, slug: str | None = None, title: str | None = None,
                     headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"/problems/{slug}" if slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    body.update(extra or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [{"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg")),
             "type": str(error.get("type"))} for error in exc.errors()]


def install_problem_handlers(app: FastAPI) -> None:
    _document_problems(app)

    @app.exception_handler(ApiProblem)
    async def _api_problem(request: Request, exc: ApiProblem) -> JSONResponse:
        return problem_response(request, exc.status, exc.detail, slug=exc.slug, title=exc.title, headers=exc.headers,
                                extra=exc.extra)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return problem_response(request, 413, str(exc.detail), slug="payload-too-large", headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(request, 422, "the request is not valid", slug="validation",
                                extra={"errors": _validation_errors(exc)})

    @app.exception_handler(TokenError)
    async def _token(request: Request, exc: TokenError) -> JSONResponse:
        return problem_response(request, 401, f"invalid bearer token: {exc}", slug="unauthenticated",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    @app.exception_handler(AlertNotFound)
    @app.exception_handler(RuleNotFound)
    @app.exception_handler(PatientNotFound)
    async def _missing(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(request, 404, "no such resource", slug="not-found")

    @app.exception_handler(AlertStateError)
    async def _state(request: Request, exc: AlertStateError) -> JSONResponse:
        return problem_response(request, 409, str(exc), slug="conflict")

    @app.exception_handler(InvalidOverride)
    async def _override(request: Request, exc: InvalidOverride) -> JSONResponse:
        return problem_response(request, 422, str(exc), slug="invalid-threshold")

    @app.exception_handler(psycopg.DataError)
    async def _unstorable(request: Request, exc: psycopg.DataError) -> JSONResponse:
        # A value that passed validation but the database cannot take (NUL in text, a number out of range).
        log.info("data error on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(request, 422, "a value in the request cannot be stored or compared",
                                slug="unprocessable-value")

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(psycopg.OperationalError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return problem_response(request, 503, "the database is unavailable; retry later", slug="unavailable",
                                headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, "internal error", slug="internal")
