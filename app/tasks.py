"""Task data access, always scoped to one owner.

`OwnedTasks(db, owner_id)` is the only way routes reach tasks: every query it runs
filters on the owner, so another user's task is indistinguishable from a missing one and
a new route cannot forget the check. Reads and atomic single-statement writes (list, read,
create, toggle) run as statements that commit by themselves (`db.rows`); the others work
in the request's session, and the route commits it once.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import Select, String, bindparam, case, false, func, insert, select, true, update
from sqlalchemy.orm import Session

from app.db import Database
from app.errors import NotFound
from app.models import Task, utcnow
from app.schemas import TaskCreate, TaskListQuery, TaskPatch

MAX_TASK_ID = 2**31 - 1  # the column is a 32-bit integer on PostgreSQL
PRIORITY_RANK = case({"low": 0, "medium": 1, "high": 2}, value=Task.priority)
SORT_COLUMNS = {
    "created_at": Task.created_at,
    "updated_at": Task.updated_at,
    "due_date": Task.due_date,
    "priority": PRIORITY_RANK,
    "title": Task.title,
}


TASK_FIELDS = ("id", "user_id", "title", "description", "completed", "priority", "due_date", "created_at",
               "updated_at")
TASK_COLUMNS = tuple(getattr(Task, name) for name in TASK_FIELDS)


def task_to_dict(task: Task) -> dict[str, Any]:
    return {name: getattr(task, name) for name in TASK_FIELDS}


def _row_to_dict(row: Any) -> dict[str, Any]:
    """A row selected as TASK_COLUMNS (extra trailing columns are ignored)."""
    return dict(zip(TASK_FIELDS, row, strict=False))


def _no_such_task() -> NotFound:
    """The one answer for a task that is missing, out of range, or another user's."""
    return NotFound("No task with this id.")


def _require_valid_id(task_id: int) -> None:
    if not 0 < task_id <= MAX_TASK_ID:
        raise _no_such_task()


def _the_task(rows: Any) -> dict[str, Any]:
    """The one task a statement on the owner's task returned, or 404."""
    if not rows:
        raise _no_such_task()
    return _row_to_dict(rows[0])


def like_pattern(text: str) -> str:
    """`text` for a LIKE ... ESCAPE '/' comparison, matching its characters literally."""
    return text.replace("/", "//").replace("%", "/%").replace("_", "/_")


@lru_cache(maxsize=256)  # bounded: 3 statuses x 2 x 2 x 5 sorts x 2 orders = 120 shapes
def _list_statement(status: str, by_priority: bool, by_text: bool, sort: str, order: str) -> Select[Any]:
    """The list query for one shape of filters, with the owner (always), the filter values
    and the page as bound parameters: built and compiled once, reused by every request."""
    statement = select(*TASK_COLUMNS, func.count().over().label("total")).where(
        Task.user_id == bindparam("owner"))
    if status != "all":
        statement = statement.where(Task.completed == (true() if status == "completed" else false()))
    if by_priority:
        statement = statement.where(Task.priority == bindparam("priority"))
    if by_text:
        pattern = bindparam("q", type_=String)  # escaped by like_pattern(): % and _ match themselves
        statement = statement.where(Task.title.icontains(pattern, escape="/")
                                    | Task.description.icontains(pattern, escape="/"))
    column = SORT_COLUMNS[sort]
    direction = (lambda c: c.desc()) if order == "desc" else (lambda c: c.asc())
    ordering = [direction(column), direction(Task.id)]
    if sort == "due_date":  # tasks without a due date come last either way
        ordering.insert(0, Task.due_date.is_(None))
    return statement.order_by(*ordering).limit(bindparam("limit")).offset(bindparam("offset"))


_READ = select(*TASK_COLUMNS).where(Task.user_id == bindparam("owner"), Task.id == bindparam("task_id"))
_INSERT = insert(Task).returning(*TASK_COLUMNS)
_TOGGLE = (
    update(Task)
    .where(Task.user_id == bindparam("owner"), Task.id == bindparam("task_id"))
    .values(completed=~Task.completed, updated_at=bindparam("now", type_=Task.updated_at.type))
    .returning(*TASK_COLUMNS)
)


class OwnedTasks:
    def __init__(self, database: Database, owner_id: str) -> None:
        self.database = database
        self.owner_id = owner_id

    @property
    def session(self) -> Session:
        """The request's transaction (only the multi-statement operations open it)."""
        return self.database.session

    def _owned(self) -> Select[tuple[Task]]:
        # Every query starts here or filters on the owner the same way (see list()).
        return select(Task).where(Task.user_id == self.owner_id)

    def read(self, task_id: int) -> dict[str, Any]:
        """One task as a dict, in one statement."""
        _require_valid_id(task_id)
        return _the_task(self.database.rows(_READ, {"owner": self.owner_id, "task_id": task_id}))

    def get(self, task_id: int) -> Task:
        """One task as an ORM object in the request's session, to change it."""
        _require_valid_id(task_id)
        task = self.session.scalars(self._owned().where(Task.id == task_id)).first()
        if task is None:
            raise _no_such_task()
        return task

    def list(self, query: TaskListQuery) -> tuple[list[dict[str, Any]], int]:
        """One page of the owner's tasks as dicts, and the number matching the filters.
        The hot route: one statement (the total rides along as a window count), built once
        per query shape, and plain rows instead of ORM objects."""
        params = {"owner": self.owner_id, "limit": query.limit, "offset": query.offset}
        if query.priority:
            params["priority"] = query.priority
        if query.q:
            params["q"] = like_pattern(query.q)
        statement = _list_statement(query.status, bool(query.priority), bool(query.q), query.sort, query.order)
        rows = self.database.rows(statement, params)
        if rows:
            return [_row_to_dict(row) for row in rows], rows[0][-1]
        if query.offset == 0:
            return [], 0
        # A page past the end has no row to carry the count: count separately.
        counted = statement.with_only_columns(func.count()).order_by(None).limit(None).offset(None)
        return [], self.database.rows(counted, params)[0][0] or 0

    def create(self, data: TaskCreate) -> dict[str, Any]:
        """One INSERT ... RETURNING: the new task, owned by the caller whatever the body says
        (the body cannot name an owner: TaskCreate forbids unknown fields)."""
        now = utcnow()
        values = {**data.model_dump(), "user_id": self.owner_id, "created_at": now, "updated_at": now}
        return _row_to_dict(self.database.rows(_INSERT, values)[0])

    def replace(self, task_id: int, data: TaskCreate) -> Task:
        return self._apply(self.get(task_id), data.model_dump())

    def patch(self, task_id: int, data: TaskPatch) -> Task:
        return self._apply(self.get(task_id), data.model_dump(include=data.model_fields_set))

    def toggle(self, task_id: int) -> dict[str, Any]:
        """Flip `completed` in one atomic statement: two toggles at once never both read the
        old value, and the route needs no transaction around a read and a write."""
        _require_valid_id(task_id)
        return _the_task(self.database.rows(_TOGGLE, {"owner": self.owner_id, "task_id": task_id, "now": utcnow()}))

    def delete(self, task_id: int) -> None:
        self.session.delete(self.get(task_id))
        self.session.flush()

    def _apply(self, task: Task, changes: dict[str, Any]) -> Task:
        for name, value in changes.items():
            setattr(task, name, value)
        task.updated_at = utcnow()
        self.session.flush()
        return task
