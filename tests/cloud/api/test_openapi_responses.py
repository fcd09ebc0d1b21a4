"""The OpenAPI document says what every operation answers: a schema for each success (a response model,
or a media type with its schema for CSV, NDJSON, FHIR and metrics), and problem+json for every error (a FHIR
OperationOutcome under /fhir).
The answers a route renders itself (panel, readings page) are checked against the shapes that document
them, since nothing validates those at run time."""

from __future__ import annotations

from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from typing_extensions import is_typeddict

from cloud.api import models
from cloud.api.app import create_app
from cloud.api.problems import FHIR_JSON, PROBLEM_JSON, is_fhir_path
from cloud.settings import CloudSettings
from cloud.twin.state import empty_state
from tests.cloud.api.conftest import DEV_KEY, World

PROBLEM = {"schema": {"$ref": "#/components/schemas/Problem"}}
OUTCOME = {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    # No lifespan, so no database: the document is built from the routes alone.
    response = TestClient(create_app(CloudSettings(jwt_dev_key=DEV_KEY))).get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{method.upper()} {path}", op) for path, item in document["paths"].items() for method, op in item.items()]


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


@pytest.mark.unit
def test_every_operation_has_a_success_schema(document: dict[str, Any]) -> None:
    missing = []
    for name, op in _operations(document):
        contents = [
            (media, content)
            for status, response in op["responses"].items()
            if status.startswith("2")
            for media, content in response.get("content", {}).items()
        ]
        if not contents:
            missing.append(f"{name}: no 2xx content")
        for media, content in contents:
            schema = _resolve(document, content.get("schema") or {})
            if media == "application/json" or media.endswith("+json"):
                # An object with named members, not "any object": what comes back is written down.
                if not schema.get("properties"):
                    missing.append(f"{name}: {media} without properties")
            elif not schema.get("type"):
                missing.append(f"{name}: {media} without a type")
    assert not missing, missing
    assert len(_operations(document)) >= 39


@pytest.mark.unit
def test_every_error_is_documented_as_problem_json(document: dict[str, Any]) -> None:
    wrong = []
    for name, op in _operations(document):
        if "default" not in op["responses"]:
            wrong.append(f"{name}: no default (problem) response")
        error = {FHIR_JSON: OUTCOME} if is_fhir_path(name.split(" ", 1)[1]) else {PROBLEM_JSON: PROBLEM}
        for status, response in op["responses"].items():
            if not status.startswith("2") and response.get("content") != error:
                wrong.append(f"{name} {status}: {sorted(response.get('content', {}))}")
    assert not wrong, wrong
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "instance"}
    assert "HTTPValidationError" not in document["components"]["schemas"]  # 422 is a problem too


@pytest.mark.unit
def test_the_twin_state_shape_names_every_key_the_twin_keeps() -> None:
    # A key the twin adds and the response shape lacks would be dropped from /twin without a word.
    assert set(empty_state("p")) == set(models.TwinState.__annotations__)


def assert_documented(value: Any, shape: Any, where: str = "body") -> None:
    """``value`` has the keys the ``TypedDict`` ``shape`` declares, in its order, all the way down."""
    if value is None:
        return
    if is_typeddict(shape):
        hints = get_type_hints(shape)
        assert list(value) == [key for key in hints if key in value], where
        assert shape.__required_keys__ <= set(value), where
        for key, item in value.items():
            assert_documented(item, hints[key], f"{where}.{key}")
    elif get_origin(shape) is list:
        for i, item in enumerate(value):
            assert_documented(item, get_args(shape)[0], f"{where}[{i}]")
    elif get_origin(shape) is dict:
        for key, item in value.items():
            assert_documented(item, get_args(shape)[1], f"{where}.{key}")
    elif get_origin(shape) in (Union, UnionType):
        for option in get_args(shape):
            if isinstance(value, dict) and (is_typeddict(option) or get_origin(option) is dict):
                assert_documented(value, option, where)
            elif isinstance(value, list) and get_origin(option) is list:
                assert_documented(value, option, where)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "shape"), [("/v1/patients", models.Panel), ("/v1/patients/{consented}/readings", models.ReadingsPage)]
)
def test_a_self_rendered_answer_has_its_documented_shape(
    client: TestClient, world: World, path: str, shape: Any
) -> None:
    response = client.get(path.format(**world.patients), headers=world.headers["clinician"])
    assert response.status_code == 200
    TypeAdapter(shape).validate_json(response.content)  # the types
    body = response.json()
    assert_documented(body, shape)  # the names and their order
    assert body.get("patients") or body.get("readings")  # something was checked
