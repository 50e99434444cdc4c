"""The database: one engine per app, one session per request, committed once by the route.

A route that runs exactly one statement (a read, or an atomic single-statement write)
may use `db.autocommit_session` instead: the statement commits on its own, which spares
the BEGIN and COMMIT/ROLLBACK round trips a transaction costs on the hot routes.

Created unbound (`Database()` in extensions.py) and bound with `init_app`; per-app state
lives in `app.extensions` so several apps (tests) never share an engine.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

EXTENSION_KEY = "taskgate.db"
AUTOCOMMIT_KEY = "taskgate.db.autocommit"


def engine_options(url: str, pool_size: int, statement_timeout_ms: int) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Threads of one gunicorn worker share the pool; SQLite objects are safe to
        # hand between threads as long as one thread uses a connection at a time.
        return {"connect_args": {"check_same_thread": False, "timeout": 5}}
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_size": pool_size,
        "max_overflow": 2,  # the pool matches the worker's threads; a little slack for the CLI
        "pool_timeout": 5,
        "pool_recycle": 1800,
    }
    if url.startswith("postgresql"):
        options["connect_args"] = {
            "connect_timeout": 5,
            "options": f"-c statement_timeout={statement_timeout_ms}",
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


def build_engine(url: str, pool_size: int = 10, statement_timeout_ms: int = 5000) -> Engine:
    engine = create_engine(url, **engine_options(url, pool_size, statement_timeout_ms))
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


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
        session = g.get("_db_session")
        if session is None:
            session = g._db_session = current_app.extensions[EXTENSION_KEY]()
        return session

    @property
    def autocommit_session(self) -> Session:
        """For one statement that commits by itself; never for two that must agree."""
        session = g.get("_db_autocommit_session")
        if session is None:
            session = g._db_autocommit_session = current_app.extensions[AUTOCOMMIT_KEY]()
        return session

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    @staticmethod
    def _close_session(_exc: BaseException | None) -> None:
        # Anything not committed by the route is rolled back here.
        for name in ("_db_session", "_db_autocommit_session"):
            session = g.pop(name, None)
            if session is not None:
                session.close()
