"""Task routes, in both forms: `/api/<user_id>/tasks…` and `/api/v1/tasks…`.

Thin: validate (the `endpoint` declaration), call `OwnedTasks`, serialise, commit once.
"""

from __future__ import annotations

from flask import Blueprint, Response, url_for

from app import models
from app.api import endpoint, json_response
from app.auth import Principal, require_path_user
from app.extensions import db
from app.schemas import Task, TaskCreate, TaskListQuery, TaskPatch, TaskReplace
from app.tasks import OwnedTasks, task_to_dict

bp = Blueprint("tasks", __name__)

COLLECTION = ("/api/<user_id>/tasks", "/api/v1/tasks")
ITEM = ("/api/<user_id>/tasks/<int:task_id>", "/api/v1/tasks/<int:task_id>")
COMPLETE = ("/api/<user_id>/tasks/<int:task_id>/complete", "/api/v1/tasks/<int:task_id>/complete")


def route(method: str, rules: tuple[str, ...]):
    def decorator(view):
        for rule in rules:
            bp.add_url_rule(rule, view_func=view, methods=[method])
        return view
    return decorator


def owned_tasks(principal: Principal, user_id: str | None, *, single_statement: bool = False) -> OwnedTasks:
    """The caller's tasks. `single_statement`: the route runs one statement, which commits
    by itself (db.autocommit_session); otherwise its statements share one transaction."""
    if user_id is not None:
        require_path_user(principal, user_id)
    return OwnedTasks(db.autocommit_session if single_statement else db.session, principal.user_id)


def committed(tasks: OwnedTasks, task: models.Task | dict, status: int = 200,
              headers: dict[str, str] | None = None) -> Response:
    body = task if isinstance(task, dict) else task_to_dict(task)
    tasks.session.commit()
    return json_response(body, status, headers)


@route("GET", COLLECTION)
@endpoint(summary="List my tasks", tag="tasks", query=TaskListQuery, response=list[Task],
          errors=(403,), headers={"X-Total-Count": "Number of tasks matching the filters"})
def list_tasks(principal: Principal, query: TaskListQuery, user_id: str | None = None):
    tasks, total = owned_tasks(principal, user_id, single_statement=True).list(query)
    return json_response(tasks, headers={"X-Total-Count": str(total)})


@route("POST", COLLECTION)
@endpoint(summary="Create a task", tag="tasks", body=TaskCreate, response=Task, status=201,
          errors=(403,), headers={"Location": "URL of the new task"})
def create_task(principal: Principal, body: TaskCreate, user_id: str | None = None):
    tasks = owned_tasks(principal, user_id, single_statement=True)  # one INSERT
    task = tasks.create(body)
    location = url_for("tasks.get_task", user_id=user_id, task_id=task["id"]) if user_id else url_for(
        "tasks.get_task", task_id=task["id"])
    return committed(tasks, task, 201, {"Location": location})


@route("GET", ITEM)
@endpoint(summary="Get one of my tasks", tag="tasks", response=Task, errors=(403, 404))
def get_task(principal: Principal, task_id: int, user_id: str | None = None):
    return json_response(task_to_dict(owned_tasks(principal, user_id, single_statement=True).get(task_id)))


@route("PUT", ITEM)
@endpoint(summary="Replace a task (title required)", tag="tasks", body=TaskReplace, response=Task,
          errors=(403, 404))
def replace_task(principal: Principal, task_id: int, body: TaskReplace, user_id: str | None = None):
    tasks = owned_tasks(principal, user_id)
    return committed(tasks, tasks.replace(task_id, body))


@route("PATCH", ITEM)
@endpoint(summary="Update some fields of a task", tag="tasks", body=TaskPatch, response=Task,
          errors=(403, 404))
def patch_task(principal: Principal, task_id: int, body: TaskPatch, user_id: str | None = None):
    tasks = owned_tasks(principal, user_id)
    return committed(tasks, tasks.patch(task_id, body))


@route("DELETE", ITEM)
@endpoint(summary="Delete a task", tag="tasks", status=204, errors=(403, 404))
def delete_task(principal: Principal, task_id: int, user_id: str | None = None):
    owned_tasks(principal, user_id).delete(task_id)
    db.session.commit()
    return Response(status=204)


@route("PATCH", COMPLETE)
@endpoint(summary="Toggle a task's completed flag", tag="tasks", response=Task, errors=(403, 404))
def toggle_task(principal: Principal, task_id: int, user_id: str | None = None):
    tasks = owned_tasks(principal, user_id, single_statement=True)  # one UPDATE ... RETURNING
    return committed(tasks, tasks.toggle(task_id))
