"""taskgate: the resource server a Better Auth frontend calls (ARCHITECTURE.md). The factory
lives in app.factory; `create_app` is re-exported here for `flask --app app` and wsgi.py."""

from app.factory import ConfigError, build_services, check_configuration, create_app

__all__ = ["ConfigError", "build_services", "check_configuration", "create_app"]
