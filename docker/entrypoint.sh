#!/bin/sh
# taskgate container entrypoint (POSIX sh; also runs outside Docker, e.g. in CI
# with a virtualenv's python/flask/gunicorn first on PATH).
#
#   1. wait until DATABASE_URL accepts a real connection (SQLAlchemy), bounded
#      by DB_WAIT_SECONDS (default 60; 0 = a single attempt; SKIP_DB_WAIT=1
#      skips the wait; skipped as well when DATABASE_URL is unset);
#   2. apply migrations: flask --app wsgi db upgrade (SKIP_MIGRATIONS=1 skips);
#   3. exec the command given (default: gunicorn -c gunicorn.conf.py wsgi:app),
#      so it replaces this shell and receives the container's signals.
#
# It works from the application root: APP_ROOT if set, otherwise the parent
# of this script's directory (/app in the image, the repo root in a checkout).
# DATABASE_URL is passed to Python through the environment only and never
# printed: it contains the database password.
set -eu

# One JSON object per line on stderr, in the app's format (time, level, logger, message),
# so the container's output has one format from the first line on.
json_string() {
    printf '%s' "$1" | tr '\000-\037' ' ' | sed 's/\\/\\\\/g; s/"/\\"/g'
}

log_at() {
    level=$1
    shift
    printf '{"time":"%s","level":"%s","logger":"taskgate.entrypoint","message":"%s"}\n' \
        "$(date -u '+%Y-%m-%dT%H:%M:%S+00:00')" "$level" "$(json_string "$*")" >&2
}

log() {
    log_at info "$@"
}

die() {
    log_at error "$*"
    exit 1
}

# PID 1 ignores signals it has no handler for: stop promptly on `docker stop`
# while still waiting for the database (the exec'd server handles its own).
trap 'log "interrupted"; exit 143' TERM
trap 'log "interrupted"; exit 130' INT

APP_ROOT=${APP_ROOT:-$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)}
cd "$APP_ROOT" || die "cannot enter application root $APP_ROOT"

if [ "$#" -eq 0 ]; then
    set -- gunicorn -c gunicorn.conf.py wsgi:app
fi

PYTHON=${PYTHON:-python}
DB_WAIT_SECONDS=${DB_WAIT_SECONDS:-60}
case $DB_WAIT_SECONDS in
    '' | *[!0-9]*) die "DB_WAIT_SECONDS must be a whole number of seconds, got '$DB_WAIT_SECONDS'" ;;
esac

# One connection attempt. Exit 0: connected; 1: failed, worth retrying;
# 3: misconfiguration (unparsable URL, missing driver) that retrying won't fix;
# 124: timed out. A watchdog thread ends the process if connect() hangs (e.g.
# packets dropped), so every attempt is bounded by DB_ATTEMPT_TIMEOUT seconds;
# SIGALRM (default action: terminate) backs it up should the GIL be held.
# Messages go through redact() so neither the URL nor the password is printed.
# shellcheck disable=SC2016  # Python source, not shell expansions.
DB_PROBE='
import os, signal, sys, threading
from urllib.parse import quote, quote_plus

attempt_timeout = int(os.environ.get("DB_ATTEMPT_TIMEOUT", "5"))
watchdog = threading.Timer(attempt_timeout, os._exit, (124,))
watchdog.daemon = True
watchdog.start()
signal.alarm(attempt_timeout + 2)
url = os.environ["DATABASE_URL"]

def redact(text):
    secrets = [url]
    try:
        from sqlalchemy.engine import make_url
        password = make_url(url).password
    except Exception:
        password = None
    if password:
        secrets += [password, quote(password, safe=""), quote_plus(password)]
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return " ".join(text.split())[:300]

try:
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
except ImportError as exc:
    print("SQLAlchemy is not importable: " + redact(str(exc)))
    sys.exit(3)

try:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
    print("invalid DATABASE_URL or missing driver: %s: %s"
          % (type(exc).__name__, redact(str(exc).splitlines()[0] if str(exc) else "")))
    sys.exit(3)

try:
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
except Exception as exc:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    print("%s: %s" % (type(orig).__name__, redact(lines[0] if lines else "")))
    sys.exit(1)
'

wait_for_database() {
    if [ "${SKIP_DB_WAIT:-0}" = 1 ]; then
        log "SKIP_DB_WAIT=1: not waiting for the database"
        return 0
    fi
    if [ -z "${DATABASE_URL:-}" ]; then
        log "DATABASE_URL is not set: not waiting for a database (the app uses its default)"
        return 0
    fi

    start=$(date +%s)
    deadline=$((start + DB_WAIT_SECONDS))
    attempt=0
    log "waiting up to ${DB_WAIT_SECONDS}s for the database"
    while :; do
        attempt=$((attempt + 1))
        now=$(date +%s)
        remaining=$((deadline - now))
        # Bound each attempt by the time left (at least 1 s, at most 5 s).
        limit=5
        if [ "$remaining" -lt "$limit" ]; then limit=$remaining; fi
        if [ "$limit" -lt 1 ]; then limit=1; fi

        status=0
        reason=$(DB_ATTEMPT_TIMEOUT=$limit "$PYTHON" -c "$DB_PROBE" 2>&1) || status=$?
        if [ "$status" -eq 0 ]; then
            log "database is reachable (attempt $attempt, $(($(date +%s) - start))s)"
            return 0
        fi
        if [ "$status" -eq 3 ]; then
            die "cannot check the database: $reason"
        fi
        if [ "$status" -eq 126 ] || [ "$status" -eq 127 ]; then
            die "cannot run '$PYTHON' to check the database: $reason"
        fi
        if [ "$status" -eq 124 ] || [ "$status" -gt 128 ]; then
            reason="connection attempt timed out after ${limit}s"
        fi
        # Keep to one line; never print DATABASE_URL.
        reason=$(printf '%s' "$reason" | tail -n 1 | cut -c 1-300)
        log "database not ready (attempt $attempt): ${reason:-unknown error}"

        now=$(date +%s)
        if [ "$now" -ge "$deadline" ]; then
            die "database still unreachable after ${DB_WAIT_SECONDS}s ($attempt attempts); giving up"
        fi
        pause=2
        if [ $((deadline - now)) -lt "$pause" ]; then pause=1; fi
        # In the background + wait, so a TERM/INT trap fires without delay.
        sleep "$pause" &
        wait "$!"
    done
}

run_migrations() {
    if [ "${SKIP_MIGRATIONS:-0}" = 1 ]; then
        log "SKIP_MIGRATIONS=1: not running database migrations"
        return 0
    fi
    log "running database migrations (flask --app wsgi db upgrade)"
    status=0
    flask --app wsgi db upgrade || status=$?
    if [ "$status" -ne 0 ]; then
        # Keep flask's exit status (wsgi.py exits 78 on a configuration error).
        log_at error "database migrations failed (exit status $status)"
        exit "$status"
    fi
    log "migrations done"
}

wait_for_database
run_migrations

log "starting: $*"
exec "$@"
