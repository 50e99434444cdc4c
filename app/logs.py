"""Logging: one JSON object per line on stderr; never a token or a secret
(ARCHITECTURE.md, "Observability")."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime

import orjson
from flask import Flask

from app.config import Settings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


ANSI = re.compile(r"\x1b\[[0-9;]*m")
REQUEST_LINE = re.compile(r'^\S+ - - \[[^\]]*\] "')


class DevelopmentServerLines(logging.Filter):
    """werkzeug's development server (`flask run`): its per-request line repeats taskgate's own
    access line (app.observability), so it is dropped; its other lines keep their words, not
    their terminal colours."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = ANSI.sub("", record.getMessage())
        if REQUEST_LINE.match(message) and record.levelno < logging.WARNING:
            return False
        record.msg, record.args = message.rstrip("\n"), None
        return True


def configure_logging(app: Flask, settings: Settings) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "taskgate", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler.taskgate = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    app.logger.handlers.clear()  # propagate to the root handler instead of Flask's own
    app.logger.propagate = True
    werkzeug = logging.getLogger("werkzeug")
    if not any(isinstance(f, DevelopmentServerLines) for f in werkzeug.filters):
        werkzeug.addFilter(DevelopmentServerLines())
