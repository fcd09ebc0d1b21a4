"""FHIR R4: ``Patient/{id}``, ``Observation?patient=&code=&date=`` (a searchset Bundle) and
``Patient/{id}/$everything``, built with ``cloud.twin.fhir`` (vital-signs profiles, LOINC + UCUM).

Search follows FHIR R4 §3.1.1 (search): ``date`` takes the prefixes eq, ge, gt, le, lt and a
precision of year, month, day or instant (a day means the whole day); ``code`` is a token
(``system|code`` or ``code``, comma for OR). A patient the caller may not see gives an empty Bundle,
exactly as one that does not exist.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.encoders import jsonable_encoder

from cloud.api import queries
from cloud.api.deps import CurrentPrincipal, DbConn, ReadingsAccess, authorise_patient
from cloud.api.problems import ApiProblem, problem_responses
from cloud.twin import fhir
from gateway.metrics import LOINC_BP_PANEL, METRICS

router = APIRouter(prefix="/fhir", tags=["fhir"], responses=problem_responses(400, 401, 403, 422, 503, "default"))
FHIR_JSON = "application/fhir+json"
_PATIENT_REF = re.compile(r"^(?:Patient/)?([^/]{1,200})$")
_DATE = re.compile(r"^(eq|ne|ge|gt|le|lt|sa|eb|ap)?(\d{4}(?:-\d{2}(?:-\d{2}(?:T.+)?)?)?)$")


class FhirResponse(Response):
    media_type = FHIR_JSON


def _resource(resource_type: str) -> dict[int | str, dict[str, Any]]:
    """The 200 answer documented as a FHIR R4 resource: its type named, the rest left to the specification
    (the route renders it; a model here would only validate it again)."""
    schema = {"type": "object", "required": ["resourceType"], "additionalProperties": True,
              "properties": {"resourceType": {"type": "string", "const": resource_type}},
              "description": f"A FHIR R4 {resource_type} (https://hl7.org/fhir/R4/{resource_type.lower()}.html)"}
    return {200: {"description": f"FHIR R4 {resource_type}", "content": {FHIR_JSON: {"schema": schema}}}}


def _fhir(body: dict[str, Any]) -> Response:
    return FhirResponse(json.dumps(jsonable_encoder(body)))


def _interval(text: str) -> tuple[datetime, datetime, bool]:
    """(start, end, is_instant) of a FHIR date value at its own precision."""
    try:
        if "T" in text:
            instant = datetime.fromisoformat(text.replace("Z", "+00:00"))
            instant = instant if instant.tzinfo else instant.replace(tzinfo=UTC)
            return instant, instant, True
        parts = [int(p) for p in text.split("-")]
        if len(parts) == 1:
            first, after = date(parts[0], 1, 1), date(parts[0] + 1, 1, 1)
        elif len(parts) == 2:
            first = date(parts[0], parts[1], 1)
            after = date(parts[0] + parts[1] // 12, parts[1] % 12 + 1, 1)
        else:
            first = date(parts[0], parts[1], parts[2])
            after = first + timedelta(days=1)
    except (ValueError, OverflowError) as exc:
        raise ApiProblem(400, f"bad FHIR date {text!r}", slug="bad-search-parameter") from exc
    start = datetime.combine(first, datetime.min.time(), UTC)
    return start, datetime.combine(after, datetime.min.time(), UTC), False


def date_conditions(values: list[str]) -> list[tuple[str, datetime]]:
    conditions: list[tuple[str, datetime]] = []
    for value in values:
        match = _DATE.match(value)
        if not match:
            raise ApiProblem(400, f"bad FHIR date parameter {value!r}", slug="bad-search-parameter")
        prefix, text = match.group(1) or "eq", match.group(2)
        start, end, instant = _interval(text)
        if prefix == "eq":
            conditions += [(">=", start), ("<=" if instant else "<", end)]
        elif prefix == "ge":
            conditions.append((">=", start))
        elif prefix == "gt":
            conditions.append((">", end) if instant else (">=", end))
        elif prefix == "le":
            conditions.append(("<=" if instant else "<", end))
        elif prefix == "lt":
            conditions.append(("<", start))
        else:
            raise ApiProblem(400, f"date prefix {prefix!r} is not supported (eq, ge, gt, le, lt)",
                             slug="bad-search-parameter")
    return conditions


def _codes(values: list[str]) -> set[str]:
    codes: set[str] = set()
    for value in values:
        for token in value.split(","):
            system, _, code = token.rpartition("|")
            if system and system != fhir.LOINC:
                raise ApiProblem(400, f"only LOINC codes are searchable ({fhir.LOINC})", slug="bad-search-parameter")
            codes.add(code)
    return codes


def _metrics_for(codes: set[str]) -> tuple[list[str], list[str]]:
    """(metrics, kinds) whose Observations can carry one of these LOINC codes."""
    metrics = [name for name, m in METRICS.items() if m.loinc in codes]
    kinds = ["blood_pressure"] if LOINC_BP_PANEL in codes else []
    return metrics, kinds


def _observation_codes(resource: dict[str, Any]) -> set[str]:
    return {c["code"] for c in resource["code"]["coding"] if c["system"] == fhir.LOINC}


def _bundle(request: Request, resources: list[dict[str, Any]], total: int | None = None) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/") + "/fhir/"
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources) if total is None else total,
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": [{"fullUrl": f"{base}{r['resourceType']}/{r['id']}", "resource": r,
                   "search": {"mode": "match"}} for r in resources],
    }


def _observations(conn: DbConn, patient_id: str, codes: set[str] | None, dates: list[tuple[str, datetime]],
                  count: int) -> list[dict[str, Any]]:
    metrics, kinds = _metrics_for(codes) if codes else (None, None)
    if codes and not metrics and not kinds:
        return []
    rows = queries.readings_with_values(conn, patient_id, metrics=metrics, kinds=kinds, ranges=dates, limit=count)
    resources: list[dict[str, Any]] = []
    for row in rows:
        for resource in fhir.observations_from_row(row):
            if codes is None or _observation_codes(resource) & codes:
                resources.append(resource)
    return resources[:count]


@router.get("/Patient/{patient_id}", summary="FHIR R4 Patient", response_class=FhirResponse,
            responses={**_resource("Patient"), **problem_responses(404)})
def read_patient(access: ReadingsAccess, conn: DbConn) -> Response:
    row = queries.patient_row(conn, access.patient_id)
    assert row is not None
    return _fhir(fhir.patient_resource(row))


@router.get("/Observation", summary="FHIR R4 Observation search (searchset Bundle)", response_class=FhirResponse,
            responses=_resource("Bundle"))
def search_observations(
    request: Request, principal: CurrentPrincipal, conn: DbConn,
    patient: Annotated[str, Query(max_length=220, description="Patient/{id} or {id}")],
    code: Annotated[list[str] | None, Query(max_length=500)] = None,
    date: Annotated[list[str] | None, Query(max_length=60)] = None,
    count: Annotated[int, Query(alias="_count", ge=1, le=5000)] = 500,
) -> Response:
    match = _PATIENT_REF.match(patient)
    if not match:
        raise ApiProblem(400, "patient must be Patient/{id} or {id}", slug="bad-search-parameter")
    codes = _codes(code) if code else None
    dates = date_conditions(date or [])
    try:
        access = authorise_patient(conn, request, principal, match.group(1), "readings")
    except ApiProblem:
        request.state.audit_outcome = "not_found"
        return _fhir(_bundle(request, []))
    return _fhir(_bundle(request, _observations(conn, access.patient_id, codes, dates, count)))


@router.get("/Patient/{patient_id}/$everything", summary="FHIR R4 Patient $everything (searchset Bundle)",
            response_class=FhirResponse, responses={**_resource("Bundle"), **problem_responses(404)})
def everything(request: Request, access: ReadingsAccess, conn: DbConn,
               count: Annotated[int, Query(alias="_count", ge=1, le=20_000)] = 2000,
               since: Annotated[str | None, Query(alias="_since", max_length=60)] = None) -> Response:
    from cloud.alerts import service as alerts

    row = queries.patient_row(conn, access.patient_id)
    assert row is not None
    dates = date_conditions([f"ge{since}"]) if since else []
    resources = [fhir.patient_resource(row), *_observations(conn, access.patient_id, None, dates, count)]
    if "alerts" in access.scopes:
        resources += [fhir.flag_from_alert(a) for a in alerts.list_alerts(conn, patient_id=access.patient_id,
                                                                          limit=1000)]
    return _fhir(_bundle(request, resources))
