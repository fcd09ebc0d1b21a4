"""FHIR R4: ``Patient/{id}``, ``Patient/{id}/$everything``, ``Observation/{id}`` and
``Observation?patient=&code=&date=&category=&device=&_sort=&_count=`` (searchset Bundles paged by keyset
``link`` next/previous), ``Device/{id}`` and ``Device?patient=`` (measuring devices and gateways),
``Flag/{id}`` and ``Flag?patient=&status=``, and for the patient themself ``Consent`` and ``AuditEvent``
(read and search), built with ``cloud.twin.fhir`` (vital-signs profiles and the HL7 PHD IG, LOINC + MDC +
UCUM); ``metadata``, the CapabilityStatement that says exactly that. Errors are ``OperationOutcome`` s
(``cloud.api.problems``); ``_format`` takes json and the FHIR JSON types, anything else is 406.

Search follows FHIR R4 §3.1.1 (search): ``date`` takes the prefixes eq, ge, gt, le, lt and a
precision of year, month, day or instant (a day means the whole day); ``code`` is a token
(``system|code`` or ``code``, comma for OR). A patient the caller may not see gives an empty Bundle,
exactly as one that does not exist.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.encoders import jsonable_encoder

from cloud.api import fhir_queries, queries
from cloud.api.deps import (
    CLINICAL_ROLES,
    CurrentPrincipal,
    DbConn,
    ReadingsAccess,
    authorise_patient,
    note_audit,
    note_audit_detail,
    visible_scopes,
)
from cloud.api.problems import FHIR_JSON, ApiProblem, not_found, outcome_responses
from cloud.twin import fhir
from gateway.metrics import LOINC_BP_PANEL, METRICS

JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json", FHIR_JSON, "application/json+fhir"})


def _format(format_: Annotated[str | None, Query(alias="_format", max_length=100,
                                                 description="json or application/fhir+json (only JSON is served)")]
            = None) -> None:
    """FHIR R4 §3.1.0.1.10 (http.html#mime-type): ``_format`` overrides Accept; a format we do not serve
    (xml, turtle) is 406, said in an OperationOutcome."""
    if format_ is not None and format_.split(";")[0].strip().lower() not in JSON_FORMATS:
        raise ApiProblem(406, f"_format {format_!r} is not served: only JSON (json, application/fhir+json)",
                         slug="not-acceptable")


router = APIRouter(prefix="/fhir", tags=["fhir"], dependencies=[Depends(_format)])
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


def _created(resource_type: str) -> dict[int | str, dict[str, Any]]:
    """A create's documented answers: 201 with the resource as stored, and the errors (404: not one's own)."""
    answers = _answers(resource_type, 404, 413)
    answers[201] = {**answers.pop(200), "description": f"FHIR R4 {resource_type}, created (Location names it)"}
    return answers


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


# --- Observation: keyset pages over readings --------------------------------------------------------------

SORTS = {"date": False, "-date": True}
"""``_sort`` -> descending. The default is -date (newest first), as before paging existed."""
CATEGORIES = {"vital-signs", "laboratory", "phd"}
_BATCH = 200
Position = tuple[datetime, str, int]
"""Where a page starts: a reading's (measured_at, id) and the index of the resource among that reading's."""


def _categories(resource: dict[str, Any]) -> set[str]:
    return {c["code"] for concept in resource.get("category", []) for c in concept["coding"]}


class ObservationFilter:
    """The search's parameters, checked once: codes, categories, devices and dates."""

    def __init__(self, conn: DbConn, codes: set[str] | None, categories: set[str] | None,
                 device_digests: list[str] | None, dates: list[tuple[str, datetime]]) -> None:
        self.codes, self.categories, self.dates = codes, categories, dates
        self.metrics, self.kinds = _metrics_for(codes) if codes else (None, None)
        if categories and not codes and "phd" not in categories:
            # Narrow in SQL: glucose is the laboratory kind, everything else a vital sign.
            lab = "laboratory" in categories
            vital = "vital-signs" in categories
            self.metrics = [m for m, spec in METRICS.items() if spec.loinc and ((m == "glucose") == lab or vital)
                            and (vital or m == "glucose")]
            self.kinds = ["blood_pressure"] if vital else []
        self.devices = fhir_queries.devices_by_digest(conn, device_digests) if device_digests is not None else None
        self.empty = bool((codes and not self.metrics and not self.kinds) or (self.devices is not None
                                                                             and not self.devices))

    def matches(self, resource: dict[str, Any]) -> bool:
        if self.codes is not None and not (_observation_codes(resource) & self.codes):
            return False
        return self.categories is None or bool(_categories(resource) & self.categories)


