"""Task data access, always scoped to one owner by `owned()`
(ARCHITECTURE.md, "The data model")."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from weakref import WeakSet

from sqlalchemy import Insert, String, bindparam, case, delete, false, func, insert, select, true, update
from sqlalchemy.engine import Row
from sqlalchemy.sql import Executable

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
EDITABLE_FIELDS = ("title", "description", "completed", "priority", "due_date")

_OWNED: WeakSet[Executable] = WeakSet()


def owned(statement: Any) -> Any:
    """The one place the owner is added to a statement on tasks (bound as :owner)."""
    if isinstance(statement, Insert):
        statement = statement.values(user_id=bindparam("owner"))
    else:
        statement = statement.where(Task.user_id == bindparam("owner"))
    _OWNED.add(statement)
    return statement


def _as_dict(row: Row[Any]) -> dict[str, Any]:
    """A row selected or returned as TASK_COLUMNS (extra trailing columns are ignored)."""
    return dict(zip(TASK_FIELDS, row, strict=False))


def _no_such_task() -> NotFound:
    """The one answer for a task that is missing, out of range, or another user's."""
    return NotFound("No task with this id.")


def like_pattern(text: str) -> str:
    """`text` for a LIKE ... ESCAPE '/' comparison, matching its characters literally."""
    return text.replace("/", "//").replace("%", "/%").replace("_", "/_")


@lru_cache(maxsize=256)  # bounded: 3 statuses x 2 x 2 x 5 sorts x 2 orders = 120 shapes
def _list_statement(status: str, by_priority: bool, by_text: bool, sort: str, order: str) -> Any:
    """The list query for one shape of filters, with the filter values and the page as bound
    parameters, and the total riding along as a window count: built once per shape."""
    statement = select(*TASK_COLUMNS, func.count().over().label("total"))
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
    page = statement.order_by(*ordering).limit(bindparam("limit")).offset(bindparam("offset"))
    counted = statement.with_only_columns(func.count())  # for a page past the end
    return owned(page), owned(counted)


@lru_cache(maxsize=64)  # one per set of changed fields (at most 2^5)
def _update_statement(fields: frozenset[str]) -> Any:
    values = {name: bindparam(f"new_{name}", type_=getattr(Task, name).type) for name in sorted(fields)}
    return owned(update(Task).where(Task.id == bindparam("task_id"))
                 .values(**values, updated_at=bindparam("now", type_=Task.updated_at.type))
                 .returning(*TASK_COLUMNS))


_READ = owned(select(*TASK_COLUMNS).where(Task.id == bindparam("task_id")))
_INSERT = owned(insert(Task).returning(*TASK_COLUMNS))
_TOGGLE = owned(
    update(Task)
    .where(Task.id == bindparam("task_id"))
    .values(completed=~Task.completed, updated_at=bindparam("now", type_=Task.updated_at.type))
    .returning(*TASK_COLUMNS)
)
_DELETE = owned(delete(Task).where(Task.id == bindparam("task_id")).returning(Task.id))


class OwnedTasks:
    def __init__(self, database: Database, owner_id: str) -> None:
        self.database = database
        self.owner_id = owner_id

    def _run(self, statement: Executable, **params: Any) -> Sequence[Row[Any]]:
        if statement not in _OWNED:
            raise RuntimeError("a statement on tasks was not scoped to its owner by owned()")
        return self.database.rows(statement, {**params, "owner": self.owner_id})

    def _the_task(self, statement: Executable, task_id: int, **params: Any) -> dict[str, Any]:
        """The owner's task `task_id` as a statement returns it, or 404."""
        if not 0 < task_id <= MAX_TASK_ID:
            raise _no_such_task()
        rows = self._run(statement, task_id=task_id, **params)
        if not rows:
            raise _no_such_task()
        return _as_dict(rows[0])

    def list(self, query: TaskListQuery) -> tuple[list[dict[str, Any]], int]:
        """One page of the owner's tasks, and the number matching the filters."""
        params: dict[str, Any] = {"limit": query.limit, "offset": query.offset}
        if query.priority:
            params["priority"] = query.priority
        if query.q:
            params["q"] = like_pattern(query.q)
        page, counted = _list_statement(query.status, bool(query.priority), bool(query.q), query.sort, query.order)
        rows = self._run(page, **params)
        if rows:
            return [_as_dict(row) for row in rows], rows[0][-1]
        if query.offset == 0:
            return [], 0
        # A page past the end has no row to carry the count: count separately.
        return [], self._run(counted, **params)[0][0] or 0

    def read(self, task_id: int) -> dict[str, Any]:
        return self._the_task(_READ, task_id)

    def create(self, data: TaskCreate) -> dict[str, Any]:
        """One INSERT ... RETURNING, owned by the caller whatever the body says (the body cannot
        name an owner: TaskCreate forbids unknown fields)."""
        now = utcnow()
        return _as_dict(self._run(_INSERT, **data.model_dump(), created_at=now, updated_at=now)[0])

    def replace(self, task_id: int, data: TaskCreate) -> dict[str, Any]:
        """Every editable field set (those the body leaves out to their defaults)."""
        return self._change(task_id, data.model_dump())

    def patch(self, task_id: int, data: TaskPatch) -> dict[str, Any]:
        return self._change(task_id, data.model_dump(include=data.model_fields_set))

    def toggle(self, task_id: int) -> dict[str, Any]:
        """Flip `completed` in one atomic statement: two toggles at once never both read the old value."""
        return self._the_task(_TOGGLE, task_id, now=utcnow())

    def delete(self, task_id: int) -> None:
        self._the_task(_DELETE, task_id)

    def _change(self, task_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        statement = _update_statement(frozenset(changes))
        return self._the_task(statement, task_id, now=utcnow(), **{f"new_{k}": v for k, v in changes.items()})
