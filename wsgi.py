"""Entry point for gunicorn (`gunicorn -c gunicorn.conf.py wsgi:app`) and the flask CLI."""

import sys

from app.factory import ConfigError, create_app

try:
    app = create_app()
except ConfigError as error:
    # One clear line instead of a traceback, then a non-zero exit.
    print(f"taskgate: configuration error: {error}", file=sys.stderr)
    sys.exit(78)  # EX_CONFIG