def _stream(conn: DbConn, patient_id: str, where: ObservationFilter, descending: bool,
            start: Position | None) -> Iterator[tuple[Position, dict[str, Any]]]:
    """Matching resources in page order from ``start`` (inclusive), each with its position."""
    key = (start[0], start[1]) if start else None
    skip = start[2] if start else 0
    while True:
        rows = fhir_queries.reading_page(conn, patient_id, metrics=where.metrics, kinds=where.kinds,
                                         device_uids=where.devices, ranges=where.dates, descending=descending,
                                         start=key, limit=_BATCH)
        for row in rows:
            at = row["measured_at"]
            if start is None and (at, row["id"]) == key:
                continue  # the last reading of the batch before (the keyset is inclusive): yielded already
            first = start is not None and (at, row["id"]) == (start[0], start[1])
            for index, resource in enumerate(r for r in fhir.patient_observations(row) if where.matches(r)):
                if first and index < skip:
                    continue
                yield (at, row["id"], index), resource
        if len(rows) < _BATCH:
            return
        last = rows[-1]
        if key == (last["measured_at"], last["id"]):
            return  # one reading per batch cannot happen with _BATCH > 1; never loop on it
        key, start = (last["measured_at"], last["id"]), None


def _before(conn: DbConn, patient_id: str, where: ObservationFilter, descending: bool, first: Position,
            count: int) -> Position | None:
    """Where the page before the one starting at ``first`` starts (None: this is the first page): walk back
    ``count`` matching resources."""
    key, index = (first[0], first[1]), first[2]
    found: list[Position] = []
    boundary = True
    while len(found) < count:
        rows = fhir_queries.reading_page(conn, patient_id, metrics=where.metrics, kinds=where.kinds,
                                         device_uids=where.devices, ranges=where.dates, descending=not descending,
                                         start=key, limit=_BATCH)
        for row in rows:
            at = row["measured_at"]
            matching = [i for i, r in enumerate(r for r in fhir.patient_observations(row) if where.matches(r))]
            if boundary and (at, row["id"]) == (first[0], first[1]):
                matching = [i for i in matching if i < index]
            elif not boundary and (at, row["id"]) == key:
                continue
            for i in reversed(matching):
                found.append((at, row["id"], i))
                if len(found) == count:
                    return found[-1]
        boundary = False
        if len(rows) < _BATCH:
            break
        key = (rows[-1]["measured_at"], rows[-1]["id"])
    return found[-1] if found else None


