"""Start the service with the server SERVER names: gunicorn (the default) or granian.

    python serve.py                  # gunicorn -c gunicorn.conf.py wsgi:app
    SERVER=granian python serve.py   # granian, WSGI, with the same settings

gunicorn is the documented server (gunicorn.conf.py holds its settings). granian is the
supported alternative: its HTTP side is Rust, so each request costs the worker less CPU
(bench/RESULTS.md). It reads the same variables where they mean the same thing:

  PORT, GUNICORN_BIND        the address (the first one; unix:/path for a socket)
  GUNICORN_WORKERS, WEB_CONCURRENCY
                             worker processes (GRANIAN_WORKERS wins; default: one per CPU, as
                             granian's I/O runs outside the GIL; gunicorn's is two per CPU)
  GUNICORN_THREADS           threads per worker running the app (GRANIAN_BLOCKING_THREADS wins; 2)
  GUNICORN_BACKLOG           listen(2) backlog (2048)
  GUNICORN_GRACEFUL_TIMEOUT  seconds a stopping worker may finish its requests (25)
  GRANIAN_BACKPRESSURE       connections a worker takes on at once (4096). granian counts
                             connections, keep-alive ones included, not requests: past it a
                             worker stops accepting, and new clients wait unanswered in the
                             listen queue. The threads running the app bound the concurrency.
  GRANIAN_HEADER_TIMEOUT     seconds a client may take to send its headers (10: slow clients
                             cannot hold a worker's connections for ever)

Logs are JSON lines in the app's format (app.logs); /metrics adds up every worker's figures
(prometheus_client's multiprocess mode, as under gunicorn).
"""

from __future__ import annotations

import logging
import math
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

SERVERS = ("gunicorn", "granian")  # what SERVER may name; the first is the default
GUNICORN = ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
CONFIG_ERROR = 78  # EX_CONFIG, as wsgi.py exits on a configuration error


def configuration_error(message: str) -> NoReturn:
    print(f"taskgate: configuration error: {message}", file=sys.stderr)
    sys.exit(CONFIG_ERROR)


def _int(name: str, default: int, *fallbacks: str) -> int:
    for variable in (name, *fallbacks):
        raw = os.environ.get(variable, "").strip()
        if raw:
            try:
                value = int(raw)
            except ValueError:
                configuration_error(f"{variable} must be a whole number, got {raw!r}")
            if value < 1:
                configuration_error(f"{variable} must be at least 1, got {value}")
            return value
    return default


def listen_address() -> dict[str, object]:
    """Where granian listens: the first address of GUNICORN_BIND, else 0.0.0.0:$PORT."""
    bind = os.environ.get("GUNICORN_BIND", "").split(",")[0].strip()
    if bind.startswith("unix:"):
        return {"uds": bind[len("unix:"):]}
    if bind:
        host, _, port = bind.rpartition(":")
        if not port.isdigit():
            configuration_error(f"GUNICORN_BIND must be host:port or unix:PATH, got {bind!r}")
        return {"address": host.strip("[]") or "0.0.0.0", "port": int(port)}  # noqa: S104 - a server's bind
    return {"address": "0.0.0.0", "port": _int("PORT", 8000)}  # noqa: S104


