"""The database: one engine, one pool, every operation one statement in the driver's autocommit
mode (ARCHITECTURE.md, "The data model")."""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Delete, Select, Update, create_engine, event, exc, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.sql import Executable

from app.config import ConfigError, Settings

# A connection used this recently is trusted without a ping; one idle longer is pinged
# first. If the server went away within this window, the request gets a 503 (the pool
# then discards every connection of that age) instead of a round trip per request.
PING_IF_IDLE_SECONDS = 1.0
HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")  # or an IP address; libpq takes several, comma-separated


def engine_options(url: str, pool_size: int, statement_timeout_ms: int) -> dict[str, Any]:
    # Autocommit: a connection never returns mid-transaction, so the pool's rollback on
    # return has nothing to do.
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None}
    if url.startswith("sqlite"):
        # Threads of one worker share the pool; SQLite objects are safe to hand between
        # threads as long as one thread uses a connection at a time.
        return {**options, "connect_args": {"check_same_thread": False, "timeout": 5}}
    options.update({
        # Not pool_pre_ping (a round trip on every checkout): ping_idle_connections() pings
        # only connections that sat idle, which is where dead ones hide.
        "pool_size": pool_size,
        "max_overflow": 2,  # a little slack for the CLI and readiness probes
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
    # WAL lets readers and a writer of several workers proceed together; busy_timeout makes
    # a second writer wait instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def ping_idle_connections(engine: Engine) -> None:
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
    """The engine of DATABASE_URL (nothing connects yet); a URL SQLAlchemy cannot read, or whose
    driver is not installed, is a ConfigError that never quotes the URL (it may hold a password)."""
    try:
        engine = create_engine(url, **engine_options(url, pool_size, statement_timeout_ms))
    except ImportError:
        raise ConfigError("DATABASE_URL names a driver that is not installed (postgresql+psycopg is)") from None
    except (exc.ArgumentError, ValueError):
        raise ConfigError("DATABASE_URL is not a database URL SQLAlchemy can read") from None
    check_address(engine.url)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        ping_idle_connections(engine)
    return engine


def check_address(url: URL) -> None:
    """A host that no resolver could take (`postgresql://[`) or a port out of range: refused at
    start rather than a 503 on every request."""
    hosts = url.host.split(",") if url.host else []
    if not all(map(_is_host, hosts)) or (url.port is not None and not 0 < url.port <= 65535):
        raise ConfigError("DATABASE_URL must name host names or IP addresses, and a port from 1 to 65535")


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return HOST_NAME.fullmatch(host) is not None
    return True


@dataclass(frozen=True)
class DriverStatement:
    """A statement compiled once for the driver: its SQL, the values of its literal parameters,
    and the parameters whose values a type converts before they are sent."""

    sql: str
    defaults: dict[str, Any]
    converters: tuple[tuple[str, Callable[[Any], Any]], ...]

    def values(self, params: dict[str, Any]) -> dict[str, Any]:
        values = {**self.defaults, **params}
        for name, convert in self.converters:
            if name in values:
                values[name] = convert(values[name])
        return values


def driver_statement(statement: Executable, dialect: Any) -> DriverStatement | None:
    """A SELECT, UPDATE or DELETE whose rows need nothing from SQLAlchemy (no returned column
    has a result processor on this dialect), compiled once; None for anything else (an INSERT,
    whose SQL depends on the columns given, or text)."""
    if isinstance(statement, Select):
        types = [column.type for column in statement.selected_columns]
    elif isinstance(statement, (Update, Delete)):
        types = [column["type"] for column in statement.returning_column_descriptions]
    else:
        return None
    if any(kind.result_processor(dialect, None) is not None for kind in types):
        return None
    compiled = statement.compile(dialect=dialect)
    binds = compiled.binds.items()
    return DriverStatement(
        compiled.string,
        {name: bind.effective_value for name, bind in binds if not bind.required},
        tuple((name, convert) for name, bind in binds if (convert := bind.type.bind_processor(dialect))))


class Database:
    """`rows(statement)`: one statement, through SQLAlchemy Core, or, on PostgreSQL with psycopg,
    compiled once and run on the driver's own cursor (`Engine.raw_connection()`): the same pool,
    the same errors (wrapped as SQLAlchemy wraps them), a third of the time (bench/RESULTS.md)."""

    def __init__(self, settings: Settings) -> None:
        self.engine = build_engine(settings.database_url, settings.db_pool_size, settings.db_statement_timeout_ms)
        dialect = self.engine.dialect
        self._on_the_driver = dialect.name == "postgresql" and dialect.driver == "psycopg"
        self._compiled: WeakKeyDictionary[Executable, DriverStatement | None] = WeakKeyDictionary()

    def rows(self, statement: Executable, params: dict[str, Any] | None = None) -> Sequence[Any]:
        """Run one statement (it commits by itself) and return its rows, read by position (the
        order of the statement's columns): tuples on psycopg's cursor, SQLAlchemy rows elsewhere."""
        driver = self._driver_statement(statement) if self._on_the_driver else None
        if driver is None:
            with self.engine.connect() as connection:
                return connection.execute(statement, params or {}).all()
        return self._on_the_cursor(driver, driver.values(params or {}))

    def _driver_statement(self, statement: Executable) -> DriverStatement | None:
        try:
            return self._compiled[statement]
        except KeyError:
            found = self._compiled[statement] = driver_statement(statement, self.engine.dialect)
            return found
        except TypeError:  # not weakly referable (a text() made for one call)
            return None

    def _on_the_cursor(self, driver: DriverStatement, values: dict[str, Any]) -> list[tuple[Any, ...]]:
        dialect = self.engine.dialect
        raw, cursor = None, None
        try:
            raw = self.engine.raw_connection()
            cursor = raw.cursor()
            cursor.execute(driver.sql, values)
            return cursor.fetchall()
        except dialect.loaded_dbapi.Error as error:
            # As SQLAlchemy's own execution does: when the server dropped the connection, every
            # pooled connection of that age is replaced (engine.dispose(): the checked-in ones now,
            # those in use when they come back), and the error is wrapped (OperationalError...).
            gone = raw is not None and dialect.is_disconnect(error, raw.dbapi_connection, cursor)
            if gone:
                raw.invalidate(error)
                self.engine.dispose()
            raise exc.DBAPIError.instance(driver.sql, values, error, dialect.loaded_dbapi.Error,
                                          connection_invalidated=gone, dialect=dialect) from error
        finally:
            if cursor is not None:
                cursor.close()
            if raw is not None:
                raw.close()  # back to the pool

    def ping(self) -> None:
        self.rows(text("SELECT 1"))

    def reachable(self) -> str | None:
        """None when a new connection answers, else why not, in one line that never holds the
        URL or its password (the driver's own first line, with both blanked out)."""
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except exc.SQLAlchemyError as error:
            self.engine.dispose()  # a failed pool must not hand out what it kept
            cause = getattr(error, "orig", None) or error
            first = (str(cause).strip().splitlines() or [""])[0]
            for secret in filter(None, (str(self.engine.url.password or ""), self.engine.url.render_as_string(False))):
                first = first.replace(secret, "***")
            return f"{type(cause).__name__}: {first[:300]}"
        return None

    def dispose(self) -> None:
        """Close every pooled connection (tests; a process that is done)."""
        self.engine.dispose()
