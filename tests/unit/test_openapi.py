"""The OpenAPI documents: every route of both routers, nothing else, valid OpenAPI 3.1, request
schemas that are the validating models' own, and a docs page that loads nothing from elsewhere."""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel

from linkflow_stream.core.workflow import WorkflowDefinition
from linkflow_stream.http.api import Api, ApiDeps
from linkflow_stream.http.auth import OPEN_PATHS, UI_PREFIX, is_open
from linkflow_stream.http.bodies import REQUEST_BODIES
from linkflow_stream.http.openapi import REF, api_document, docs_page, registry_document
from linkflow_stream.http.registry import RegistryApi

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def _routes(app: Any) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method not in ("HEAD", "*") and route.resource is not None
    }


# the routers only: no handler runs while the route tables are read
API_APP = Api(ApiDeps(*[None] * 5)).app()  # type: ignore[arg-type]
REGISTRY_APP = RegistryApi(None, None, None).app()  # type: ignore[arg-type]
DOCUMENTS = {
    "api": (api_document(Api.ADMIN_ROUTES), API_APP),
    "registry": (registry_document(RegistryApi.ADMIN_ROUTES), REGISTRY_APP),
}


def _operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in METHODS}


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_the_document_names_every_route_of_its_app_and_no_other(name: str) -> None:
    doc, app = DOCUMENTS[name]
    routes = _routes(app)
    assert len(routes) >= (25 if name == "api" else 7)  # the router was read
    assert _operations(doc) == routes


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_the_document_is_valid_openapi_3_1(name: str) -> None:
    doc, _ = DOCUMENTS[name]
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema, or a $ref that goes nowhere


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_every_schema_reference_resolves(name: str) -> None:
    doc, _ = DOCUMENTS[name]
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', _json(doc)))
    assert refs, "the document refers to its schemas"
    assert refs <= set(doc["components"]["schemas"])


def _json(doc: dict[str, Any]) -> str:
    import json

    return json.dumps(doc)


@pytest.mark.parametrize("model", REQUEST_BODIES, ids=lambda m: m.__name__)
def test_request_schemas_are_the_validating_models_own(model: type[BaseModel]) -> None:
    doc, _ = DOCUMENTS["registry" if model.__name__ == "WorkerRegistration" else "api"]
    assert doc["components"]["schemas"][model.__name__] == model.model_json_schema(ref_template=REF)
    users = [
        (path, method)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        == {"$ref": REF.format(model=model.__name__)}
    ]
    assert len(users) == 1, users


def test_the_workflow_schema_is_the_definition_without_what_the_engine_sets() -> None:
    doc, _ = DOCUMENTS["api"]
    schema = doc["components"]["schemas"]["WorkflowDefinition"]
    own = WorkflowDefinition.model_json_schema(ref_template=REF)
    assert set(schema["properties"]) == set(own["properties"]) - {"version", "created_at"}
    assert "created_at" not in schema["required"] and "nodes" in schema["required"]
    post = doc["paths"]["/api/workflows"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/WorkflowDefinition"
    )


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_security_bearer_everywhere_but_the_open_paths(name: str) -> None:
    doc, _ = DOCUMENTS[name]
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert doc["security"] == [{"bearerAuth": []}]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path in OPEN_PATHS or path.startswith(UI_PREFIX):  # the UI's shell holds no data
                assert op["security"] == [], (method, path)
                assert "401" not in op["responses"]
            elif is_open(path):  # a webhook: no key, its workflow's token instead
                assert op["security"] == [], (method, path)
                assert "token" in op["responses"]["401"]["description"]
            else:
                assert "security" not in op, (method, path)  # the document's default: the bearer key
                assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"
                }


def test_admin_routes_say_they_need_an_admin_key() -> None:
    doc, _ = DOCUMENTS["api"]
    for method, path in Api.ADMIN_ROUTES:
        assert "`admin`" in doc["paths"][path][method.lower()]["description"]
    assert "`operator`" in doc["paths"]["/api/executions"]["post"]["description"]
    assert "`viewer`" in doc["paths"]["/api/executions"]["get"]["description"]
    reg, _ = DOCUMENTS["registry"]
    assert "`admin`" in reg["paths"]["/api/workers/register"]["post"]["description"]


def test_the_error_schema_is_the_engines_error_body() -> None:
    doc, _ = DOCUMENTS["api"]
    schemas = doc["components"]["schemas"]
    assert schemas["ErrorBody"]["required"] == ["error"]
    assert set(schemas["ErrorDetail"]["required"]) == {"type", "message"}
    path_ops = doc["paths"]["/api/executions/{id}/cancel"]["post"]["responses"]
    assert {"202", "401", "403", "404", "409"} <= set(path_ops)


def test_start_documents_its_headers_query_and_both_answers() -> None:
    op = api_document(Api.ADMIN_ROUTES)["paths"]["/api/executions"]["post"]
    params = {(p["in"], p["name"]): p for p in op["parameters"]}
    assert params["query", "wait"]["schema"]["maximum"] == 300
    assert params["header", "X-Priority"]["schema"]["enum"] == ["high", "normal", "low"]
    assert ("header", "Idempotency-Key") in params
    assert op["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/Accepted")
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Execution")
    assert "503" in op["responses"]


def test_the_docs_page_loads_nothing_from_elsewhere() -> None:
    page = docs_page().decode()
    assert page.lstrip().startswith("<!doctype html>")
    assert 'fetch("openapi.json")' in page
    assert not re.search(r"(src|href)\s*=\s*[\"'](https?:)?//", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page
    assert "innerHTML" not in page  # text from the document is put in as text, never parsed as HTML
