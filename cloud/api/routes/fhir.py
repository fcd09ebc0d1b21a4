"""FHIR R4: ``Patient/{id}``, ``Observation?patient=&code=&date=`` (a searchset Bundle),
``Patient/{id}/$everything``, ``Device/{id}`` and ``Device?patient=`` (measuring devices and gateways),
built with ``cloud.twin.fhir`` (vital-signs profiles, LOINC + UCUM); ``metadata``, the
CapabilityStatement that says exactly that. Errors are ``OperationOutcome`` s (``cloud.api.problems``).

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
from cloud.api.deps import (
    CLINICAL_ROLES,
    CurrentPrincipal,
    DbConn,
    ReadingsAccess,
    authorise_patient,
    note_audit,
    visible_scopes,
)
from cloud.api.problems import FHIR_JSON, ApiProblem, not_found, outcome_responses
from cloud.twin import fhir
from gateway.metrics import LOINC_BP_PANEL, METRICS

router = APIRouter(prefix="/fhir", tags=["fhir"])
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


def _answers(resource_type: str, *statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's documented answers: the resource, and the errors of an authorised request (``statuses`` more)."""
    return {**_resource(resource_type), **outcome_responses(400, 401, 403, *statuses, 422, 503, "default")}


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


def _patient_parameter(patient: str) -> str:
    match = _PATIENT_REF.match(patient)
    if not match:
        raise ApiProblem(400, "patient must be Patient/{id} or {id}", slug="bad-search-parameter")
    return match.group(1)


def _may_search(conn: DbConn, request: Request, principal: CurrentPrincipal, patient_id: str) -> bool:
    """Whether a search may look at the patient's readings: one the caller may not see gives an empty
    Bundle, not a 404 (audited as not found)."""
    try:
        authorise_patient(conn, request, principal, patient_id, "readings")
    except ApiProblem:
        request.state.audit_outcome = "not_found"
        return False
    return True


@router.get("/Patient/{patient_id}", summary="FHIR R4 Patient", response_class=FhirResponse,
            responses=_answers("Patient", 404))
def read_patient(access: ReadingsAccess, conn: DbConn) -> Response:
    row = queries.patient_row(conn, access.patient_id)
    assert row is not None
    return _fhir(fhir.patient_resource(row))


@router.get("/Observation", summary="FHIR R4 Observation search (searchset Bundle)", response_class=FhirResponse,
            responses=_answers("Bundle"))
def search_observations(
    request: Request, principal: CurrentPrincipal, conn: DbConn,
    patient: Annotated[str, Query(max_length=220, description="Patient/{id} or {id}")],
    code: Annotated[list[str] | None, Query(max_length=500)] = None,
    date: Annotated[list[str] | None, Query(max_length=60)] = None,
    count: Annotated[int, Query(alias="_count", ge=1, le=5000)] = 500,
) -> Response:
    patient_id = _patient_parameter(patient)
    codes = _codes(code) if code else None
    dates = date_conditions(date or [])
    if not _may_search(conn, request, principal, patient_id):
        return _fhir(_bundle(request, []))
    return _fhir(_bundle(request, _observations(conn, patient_id, codes, dates, count)))


def _patient_devices(conn: DbConn, patient_id: str) -> list[dict[str, Any]]:
    """The measuring devices ever assigned to a patient the caller may see; ``patient`` where it is theirs alone."""
    return [fhir.device_resource(row, patient_id if row["current_patients"] == [patient_id] else None)
            for row in queries.fhir_patient_devices(conn, patient_id)]


@router.get("/Patient/{patient_id}/$everything", summary="FHIR R4 Patient $everything (searchset Bundle)",
            response_class=FhirResponse, responses=_answers("Bundle", 404))
def everything(request: Request, access: ReadingsAccess, conn: DbConn,
               count: Annotated[int, Query(alias="_count", ge=1, le=20_000)] = 2000,
               since: Annotated[str | None, Query(alias="_since", max_length=60)] = None) -> Response:
    from cloud.alerts import service as alerts

    row = queries.patient_row(conn, access.patient_id)
    assert row is not None
    dates = date_conditions([f"ge{since}"]) if since else []
    devices = _patient_devices(conn, access.patient_id)
    # The gateways too, so that each Device's parent resolves inside the Bundle.
    gateways = sorted({d["parent"]["display"] for d in devices if "parent" in d})
    resources = [fhir.patient_resource(row), *devices, *map(fhir.gateway_resource, gateways),
                 *_observations(conn, access.patient_id, None, dates, count)]
    if "alerts" in access.scopes:
        resources += [fhir.flag_from_alert(a) for a in alerts.list_alerts(conn, patient_id=access.patient_id,
                                                                          limit=1000)]
    return _fhir(_bundle(request, resources))


_DEVICE_ID = re.compile(rf"^(dev|gw)-([0-9a-f]{{{fhir.DIGEST_LENGTH}}})$")


def _device(conn: DbConn, request: Request, principal: CurrentPrincipal, digest: str) -> dict[str, Any]:
    """A measuring device, seen like the readings it made: the caller must see (readings scope) a patient it
    was ever assigned to; ``patient`` is set where it now belongs to one patient only, that one visible."""
    row = queries.fhir_device(conn, digest)
    if row is None:
        raise not_found("device")
    seen = [p for p in row["patients"] if "readings" in visible_scopes(conn, principal, p)]
    for patient_id in seen or row["patients"]:
        note_audit(request, patient_id)  # a refused look at someone's device is audited against them too
    if not seen:
        raise not_found("device")
    current = row["current_patients"]
    return fhir.device_resource(row, current[0] if len(current) == 1 and current[0] in seen else None)


