"""The database: one session per request, committed once by the route.

A route that runs exactly one statement (a read, or an atomic single-statement write)
runs it with `db.rows()` instead: the statement commits on its own, on a second pool whose
connections stay in autocommit mode. That spares the hot routes a session, the BEGIN and
COMMIT/ROLLBACK round trips of a transaction, and switching a connection's mode.

Created unbound (`Database()` in extensions.py) and bound with `init_app`; per-app state
lives in `app.extensions` so several apps (tests) never share an engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable

EXTENSION_KEY = "taskgate.db"
AUTOCOMMIT_KEY = "taskgate.db.autocommit"


def engine_options(url: str, pool_size: int, statement_timeout_ms: int, autocommit: bool = False) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if autocommit:
        # Every statement commits by itself: a connection never returns mid-transaction,
        # so the pool's rollback on return has nothing to do.
        options.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
    if url.startswith("sqlite"):
        # Threads of one gunicorn worker share the pool; SQLite objects are safe to
        # hand between threads as long as one thread uses a connection at a time.
        return {**options, "connect_args": {"check_same_thread": False, "timeout": 5}}
    options.update({
        # Not pool_pre_ping (a round trip on every checkout): _ping_idle_connections()
        # pings only connections that sat idle, which is where dead ones hide.
        "pool_size": pool_size,
        # The pools match the worker's threads; the transactional one has a little slack
        # for the CLI. Both are filled lazily: a worker serving only hot routes opens
        # connections in the autocommit pool alone.
        "max_overflow": 0 if autocommit else 2,
        "pool_timeout": 5,
        "pool_recycle": 1800,
    })
    if url.startswith("postgresql"):
        options["connect_args"] = {
            "connect_timeout": 5,
            # UTC: timestamps come back as aware UTC datetimes (app.models.UTCDateTime).
            "options": f"-c statement_timeout={statement_timeout_ms} -c TimeZone=UTC",
        }
    return options


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers and a writer of several workers proceed together; busy_timeout
    # makes a second writer wait instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# A connection used this recently is trusted without a ping; one idle longer is pinged
# first. If the server went away within this window, the request gets a 503 (the pool
# then discards every connection of that age) instead of a round trip per request.
PING_IF_IDLE_SECONDS = 1.0


def _ping_idle_connections(engine: Engine) -> None:
    """pool_pre_ping for connections idle longer than PING_IF_IDLE_SECONDS: a ping that
    fails makes the pool replace the connection (DisconnectionError), as pre-ping does."""

    def mark_used(_dbapi_connection: Any, record: Any, *_args: Any) -> None:
        record.info["taskgate.used"] = time.monotonic()

    def ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("taskgate.used", 0.0) < PING_IF_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # noqa: BLE001 - any failure: hand out a new connection
            raise exc.DisconnectionError(f"idle connection failed its ping: {type(error).__name__}") from error
        record.info["taskgate.used"] = time.monotonic()

    event.listen(engine, "connect", mark_used)
    event.listen(engine, "checkin", mark_used)
    event.listen(engine, "checkout", ping_if_idle)


def build_engine(url: str, pool_size: int = 10, statement_timeout_ms: int = 5000, autocommit: bool = False) -> Engine:
    engine = create_engine(url, **engine_options(url, pool_size, statement_timeout_ms, autocommit))
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        _ping_idle_connections(engine)
    return engine


@dataclass(frozen=True)
class DirectSQL:
    sql: str
    literals: dict[str, Any]  # the values of the statement's own literals (e.g. a CASE's)
    processors: dict[str, Callable[[Any], Any]]  # the parameters' type conversions (e.g. UTCDateTime)


@lru_cache(maxsize=512)
def _direct_sql(statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> DirectSQL | None:
    """A statement that returns rows (a SELECT, or a write with RETURNING) compiled once for
    the parameter names `keys`; None if any returned column needs result processing, which
    only a Core execution applies."""
    if getattr(statement, "is_select", False):
        columns = list(statement.selected_columns)
    else:
        columns = [column["expr"] for column in getattr(statement, "returning_column_descriptions", ())]
    if not columns or any(column.type.result_processor(dialect, None) is not None for column in columns):
        return None
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    processors = {name: processor for name, bind in compiled.binds.items()
                  if (processor := bind.type.bind_processor(dialect)) is not None}
    literals = {k: v for k, v in compiled.params.items() if v is not None and k not in keys}
    return DirectSQL(compiled.string, literals, processors)


class Statements:
    """Single statements in autocommit mode, each on a connection checked out for it alone."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        self.direct = dialect.name == "postgresql" and dialect.driver == "psycopg"

    def rows(self, statement: Executable, params: dict[str, Any]) -> Sequence[Any]:
        """The rows of a Core `statement` built once (its object is a cache key).

        On PostgreSQL a statement whose returned columns need no result processing runs
        straight on the psycopg cursor, compiled once (the parameters converted by their
        types, as SQLAlchemy would) and prepared by the server: the hot routes skip
        SQLAlchemy's per-execution and per-row work. Failures surface as SQLAlchemy's own
        exceptions, and a lost connection is invalidated, as a Core execution would do.
        Anything else is a plain Core execution."""
        direct = _direct_sql(statement, self.engine.dialect, tuple(sorted(params))) if self.direct else None
        if direct is None:
            with self.engine.connect() as connection:
                return connection.execute(statement, params).all()
        sql = direct.sql
        params = {**direct.literals, **params}
        for name, process in direct.processors.items():
            if name in params:
                params[name] = process(params[name])
        dialect = self.engine.dialect
        connection = cursor = None
        try:
            connection = self.engine.raw_connection()  # a pool checkout: an idle one is pinged first
            cursor = connection.driver_connection.cursor()
            cursor.execute(sql, params, prepare=True)
            return cursor.fetchall()
        except dialect.loaded_dbapi.Error as error:
            # Wrapped as a Core execution would do it (OperationalError, e.g. the database
            # refused a new connection: a 503), invalidating a connection that was lost.
            lost = connection is not None and dialect.is_disconnect(error, connection, cursor)
            if lost:
                connection.invalidate(error)
            raise exc.DBAPIError.instance(sql, params, error, dialect.loaded_dbapi.Error,
                                          connection_invalidated=lost, dialect=dialect) from error
        finally:
            if cursor is not None:
                cursor.close()
            if connection is not None:
                connection.close()


