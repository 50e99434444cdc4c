"""Entry point for gunicorn (`gunicorn -c gunicorn.conf.py wsgi:app`), granian and the flask CLI."""

import gc
import sys

from app.factory import ConfigError, create_app

try:
    app = create_app()
except ConfigError as error:
    # One clear line instead of a traceback, then a non-zero exit.
    print(f"taskgate: configuration error: {error}", file=sys.stderr)
    sys.exit(78)  # EX_CONFIG

# The app's own objects (modules, models, compiled schemas: over 100,000) leave the cycle
# collector's full scans, each of which stalled a worker for tens of milliseconds under load
# (bench/RESULTS.md, "Garbage collection"). Each server worker imports this module.
gc.collect()
gc.freeze()
