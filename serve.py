"""Start the service with the server SERVER names: gunicorn (the default) or granian.

    python serve.py                  # gunicorn -c gunicorn.conf.py wsgi:app
    SERVER=granian python serve.py   # granian, WSGI, with the same settings

Both read their settings through app.config.load_server_settings (docs/DEPLOY.md lists them);
a bad one is one line and exit 78 before anything starts, as is a bad app setting or a Redis
that evicts keys in production. Logs are JSON lines in the app's format (app.logs); /metrics
adds up every worker's figures (prometheus_client's multiprocess mode) under both.

At its top this module imports only the standard library, gunicorn's loader, app.config and
app.logs (which load neither the app nor prometheus_client): the app is imported only once PROMETHEUS_MULTIPROC_DIR
is set, and granian only when it is the server. gunicorn.conf.py imports this module too.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from gunicorn.util import load_class

from app.config import SERVERS, ConfigError, ServerSettings, Settings, load_server_settings
from app.logs import JsonFormatter

__all__ = ["SERVERS", "main"]
GUNICORN = ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
# Set to serve.py's pid once its preflight passed, for gunicorn.conf.py, read in the same process
# after the exec; any other value (a bare gunicorn, a stale variable) is checked again.
PREFLIGHT_PASSED = "TASKGATE_PREFLIGHT_PASSED"
CONFIG_ERROR = 78  # EX_CONFIG, as wsgi.py exits on a configuration error


def configuration_error(message: str) -> NoReturn:
    print(f"taskgate: configuration error: {message}", file=sys.stderr)
    sys.exit(CONFIG_ERROR)


def ensure_metrics_directory() -> None:
    """PROMETHEUS_MULTIPROC_DIR set (a new temporary directory unless given), before anything
    imports prometheus_client, which reads it when imported."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="taskgate-metrics-")


def prepare_metrics_directory() -> None:
    """Emptied at a server's start: files of an earlier run would be added to this one's figures."""
    ensure_metrics_directory()
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, exist_ok=True)


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft open-file limit towards `wanted` (at most the hard limit): many runtimes
    start processes at 1024, which a worker holding its connections would hit (EMFILE). Raised
    before the workers start, so they inherit it. Returns the soft limit (both servers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def listen_address(bind: tuple[str, ...]) -> dict[str, object]:
    """Where granian listens: the first address gunicorn would bind."""
    first = bind[0]
    if first.startswith("unix:"):
        return {"uds": Path(first[len("unix:"):])}  # granian takes a Path
    host, _, port = first.rpartition(":")
    return {"address": host.strip("[]") or "0.0.0.0", "port": int(port)}  # noqa: S104 - a server's bind


@dataclass(frozen=True)
class Start:
    """The settings a start was checked against: the server's and the app's."""

    server: ServerSettings
    app: Settings


def preflight() -> Start:
    """The servers' and the app's settings, and what a production start refuses (an evicting
    Redis): one line and exit 78, not a worker failing to boot again and again."""
    prepare_metrics_directory()  # before anything imports prometheus_client (granian forks its workers)
    from app.factory import check_configuration  # only now: it loads prometheus_client (above)

    try:
        server = load_server_settings(os.environ)
        check_worker_class(server)
        return Start(server, check_configuration())
    except ConfigError as error:
        configuration_error(str(error))


def check_worker_class(server: ServerSettings) -> None:
    """gunicorn's worker class, loaded as gunicorn will load it: one that cannot be is one line
    here, not gunicorn's traceback."""
    if server.server != "gunicorn":
        return
    try:
        load_class(server.worker_class, default="gthread", section="gunicorn.workers")
    except (RuntimeError, ImportError):
        raise ConfigError(f"GUNICORN_WORKER_CLASS: gunicorn cannot load the worker class {server.worker_class!r} "
                          "(gthread, the default, and sync always can)") from None


def warn_underscore_headers() -> None:
    """granian hands `X_Forwarded_For` and `X-Forwarded-For` to the app under one WSGI name (the
    last wins) and has no setting to drop the first: behind PROXY_HOPS, only the proxy in front
    can (the shipped nginx does: underscores_in_headers off)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("taskgate.serve")
    log.addHandler(handler)
    log.warning("PROXY_HOPS is set under granian, which cannot tell X_Forwarded_For from X-Forwarded-For: "
                "the proxy in front must drop header names with underscores (nginx does by default; "
                "see docs/DEPLOY.md), or a client can choose the address its rate limits count")


def serve_granian(start: Start) -> None:
    settings = start.server
    raise_open_files_limit(settings.granian_backpressure + 1024)  # its connections, plus database, Redis, files
    os.environ.setdefault("DB_POOL_SIZE", str(settings.granian_threads))  # one connection per app thread

    from granian import Granian  # only when granian is the server
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    json_logs = {
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {"_granian": {"handlers": ["json"], "level": start.app.log_level, "propagate": False},
                    "granian.access": {"handlers": ["json"], "level": "INFO", "propagate": False}},
    }
    if start.app.proxy_hops > 0:
        warn_underscore_headers()
    Granian(
        "wsgi:app",
        interface=Interfaces.WSGI,
        workers=settings.granian_workers,
        blocking_threads=settings.granian_threads,
        backlog=settings.backlog,
        backpressure=settings.granian_backpressure,
        http1_settings=HTTP1Settings(header_read_timeout=settings.granian_header_timeout * 1000, keep_alive=True),
        log_level=start.app.log_level.lower(),
        log_dictconfig=json_logs,
        log_access=False,  # the app writes its own access line (app.observability)
        respawn_failed_workers=True,
        workers_kill_timeout=settings.graceful_timeout,
        **listen_address(settings.bind),
    ).serve()


def main() -> None:
    start = preflight()
    if start.server.server == "gunicorn":
        os.environ[PREFLIGHT_PASSED] = str(os.getpid())  # gunicorn keeps this pid: it need not check again
        beside = os.path.join(os.path.dirname(sys.executable), GUNICORN[0])  # the venv's, when run from one
        # exec, not a child: gunicorn becomes the process the container's init signals
        if os.access(beside, os.X_OK):
            os.execv(beside, GUNICORN)  # noqa: S606 - a fixed argument list, no shell wanted
        os.execvp(GUNICORN[0], GUNICORN)  # noqa: S606
    serve_granian(start)


if __name__ == "__main__":
    main()
