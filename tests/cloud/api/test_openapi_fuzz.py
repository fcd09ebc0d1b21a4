"""Generated requests over the OpenAPI document (schemathesis is not installed; this is the small
equivalent): every operation, with path, query and body values drawn from each parameter's schema and
from hostile edge cases, as every role. No request may answer 5xx, and every error is problem+json (an
OperationOutcome under /fhir)."""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.cloud.api.conftest import World

pytestmark = pytest.mark.integration
REQUESTS_PER_OPERATION = 24
HOSTILE_STRINGS = ["", " ", "a" * 5000, "\x00", "%00", "../../etc/passwd", "' OR 1=1 --", "Patient/", "😀", "-1",
                   "1e309", "NaN", "2026-13-45T99:99:99Z", "ge", "eq2020", "|", ",,,", "null", "{}", "[]"]
HOSTILE_INTS = [0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30]


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def _value(spec: dict[str, Any], schema: dict[str, Any], rng: random.Random, world: World, depth: int = 0) -> Any:
    schema = _resolve(spec, schema)
    if rng.random() < 0.15:  # the wrong type altogether
        return rng.choice([rng.choice(HOSTILE_STRINGS), rng.choice(HOSTILE_INTS), None, True, [], {}])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return _value(spec, rng.choice(schema[key]), rng, world, depth)
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if kind == "integer":
        low, high = schema.get("minimum", -5), schema.get("maximum", 10_000)
        return rng.choice([rng.randint(int(low), int(min(high, 10**6))), rng.choice(HOSTILE_INTS)])
    if kind == "number":
        return rng.choice([rng.uniform(-1e6, 1e6), 0.0, -0.0, 1e308])
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return [_value(spec, schema.get("items", {}), rng, world, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "object" or "properties" in schema:
        if depth > 3:
            return {}
        props = schema.get("properties", {})
        return {name: _value(spec, sub, rng, world, depth + 1) for name, sub in props.items() if rng.random() < 0.8}
    if schema.get("format") == "date-time":
        return rng.choice(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "1900-01-01T00:00:00+14:00",
                           "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"])
    return rng.choice([*HOSTILE_STRINGS, *world.patients.values(), world.team, "bp_crisis", "systolic", "glucose"])


def _path_value(name: str, rng: random.Random, world: World) -> str:
    if name == "patient_id":
        return rng.choice([*world.patients.values(), *HOSTILE_STRINGS[1:]])
    if name == "metric":
        return rng.choice(["systolic", "glucose", "rr_intervals", "nope", "body_weight"])
    return str(rng.choice([*HOSTILE_INTS, *HOSTILE_STRINGS[1:], "bp_crisis", world.team]))


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]


def test_no_generated_request_answers_5xx(client: TestClient, world: World) -> None:
    spec = client.app.openapi()  # type: ignore[attr-defined]
    rng = random.Random(20261122)
    failures: list[str] = []
    sent = 0
    for path, method, operation in _operations(spec):
        for _ in range(REQUESTS_PER_OPERATION):
            url = path
            query: dict[str, Any] = {}
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    value = quote(_path_value(parameter["name"], rng, world), safe="")
                    url = url.replace("{" + parameter["name"] + "}", value)
                elif parameter["in"] == "query" and (parameter.get("required") or rng.random() < 0.6):
                    value = _value(spec, parameter.get("schema", {}), rng, world)
                    query[parameter["name"]] = value if isinstance(value, list) else (
                        "" if value is None else str(value))
            body = None
            media = "application/json"
            if "requestBody" in operation:
                # JSON, or FHIR JSON for the FHIR writes (any object: the generator knows no FHIR resource).
                media, content = next(iter(operation["requestBody"]["content"].items()))
                body = _value(spec, content.get("schema", {}), rng, world)
            role = rng.choice(["patient", "clinician", "care_team", "admin", "gateway", None])
            headers = {**(world.headers[role] if role else {}), "Content-Type": media}
            response = client.request(method.upper(), url, params=query, json=body, headers=headers)
            sent += 1
            if response.status_code >= 500:
                failures.append(f"{method.upper()} {url} {query} {body!r:.200} as {role}: "
                                f"{response.status_code} {response.text[:200]}")
            elif response.status_code >= 400:
                error_type = "application/fhir+json" if url.startswith("/fhir/") else "application/problem+json"
                assert response.headers["content-type"].startswith(error_type), url
    print(f"\nfuzz: {sent} generated requests over {len(_operations(spec))} operations, {len(failures)} 5xx")
    assert not failures, "\n".join(failures[:20])
