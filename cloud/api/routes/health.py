"""Liveness, readiness (database reachable and migrated) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloud.api.models import HealthStatus
from cloud.api.problems import ApiProblem, problem_responses

router = APIRouter(tags=["health"], responses=problem_responses("default"))
REQUIRED_MIGRATION = "0510"  # the newest migration the API uses (audit_log.detail for writes)


@router.get("/healthz", response_model=HealthStatus)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=HealthStatus, responses=problem_responses(
    503, when={503: "The database is not reachable or not migrated"}))
def readyz(request: Request) -> dict[str, str]:
    try:
        with request.app.state.pool.connection(timeout=2.0) as conn:
            row = conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (REQUIRED_MIGRATION,)).fetchone()
    except Exception as exc:  # any failure to reach the database means not ready
        raise ApiProblem(503, f"database not reachable: {type(exc).__name__}", slug="not-ready") from exc
    if row is None:
        raise ApiProblem(503, f"database not migrated (needs {REQUIRED_MIGRATION}); run rpm-cloud migrate",
                         slug="not-ready")
    return {"status": "ready"}


@router.get("/metrics", response_class=Response,
            responses={200: {"description": "Prometheus text exposition format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
