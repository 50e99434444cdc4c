"""CONTRACT §4 task routes: CRUD, validation, filters, sort and pagination, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

FORMS = {"path": "/api/alice/tasks", "v1": "/api/v1/tasks"}


@pytest.fixture(params=sorted(FORMS))
def base(request) -> str:
    return FORMS[request.param]


@pytest.fixture
def alice(as_user):
    return as_user("alice")


def create(client, headers, base="/api/v1/tasks", **fields):
    response = client.post(base, json={"title": "a task", **fields}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_create_returns_the_task_and_its_location(client, alice, base):
    response = client.post(base, json={"title": "  Buy milk ", "priority": "high",
                                       "due_date": "2026-12-01T10:00:00+02:00"}, headers=alice)
    assert response.status_code == 201
    task = response.get_json()
    assert task["title"] == "Buy milk"
    assert task["user_id"] == "alice" and task["completed"] is False and task["description"] is None
    assert task["due_date"] == "2026-12-01T08:00:00Z"
    assert task["created_at"].endswith("Z") and task["updated_at"].endswith("Z")
    assert response.headers["Location"] == f"{base}/{task['id']}"
    assert client.get(response.headers["Location"], headers=alice).get_json() == task


def test_get_put_patch_toggle_delete(client, alice, base):
    task = create(client, alice, base, description="two litres")
    url = f"{base}/{task['id']}"

    replaced = client.put(url, json={"title": "Buy oat milk"}, headers=alice).get_json()
    assert replaced["title"] == "Buy oat milk" and replaced["description"] is None
    assert replaced["priority"] == "medium" and replaced["created_at"] == task["created_at"]

    patched = client.patch(url, json={"priority": "low", "description": "1 l"}, headers=alice).get_json()
    assert patched["title"] == "Buy oat milk" and patched["priority"] == "low" and patched["description"] == "1 l"
    assert patched["updated_at"] >= replaced["updated_at"]

    assert client.patch(f"{url}/complete", headers=alice).get_json()["completed"] is True
    assert client.patch(f"{url}/complete", headers=alice).get_json()["completed"] is False

    assert client.delete(url, headers=alice).status_code == 204
    assert client.get(url, headers=alice).status_code == 404
    assert client.delete(url, headers=alice).get_json()["code"] == "not_found"


def test_put_requires_a_title(client, alice, base):
    task = create(client, alice, base)
    response = client.put(f"{base}/{task['id']}", json={"priority": "low"}, headers=alice)
    assert response.status_code == 422
    assert [e["field"] for e in response.get_json()["errors"]] == ["title"]


@pytest.mark.parametrize("body,field", [
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": "x" * 201}, "title"),
    ({"title": 5}, "title"),
    ({"title": "ok", "description": "x" * 1001}, "description"),
    ({"title": "ok", "completed": "yes"}, "completed"),
    ({"title": "ok", "priority": "urgent"}, "priority"),
    ({"title": "ok", "due_date": "next tuesday"}, "due_date"),
    ({"title": "ok", "colour": "red"}, "colour"),
    ({"title": "nul\x00byte"}, "title"),
    ({"title": "ok", "id": 7}, "id"),
    ({"title": "ok", "user_id": "bob"}, "user_id"),
    ({"title": "ok", "created_at": "2026-01-01T00:00:00Z"}, "created_at"),
    ({"title": "ok", "updated_at": "2026-01-01T00:00:00Z"}, "updated_at"),
])
def test_invalid_bodies_are_422_and_store_nothing(client, alice, body, field):
    response = client.post("/api/v1/tasks", json=body, headers=alice)
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["code"] == "validation_error"
    assert field in [e["field"] for e in problem["errors"]]
    assert client.get("/api/v1/tasks", headers=alice).headers["X-Total-Count"] == "0"


def test_patch_rejects_read_only_fields_and_changes_nothing(client, alice):
    task = create(client, alice)
    response = client.patch(f"/api/v1/tasks/{task['id']}", json={"title": "new", "user_id": "bob"}, headers=alice)
    assert response.status_code == 422
    assert client.get(f"/api/v1/tasks/{task['id']}", headers=alice).get_json() == task


def test_patch_null_title_is_rejected_but_null_description_clears(client, alice):
    task = create(client, alice, description="d")
    assert client.patch(f"/api/v1/tasks/{task['id']}", json={"title": None}, headers=alice).status_code == 422
    cleared = client.patch(f"/api/v1/tasks/{task['id']}", json={"description": None}, headers=alice)
    assert cleared.get_json()["description"] is None


def test_filters_search_sort_and_pagination(client, alice):
    create(client, alice, title="Write report", priority="high", due_date="2026-12-03T00:00:00Z")
    done = create(client, alice, title="Buy milk", priority="low", description="100% OAT_milk")
    create(client, alice, title="call mum", priority="medium", due_date="2026-12-01T00:00:00Z")
    client.patch(f"/api/v1/tasks/{done['id']}/complete", headers=alice)

    def titles(query: str) -> list[str]:
        response = client.get(f"/api/v1/tasks?{query}", headers=alice)
        assert response.status_code == 200, response.get_json()
        return [t["title"] for t in response.get_json()]

    assert titles("status=completed") == ["Buy milk"]
    assert sorted(titles("status=pending")) == ["Write report", "call mum"]
    assert titles("q=MILK") == ["Buy milk"]
    assert titles("q=100%25") == ["Buy milk"]  # % is matched literally, not as a wildcard
    assert titles("q=oat_") == ["Buy milk"] and titles("q=o_t") == []
    assert titles("priority=high") == ["Write report"]
    assert titles("sort=priority&order=asc") == ["Buy milk", "call mum", "Write report"]
    assert titles("sort=priority&order=desc") == ["Write report", "call mum", "Buy milk"]
    assert titles("sort=due_date&order=asc") == ["call mum", "Write report", "Buy milk"]
    assert titles("sort=due_date&order=desc") == ["Write report", "call mum", "Buy milk"]
    assert titles("sort=created_at&order=asc") == ["Write report", "Buy milk", "call mum"]
    assert titles("sort=created_at&order=asc&limit=1&offset=1") == ["Buy milk"]
    response = client.get("/api/v1/tasks?limit=2", headers=alice)
    assert len(response.get_json()) == 2 and response.headers["X-Total-Count"] == "3"
    past_the_end = client.get("/api/v1/tasks?offset=10&status=pending", headers=alice)
    assert past_the_end.get_json() == [] and past_the_end.headers["X-Total-Count"] == "2"


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "offset=-1", "status=done", "sort=owner",
                                   "order=up", "priority=urgent", "limit=abc", "q=" + "x" * 201])
def test_bad_query_parameters_are_422(client, alice, query):
    response = client.get(f"/api/v1/tasks?{query}", headers=alice)
    assert response.status_code == 422
    assert response.get_json()["code"] == "validation_error"


def test_a_task_id_too_large_for_the_column_is_not_found(client, alice):
    assert client.get("/api/v1/tasks/99999999999999999999", headers=alice).status_code == 404
