"""taskgate: the resource server a Better Auth frontend calls. `app.create_app` reaches app.factory
only on first use, so that gunicorn's master can import app.config and app.logs without loading
prometheus_client before PROMETHEUS_MULTIPROC_DIR is set (ARCHITECTURE.md, "Layers")."""

from typing import Any

__all__ = ["ConfigError", "build_services", "check_configuration", "create_app"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'app' has no attribute {name!r}")
    from app import factory  # on first use, not at import: the reason is above

    return getattr(factory, name)
