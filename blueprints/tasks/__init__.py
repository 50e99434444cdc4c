"""Task routes, in both forms: `/api/<user_id>/tasks…` and `/api/v1/tasks…`.

Thin: validate (the `endpoint` declaration), call `OwnedTasks`, serialise.
"""

from __future__ import annotations

from flask import Blueprint, Response, url_for

from app.api import endpoint, json_response
from app.schemas import Task, TaskCreate, TaskListQuery, TaskPatch, TaskReplace
from app.security.authz import require_path_user
from app.security.tokens import Principal
from app.services import services
from app.tasks import OwnedTasks

bp = Blueprint("tasks", __name__)
# The OAuth scopes a third-party app's token needs (app.protected_resource lists them).
READ, WRITE = "tasks:read", "tasks:write"

COLLECTION = ("/api/<user_id>/tasks", "/api/v1/tasks")
ITEM = ("/api/<user_id>/tasks/<int:task_id>", "/api/v1/tasks/<int:task_id>")
COMPLETE = ("/api/<user_id>/tasks/<int:task_id>/complete", "/api/v1/tasks/<int:task_id>/complete")


def route(method: str, rules: tuple[str, ...]):
    def decorator(view):
        for rule in rules:
            bp.add_url_rule(rule, view_func=view, methods=[method])
        return view
    return decorator


def owned_tasks(principal: Principal, user_id: str | None) -> OwnedTasks:
    """The caller's tasks (for `/api/<user_id>/…`, only if the path names the caller)."""
    if user_id is not None:
        require_path_user(principal, user_id)
    return OwnedTasks(services().database, principal.user_id)


@route("GET", COLLECTION)
@endpoint(summary="List my tasks", tag="tasks", scope=READ, query=TaskListQuery, response=list[Task],
          errors=(403,), headers={"X-Total-Count": "Number of tasks matching the filters"})
def list_tasks(principal: Principal, query: TaskListQuery, user_id: str | None = None):
    tasks, total = owned_tasks(principal, user_id).list(query)
    return json_response(tasks, headers={"X-Total-Count": str(total)})


@route("POST", COLLECTION)
@endpoint(summary="Create a task", tag="tasks", scope=WRITE, body=TaskCreate, response=Task, status=201,
          errors=(403,), headers={"Location": "URL of the new task"})
def create_task(principal: Principal, body: TaskCreate, user_id: str | None = None):
    task = owned_tasks(principal, user_id).create(body)
    location = url_for("tasks.get_task", user_id=user_id, task_id=task["id"]) if user_id else url_for(
        "tasks.get_task", task_id=task["id"])
    return json_response(task, 201, {"Location": location})


@route("GET", ITEM)
@endpoint(summary="Get one of my tasks", tag="tasks", scope=READ, response=Task, errors=(403, 404))
def get_task(principal: Principal, task_id: int, user_id: str | None = None):
    return json_response(owned_tasks(principal, user_id).read(task_id))


@route("PUT", ITEM)
@endpoint(summary="Replace a task (title required)", tag="tasks", scope=WRITE, body=TaskReplace, response=Task,
          errors=(403, 404))
def replace_task(principal: Principal, task_id: int, body: TaskReplace, user_id: str | None = None):
    return json_response(owned_tasks(principal, user_id).replace(task_id, body))


@route("PATCH", ITEM)
@endpoint(summary="Update some fields of a task", tag="tasks", scope=WRITE, body=TaskPatch, response=Task,
          errors=(403, 404))
def patch_task(principal: Principal, task_id: int, body: TaskPatch, user_id: str | None = None):
    return json_response(owned_tasks(principal, user_id).patch(task_id, body))


@route("DELETE", ITEM)
@endpoint(summary="Delete a task", tag="tasks", scope=WRITE, status=204, errors=(403, 404))
def delete_task(principal: Principal, task_id: int, user_id: str | None = None):
    owned_tasks(principal, user_id).delete(task_id)
    return Response(status=204)


@route("PATCH", COMPLETE)
@endpoint(summary="Toggle a task's completed flag", tag="tasks", scope=WRITE, response=Task, errors=(403, 404))
def toggle_task(principal: Principal, task_id: int, user_id: str | None = None):
    return json_response(owned_tasks(principal, user_id).toggle(task_id))
