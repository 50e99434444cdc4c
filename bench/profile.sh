#!/bin/sh
# Profile one gunicorn worker with py-spy while bench/loadgen drives the mixed workload.
#
#   bench/profile.sh [SECONDS] [extra bench/run.py options...]
#   bench/profile.sh 20 --backend sqlite
#   bench/profile.sh 20 --profile-rate 600          # open loop at 600 req/s instead of closed loop
#
# Seeds a fresh database, starts `gunicorn -c gunicorn.conf.py wsgi:app` as production does (with
# GUNICORN_MAX_REQUESTS=0 so the profiled worker is not recycled mid-recording), runs closed-loop
# mixed load over 1000 connections, and records the worker with `py-spy record --gil` twice: collapsed
# stacks (summarised as text: self and inclusive time by package and by function) and an SVG flame graph.
# Output: bench/results/<timestamp>/profile-<backend>-<workload>-summary.txt, -worker<pid>.txt and .svg
# (--profile-workload healthz|me|list|mixed picks the load; mixed by default).
#
# py-spy comes with requirements-dev.txt (py-spy==0.4.3); otherwise set PY_SPY=/path/to/py-spy.
# PYTHON defaults to the project's .venv.
set -eu
cd "$(dirname "$0")/.."
seconds=${1:-20}
[ "$#" -gt 0 ] && shift
python=${PYTHON:-.venv/bin/python}
py_spy=${PY_SPY:-}
for candidate in "$(dirname "$python")/py-spy" "$(command -v py-spy || true)" /tmp/bench-venv/bin/py-spy; do
    if [ -z "$py_spy" ] && [ -n "$candidate" ] && [ -x "$candidate" ]; then
        py_spy=$candidate
    fi
done
if [ -z "$py_spy" ]; then
    echo "profile.sh: py-spy not found; pip install py-spy==0.4.3 in a venv and set PY_SPY" >&2
    exit 1
fi
exec "$python" bench/run.py --backend postgresql --profile "$seconds" --py-spy "$py_spy" "$@"
