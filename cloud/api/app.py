"""The clinician API: ``create_app(settings)`` builds the FastAPI application.

One router per resource (``cloud/api/routes``); authorisation and the database connection are
dependencies (``cloud/api/deps.py``); every error is problem+json (``cloud/api/problems.py``). One
middleware gives each request an id (``X-Request-ID``, echoed), measures it (Prometheus and a
``Server-Timing`` header) and writes the audit rows for every patient the request touched, with its
outcome, before the response leaves: no audit row, no data. Every write by a signed-in caller is
audited too, allowed or refused, even one that names no patient.

Every response carries ``Cache-Control: no-store``, ``X-Content-Type-Options: nosniff`` and
``Referrer-Policy: no-referrer``: nearly all of them are PHI (JSON, CSV, NDJSON, FHIR, the /ui page's
data) and no response is worth caching. Under that middleware, ``cloud.api.body_limit`` bounds
request bodies and refuses unauthenticated ones before anything reads them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from cloud.api import docs as api_docs
from cloud.api import queries
from cloud.api.body_limit import BodyLimitMiddleware
from cloud.api.deps import WRITE_METHODS
from cloud.api.problems import install_problem_handlers, problem_response
from cloud.api.routes import (
    alert_links,
    alerts,
    audit,
    bootstrap,
    care_teams,
    consents,
    devices,
    equipment,
    escalation,
    fhir,
    fhir_bulk,
    gateways,
    health,
    inbox,
    me,
    patient_access,
    patient_gateways,
    patients,
    programme,
    readings,
    stream,
    summaries,
    thresholds,
    trends,
    twin,
    ui,
)
from cloud.api.tokens import Principal, TokenVerifier
from cloud.settings import CloudSettings, get_settings

log = logging.getLogger(__name__)
_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
# On every response (the /ui page adds its Content-Security-Policy): no cache, proxy or browser history
# keeps PHI, no content is sniffed into something executable, no address leaks in a Referer.
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _configure(conn: psycopg.Connection) -> None:
    conn.execute("SET TIME ZONE 'UTC'")


def open_api_pool(settings: CloudSettings) -> ConnectionPool:
    pool = ConnectionPool(settings.database_url, min_size=1, max_size=settings.api_pool_max, name="rpm-api",
                          timeout=5.0, kwargs={"autocommit": True}, configure=_configure,
                          check=ConnectionPool.check_connection, open=False)
    pool.open(wait=False)
    return pool


def _outcome(status: int) -> str:
    if status < 400:
        return "allowed"
    named = {401: "unauthenticated", 403: "forbidden", 404: "not_found"}
    return named.get(status, "error" if status >= 500 else "refused")


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    if 0 < len(given) <= 100 and set(given) <= _REQUEST_ID_OK:
        return given
    return uuid.uuid4().hex


def create_app(settings: CloudSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = open_api_pool(settings)
        try:
            yield
        finally:
            app.state.pool.close()

    # docs_url/redoc_url off: cloud.api.docs serves both from packaged assets (FastAPI's pages load a CDN).
    app = FastAPI(title="RPM clinician API", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Readings, trends, summaries, alerts, thresholds, devices, the digital twin and "
                              "FHIR R4 for clinicians and care teams; consent and access trail for patients.")
    app.state.settings = settings
    app.state.verifier = TokenVerifier(settings)
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    requests_total = Counter("rpm_api_requests_total", "HTTP requests", ["method", "route", "status"],
                             registry=registry)
    latency = Histogram("rpm_api_request_seconds", "HTTP request time in the server", ["method", "route"],
                        registry=registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5))
    audit_failures = Counter("rpm_api_audit_failures_total", "Requests refused because the audit row failed",
                             registry=registry)

    def write_audit(request: Request, principal: Principal, patient_ids: list[str], status: int,
                    detail: dict[str, object] | None) -> None:
        route = request.scope.get("route")
        action = f"{request.method} {getattr(route, 'path', request.url.path)}"
        # A search that hides a patient answers 200 with nothing; the audit still says what happened.
        outcome = getattr(request.state, "audit_outcome", None) or _outcome(status)
        with app.state.pool.connection() as conn:
            queries.write_audit(conn, principal.subject, principal.role, principal.care_teams, action, patient_ids,
                                outcome, status, request.state.request_id, detail)

    # Added before the request-context middleware, so it runs inside it: its refusals get a request id,
    # the security headers and a metric like any other answer.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.api_max_body_bytes, verifier=app.state.verifier)

    @app.middleware("http")
    async def request_context(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        request.state.request_id = _request_id(request)
        if "\x00" in request.url.path or "%00" in request.url.query:
            # PostgreSQL text cannot hold NUL: refuse it here, before it reaches a query or the audit row.
            response: Response = problem_response(request, 400, "NUL characters are not allowed in the URL",
                                                  slug="bad-request")
        else:
            response = await call_next(request)
        patient_ids = getattr(request.state, "audit_patients", None) or []
        principal = getattr(request.state, "principal", None)
        if principal is not None and (patient_ids or request.method in WRITE_METHODS):
            try:
                await run_in_threadpool(write_audit, request, principal, patient_ids, response.status_code,
                                        getattr(request.state, "audit_detail", None))
            except Exception:
                audit_failures.inc()
                log.exception("audit write failed; refusing the response")
                response = problem_response(request, 503, "the access could not be audited; retry later",
                                            slug="audit-unavailable")
        elapsed = time.perf_counter() - started
        route = request.scope.get("route")
        route_path = getattr(route, "path", "unmatched")
        requests_total.labels(request.method, route_path, str(response.status_code)).inc()
        latency.labels(request.method, route_path).observe(elapsed)
        response.headers["X-Request-ID"] = request.state.request_id
        response.headers["Server-Timing"] = f"app;dur={elapsed * 1000:.2f}"
        response.headers.update(SECURITY_HEADERS)
        return response

    install_problem_handlers(app)
    app.include_router(fhir_bulk.router)  # bulk $export: before fhir, whose Patient/{patient_id} takes $export
    for module in (health, patients, readings, trends, summaries, alerts, thresholds, devices, twin, consents,
                   audit, care_teams, fhir, ui):
        app.include_router(module.router)
    app.include_router(alert_links.router)  # message deep links (cloud.alerts.channels)
    app.include_router(equipment.router)  # patient equipment
    app.include_router(api_docs.router)  # /docs and /redoc offline, / → /ui
    app.include_router(inbox.router)  # alert inbox and assignment
    app.include_router(stream.router)  # live alert events (SSE)
    app.include_router(escalation.router)  # escalation set-up, on-call, patient contacts
    app.include_router(me.router)  # who I am; the patient's overview in plain words
    app.include_router(patient_access.router)  # the patient's access, invites, access log, closure, first-time links
    app.include_router(programme.router)  # RPM programme: enrolment, clinician time, month-end report
    app.include_router(bootstrap.router)  # the gateway's signed bootstrap poll (no bearer token)
    app.include_router(gateways.router)  # claim, credentials, remote config, candidates, fleet view
    app.include_router(patient_gateways.router)  # the gateways claimed for one patient (the patient page)
    return app