def _cursor(position: Position) -> str:
    raw = json.dumps([position[0].isoformat(), position[1], position[2]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _position(cursor: str) -> Position:
    try:
        at, reading_id, index = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        instant = datetime.fromisoformat(at)
        if instant.tzinfo is None or not isinstance(reading_id, str) or not isinstance(index, int) or index < 0 \
                or len(reading_id) > 200:
            raise ValueError(cursor)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise ApiProblem(400, "bad _cursor: use the link the server gave", slug="bad-cursor") from exc
    return instant, reading_id, index


def _page_link(request: Request, relation: str, position: Position) -> dict[str, str]:
    return {"relation": relation, "url": str(request.url.include_query_params(_cursor=_cursor(position)))}


def _devices_parameter(values: list[str]) -> list[str]:
    digests = []
    for value in values:
        for token in value.split(","):
            match = re.fullmatch(rf"(?:Device/)?dev-([0-9a-f]{{{fhir.DIGEST_LENGTH}}})", token)
            if match is None:
                raise ApiProblem(400, f"device must be Device/dev-... (a measuring device), not {token!r}",
                                 slug="bad-search-parameter")
            digests.append(match.group(1))
    return digests


def _categories_parameter(values: list[str]) -> set[str]:
    out: set[str] = set()
    for value in values:
        for token in value.split(","):
            system, _, code = token.rpartition("|")
            if system and system not in (fhir.OBSERVATION_CATEGORY, fhir.PHD_CATEGORY_SYSTEM):
                raise ApiProblem(400, f"unknown category system {system!r}", slug="bad-search-parameter")
            if code not in CATEGORIES:
                raise ApiProblem(400, f"category {code!r} is not one of {', '.join(sorted(CATEGORIES))}",
                                 slug="bad-search-parameter")
            out.add(code)
    return out


def _observations(conn: DbConn, patient_id: str, codes: set[str] | None, dates: list[tuple[str, datetime]],
                  count: int) -> list[dict[str, Any]]:
    """The newest ``count`` Observations (for $everything)."""
    where = ObservationFilter(conn, codes, None, None, dates)
    if where.empty:
        return []
    out = []
    for _, resource in _stream(conn, patient_id, where, True, None):
        out.append(resource)
        if len(out) == count:
            break
    return out


def _patient_parameter(patient: str) -> str:
    match = _PATIENT_REF.match(patient)
    if not match:
        raise ApiProblem(400, "patient must be Patient/{id} or {id}", slug="bad-search-parameter")
    return match.group(1)


def _may_search(conn: DbConn, request: Request, principal: CurrentPrincipal, patient_id: str,
                scope: str = "readings") -> bool:
    """Whether a search may look at the patient's data in ``scope``: one the caller may not see gives an
    empty Bundle, not a 404 (audited as not found)."""
    try:
        authorise_patient(conn, request, principal, patient_id, scope)
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


@router.get("/Observation", summary="FHIR R4 Observation search (searchset Bundle, paged by link next/previous)",
            response_class=FhirResponse, responses=_answers("Bundle"))
def search_observations(
    request: Request, principal: CurrentPrincipal, conn: DbConn,
    patient: Annotated[str, Query(max_length=220, description="Patient/{id} or {id}")],
    code: Annotated[list[str] | None, Query(max_length=500)] = None,
    date: Annotated[list[str] | None, Query(max_length=60)] = None,
    category: Annotated[list[str] | None, Query(max_length=200, description="vital-signs, laboratory, phd")] = None,
    device: Annotated[list[str] | None, Query(max_length=2000, description="Device/dev-... (comma for OR)")] = None,
    sort: Annotated[str, Query(alias="_sort", description="date (oldest first) or -date (newest first)")] = "-date",
    count: Annotated[int, Query(alias="_count", ge=1, le=5000)] = 500,
    cursor: Annotated[str | None, Query(alias="_cursor", max_length=400, description="from a link")] = None,
) -> Response:
    patient_id = _patient_parameter(patient)
    codes = _codes(code) if code else None
    dates = date_conditions(date or [])
    categories = _categories_parameter(category) if category else None
    digests = _devices_parameter(device) if device else None
    if sort not in SORTS:
        raise ApiProblem(400, f"_sort {sort!r} is not supported (date, -date)", slug="bad-search-parameter")
    start = _position(cursor) if cursor else None
    if not _may_search(conn, request, principal, patient_id):
        return _fhir(_bundle(request, []))
    where = ObservationFilter(conn, codes, categories, digests, dates)
    if where.empty:
        return _fhir(_bundle(request, []))
    descending = SORTS[sort]
    page: list[tuple[Position, dict[str, Any]]] = []
    following: Position | None = None
    for position, resource in _stream(conn, patient_id, where, descending, start):
        if len(page) == count:
            following = position
            break
        page.append((position, resource))
    previous = _before(conn, patient_id, where, descending, page[0][0], count) if page and start else None
    links = [_page_link(request, "next", following)] if following else []
    if previous:
        links.append(_page_link(request, "previous", previous))
    # The total only where this page holds every match (counting a large history would cost a full scan).
    bundle = _bundle(request, [r for _, r in page], None if following or previous else len(page))
    if following or previous:
        del bundle["total"]
    bundle["link"] += links
    return _fhir(bundle)


def _observation(conn: DbConn, request: Request, principal: CurrentPrincipal, observation_id: str) -> dict[str, Any]:
    """One Observation by id (a reading's measurement, its status bits or its coincident timestamp), seen
    like the patient's readings; anything else, or a hidden patient's, is 404."""
    match = re.fullmatch(r"(cts-)?([0-9a-f]{32})(-[a-z0-9-]{1,40})?", observation_id)
    if match is None:
        raise not_found("observation")
    row = fhir_queries.reading(conn, match.group(2))
    if row is None or row["patient_id"] is None:
        raise not_found("observation")
    authorise_patient(conn, request, principal, row["patient_id"], "readings")
    observations = fhir.observations_from_row(row)
    for resource in observations + fhir.phd_companions(row, observations):
        if resource["id"] == observation_id:
            return resource
    raise not_found("observation")


@router.get("/Observation/{observation_id}", summary="FHIR R4 Observation", response_class=FhirResponse,
            responses=_answers("Observation", 404))
def read_observation(observation_id: str, request: Request, principal: CurrentPrincipal, conn: DbConn) -> Response:
    return _fhir(_observation(conn, request, principal, observation_id))


def _patient_devices(conn: DbConn, patient_id: str) -> list[dict[str, Any]]:
    """The measuring devices ever assigned to a patient the caller may see; ``patient`` where it is theirs alone."""
    return [fhir.device_resource(row, patient_id if row["current_patients"] == [patient_id] else None)
            for row in queries.fhir_patient_devices(conn, patient_id)]


def _gateways(conn: DbConn, gateway_ids: set[str]) -> list[dict[str, Any]]:
    statuses = fhir_queries.gateway_statuses(conn, sorted(gateway_ids))
    return [fhir.gateway_resource(g, statuses.get(g)) for g in sorted(gateway_ids)]


@router.get("/Patient/{patient_id}/$everything",
            summary="FHIR R4 Patient $everything (searchset Bundle, Observations paged by link next)",
            response_class=FhirResponse, responses=_answers("Bundle", 404))
def everything(request: Request, access: ReadingsAccess, conn: DbConn,
               count: Annotated[int, Query(alias="_count", ge=1, le=20_000,
                                           description="Observations per page")] = 2000,
               since: Annotated[str | None, Query(alias="_since", max_length=60)] = None,
               cursor: Annotated[str | None, Query(alias="_cursor", max_length=400, description="from a link")]
               = None) -> Response:
    """The first page holds the Patient, its Devices (measuring devices and gateways), its Flags and the
    newest ``_count`` Observations; a ``next`` link pages on through older Observations, each page with
    the coincident timestamps and gateways its Observations reference, so every reference resolves
    inside the page that makes it."""
    from cloud.alerts import service as alerts

    start = _position(cursor) if cursor else None
    row = queries.patient_row(conn, access.patient_id)
    assert row is not None
    dates = date_conditions([f"ge{since}"]) if since else []
    where = ObservationFilter(conn, None, None, None, dates)
    observations: list[dict[str, Any]] = []
    following: Position | None = None
    for position, resource in _stream(conn, access.patient_id, where, True, start):
        if len(observations) == count:
            following = position
            break
        observations.append(resource)
    gateway_ids: set[str] = set()
    resources: list[dict[str, Any]] = []
    if start is None:
        device_rows = queries.fhir_patient_devices(conn, access.patient_id)
        gateway_ids = {d["bound_gateway_id"] for d in device_rows if d.get("bound_gateway_id")}
        resources = [fhir.patient_resource(row), *(
            fhir.device_resource(d, access.patient_id if d["current_patients"] == [access.patient_id] else None)
            for d in device_rows)]
    # Each Observation's gateway and coincident timestamp, so that every reference resolves inside the page.
    coincident: dict[str, dict[str, Any]] = {}
    for resource in observations:
        for extension in resource.get("extension", []):
            reference = extension["valueReference"]["reference"]
            if extension["url"] == fhir.GATEWAY_EXTENSION:
                gateway_ids.add(extension["valueReference"]["display"])
            elif extension["url"] == fhir.COINCIDENT_EXTENSION and reference not in coincident:
                found = fhir_queries.reading(conn, reference.removeprefix("Observation/cts-"))
                cts = fhir.coincident_time_stamp(found) if found else None
                if cts:
                    coincident[reference] = cts
    resources += [*_gateways(conn, gateway_ids), *observations, *coincident.values()]
    if start is None and "alerts" in access.scopes:
        resources += [fhir.flag_from_alert(a) for a in alerts.list_alerts(conn, patient_id=access.patient_id,
                                                                          limit=FLAG_LIMIT)]
    bundle = _bundle(request, resources)
    if following or start:
        del bundle["total"]  # one page of many: counting the whole history would cost a full scan
    if following:
        bundle["link"].append(_page_link(request, "next", following))
    return _fhir(bundle)


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
    """A gateway, seen by whoever sees a patient with a device bound to it or a reading it relayed (the
    gateway an Observation's gatewayDevice extension names)."""
    clinical = principal.role in CLINICAL_ROLES
    own = principal.patient_id if principal.role == "patient" else None
    teams = principal.care_teams if clinical else ()
    for row in (queries.fhir_gateway(conn, digest, own_patient=own, care_teams=teams),
                fhir_queries.gateway_seen_by(conn, digest, own_patient=own, care_teams=teams)):
        patient_id = row["patient_id"] if row else None
        if row is not None and patient_id is not None and "readings" in visible_scopes(conn, principal, patient_id):
            note_audit(request, patient_id)
            statuses = fhir_queries.gateway_statuses(conn, [row["gateway_id"]])
            return fhir.gateway_resource(row["gateway_id"], statuses.get(row["gateway_id"]))
    raise not_found("device")


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


# --- Flag: alerts --------------------------------------------------------------------------------------------

FLAG_STATUSES = {"active", "inactive"}
FLAG_LIMIT = 1000


@router.get("/Flag", summary="FHIR R4 Flag search: a patient's alerts, newest first (searchset Bundle, paged by "
                             "link next)", response_class=FhirResponse, responses=_answers("Bundle"))
def search_flags(request: Request, principal: CurrentPrincipal, conn: DbConn,
                 patient: Annotated[str, Query(max_length=220, description="Patient/{id} or {id}")],
                 status: Annotated[str | None, Query(max_length=40, description="active, inactive (comma: OR)")]
                 = None,
                 count: Annotated[int, Query(alias="_count", ge=1, le=FLAG_LIMIT)] = FLAG_LIMIT,
                 cursor: Annotated[str | None, Query(alias="_cursor", max_length=20, description="from a link")]
                 = None) -> Response:
    from cloud.alerts import service as alerts

    patient_id = _patient_parameter(patient)
    wanted = set(status.split(",")) if status else None
    if wanted is not None and not wanted <= FLAG_STATUSES:
        raise ApiProblem(400, "status must be active or inactive", slug="bad-search-parameter")
    if cursor is not None and not re.fullmatch(r"[1-9][0-9]{0,17}", cursor):
        raise ApiProblem(400, "bad _cursor: use the link the server gave", slug="bad-cursor")
    if not _may_search(conn, request, principal, patient_id, "alerts"):
        return _fhir(_bundle(request, []))
    # Flag status comes from the alert's status and review together, so the filter runs here, over keyset
    # pages of alerts (newest first), until the page is full and one more match shows a next page exists.
    flags: list[dict[str, Any]] = []
    before = int(cursor) if cursor else None
    more = False
    while not more:
        rows = alerts.list_alerts(conn, patient_id=patient_id, before_id=before, limit=FLAG_LIMIT)
        for alert in rows:
            flag = fhir.flag_from_alert(alert)
            if wanted is not None and flag["status"] not in wanted:
                continue
            if len(flags) == count:
                more = True
                break
            flags.append(flag)
        if len(rows) < FLAG_LIMIT:
            break
        before = rows[-1]["id"]
    bundle = _bundle(request, flags)
    if more or cursor:
        del bundle["total"]
    if more:
        next_before = flags[-1]["identifier"][0]["value"]
        bundle["link"].append({"relation": "next", "url": str(request.url.include_query_params(_cursor=next_before))})
    return _fhir(bundle)


@router.get("/Flag/{flag_id}", summary="FHIR R4 Flag (an alert)", response_class=FhirResponse,
            responses=_answers("Flag", 404))
def read_flag(flag_id: str, request: Request, principal: CurrentPrincipal, conn: DbConn) -> Response:
    from cloud.alerts import service as alerts
    from cloud.alerts.service import AlertNotFound

    match = re.fullmatch(r"alert-([0-9]{1,18})", flag_id)
    if match is None:
        raise not_found("flag")
    try:
        alert = alerts.get_alert(conn, int(match.group(1)))
    except AlertNotFound:
        raise not_found("flag") from None
    authorise_patient(conn, request, principal, alert["patient_id"], "alerts")
    return _fhir(fhir.flag_from_alert(alert))


# --- Consent and AuditEvent: the patient's own ----------------------------------------------------------------

def _own(request: Request, principal: CurrentPrincipal, patient_id: str | None) -> bool:
    """Consents and the access trail are the patient's alone (as /v1): another role, or another patient, sees
    none of them. Audited against the patient named."""
    note_audit(request, patient_id)
    return principal.role == "patient" and patient_id is not None and principal.patient_id == patient_id


def _patient_only(principal: CurrentPrincipal, what: str) -> None:
    if principal.role != "patient":
        raise ApiProblem(403, f"{what} are the patient's own: only the patient may search them", slug="forbidden")


@router.get("/Consent", summary="FHIR R4 Consent search: the patient's own grants (searchset Bundle)",
            response_class=FhirResponse, responses=_answers("Bundle"))
def search_consents(request: Request, principal: CurrentPrincipal, conn: DbConn,
                    patient: Annotated[str, Query(max_length=220, description="Patient/{id} or {id}")],
                    status: Annotated[str | None, Query(max_length=40,
                                                        description="active, inactive, proposed (comma: OR)")]
                    = None) -> Response:
    _patient_only(principal, "Consents")
    patient_id = _patient_parameter(patient)
    wanted = set(status.split(",")) if status else None
    if wanted is not None and not wanted <= {"active", "inactive", "proposed"}:
        raise ApiProblem(400, "status must be active, inactive or proposed", slug="bad-search-parameter")
    if not _own(request, principal, patient_id):
        request.state.audit_outcome = "not_found"
        return _fhir(_bundle(request, []))
    at = datetime.now(UTC)
    resources = [fhir.consent_resource(c, at) for c in fhir_queries.consents(conn, patient_id)]
    return _fhir(_bundle(request, [r for r in resources if wanted is None or r["status"] in wanted]))


@router.get("/Consent/{consent_id}", summary="FHIR R4 Consent (one of the patient's own grants)",
            response_class=FhirResponse, responses=_answers("Consent", 404))
def read_consent(consent_id: str, request: Request, principal: CurrentPrincipal, conn: DbConn) -> Response:
    match = re.fullmatch(r"consent-([0-9]{1,18})", consent_id)
    row = fhir_queries.consent(conn, int(match.group(1))) if match else None
    if row is None or not _own(request, principal, row["patient_id"]):
        raise not_found("consent")
    return _fhir(fhir.consent_resource(row))


def _consent_request(request: Request, principal: CurrentPrincipal, body: Any, *, status: str) -> dict[str, Any]:
    """What a Consent the patient sends asks for: a valid R4 Consent about the caller's own record, with
    ``status``; for a grant, one care team (``provision.actor`` or ``organization``, by identifier), the
    scopes as nested permit provisions and an optional end (``provision.period.end``)."""
    from fhir.resources.R4B.consent import Consent as ConsentModel
    from pydantic import ValidationError

    if not isinstance(body, dict) or body.get("resourceType") != "Consent":
        raise ApiProblem(400, "the body must be a FHIR Consent resource", slug="bad-resource")
    try:
        ConsentModel.model_validate(body)
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "Consent"
        raise ApiProblem(400, f"not a valid R4 Consent ({where}: {exc.errors()[0]['msg']})",
                         slug="bad-resource") from None
    mine = principal.patient_id if principal.role == "patient" else None
    # The patient as its FHIR id (what a Consent read gives back) or as our id (what searches take).
    own = {f"Patient/{mine}", f"Patient/{fhir.fhir_id(mine)}"} if mine else set()
    named = (body.get("patient") or {}).get("reference") or ""
    note_audit(request, mine if named in own else named.removeprefix("Patient/"))
    if named not in own:
        # Only a patient gives or revokes consent, for their own record: any other record answers like one
        # that does not exist (as /v1/patients/{id}/consents).
        raise not_found("patient")
    if body["status"] != status:
        raise ApiProblem(422, "a new Consent is active; revoke one by updating it with status inactive"
                         if status == "active" else "only revocation is supported: update with status inactive"
                         " (any other change is a new grant)", slug="unsupported-consent-change")
    provision = body.get("provision") or {}
    teams = {identifier["value"] for holder in [*(a.get("reference") for a in provision.get("actor", [])),
                                                *body.get("organization", [])]
             if isinstance(holder, dict) and isinstance(identifier := holder.get("identifier"), dict)
             and identifier.get("system") == fhir.CARE_TEAM_SYSTEM and identifier.get("value")}
    scopes = [coding.get("code") for nested in provision.get("provision", [])
              if nested.get("type", "permit") == "permit"
              for concept in nested.get("code", []) for coding in concept.get("coding", [])
              if coding.get("system") == fhir.CONSENT_SCOPE_SYSTEM]
    period = provision.get("period") or {}
    return {"teams": teams, "scopes": scopes, "type": provision.get("type"), "start": period.get("start"),
            "end": period.get("end")}


@router.post("/Consent", status_code=201, summary="FHIR R4 Consent create: the patient grants a care team access",
             response_class=FhirResponse, responses=_created("Consent"))
def create_consent(request: Request, principal: CurrentPrincipal, conn: DbConn,
                   body: Annotated[Any, Body(media_type=FHIR_JSON)]) -> Response:
    """The same grant as ``POST /v1/patients/{id}/consents`` with a care team id: the care team as
    ``provision.actor`` (role IRCP) or ``organization``, identifier system ``urn:rpm:care-team-id``; each scope
    (``readings``, ``alerts``, ``twin``) a nested permit provision coded in ``urn:rpm:consent-scope``; an end
    in ``provision.period.end``. Answers 201 with the Consent as stored and its ``Location``."""
    from cloud.api.routes.consents import Scope, grant_to_team

    asked = _consent_request(request, principal, body, status="active")
    patient_id = principal.patient_id
    assert patient_id is not None  # the patient role carries its record (tokens.py)
    if asked["type"] != "permit":
        raise ApiProblem(422, "provision.type must be permit (a grant)", slug="invalid-consent")
    if len(asked["teams"]) != 1:
        raise ApiProblem(422, f"name exactly one care team by identifier {fhir.CARE_TEAM_SYSTEM}|<id> (in "
                         "provision.actor or organization)", slug="invalid-consent")
    unknown = sorted({str(s) for s in asked["scopes"]} - {s.value for s in Scope})
    if not asked["scopes"] or unknown:
        raise ApiProblem(422, f"scopes are nested permit provisions coded {fhir.CONSENT_SCOPE_SYSTEM}|readings, "
                         f"alerts or twin{f'; unknown: {unknown}' if unknown else ''}", slug="invalid-consent")
    now = datetime.now(UTC)
    if asked["start"] and _instant(asked["start"]) > now + timedelta(minutes=1):
        raise ApiProblem(422, "a consent starts when it is given: provision.period.start cannot be later",
                         slug="invalid-consent")
    expires_at = _instant(asked["end"]) if asked["end"] else None
    if expires_at is not None and expires_at <= now:
        raise ApiProblem(422, "provision.period.end must be in the future", slug="invalid-consent")
    row = grant_to_team(request, conn, patient_id, next(iter(asked["teams"])), asked["scopes"], expires_at,
                        principal.subject)
    stored = fhir_queries.consent(conn, row["id"])
    assert stored is not None
    resource = fhir.consent_resource(stored)
    response = _fhir(resource)
    response.status_code = 201
    response.headers["Location"] = f"{str(request.base_url).rstrip('/')}/fhir/Consent/{resource['id']}"
    return response


@router.put("/Consent/{consent_id}", summary="FHIR R4 Consent update: revoke (status inactive)",
            response_class=FhirResponse, responses=_answers("Consent", 404, 413))
def update_consent(consent_id: str, request: Request, principal: CurrentPrincipal, conn: DbConn,
                   body: Annotated[Any, Body(media_type=FHIR_JSON)]) -> Response:
    """Revocation, as ``DELETE /v1/patients/{id}/consents/{n}``: takes effect on the care team's next
    request; revoking twice keeps the first revocation. Any other change is refused (a new grant instead)."""
    match = re.fullmatch(r"consent-([0-9]{1,18})", consent_id)
    row = fhir_queries.consent(conn, int(match.group(1))) if match else None
    if row is None or not _own(request, principal, row["patient_id"]):
        raise not_found("consent")
    _consent_request(request, principal, body, status="inactive")
    if body.get("id") not in (None, consent_id):
        raise ApiProblem(400, f"the resource's id {body.get('id')!r} is not {consent_id!r}", slug="bad-resource")
    note_audit_detail(request, {"consent_id": row["id"]})
    queries.revoke_consent(conn, row["patient_id"], row["id"], principal.subject)
    stored = fhir_queries.consent(conn, row["id"])
    assert stored is not None
    return _fhir(fhir.consent_resource(stored))


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiProblem(400, f"not a dateTime: {text!r}", slug="bad-resource") from None
    if value.tzinfo is None:  # a bare date (or a time without zone): the start of that day, UTC
        value = value.replace(tzinfo=UTC)
    return value


AUDIT_LIMIT = 1000
AUDIT_LIMIT = 1000


@router.get("/AuditEvent", summary="FHIR R4 AuditEvent search: who accessed my record (newest first, paged)",
            response_class=FhirResponse, responses=_answers("Bundle"))
def search_audit_events(request: Request, principal: CurrentPrincipal, conn: DbConn,
                        patient: Annotated[str, Query(max_length=220, description="Patient/{id} or {id}")],
                        count: Annotated[int, Query(alias="_count", ge=1, le=AUDIT_LIMIT)] = 100,
                        cursor: Annotated[str | None, Query(alias="_cursor", max_length=40,
                                                            description="from a link")] = None) -> Response:
    _patient_only(principal, "AuditEvents")
    patient_id = _patient_parameter(patient)
    if cursor is not None and not re.fullmatch(r"[0-9]{1,18}", cursor):
        raise ApiProblem(400, "bad _cursor: use the link the server gave", slug="bad-cursor")
    if not _own(request, principal, patient_id):
        request.state.audit_outcome = "not_found"
        return _fhir(_bundle(request, []))
    rows = fhir_queries.audit_rows(conn, patient_id, before_id=int(cursor) if cursor else None, limit=count + 1)
    bundle = _bundle(request, [fhir.audit_event_resource(r, patient_id) for r in rows[:count]])
    if len(rows) > count:
        del bundle["total"]
        bundle["link"].append({"relation": "next",
                               "url": str(request.url.include_query_params(_cursor=str(rows[count - 1]["id"])))})
    return _fhir(bundle)


@router.get("/AuditEvent/{auditevent_id}", summary="FHIR R4 AuditEvent (an access to my record)",
            response_class=FhirResponse, responses=_answers("AuditEvent", 404))
def read_audit_event(auditevent_id: str, request: Request, principal: CurrentPrincipal, conn: DbConn) -> Response:
    match = re.fullmatch(r"audit-([0-9]{1,18})", auditevent_id)
    own = principal.patient_id if principal.role == "patient" else None
    row = fhir_queries.audit_row(conn, int(match.group(1)), own) if match and own else None
    if row is None or not _own(request, principal, own):
        raise not_found("audit event")
    return _fhir(fhir.audit_event_resource(row, own))


# --- CapabilityStatement -------------------------------------------------------------------------------------

def _search_param(name: str, kind: str, documentation: str, definition: str | None = None) -> dict[str, str]:
    definition = definition or _DEFINITIONS[name]
    return {"name": name, "definition": f"http://hl7.org/fhir/SearchParameter/{definition}", "type": kind,
            "documentation": documentation}


_DEFINITIONS = {"patient": "clinical-patient", "code": "clinical-code", "date": "clinical-date",
                "category": "Observation-category", "device": "Observation-device"}
# Changed by hand with the routes above: tests/cloud/api/test_fhir_server.py checks each against them.
CAPABILITY_DATE = "2026-12-07"
_SECURITY = (
    "Every request except this one needs an OAuth2 bearer token (a JWT, RFC 6750) in the Authorization header:"
    " a patient sees their own record, a clinician or care team member a patient who consented to one of their"
    " care teams for the data asked. SMART App Launch and SMART Backend Services are not supported."
)
_PAGING = ("Paged by keyset: Bundle.link next and previous carry an opaque _cursor; follow them as given. "
           "Bundle.total is given only when one page holds every match.")
BULK_PATHS = {"group": "/fhir/Group/{group_id}/$export", "patient": "/fhir/Patient/$export"}


def capability_statement(base_url: str, served_paths: frozenset[str] = frozenset()) -> dict[str, Any]:
    """What this server supports, and nothing more (FHIR R4 CapabilityStatement, kind ``instance``).
    ``served_paths``: the app's routes, so that the Bulk Data operations (another router's) are named
    exactly when the app serves them."""
    patient: dict[str, Any] = {
        "type": "Patient", "interaction": [{"code": "read"}], "versioning": "no-version", "readHistory": False,
        "operation": [{"name": "everything",
                       "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                       "documentation": "A searchset Bundle: the Patient, their Devices, the gateways that relayed "
                                        "their readings, their Observations with their coincident timestamps "
                                        "and, with the alerts scope, their Flags. Parameters: _since, _count."}]}
    resources: list[dict[str, Any]] = [patient]
    if BULK_PATHS["patient"] in served_paths:
        patient["operation"].append({"name": "export",
                                     "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
                                     "documentation": "FHIR Bulk Data (v2) export of every patient the caller sees "
                                                      "(type level: /fhir/Patient/$export)."})
    resources += [
        {"type": "Observation", "interaction": [{"code": "read"}, {"code": "search-type"}],
         "supportedProfile": sorted({fhir.BP_PROFILE, fhir.VITAL_SIGNS_PROFILE, *fhir.VITAL_PROFILES.values(),
                                     fhir.PHD_NUMERIC_PROFILE, fhir.PHD_COMPOUND_PROFILE, fhir.PHD_BITS_PROFILE,
                                     fhir.PHD_COINCIDENT_PROFILE}),
         "searchParam": [
             _search_param("patient", "reference", "Required: Patient/{id} or {id}. A patient the caller "
                                                   "may not see gives an empty Bundle."),
             _search_param("code", "token", "LOINC codes, system|code or code; a comma for OR."),
             _search_param("date", "date", "Prefixes eq, ge, gt, le, lt; year, month, day or instant."),
             _search_param("category", "token", "vital-signs, laboratory or phd (PhdObservationCategories)."),
             _search_param("device", "reference", "Device/dev-... of a measuring device; a comma for OR."),
         ],
         "documentation": "Searchset Bundles of at most _count (default 500, at most 5000) Observations, "
                          "_sort date or -date (default). " + _PAGING},
        {"type": "Device", "interaction": [{"code": "read"}, {"code": "search-type"}],
         "supportedProfile": [fhir.PHG_DEVICE_PROFILE],
         "searchParam": [_search_param("patient", "reference", "Required: the measuring devices ever "
                                                               "assigned to the patient.", "Device-patient")],
         "documentation": "Measuring devices (id dev-..., mapped as PhdDevice without claiming it: the firmware "
                          "and specialisation versions are not known) and gateways (id gw-..., PhgDevice where "
                          "the gateway's software version is known). Observations reference the measuring "
                          "device (device) and the gateway (the observation-gatewayDevice extension)."},
        {"type": "Flag", "interaction": [{"code": "read"}, {"code": "search-type"}],
         "searchParam": [_search_param("patient", "reference", "Required; needs the alerts scope.", "clinical-patient"),
                         {"name": "status", "type": "token",  # no R4 SearchParameter: ours, on Flag.status
                          "documentation": "active or inactive."}],
         "documentation": "Alerts: active until resolved and, where a person must review it, reviewed."},
        {"type": "Consent", "interaction": [{"code": "read"}, {"code": "search-type"}, {"code": "create"},
                                            {"code": "update"}],
         "searchParam": [_search_param("patient", "reference", "Required: the patient's own (patient role only).",
                                       "clinical-patient"),
                         {"name": "status", "type": "token",
                          "definition": "http://hl7.org/fhir/SearchParameter/Consent-status",
                          "documentation": "active, inactive (revoked or expired) or proposed."}],
         "documentation": "The patient's grants to care teams; each scope a nested provision. create grants "
                          "(the care team by identifier urn:rpm:care-team-id in provision.actor or organization, "
                          "scopes coded urn:rpm:consent-scope, an optional provision.period.end); update with "
                          "status inactive revokes; other changes are refused. The patient role only, as "
                          "/v1/patients/{id}/consents."},
        {"type": "AuditEvent", "interaction": [{"code": "read"}, {"code": "search-type"}],
         "searchParam": [_search_param("patient", "reference", "Required: the patient's own (patient role only).",
                                       "clinical-patient")],
         "documentation": "Who accessed the patient's record, newest first, _count at most 1000. " + _PAGING},
    ]
    if BULK_PATHS["group"] in served_paths:
        resources.append({"type": "Group", "operation": [{
            "name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
            "documentation": "FHIR Bulk Data (v2) export of a care team (the Group id is the care team's id)."}]})
    statement: dict[str, Any] = {
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
        "implementationGuide": ["http://hl7.org/fhir/uv/phd/ImplementationGuide/hl7.fhir.uv.phd"],
        "rest": [{
            "mode": "server",
            "documentation": "Errors are OperationOutcome resources. Only JSON is served (_format=json or "
                             "application/fhir+json; anything else is 406); there are no writes, history or "
                             "versions.",
            "security": {
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                         "code": "OAuth", "display": "OAuth"}]}],
                "description": _SECURITY,
            },
            "resource": resources,
        }],
    }
    if served_paths & set(BULK_PATHS.values()):
        statement["instantiates"] = ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"]
    return statement


def _paths(routes: list[Any]) -> Iterator[str]:
    for route in routes:
        included = getattr(route, "original_router", None)  # newer FastAPI keeps an included router whole
        yield from _paths(included.routes) if included is not None else (getattr(route, "path", ""),)


@router.get("/metadata", summary="FHIR R4 CapabilityStatement (no token needed)", response_class=FhirResponse,
            responses={**_resource("CapabilityStatement"), **outcome_responses("default")})
def metadata(request: Request) -> Response:
    # Like every FHIR server's metadata, open: it describes the server and holds no patient data.
    served = frozenset(_paths(request.app.routes))
    return _fhir(capability_statement(str(request.base_url).rstrip("/") + "/fhir", served))