def prepare_metrics_directory() -> None:
    """prometheus_client's multiprocess mode, set before anything imports it (both servers)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:  # stale files from an earlier run would be added to this one's figures
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="taskgate-metrics-")


def cpus_available(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota (both servers'
    default worker count). os.cpu_count() alone reports every CPU of the host, which inside a
    container limited with --cpus or a Kubernetes CPU limit would start far too many workers,
    each with its own database pool."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = None
    try:  # cgroup v2
        limit, period = (cgroup / "cpu.max").read_text(encoding="ascii").split()[:2]
        if limit != "max":
            quota = int(limit) / int(period)
    except (OSError, ValueError):
        try:  # cgroup v1
            limit = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text(encoding="ascii"))
            period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text(encoding="ascii"))
            if limit > 0 and period > 0:
                quota = limit / period
        except (OSError, ValueError):
            pass
    if quota:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def granian_settings() -> dict[str, int]:
    """granian's sizes, from the environment (also what bench/run.py reports)."""
    return {
        "workers": _int("GRANIAN_WORKERS", cpus_available(), "GUNICORN_WORKERS", "WEB_CONCURRENCY"),
        "threads": _int("GRANIAN_BLOCKING_THREADS", 2, "GUNICORN_THREADS"),
        "backlog": _int("GUNICORN_BACKLOG", 2048),
        "backpressure": _int("GRANIAN_BACKPRESSURE", 4096),
        "header_timeout": _int("GRANIAN_HEADER_TIMEOUT", 10),
        "graceful_timeout": _int("GUNICORN_GRACEFUL_TIMEOUT", 25),
    }


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft open-file limit towards `wanted` (at most the hard limit): many runtimes
    start processes at 1024, which a worker holding its connections (GRANIAN_BACKPRESSURE,
    gunicorn's worker_connections) would hit (EMFILE). Raised before the workers start, so
    they inherit it. Returns the soft limit (both servers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def preflight() -> None:
    """The app's settings and what a production start refuses (an evicting Redis), before any
    server starts: one line and exit 78, not a worker failing to boot again and again."""
    prepare_metrics_directory()  # before anything imports prometheus_client (granian forks its workers)
    from app import ConfigError, check_configuration

    try:
        check_configuration()
    except ConfigError as error:
        configuration_error(str(error))


def warn_underscore_headers() -> None:
    """granian hands `X_Forwarded_For` and `X-Forwarded-For` to the app under one WSGI name (the
    last wins) and has no setting to drop the first: behind PROXY_HOPS, only the proxy in front
    can (the shipped nginx does: underscores_in_headers off)."""
    from app.logs import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("taskgate.serve")
    log.addHandler(handler)
    log.warning("PROXY_HOPS is set under granian, which cannot tell X_Forwarded_For from X-Forwarded-For: "
                "the proxy in front must drop header names with underscores (nginx does by default; "
                "see docs/DEPLOY.md), or a client can choose the address its rate limits count")


def serve_granian() -> None:
    sizes, address = granian_settings(), listen_address()  # a bad setting stops here, before anything starts
    raise_open_files_limit(sizes["backpressure"] + 1024)  # its connections, plus database, Redis and files
    os.environ.setdefault("DB_POOL_SIZE", str(sizes["threads"]))  # one connection per thread running the app

    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    from app.logs import JsonFormatter  # after PROMETHEUS_MULTIPROC_DIR: the app imports prometheus_client

    level = (os.environ.get("LOG_LEVEL", "").strip() or "info").lower()
    json_logs = {
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {"_granian": {"handlers": ["json"], "level": level.upper(), "propagate": False},
                    "granian.access": {"handlers": ["json"], "level": "INFO", "propagate": False}},
    }
    if os.environ.get("PROXY_HOPS", "").strip() not in ("", "0"):  # checked by preflight()
        warn_underscore_headers()
    Granian(
        "wsgi:app",
        interface=Interfaces.WSGI,
        workers=sizes["workers"],
        blocking_threads=sizes["threads"],
        backlog=sizes["backlog"],
        backpressure=sizes["backpressure"],
        http1_settings=HTTP1Settings(header_read_timeout=sizes["header_timeout"] * 1000, keep_alive=True),
        log_level=level if level in ("critical", "error", "warning", "info", "debug") else "info",
        log_dictconfig=json_logs,
        log_access=False,  # the app writes its own access line (app.observability)
        respawn_failed_workers=True,
        workers_kill_timeout=sizes["graceful_timeout"],
        **address,
    ).serve()


def main() -> None:
    server = os.environ.get("SERVER", "").strip().lower() or SERVERS[0]
    if server not in SERVERS:
        configuration_error(f"SERVER must be {' or '.join(SERVERS)}, got {server!r}")
    if server == "granian":
        granian_settings()  # its own settings first: a bad one stops here
        listen_address()
    preflight()
    if server == "gunicorn":
        beside = os.path.join(os.path.dirname(sys.executable), GUNICORN[0])  # the venv's, when run from one
        # exec, not a child: gunicorn becomes the process the container's init signals
        if os.access(beside, os.X_OK):
            os.execv(beside, GUNICORN)  # noqa: S606 - a fixed argument list, no shell wanted
        os.execvp(GUNICORN[0], GUNICORN)  # noqa: S606
    serve_granian()


if __name__ == "__main__":
    main()
