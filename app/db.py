"""The database: one engine per app, one session per request, committed once by the route.

A route that runs exactly one statement (a read, or an atomic single-statement write)
may use `db.autocommit_session` instead: the statement commits on its own, which spares
the BEGIN and COMMIT/ROLLBACK round trips a transaction costs on the hot routes.

Created unbound (`Database()` in extensions.py) and bound with `init_app`; per-app state
lives in `app.extensions` so several apps (tests) never share an engine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable

EXTENSION_KEY = "taskgate.db"
AUTOCOMMIT_KEY = "taskgate.db.autocommit"


def engine_options(url: str, pool_size: int, statement_timeout_ms: int) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Threads of one gunicorn worker share the pool; SQLite objects are safe to
        # hand between threads as long as one thread uses a connection at a time.
        return {"connect_args": {"check_same_thread": False, "timeout": 5}}
    options: dict[str, Any] = {
        # Not pool_pre_ping (a round trip on every checkout): _ping_idle_connections()
        # pings only connections that sat idle, which is where dead ones hide.
        "pool_size": pool_size,
        "max_overflow": 2,  # the pool matches the worker's threads; a little slack for the CLI
        "pool_timeout": 5,
        "pool_recycle": 1800,
    }
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


def build_engine(url: str, pool_size: int = 10, statement_timeout_ms: int = 5000) -> Engine:
    engine = create_engine(url, **engine_options(url, pool_size, statement_timeout_ms))
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        _ping_idle_connections(engine)
    return engine


@lru_cache(maxsize=512)
def _compiled_sql(statement: Executable, dialect: Dialect) -> tuple[str, dict[str, Any]]:
    """The SQL, and the values of the statement's own literals (e.g. a CASE's)."""
    compiled = statement.compile(dialect=dialect)
    return compiled.string, {k: v for k, v in compiled.params.items() if v is not None}


def fetch_all(session: Session, statement: Executable, params: dict[str, Any]) -> Sequence[Any]:
    """The rows of a Core `statement` built once (its object is the cache key) whose columns
    need no result processing on PostgreSQL. There, SQLAlchemy compiles it once and it runs
    straight on the psycopg cursor (prepared by the server): the hot list route skips
    SQLAlchemy's per-execution and per-row work. Failures surface as SQLAlchemy's own
    exceptions, and a lost connection is invalidated, as a Core execution would do.
    Other databases get a plain Core execution."""
    connection = session.connection()
    dialect = connection.dialect
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        return connection.execute(statement, params).all()
    sql, literals = _compiled_sql(statement, dialect)
    params = {**literals, **params}
    cursor = connection.connection.driver_connection.cursor()
    try:
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchall()
    except dialect.loaded_dbapi.Error as error:
        lost = dialect.is_disconnect(error, connection.connection, cursor)
        if lost:
            connection.invalidate(error)
        raise exc.DBAPIError.instance(sql, params, error, dialect.loaded_dbapi.Error,
                                      connection_invalidated=lost, dialect=dialect) from error
    finally:
        cursor.close()


class Database:
    def init_app(self, app: Flask) -> None:
        settings = app.extensions["taskgate.settings"]
        engine = build_engine(
            settings.database_url, settings.db_pool_size, settings.db_statement_timeout_ms
        )
        app.extensions[EXTENSION_KEY] = sessionmaker(engine, expire_on_commit=False)
        app.extensions[AUTOCOMMIT_KEY] = sessionmaker(
            engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
        app.teardown_appcontext(self._close_session)

    @property
    def engine(self) -> Engine:
        return current_app.extensions[EXTENSION_KEY].kw["bind"]

    @property
    def session(self) -> Session:
        """The request's transaction: the route commits it once."""
        return self._request_session(EXTENSION_KEY)

    @property
    def autocommit_session(self) -> Session:
        """For one statement that commits by itself; never for two that must agree."""
        return self._request_session(AUTOCOMMIT_KEY)

    @staticmethod
    def _request_session(factory_key: str) -> Session:
        sessions = g.setdefault("_db_sessions", {})
        session = sessions.get(factory_key)
        if session is None:
            session = sessions[factory_key] = current_app.extensions[factory_key]()
        return session

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    @staticmethod
    def _close_session(_exc: BaseException | None) -> None:
        # Anything not committed by the route is rolled back here.
        for session in g.pop("_db_sessions", {}).values():
            session.close()
