"""taskgate: the resource server a Better Auth frontend calls (ARCHITECTURE.md). The factory is
app.factory; `app.create_app` (and `flask --app app`) reach it on first use, so that importing
app.config or app.logs loads nothing else (gunicorn.conf.py reads them in gunicorn's master,
where prometheus_client must not be loaded before PROMETHEUS_MULTIPROC_DIR is set)."""

from typing import Any

__all__ = ["ConfigError", "build_services", "check_configuration", "create_app"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'app' has no attribute {name!r}")
    from app import factory  # on first use, not at import: the reason is above

    return getattr(factory, name)
