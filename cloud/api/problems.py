"""RFC 9457 problem details (``application/problem+json``) for every error the API answers, and a
FHIR ``OperationOutcome`` (``application/fhir+json``) for every error under ``/fhir``.

Each boundary translates errors once: the domain's typed errors (alerts, twin, tokens) and
FastAPI's validation errors become problems here; nothing else in the API formats an error. The
OpenAPI document says so too: :func:`problem_responses` documents a route's errors with the
``Problem`` schema (:func:`outcome_responses`, FHIR routes, with ``OperationOutcome``), which
:func:`install_problem_handlers` adds to the document's components.

Under ``/fhir`` the same problem is rendered as an ``OperationOutcome`` (FHIR R4 §3.1.0.4.2, RESTful
API "Handling Errors"), since FHIR clients parse nothing else: one issue with a severity, the issue
type for the HTTP status (:data:`ISSUE_TYPES`), the detail as ``diagnostics`` and the problem's slug
as a coding of ``details``; a validation problem gives one issue per invalid field.
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
from cloud.db.pool import is_transient
from cloud.errors import CloudError
from cloud.twin.service import PatientNotFound

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
FHIR_JSON = "application/fhir+json"
FHIR_PATH = "/fhir"
PROBLEM_SYSTEM = "urn:rpm:problem"
"""The code system of an OperationOutcome issue's ``details`` coding: the problem's slug."""
# FHIR R4 IssueType (http://hl7.org/fhir/issue-type) for each HTTP status we answer; others by class.
ISSUE_TYPES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
               406: "not-supported", 409: "conflict", 413: "too-long", 415: "not-supported", 422: "invalid",
               429: "throttled", 500: "exception", 503: "transient"}


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


@with_config(ConfigDict(use_attribute_docstrings=True))
class OutcomeCoding(TypedDict):
    system: str
    code: str


@with_config(ConfigDict(use_attribute_docstrings=True))
class OutcomeDetails(TypedDict):
    coding: NotRequired[list[OutcomeCoding]]
    """``urn:rpm:problem`` with the problem's slug, where it has one."""
    text: str
    """The HTTP status's title."""


@with_config(ConfigDict(use_attribute_docstrings=True))
class OutcomeIssue(TypedDict):
    severity: str
    """``error``, or ``fatal`` for a server error (5xx)."""
    code: str
    """FHIR IssueType for the HTTP status (``not-found``, ``login``, ``forbidden``, ``invalid`` ...)."""
    details: OutcomeDetails
    diagnostics: str
    expression: NotRequired[list[str]]
    """The invalid field (validation errors)."""


@with_config(ConfigDict(use_attribute_docstrings=True))
class OperationOutcome(TypedDict):
    """A FHIR R4 OperationOutcome (https://hl7.org/fhir/R4/operationoutcome.html): every error under /fhir."""

    resourceType: str
    issue: list[OutcomeIssue]


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
_OUTCOME_REF = {"$ref": "#/components/schemas/OperationOutcome"}


def _error_responses(content: dict[str, Any], statuses: tuple[int | str, ...],
                     when: dict[int, str] | None) -> dict[int | str, dict[str, Any]]:
    described = {**_WHEN, **(when or {})}
    return {status: {"description": described.get(status, "An error") if isinstance(status, int) else "Any other error",
                     "content": content} for status in statuses}


def problem_responses(*statuses: int | str, when: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (``"default"``: any other error), each a problem;
    ``when`` says when a status comes where the general description does not fit."""
    return _error_responses({PROBLEM_JSON: {"schema": _PROBLEM_REF}}, statuses, when)


def outcome_responses(*statuses: int | str, when: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """As :func:`problem_responses`, for routes under ``/fhir``: each error an ``OperationOutcome``."""
    return _error_responses({FHIR_JSON: {"schema": _OUTCOME_REF}}, statuses, when)


def _document_problems(app: FastAPI) -> None:
    """Put the ``Problem`` and ``OperationOutcome`` schemas the routes' error responses refer to in the
    document's components."""
    components: dict[str, Any] = {}
    for name, shape in (("Problem", Problem), ("OperationOutcome", OperationOutcome)):
        schema = TypeAdapter(shape).json_schema(ref_template="#/components/schemas/{model}")
        components.update({**schema.pop("$defs", {}), name: schema})
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


def is_fhir_path(path: str) -> bool:
    return path == FHIR_PATH or path.startswith(FHIR_PATH + "/")


def _field(loc: list[str]) -> str:
    """``["query", "_count"]`` -> ``_count``: the parameter or body member, without where it came from."""
    return ".".join(loc[1:]) or ".".join(loc)


def operation_outcome(status: int, detail: str, *, slug: str | None = None, title: str | None = None,
                      errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An ``OperationOutcome`` saying what a problem says (see the module's docstring)."""
    details: dict[str, Any] = {"text": title or HTTPStatus(status).phrase}
    if slug:
        details = {"coding": [{"system": PROBLEM_SYSTEM, "code": slug}], **details}
    base = {"severity": "fatal" if status >= 500 else "error",
            "code": ISSUE_TYPES.get(status, "exception" if status >= 500 else "processing"), "details": details}
    issues = [{**base, "diagnostics": f"{'.'.join(e['loc'])}: {e['msg']}", "expression": [_field(e["loc"])]}
              for e in errors or ()]
    return {"resourceType": "OperationOutcome", "issue": issues or [{**base, "diagnostics": detail}]}


def problem_response(request: Request, status: int, detail: str, *, slug: str | None = None, title: str | None = None,
                     headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> JSONResponse:
    if is_fhir_path(request.url.path):
        # The request id is in the X-Request-ID header; an OperationOutcome has no member for it.
        outcome = operation_outcome(status, detail, slug=slug, title=title, errors=(extra or {}).get("errors"))
        return JSONResponse(outcome, status_code=status, headers=headers, media_type=FHIR_JSON)
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
        if isinstance(exc, psycopg.OperationalError) and not is_transient(exc):
            # The database refused the work itself (e.g. TimescaleDB's decompression limit): "retry later"
            # would be a promise the same request can never keep.
            log.error("database refused %s %s: SQLSTATE %s: %s", request.method, request.url.path, exc.sqlstate, exc)
            return problem_response(request, 500, f"the database refused this operation (SQLSTATE {exc.sqlstate});"
                                    " retrying will not help: see the server log", slug="database-refused")
        log.warning("database unavailable: %s", exc)
        return problem_response(request, 503, "the database is unavailable; retry later", slug="unavailable",
                                headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, "internal error", slug="internal")
