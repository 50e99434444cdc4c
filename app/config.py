"""Settings read from the environment (DESIGN §5), validated once at start-up.

`load_settings` is the only place that reads configuration; everything else gets a
`Settings` object (also copied into `app.config` under the same names).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

ENVIRONMENTS = ("development", "production", "testing")
SYMMETRIC_ALGORITHMS = frozenset({"HS256"})
ASYMMETRIC_ALGORITHMS = frozenset({"EdDSA", "ES256", "ES512", "PS256", "RS256"})
DEFAULT_ASYMMETRIC = ("EdDSA", "ES256", "ES512", "PS256", "RS256")
DEFAULT_BLUEPRINTS = (
    "blueprints.health:bp",
    "blueprints.auth:bp",
    "blueprints.tasks:bp",
    "blueprints.admin:bp",
)
MIN_SECRET_BYTES = 32
ORIGIN = re.compile(r"^https?://(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(?::\d{1,5})?$")


class ConfigError(Exception):
    """A setting is missing or wrong; the message says which and why, in one line."""


@dataclass(frozen=True)
class Settings:
    app_env: str
    database_url: str
    redis_url: str | None
    secret: str | None
    secret_generated: bool
    better_auth_url: str | None
    jwks_url: str | None
    jwks_timeout_seconds: float
    jwks_cache_seconds: float
    jwks_min_refetch_seconds: float
    algorithms: tuple[str, ...]
    issuer: str | None
    audience: str | None
    user_claim: str
    leeway_seconds: int
    max_age_seconds: int
    admin_user_ids: frozenset[str]
    cors_origins: tuple[str, ...]
    blueprints: tuple[str, ...]
    max_content_length: int
    redis_socket_timeout: float
    redis_key_prefix: str
    db_pool_size: int
    db_statement_timeout_ms: int
    log_level: str
    rate_limits_enabled: bool
    rate_limit_user: str
    rate_limit_ip: str
    rate_limit_auth_failures: str
    proxy_hops: int
    warnings: tuple[str, ...] = field(default=())

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def is_testing(self) -> bool:
        return self.app_env == "testing"


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _optional(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    """An unset variable takes the default; a variable set to "" means "skip"."""
    if name not in env:
        return default
    return env[name].strip() or None


def gather_environment(
    overrides: Mapping[str, object] | None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Overrides beat the process environment, which beats `.env` (development only)."""
    environ = dict(os.environ if environ is None else environ)
    overrides = {k: str(v) for k, v in (overrides or {}).items() if v is not None}
    app_env = overrides.get("APP_ENV") or environ.get("APP_ENV") or "development"
    merged: dict[str, str] = {}
    if app_env == "development" and Path(".env").is_file():
        merged.update({k: v for k, v in dotenv_values(".env").items() if v is not None})
    merged.update(environ)
    merged.update(overrides)
    return merged


def _development_secret(instance_path: Path) -> str:
    """A throwaway secret kept in the instance folder, so `flask run` and
    `flask token mint` in another terminal agree on it."""
    path = instance_path / "dev-secret"
    if path.is_file():
        return path.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


def _rate_limit(env: Mapping[str, str], name: str, default: str) -> str:
    from limits import parse

    value = env.get(name, "").strip() or default
    try:
        parse(value)
    except ValueError:
        raise ConfigError(f"{name} must look like '600/minute', got {value!r}") from None
    return value


