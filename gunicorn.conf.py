"""Gunicorn configuration for taskgate.

Run with:  gunicorn -c gunicorn.conf.py wsgi:app

A bad setting stops that start with one line and exit 78 (EX_CONFIG), before any worker, as
`python serve.py` does: this file runs serve.py's check first.

This file never imports the application, only the reader of its settings (app.config) and
its log format (app.logs): the application would load prometheus_client in the master before
PROMETHEUS_MULTIPROC_DIR is set, and metrics would silently stop adding up across workers.
gunicorn's own log lines are JSON in the app's format, so stderr has one format. Every setting
comes from an environment variable, read by app.config.load_server_settings; their names and
defaults: docs/DEPLOY.md, "Server settings" (GUNICORN_CMD_ARGS, if set, is applied by gunicorn
after this file and wins over everything here).
"""

import logging.handlers
import os
import resource
import socket
import sys
import traceback

from gunicorn.glogging import Logger
from gunicorn.util import parse_address

# serve.py is beside this file (gunicorn puts its directory on sys.path before reading this
# file). app.config and app.logs load neither the app nor prometheus_client into the master.
from app.config import load_server_settings
from app.logs import JsonFormatter
from serve import (
    PREFLIGHT_PASSED,
    ensure_metrics_directory,
    preflight,
    prepare_metrics_directory,
    raise_open_files_limit,
)


def _refuse_a_bad_configuration() -> None:
    """serve.py's preflight (the servers' and the app's settings, an evicting Redis), for a
    gunicorn started bare: a bad setting is its one line and exit 78 here, before gunicorn logs
    or starts anything. Without it, each worker would print the line and exit 78, and the master
    would start it again, for ever. Checked in a child process, so that the master never imports
    the app (each worker imports it: `kill -HUP` loads new code) nor, before on_starting,
    prometheus_client."""
    ensure_metrics_directory()  # the master's, which the child's check then finds set
    child = os.fork()
    if child == 0:
        status = 1
        try:
            preflight()  # on a bad setting: one line on stderr and SystemExit(78)
            status = 0
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:  # noqa: BLE001 - shown as serve.py would show it
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    if status != 0:
        sys.exit(status if status > 0 else 1)


# Only when gunicorn reads this file (as the module __config__), which it does in the master
# before anything else; a reader of the settings alone (runpy, in the tests) gets them unchecked,
# and so does the gunicorn serve.py became by exec right after its own check (its pid, once).
if __name__ == "__config__" and os.environ.pop(PREFLIGHT_PASSED, None) != str(os.getpid()):
    _refuse_a_bad_configuration()

_settings = load_server_settings(os.environ)

# --- Socket -----------------------------------------------------------------
bind = list(_settings.bind)
backlog = _settings.backlog
# One listening socket per worker (gunicorn binds them in each worker when reuse_port is
# set), and the kernel spreads new connections evenly across them. With one shared socket,
# whichever worker wakes first accepts, and keep-alive connections pile up on a few
# workers, which then queue while the others idle (bench/RESULTS.md has the figures). The
# price: connections still waiting in the accept queue of a worker that exits (HUP reload,
# crash, timeout) are reset, unless the kernel hands them to another worker
# (net.ipv4.tcp_migrate_req=1, Linux 5.14+; docker-compose.yml sets it). (A unix socket
# path, port 0 or systemd's socket activation: one shared socket, unless
# GUNICORN_REUSE_PORT=1 asks otherwise, which then fails the start; see on_starting.)
reuse_port = _settings.reuse_port

# --- Workers ----------------------------------------------------------------
# gthread: each worker runs `threads` request threads plus a poller that holds
# idle keep-alive connections, so concurrent *connections* are bounded by
# worker_connections, not by threads. A gthread worker that reaches
# worker_connections stops taking on connections (and its idle keep-alive
# sockets are no longer serviced), and nothing guarantees the kernel spreads
# connections evenly between workers, so one worker alone must be able to hold
# the 1000 concurrent connections the service has to sustain: hence 2000.
worker_class = _settings.worker_class
# Two per CPU, two threads each: one gthread worker is one GIL-bound process, and while
# its threads wait on PostgreSQL and Redis it cannot keep a core busy, so one per CPU is
# too few; past that, every extra process and thread is more switching between them on
# the same cores. The worker sweeps and full runs behind these defaults are in
# bench/RESULTS.md.
# WEB_CONCURRENCY is what hosting platforms (Heroku, Render, ...) set for the worker count.
workers = _settings.workers
threads = _settings.threads
worker_connections = _settings.worker_connections

keepalive = _settings.keepalive
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout

# Off by default: recycling a gthread worker stalls its share of the keep-alive
# connections for seconds and leaves the others on one worker, and memory stays flat
# (bench/RESULTS.md). Set it if a leak ever shows; the jitter then spreads restarts.
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests_jitter

# Not preloaded: every worker imports the app and opens its own database and
# Redis connections after fork(). Sockets/pools created in the master and
# inherited by forked workers would be shared between processes and corrupt
# each other's protocol state. It also lets `kill -HUP` reload new code.
preload_app = False

# Worker heartbeat files: on tmpfs so a slow/overlay disk can't stall workers
# into being killed by `timeout`.
if _settings.worker_tmp_dir:
    worker_tmp_dir = _settings.worker_tmp_dir