class Database:
    def init_app(self, app: Flask) -> None:
        settings = app.extensions["taskgate.settings"]
        engine = build_engine(
            settings.database_url, settings.db_pool_size, settings.db_statement_timeout_ms
        )
        app.extensions[EXTENSION_KEY] = sessionmaker(engine, expire_on_commit=False)
        app.extensions[AUTOCOMMIT_KEY] = Statements(build_engine(
            settings.database_url, settings.db_pool_size, settings.db_statement_timeout_ms, autocommit=True))
        app.teardown_appcontext(self._close_session)

    @property
    def engine(self) -> Engine:
        return current_app.extensions[EXTENSION_KEY].kw["bind"]

    @property
    def session(self) -> Session:
        """The request's transaction: the route commits it once."""
        session = g.get("_db_session")
        if session is None:
            session = g._db_session = current_app.extensions[EXTENSION_KEY]()
        return session

    def rows(self, statement: Executable, params: dict[str, Any]) -> Sequence[Any]:
        """One statement that commits by itself (see Statements.rows); never for two that
        must agree, nor inside the request's transaction."""
        return current_app.extensions[AUTOCOMMIT_KEY].rows(statement, params)

    @staticmethod
    def dispose(app: Flask) -> None:
        """Close every pooled connection of `app`'s two pools (tests; a process that is done)."""
        app.extensions[EXTENSION_KEY].kw["bind"].dispose()
        app.extensions[AUTOCOMMIT_KEY].engine.dispose()

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    @staticmethod
    def _close_session(_exc: BaseException | None) -> None:
        # Anything not committed by the route is rolled back here.
        session = g.pop("_db_session", None)
        if session is not None:
            session.close()
