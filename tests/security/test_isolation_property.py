"""Owner isolation as a property (CONTRACT §4): a Hypothesis state machine drives random
interleavings of create / read / replace (PUT) / patch / delete / toggle / list by three
users, through the HTTP test client and both URL forms, on SQLite and PostgreSQL.

After every step the responses must equal a plain in-memory model of each user's own
operations: a user's list, filters, counts and single reads show exactly their own tasks;
another user's task answers exactly like a missing one (the same 404 problem); a path naming
another user is a 403; a rejected request changes nothing; ids, owners and creation times
never change. At the end of each run every user's view is compared with the model in full.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from app.services import services
from tests.conftest import bearer

BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

USERS = ("alice", "bob", "carol")
FORMS = ("v1", "path")
PRIORITIES = ("low", "medium", "high")
RANK = {"low": 0, "medium": 1, "high": 2}
# Beyond ASCII letters: the LIKE metacharacters and the escape character (they must match
# literally), and non-ASCII letters whose lower case stays non-ASCII (SQLite's lower() is
# ASCII-only, so a q of ASCII letters matches the same titles in Python, SQLite and PostgreSQL).
ALPHABET = string.ascii_letters + string.digits + " %_/éÉ✓"
MISSING_IDS = (999_999, 2**31 - 1, 2**31, 0)
RUN_SETTINGS = settings(
    max_examples=20,
    stateful_step_count=30,
    deadline=None,
    database=None,  # never write a .hypothesis folder into the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

titles = st.text(ALPHABET, min_size=1, max_size=30).filter(lambda s: s.strip())
descriptions = st.none() | st.text(ALPHABET, max_size=40)
offsets = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), None])
due_dates = st.none() | st.builds(
    lambda moment, zone: moment.replace(microsecond=0, tzinfo=zone),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    offsets,
)
OPTIONAL_FIELDS = {
    "description": descriptions,
    "completed": st.booleans(),
    "priority": st.sampled_from(PRIORITIES),
    "due_date": due_dates,
}
full_bodies = st.fixed_dictionaries({"title": titles}, optional=OPTIONAL_FIELDS)
partial_bodies = st.fixed_dictionaries({}, optional={"title": titles, **OPTIONAL_FIELDS})
# Each is refused with 422 whoever owns the task (validation comes before the lookup).
invalid_bodies = st.sampled_from([
    {"title": "   "},
    {"title": "x", "user_id": "mallory"},
    {"title": "x", "id": 1},
    {"title": "x", "completed": "yes"},
    {"title": "x", "priority": "urgent"},
    {"title": "x", "created_at": "2030-01-01T00:00:00Z"},
])
list_params = st.fixed_dictionaries({}, optional={
    "status": st.sampled_from(["all", "pending", "completed"]),
    "priority": st.sampled_from(PRIORITIES),
    "q": st.text("abcxyzABC019 %_/", min_size=1, max_size=3),
    "sort": st.sampled_from(["created_at", "updated_at", "due_date", "priority", "title"]),
    "order": st.sampled_from(["asc", "desc"]),
    "limit": st.integers(1, 6),
    "offset": st.integers(0, 4),
})


def encode_body(body: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in body.items()}


def as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).astimezone(UTC)


def parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def reset_database(app, backend: str) -> None:
    engine = services(app).database.engine
    with engine.begin() as connection:
        if backend == "postgresql":
            connection.execute(sa.text("TRUNCATE tasks RESTART IDENTITY"))
        else:
            connection.execute(sa.text("DELETE FROM tasks"))


def make_machine(app, client, backend: str, headers: dict[str, dict[str, str]]):
    class Isolation(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            reset_database(app, backend)
            self.tasks: dict[int, dict[str, Any]] = {}  # live tasks: id -> model
            self.ids: list[int] = []  # every id ever created, deleted ones included (SQLite may reuse one:
            # see test_a_deleted_tasks_id_is_never_reused; the model follows whatever id is live)
            self.missing_body: dict[str, Any] | None = None

        # --- plumbing -------------------------------------------------------------------

        def pick(self, index: int) -> int:
            pool = self.ids + list(MISSING_IDS)
            return pool[index % len(pool)]

        @staticmethod
        def collection(user: str, form: str, path_user: str | None = None) -> str:
            return "/api/v1/tasks" if form == "v1" else f"/api/{path_user or user}/tasks"

        def item(self, user: str, form: str, task_id: int, path_user: str | None = None) -> str:
            return f"{self.collection(user, form, path_user)}/{task_id}"

        def send(self, user: str, method: str, url: str, body: Any = None, query: dict | None = None):
            response = client.open(url, method=method, json=body, query_string=query, headers=headers[user])
            assert response.status_code < 500, (method, url, response.status_code, response.get_data()[:300])
            return response

        def owned(self, user: str, task_id: int) -> dict[str, Any] | None:
            task = self.tasks.get(task_id)
            return task if task is not None and task["user_id"] == user else None

        def check_problem(self, response, status: int, code: str) -> dict[str, Any]:
            assert response.status_code == status, (status, response.status_code, response.get_data()[:300])
            assert response.mimetype == "application/problem+json"
            body = response.get_json()
            assert body["status"] == status and body["code"] == code, body
            return body

        def check_not_found(self, response) -> None:
            body = self.check_problem(response, 404, "not_found")
            # Another user's task is indistinguishable from a task that never existed.
            if self.missing_body is None:
                self.missing_body = body
            assert body == self.missing_body

        def check_task(self, data: dict[str, Any], expected: dict[str, Any]) -> None:
            assert data["id"] == expected["id"]
            assert data["user_id"] == expected["user_id"]
            assert data["title"] == expected["title"]
            assert data["description"] == expected["description"]
            assert data["completed"] is expected["completed"]
            assert data["priority"] == expected["priority"]
            assert parse_time(data["due_date"]) == expected["due_date"]
            assert data["created_at"] == expected["created_at"]
            assert data["updated_at"] == expected["updated_at"]

        def record_write(self, response, task: dict[str, Any], changes: dict[str, Any]) -> None:
            assert response.status_code == 200, response.get_data()[:300]
            data = response.get_json()
            task.update(changes)
            assert parse_time(data["updated_at"]) >= parse_time(task["updated_at"])
            task["updated_at"] = data["updated_at"]
            self.check_task(data, task)

        @staticmethod
        def normalise(body: dict[str, Any]) -> dict[str, Any]:
            changes = dict(body)
            if "title" in changes:
                changes["title"] = changes["title"].strip()
            if "due_date" in changes:
                changes["due_date"] = as_utc(changes["due_date"])
            return changes

        # --- rules ------------------------------------------------------------------------

        @initialize()
        def empty_at_start(self) -> None:
            for user in USERS:
                response = self.send(user, "GET", "/api/v1/tasks")
                assert response.get_json() == [] and response.headers["X-Total-Count"] == "0"

        @rule(user=st.sampled_from(USERS), form=st.sampled_from(FORMS), body=full_bodies)
        def create(self, user: str, form: str, body: dict[str, Any]) -> None:
            response = self.send(user, "POST", self.collection(user, form), encode_body(body))
            assert response.status_code == 201, response.get_data()[:300]
            data = response.get_json()
            assert data["id"] not in self.tasks
            assert response.headers["Location"].endswith(self.item(user, form, data["id"]))
            task = {"id": data["id"], "user_id": user, "title": "", "description": None, "completed": False,
                    "priority": "medium", "due_date": None, "created_at": data["created_at"],
                    "updated_at": data["updated_at"], **self.normalise(body)}
            self.check_task(data, task)
            self.remember(task)

        def remember(self, task: dict[str, Any]) -> None:
            self.tasks[task["id"]] = task
            if task["id"] not in self.ids:
                self.ids.append(task["id"])

        @rule(user=st.sampled_from(USERS), other=st.sampled_from(USERS), body=full_bodies)
        def create_in_another_users_path(self, user: str, other: str, body: dict[str, Any]) -> None:
            response = self.send(user, "POST", f"/api/{other}/tasks", encode_body(body))
            if other == user:
                assert response.status_code == 201
                data = response.get_json()
                task = {"id": data["id"], "user_id": user, "title": "", "description": None, "completed": False,
                        "priority": "medium", "due_date": None, "created_at": data["created_at"],
                        "updated_at": data["updated_at"], **self.normalise(body)}
                assert data["id"] not in self.tasks
                self.check_task(data, task)
                self.remember(task)
            else:
                self.check_problem(response, 403, "forbidden")

        @rule(user=st.sampled_from(USERS), form=st.sampled_from(FORMS), index=st.integers(0, 200))
        def read(self, user: str, form: str, index: int) -> None:
            task_id = self.pick(index)
            response = self.send(user, "GET", self.item(user, form, task_id))
            task = self.owned(user, task_id)
            if task is None:
                self.check_not_found(response)
            else:
                assert response.status_code == 200
                self.check_task(response.get_json(), task)

        @rule(user=st.sampled_from(USERS), form=st.sampled_from(FORMS), index=st.integers(0, 200), body=full_bodies)
        def replace(self, user: str, form: str, index: int, body: dict[str, Any]) -> None:
            task_id = self.pick(index)
            response = self.send(user, "PUT", self.item(user, form, task_id), encode_body(body))
            task = self.owned(user, task_id)
            if task is None:
                self.check_not_found(response)
                return
            defaults = {"description": None, "completed": False, "priority": "medium", "due_date": None}
            self.record_write(response, task, {**defaults, **self.normalise(body)})

        @rule(user=st.sampled_from(USERS), form=st.sampled_from(FORMS), index=st.integers(0, 200),
              body=partial_bodies)
        def patch(self, user: str, form: str, index: int, body: dict[str, Any]) -> None:
            task_id = self.pick(index)
            response = self.send(user, "PATCH", self.item(user, form, task_id), encode_body(body))
            task = self.owned(user, task_id)
            if task is None:
                self.check_not_found(response)
                return
            self.record_write(response, task, self.normalise(body))

        @rule(user=st.sampled_from(USERS), form=st.sampled_from(FORMS), index=st.integers(0, 200))
        def toggle(self, user: str, form: str, index: int) -> None:
            task_id = self.pick(index)
            response = self.send(user, "PATCH", self.item(user, form, task_id) + "/complete")
            task = self.owned(user, task_id)
            if task is None:
                self.check_not_found(response)
                return
            self.record_write(response, task, {"completed": not task["completed"]})

        @rule(user=st.sampled_from(USERS), form=st.sampled_from(FORMS), index=st.integers(0, 200))
        def delete(self, user: str, form: str, index: int) -> None:
            task_id = self.pick(index)
            response = self.send(user, "DELETE", self.item(user, form, task_id))
            if self.owned(user, task_id) is None:
                self.check_not_found(response)
                return
            assert response.status_code == 204 and response.get_data() == b""
            del self.tasks[task_id]

        @rule(user=st.sampled_from(USERS), form=st.sampled_from(FORMS), index=st.integers(0, 200),
              method=st.sampled_from(["PUT", "PATCH"]), body=invalid_bodies)
        def invalid_write(self, user: str, form: str, index: int, method: str, body: dict[str, Any]) -> None:
            response = self.send(user, method, self.item(user, form, self.pick(index)), body)
            self.check_problem(response, 422, "validation_error")

        @rule(user=st.sampled_from(USERS), other=st.sampled_from(USERS), index=st.integers(0, 200),
              action=st.sampled_from(["GET", "PUT", "PATCH", "DELETE", "TOGGLE", "LIST"]))
        def use_another_users_path(self, user: str, other: str, index: int, action: str) -> None:
            """The path names `other` while the token is `user`'s: 403 whatever the task."""
            if other == user:
                return
            task_id = self.pick(index)
            url, method, body = self.item(user, "path", task_id, other), action, None
            if action == "TOGGLE":
                url, method = url + "/complete", "PATCH"
            elif action == "LIST":
                url, method = f"/api/{other}/tasks", "GET"
            elif action in ("PUT", "PATCH"):
                body = {"title": "stolen"}
            self.check_problem(self.send(user, method, url, body), 403, "forbidden")

        @rule(user=st.sampled_from(USERS), form=st.sampled_from(FORMS), params=list_params)
        def list_tasks(self, user: str, form: str, params: dict[str, Any]) -> None:
            response = self.send(user, "GET", self.collection(user, form), query=params)
            assert response.status_code == 200, response.get_data()[:300]
            expected = self.expected_list(user, params)
            total = len(expected)
            offset, limit = params.get("offset", 0), params.get("limit", 100)
            page = expected[offset:offset + limit]
            data = response.get_json()
            assert response.headers["X-Total-Count"] == str(total)
            assert all(t["user_id"] == user for t in data)
            if params.get("sort") == "title":
                # Collation differs between databases: compare the page's members only when
                # it is the whole result, and the titles' multiset otherwise.
                if offset == 0 and limit >= total:
                    assert sorted(t["id"] for t in data) == sorted(t["id"] for t in page)
                else:
                    assert len(data) == len(page)
                    assert {t["id"] for t in data} <= {t["id"] for t in expected}
            else:
                assert [t["id"] for t in data] == [t["id"] for t in page]
            for task in data:
                self.check_task(task, self.tasks[task["id"]])

        def expected_list(self, user: str, params: dict[str, Any]) -> list[dict[str, Any]]:
            tasks = [t for t in self.tasks.values() if t["user_id"] == user]
            status = params.get("status", "all")
            if status != "all":
                tasks = [t for t in tasks if t["completed"] is (status == "completed")]
            if "priority" in params:
                tasks = [t for t in tasks if t["priority"] == params["priority"]]
            if "q" in params:
                q = params["q"].lower()
                tasks = [t for t in tasks if q in t["title"].lower() or q in (t["description"] or "").lower()]
            sort, descending = params.get("sort", "created_at"), params.get("order", "desc") == "desc"
            if sort == "due_date":
                dated = sorted((t for t in tasks if t["due_date"] is not None),
                               key=lambda t: (t["due_date"], t["id"]), reverse=descending)
                undated = sorted((t for t in tasks if t["due_date"] is None), key=lambda t: t["id"],
                                 reverse=descending)
                return dated + undated
            keys = {
                "created_at": lambda t: (parse_time(t["created_at"]), t["id"]),
                "updated_at": lambda t: (parse_time(t["updated_at"]), t["id"]),
                "priority": lambda t: (RANK[t["priority"]], t["id"]),
                "title": lambda t: (t["title"], t["id"]),
            }
            return sorted(tasks, key=keys[sort], reverse=descending)

        def teardown(self) -> None:
            for user in USERS:
                mine = sorted((t for t in self.tasks.values() if t["user_id"] == user), key=lambda t: -t["id"])
                for form in FORMS:
                    response = self.send(user, "GET", self.collection(user, form))
                    assert [t["id"] for t in response.get_json()] == [t["id"] for t in mine]
                    assert response.headers["X-Total-Count"] == str(len(mine))
                    for data, task in zip(response.get_json(), mine, strict=True):
                        self.check_task(data, task)
                for task_id in self.ids:
                    response = self.send(user, "GET", self.item(user, "v1", task_id))
                    if self.owned(user, task_id) is None:
                        self.check_not_found(response)
                    else:
                        self.check_task(response.get_json(), self.tasks[task_id])
            engine = services(app).database.engine
            with engine.connect() as connection:
                stored = dict(connection.execute(sa.text("SELECT id, user_id FROM tasks")).all())
            assert stored == {i: t["user_id"] for i, t in self.tasks.items()}

    return Isolation


@BACKENDS
def test_users_only_ever_see_and_change_their_own_tasks(app, client, make_token, backend):
    headers = {user: bearer(make_token(user)) for user in USERS}
    run_state_machine_as_test(make_machine(app, client, backend, headers), settings=RUN_SETTINGS)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_a_deleted_tasks_id_is_never_reused(client, as_user):
    """Found by the state machine. Owner scoping keeps it from crossing users (bob's stale
    id answers 404 once alice holds it), but within one user a stale write from another tab
    lands on a different task than the one it was aimed at."""
    alice = as_user("alice")
    old = client.post("/api/v1/tasks", json={"title": "old"}, headers=alice).get_json()
    assert client.delete(f"/api/v1/tasks/{old['id']}", headers=alice).status_code == 204
    new = client.post("/api/v1/tasks", json={"title": "new"}, headers=alice).get_json()
    stale = client.patch(f"/api/v1/tasks/{old['id']}", json={"completed": True}, headers=alice)
    assert new["id"] != old["id"]
    assert stale.status_code == 404 and stale.get_json()["code"] == "not_found"
    assert client.get(f"/api/v1/tasks/{new['id']}", headers=alice).get_json()["completed"] is False