# gunicorn >= 25.1 opens a control socket (for `gunicornc`) under $HOME by
# default; the container user has no writable home, so it is off unless a
# path is given.
if _settings.control_socket:
    control_socket = _settings.control_socket
else:
    control_socket_disable = True

# --- Logging ----------------------------------------------------------------
# Off by default: the application writes its own structured access log (one
# JSON line per request, with request id and user), so gunicorn's line would
# duplicate it. Set GUNICORN_ACCESS_LOG=- to get gunicorn's log on stdout.
accesslog = _settings.access_log
errorlog = _settings.error_log
loglevel = _settings.log_level


class JsonLogger(Logger):
    """gunicorn's logger with its handlers (stream or file, as errorlog/accesslog say) writing JSON.

    Not logconfig_dict: with any logconfig set, gunicorn builds the access-log fields of every
    request even when no access log is written, which is CPU spent on every request for nothing."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if not isinstance(handler, logging.handlers.SysLogHandler):  # syslog keeps its own framing
                    handler.setFormatter(JsonFormatter())


logger_class = JsonLogger

# --- Proxies ----------------------------------------------------------------
# Only trust X-Forwarded-For/-Proto from these addresses. Behind a reverse
# proxy or load balancer on another host/container, set FORWARDED_ALLOW_IPS to
# its address(es). secure_scheme_headers keeps gunicorn's default
# (X-Forwarded-Proto: https, X-Forwarded-Ssl: on, X-Forwarded-Protocol: ssl).
forwarded_allow_ips = _settings.forwarded_allow_ips
proxy_allow_ips = _settings.proxy_allow_ips


# --- Hooks ------------------------------------------------------------------
def _raise_nofile_limit(server):
    """Raise the open-file soft limit so worker_connections can be reached.

    Many container runtimes start processes with a soft RLIMIT_NOFILE of 1024,
    which a worker holding up to 2000 connections would hit (EMFILE). Raised
    in the master, before fork, so every worker inherits it.
    """
    cfg = server.cfg
    # Per process: a worker's client sockets plus headroom for DB/Redis
    # sockets, log files and imports.
    wanted = _settings.nofile
    try:
        soft = raise_open_files_limit(wanted)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            server.log.warning(
                "open-file limit %s is below the %s needed for %s worker "
                "connections; raise the container's nofile ulimit",
                soft,
                wanted,
                cfg.worker_connections,
            )
    except (OSError, ValueError) as exc:
        server.log.warning("could not raise the open-file limit: %s", exc)


def _check_reuse_port(server):
    """A socket per worker: fail at start, as a shared socket would, when an address is taken
    (workers binding it would fail and be respawned in a loop), and say so when a worker's
    exit would reset its queued connections."""
    if not server.cfg.reuse_port:
        return
    addresses = [(address, parse_address(address)) for address in server.cfg.bind]
    # A unix socket path or port 0 cannot be shared this way, and systemd's socket
    # activation hands over one socket: unless asked for explicitly, fall back to it.
    unsuitable = [address for address, parsed in addresses if not isinstance(parsed, tuple) or parsed[1] == 0]
    if unsuitable or os.environ.get("LISTEN_FDS"):
        if _settings.reuse_port_asked:
            raise RuntimeError(f"GUNICORN_REUSE_PORT=1 needs TCP addresses with a port and no socket "
                               f"activation ({', '.join(unsuitable) or 'LISTEN_FDS is set'}); "
                               "set GUNICORN_REUSE_PORT=0")
        server.cfg.set("reuse_port", False)
        return
    for address, (host, port) in addresses:
        # Without SO_REUSEPORT: this bind fails if anything listens there, another copy of
        # this server included, which the workers' sockets would otherwise silently join.
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as error:
                raise RuntimeError(f"cannot listen on {address}: {error.strerror}") from None
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req", encoding="ascii") as fh:
            migrate = fh.read().strip()
    except OSError:
        migrate = None  # not Linux, or a kernel before 5.14
    if migrate != "1":
        server.log.warning(
            "each worker has its own listening socket (GUNICORN_REUSE_PORT, on by default) and "
            "net.ipv4.tcp_migrate_req is not 1: connections waiting in the accept queue of "
            "a worker that exits are reset; set the sysctl (docker run --sysctl "
            "net.ipv4.tcp_migrate_req=1) or GUNICORN_REUSE_PORT=0"
        )


# --- Metrics across workers ----------------------------------------------------
# prometheus_client's multiprocess mode: every worker writes its metrics to files in
# PROMETHEUS_MULTIPROC_DIR and /metrics adds them up, so a scrape sees the whole server,
# whichever worker answers it. Set before any worker imports the app.
def on_starting(server):
    _raise_nofile_limit(server)
    _check_reuse_port(server)
    prepare_metrics_directory()


def when_ready(server):
    if server.cfg.reuse_port:  # gunicorn's own "Listening at:" is empty: the master binds nothing
        server.log.info("workers listen on %s, one socket each", ", ".join(server.cfg.bind))


def child_exit(server, worker):
    # Here, not at the top: workers fork from the master, and a prometheus_client it imported
    # before on_starting set PROMETHEUS_MULTIPROC_DIR would count in-process in every worker.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
