#!/bin/sh
# taskgate container entrypoint (POSIX sh; also runs outside Docker, e.g. in CI
# with a virtualenv's python/flask/gunicorn first on PATH).
#
#   1. wait until DATABASE_URL accepts a real connection: flask --app wsgi db wait,
#      bounded by DB_WAIT_SECONDS (default 60; 0 = a single attempt; SKIP_DB_WAIT=1
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

# A step that failed: stop with its exit status. 78 (EX_CONFIG) is a configuration error,
# which the app has already named in its one line (wsgi.py): nothing is added to it.
give_up() {
    status=$1
    shift
    if [ "$status" -ne 78 ]; then
        log_at error "$*"
    fi
    exit "$status"
}

# PID 1 ignores signals it has no handler for: stop promptly on `docker stop`
# while still waiting for the database (the exec'd server handles its own).
child=""
stop() {
    log "interrupted"
    if [ -n "$child" ]; then kill "$child" 2>/dev/null || true; fi
    exit "$1"
}
trap 'stop 143' TERM
trap 'stop 130' INT

APP_ROOT=${APP_ROOT:-$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)}
cd "$APP_ROOT" || die "cannot enter application root $APP_ROOT"

if [ "$#" -eq 0 ]; then
    set -- gunicorn -c gunicorn.conf.py wsgi:app
fi

DB_WAIT_SECONDS=${DB_WAIT_SECONDS:-60}
case $DB_WAIT_SECONDS in
    '' | *[!0-9]*) die "DB_WAIT_SECONDS must be a whole number of seconds, got '$DB_WAIT_SECONDS'" ;;
esac

# `flask db wait` (app/cli.py): one JSON line per attempt, never the URL or its password.
wait_for_database() {
    if [ "${SKIP_DB_WAIT:-0}" = 1 ]; then
        log "SKIP_DB_WAIT=1: not waiting for the database"
        return 0
    fi
    if [ -z "${DATABASE_URL:-}" ]; then
        log "DATABASE_URL is not set: not waiting for a database (the app uses its default)"
        return 0
    fi
    status=0
    # In the background + wait, so a TERM/INT trap fires without delay.
    flask --app wsgi db wait --timeout "$DB_WAIT_SECONDS" &
    child=$!
    wait "$child" || status=$?
    child=""
    if [ "$status" -ne 0 ]; then
        give_up "$status" "the database did not become reachable within ${DB_WAIT_SECONDS}s (exit status $status)"
    fi
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
        give_up "$status" "database migrations failed (exit status $status)"
    fi
    log "migrations done"
}

wait_for_database
run_migrations

log "starting: $*"
exec "$@"