def load_settings(env: Mapping[str, str], instance_path: Path) -> Settings:
    warnings: list[str] = []
    app_env = env.get("APP_ENV", "").strip() or "development"
    if app_env not in ENVIRONMENTS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(ENVIRONMENTS)}, got {app_env!r}")
    production = app_env == "production"

    if production and _bool(env, "FLASK_DEBUG", False):
        raise ConfigError("FLASK_DEBUG is on: debug mode must be off in production")

    database_url = env.get("DATABASE_URL", "").strip()
    if not database_url:
        if production:
            raise ConfigError("DATABASE_URL is required in production (PostgreSQL)")
        instance_path.mkdir(parents=True, exist_ok=True)
        database_url = f"sqlite:///{instance_path / 'taskgate.db'}"
    if production and database_url.startswith("sqlite"):
        raise ConfigError("DATABASE_URL points at SQLite: production needs PostgreSQL")

    redis_url = env.get("REDIS_URL", "").strip() or None
    if redis_url is None:
        if production:
            raise ConfigError("REDIS_URL is required in production (revocations must be shared)")
        if app_env == "development":
            warnings.append(
                "REDIS_URL is not set: using an in-process revocation store; "
                "revocations are neither shared between processes nor kept across restarts"
            )

    better_auth_url = (env.get("BETTER_AUTH_URL", "").strip().rstrip("/")) or None
    jwks_default = f"{better_auth_url}/api/auth/jwks" if better_auth_url else None
    jwks_url = _optional(env, "JWKS_URL", jwks_default)
    if jwks_url and not jwks_url.startswith(("https://", "http://")):
        raise ConfigError(f"JWKS_URL must be an http(s) URL, got {jwks_url!r}")
    if jwks_url and production and jwks_url.startswith("http://") and not jwks_url.startswith(
            ("http://127.0.0.1", "http://localhost", "http://[::1]")):
        warnings.append("JWKS_URL is plain http: keys could be swapped in transit; use https")

    secret = env.get("BETTER_AUTH_SECRET", "") or None
    algorithms = _csv(env.get("JWT_ALGORITHMS"))
    if not algorithms:
        algorithms = (("HS256",) if secret or not jwks_url else ()) + (
            DEFAULT_ASYMMETRIC if jwks_url else ()
        )
    unknown = [a for a in algorithms if a not in SYMMETRIC_ALGORITHMS | ASYMMETRIC_ALGORITHMS]
    if unknown:
        supported = ", ".join(sorted(SYMMETRIC_ALGORITHMS | ASYMMETRIC_ALGORITHMS))
        raise ConfigError(f"JWT_ALGORITHMS has unsupported {', '.join(unknown)}; supported: {supported}")
    if len(set(algorithms)) != len(algorithms):
        raise ConfigError("JWT_ALGORITHMS lists an algorithm twice")
    uses_secret = any(a in SYMMETRIC_ALGORITHMS for a in algorithms)
    uses_jwks = any(a in ASYMMETRIC_ALGORITHMS for a in algorithms)
    if uses_jwks and not jwks_url:
        raise ConfigError("JWT_ALGORITHMS has asymmetric algorithms but neither JWKS_URL nor BETTER_AUTH_URL is set")

    secret_generated = False
    if uses_secret:
        if secret is None:
            if production:
                raise ConfigError("BETTER_AUTH_SECRET is required in production when HS256 is accepted")
            secret = _development_secret(instance_path)
            secret_generated = True
            warnings.append(
                "BETTER_AUTH_SECRET is not set: generated a throwaway development secret "
                f"in {instance_path / 'dev-secret'}; set BETTER_AUTH_SECRET to share one with your frontend"
            )
        elif production and "change-me" in secret:
            raise ConfigError("BETTER_AUTH_SECRET is still the .env.example placeholder")
        elif len(secret.encode()) < MIN_SECRET_BYTES:
            message = f"BETTER_AUTH_SECRET is shorter than {MIN_SECRET_BYTES} bytes"
            if production:
                raise ConfigError(message)
            warnings.append(message + ": a production start would refuse it")

    cors_default = "" if production else "http://localhost:3000,http://127.0.0.1:3000"
    cors_origins = tuple(origin.rstrip("/").lower() for origin in _csv(env.get("CORS_ORIGINS", cors_default)))
    for origin in cors_origins:
        # Exact origins only: flask-cors would read anything with regex characters as a
        # prefix pattern ("https://*.example.com" would let "https://xexample.com.evil" in).
        if not ORIGIN.match(origin):
            raise ConfigError(f"CORS_ORIGINS entries must be exact origins (https://app.example.com), got {origin!r}")

    return Settings(
        app_env=app_env,
        database_url=database_url,
        redis_url=redis_url,
        secret=secret,
        secret_generated=secret_generated,
        better_auth_url=better_auth_url,
        jwks_url=jwks_url,
        jwks_timeout_seconds=_float(env, "JWKS_TIMEOUT_SECONDS", 2.0),
        jwks_cache_seconds=_float(env, "JWKS_CACHE_SECONDS", 600.0),
        jwks_min_refetch_seconds=_float(env, "JWKS_MIN_REFETCH_SECONDS", 10.0),
        algorithms=tuple(algorithms),
        issuer=_optional(env, "JWT_ISSUER", better_auth_url),
        audience=_optional(env, "JWT_AUDIENCE", better_auth_url),
        user_claim=env.get("JWT_USER_CLAIM", "").strip() or "sub",
        leeway_seconds=_int(env, "JWT_LEEWAY_SECONDS", 30),
        max_age_seconds=_int(env, "JWT_MAX_AGE_SECONDS", 604800, minimum=1),
        admin_user_ids=frozenset(_csv(env.get("ADMIN_USER_IDS"))),
        cors_origins=cors_origins,
        blueprints=_csv(env.get("BLUEPRINTS")) or DEFAULT_BLUEPRINTS,
        max_content_length=_int(env, "MAX_CONTENT_LENGTH", 64 * 1024, minimum=1024),
        redis_socket_timeout=_float(env, "REDIS_SOCKET_TIMEOUT", 0.5),
        redis_key_prefix=env.get("REDIS_KEY_PREFIX", "taskgate:"),
        # One connection per request thread (gunicorn.conf.py: 2 threads per worker).
        db_pool_size=_int(env, "DB_POOL_SIZE", _int(env, "GUNICORN_THREADS", 2, minimum=1), minimum=1),
        db_statement_timeout_ms=_int(env, "DB_STATEMENT_TIMEOUT_MS", 5000, minimum=1),
        log_level=(env.get("LOG_LEVEL", "").strip() or "INFO").upper(),
        rate_limits_enabled=_bool(env, "RATE_LIMITS_ENABLED", not app_env == "testing"),
        rate_limit_user=_rate_limit(env, "RATE_LIMIT_USER", "600/minute"),
        rate_limit_ip=_rate_limit(env, "RATE_LIMIT_IP", "120/minute"),
        rate_limit_auth_failures=_rate_limit(env, "RATE_LIMIT_AUTH_FAILURES", "30/minute"),
        proxy_hops=_int(env, "PROXY_HOPS", 0),
        warnings=tuple(warnings),
    )
