"""/openapi.json documents every route from the same declarations that validate requests."""

from __future__ import annotations

import re

import pytest
from pydantic import TypeAdapter

from app import schemas


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_it_is_openapi_3_1_with_bearer_security(document):
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}


def test_every_api_route_is_documented(app, document):
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "openapi", "health.metrics_view") or rule.endpoint.startswith("docs."):
            continue  # not JSON API routes (the page at /docs and its assets)
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, (path, method)


def test_operation_ids_are_unique(document):
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_request_schemas_come_from_the_validating_models(document):
    create = document["paths"]["/api/v1/tasks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create == {"$ref": "#/components/schemas/TaskCreate"}
    task_create = document["components"]["schemas"]["TaskCreate"]
    assert task_create == schemas.TaskCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    assert task_create["additionalProperties"] is False
    assert task_create["properties"]["title"]["maxLength"] == 200


def test_list_query_parameters_are_documented(document):
    params = {p["name"]: p for p in document["paths"]["/api/v1/tasks"]["get"]["parameters"]}
    assert {"status", "q", "priority", "sort", "order", "limit", "offset"} <= params.keys()
    assert params["limit"]["schema"]["maximum"] == 100


def test_served_tasks_match_the_documented_task_schema(client, as_user):
    headers = as_user("alice")
    client.post("/api/v1/tasks", json={"title": "t", "due_date": "2026-01-01T00:00:00Z"}, headers=headers)
    listed = client.get("/api/v1/tasks", headers=headers).get_json()
    TypeAdapter(list[schemas.Task]).validate_python(listed)
    assert set(listed[0]) == set(schemas.Task.model_fields)


def test_public_routes_have_no_security_requirement(document):
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert document["paths"]["/api/v1/tasks"]["get"]["security"] == [{"bearerAuth": []}]