def _gateway(conn: DbConn, request: Request, principal: CurrentPrincipal, digest: str) -> dict[str, Any]:
    """A gateway, seen by whoever sees a patient with a device bound to it."""
    clinical = principal.role in CLINICAL_ROLES
    row = queries.fhir_gateway(conn, digest, own_patient=principal.patient_id if principal.role == "patient" else None,
                               care_teams=principal.care_teams if clinical else ())
    patient_id = row["patient_id"] if row else None
    if row is None or patient_id is None or "readings" not in visible_scopes(conn, principal, patient_id):
        raise not_found("device")
    note_audit(request, patient_id)
    return fhir.gateway_resource(row["gateway_id"])


@router.get("/Device/{device_id}", summary="FHIR R4 Device (a measuring device or a gateway)",
            response_class=FhirResponse, responses=_answers("Device", 404))
def read_device(device_id: str, request: Request, principal: CurrentPrincipal, conn: DbConn) -> Response:
    match = _DEVICE_ID.match(device_id)
    if match is None:
        raise not_found("device")
    kind, digest = match.groups()
    return _fhir((_device if kind == "dev" else _gateway)(conn, request, principal, digest))


@router.get("/Device", summary="FHIR R4 Device search (searchset Bundle)", response_class=FhirResponse,
            responses=_answers("Bundle"))
def search_devices(request: Request, principal: CurrentPrincipal, conn: DbConn,
                   patient: Annotated[str, Query(max_length=220, description="Patient/{id} or {id}")]) -> Response:
    patient_id = _patient_parameter(patient)
    if not _may_search(conn, request, principal, patient_id):
        return _fhir(_bundle(request, []))
    return _fhir(_bundle(request, _patient_devices(conn, patient_id)))


def _search_param(name: str, kind: str, documentation: str, definition: str | None = None) -> dict[str, str]:
    definition = definition or _DEFINITIONS[name]
    return {"name": name, "definition": f"http://hl7.org/fhir/SearchParameter/{definition}", "type": kind,
            "documentation": documentation}


_DEFINITIONS = {"patient": "clinical-patient", "code": "clinical-code", "date": "clinical-date"}
# Changed by hand with the routes above: tests/cloud/api/test_fhir_server.py checks each against them.
CAPABILITY_DATE = "2026-12-06"
_SECURITY = (
    "Every request except this one needs an OAuth2 bearer token (a JWT, RFC 6750) in the Authorization header:"
    " a patient sees their own record, a clinician or care team member a patient who consented to one of their"
    " care teams for the data asked. SMART App Launch and SMART Backend Services are not supported."
)


def capability_statement(base_url: str) -> dict[str, Any]:
    """What this server supports, and nothing more (FHIR R4 CapabilityStatement, kind ``instance``)."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": CAPABILITY_DATE,
        "publisher": "RPM gateway",
        "kind": "instance",
        "software": {"name": "RPM clinician API"},
        "implementation": {"description": "Remote patient monitoring: device readings as FHIR R4",
                           "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["json", FHIR_JSON],
        "rest": [{
            "mode": "server",
            "documentation": "Errors are OperationOutcome resources. Only JSON is served (_format=json or "
                             "application/fhir+json); there are no writes, history or versions.",
            "security": {
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                         "code": "OAuth", "display": "OAuth"}]}],
                "description": _SECURITY,
            },
            "resource": [
                {"type": "Patient", "interaction": [{"code": "read"}], "versioning": "no-version",
                 "readHistory": False,
                 "operation": [{"name": "everything",
                                "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                                "documentation": "A searchset Bundle: the Patient, their Devices and those "
                                                 "devices' gateways, their Observations and, with the alerts "
                                                 "scope, their Flags. Parameters: _since, _count."}]},
                {"type": "Observation", "interaction": [{"code": "search-type"}],
                 "supportedProfile": sorted({fhir.BP_PROFILE, fhir.VITAL_SIGNS_PROFILE, *fhir.VITAL_PROFILES.values()}),
                 "searchParam": [
                     _search_param("patient", "reference", "Required: Patient/{id} or {id}. A patient the caller "
                                                           "may not see gives an empty Bundle."),
                     _search_param("code", "token", "LOINC codes, system|code or code; a comma for OR."),
                     _search_param("date", "date", "Prefixes eq, ge, gt, le, lt; year, month, day or instant."),
                 ],
                 "documentation": "Searchset Bundles of at most _count (default 500, at most 5000) Observations."},
                {"type": "Device", "interaction": [{"code": "read"}, {"code": "search-type"}],
                 "searchParam": [_search_param("patient", "reference", "Required: the measuring devices ever "
                                                                       "assigned to the patient.", "Device-patient")],
                 "documentation": "Measuring devices (id dev-..., our device uid as identifier) and gateways "
                                  "(id gw-...), a measuring device's parent. Observations reference the measuring "
                                  "device."},
                {"type": "Flag", "documentation": "Alerts, returned only inside Patient/$everything."},
            ],
        }],
    }


@router.get("/metadata", summary="FHIR R4 CapabilityStatement (no token needed)", response_class=FhirResponse,
            responses={**_resource("CapabilityStatement"), **outcome_responses("default")})
def metadata(request: Request) -> Response:
    # Like every FHIR server's metadata, open: it describes the server and holds no patient data.
    return _fhir(capability_statement(str(request.base_url).rstrip("/") + "/fhir"))
