"""Owner checks, route by route in both forms: another user's task is indistinguishable
from a missing one, a path naming another user is forbidden, and the task is unchanged."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

ITEM_ROUTES = [
    ("GET", "", None),
    ("PUT", "", {"title": "stolen"}),
    ("PATCH", "", {"title": "stolen"}),
    ("DELETE", "", None),
    ("PATCH", "/complete", None),
]


@pytest.fixture
def alices_task(client, as_user):
    response = client.post("/api/v1/tasks", json={"title": "alice's secret"}, headers=as_user("alice"))
    return response.get_json()


def unchanged(client, as_user, task) -> bool:
    return client.get(f"/api/v1/tasks/{task['id']}", headers=as_user("alice")).get_json() == task


@pytest.mark.parametrize("method,suffix,body", ITEM_ROUTES)
def test_v1_form_answers_404_for_another_users_task(client, as_user, alices_task, method, suffix, body):
    response = client.open(f"/api/v1/tasks/{alices_task['id']}{suffix}", method=method, json=body,
                           headers=as_user("bob"))
    missing = client.open(f"/api/v1/tasks/999999{suffix}", method=method, json=body, headers=as_user("bob"))
    assert response.status_code == 404
    assert response.get_json() == missing.get_json()  # indistinguishable from a missing task
    assert unchanged(client, as_user, alices_task)


@pytest.mark.parametrize("method,suffix,body", ITEM_ROUTES)
def test_path_form_answers_404_for_another_users_task(client, as_user, alices_task, method, suffix, body):
    response = client.open(f"/api/bob/tasks/{alices_task['id']}{suffix}", method=method, json=body,
                           headers=as_user("bob"))
    assert response.status_code == 404
    assert unchanged(client, as_user, alices_task)


@pytest.mark.parametrize("method,suffix,body", ITEM_ROUTES)
def test_path_form_naming_another_user_is_forbidden(client, as_user, alices_task, method, suffix, body):
    response = client.open(f"/api/alice/tasks/{alices_task['id']}{suffix}", method=method, json=body,
                           headers=as_user("bob"))
    assert response.status_code == 403
    assert response.get_json()["code"] == "forbidden"
    assert unchanged(client, as_user, alices_task)


@pytest.mark.parametrize("method,body", [("GET", None), ("POST", {"title": "planted"})])
def test_collection_naming_another_user_is_forbidden(client, as_user, alices_task, method, body):
    response = client.open("/api/alice/tasks", method=method, json=body, headers=as_user("bob"))
    assert response.status_code == 403
    listed = client.get("/api/v1/tasks", headers=as_user("alice")).get_json()
    assert listed == [alices_task]


@pytest.mark.parametrize("url", ["/api/v1/tasks", "/api/bob/tasks"])
def test_lists_hold_only_the_callers_tasks(client, as_user, alices_task, url):
    client.post("/api/v1/tasks", json={"title": "bob's"}, headers=as_user("bob"))
    response = client.get(url, headers=as_user("bob"))
    assert [t["title"] for t in response.get_json()] == ["bob's"]
    assert response.headers["X-Total-Count"] == "1"
    searched = client.get(f"{url}?q=secret", headers=as_user("bob"))
    assert searched.get_json() == [] and searched.headers["X-Total-Count"] == "0"
