"""Every setting the app and its servers read from the environment, checked once at start
(CONTRACT §5; ARCHITECTURE.md, "Settings")."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from limits import parse

from app.redis_url import RedisTarget, RedisUrlError, parse_redis_url

ENVIRONMENTS = ("development", "production", "testing")
DATABASES = ("postgresql", "sqlite")  # the dialects DATABASE_URL may name (its part before + and ://)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
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
MIN_COPY = 4  # entropy_bits(): a repeat of this many characters or more counts as a copy
# entropy_bits() of BETTER_AUTH_SECRET at least: `openssl rand -base64 32` gives 180 or more, 32 random hex
# digits (`openssl rand -hex 16`, 128 bits) 86 or more in 60,000 tries; repeated words and runs 70 or less.
MIN_SECRET_BITS = 80
MIN_TOKEN_BITS = 48  # of METRICS_TOKEN
MAX_QUIET_FAILURES_PER_SECOND = 10  # RATE_LIMIT_AUTH_FAILURES above this is warned in production
ORIGIN = re.compile(r"^https?://(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(?::\d{1,5})?$")
LOOPBACK_HTTP = ("http://127.0.0.1", "http://localhost", "http://[::1]")


class ConfigError(Exception):
    """A setting is missing or wrong; the message says which and why, in one line."""


@dataclass(frozen=True)
class Settings:
    # application
    app_env: str
    blueprints: tuple[str, ...]
    log_level: str
    # database
    database_url: str
    db_pool_size: int
    db_statement_timeout_ms: int
    # Redis
    redis_url: str | None
    redis_target: RedisTarget | None  # REDIS_URL, parsed (None: the in-process development store)
    redis_socket_timeout: float
    redis_key_prefix: str
    revocation_sync_seconds: float
    # tokens
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
    logout_token_max_age_seconds: int
    admin_user_ids: frozenset[str]
    # OAuth access tokens of third-party apps and agents (Better Auth's OAuth provider): accepted
    # only with a resource URL, this API's identifier, which their `aud` must hold.
    oauth_resource_url: str | None
    oauth_issuer: str | None
    dpop_max_age_seconds: int
    # HTTP
    cors_origins: tuple[str, ...]
    max_content_length: int
    proxy_hops: int
    metrics_token: str | None
    # rate limits
    rate_limits_enabled: bool
    rate_limit_user: str
    rate_limit_ip: str
    rate_limit_auth_failures: str
    warnings: tuple[str, ...] = field(default=())

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def is_testing(self) -> bool:
        return self.app_env == "testing"


# --- reading values ------------------------------------------------------------------


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    """One of `choices` (upper case), whatever the case it was written in."""
    value = env.get(name, "").strip().upper() or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {env.get(name, '').strip()!r}")
    return value


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    """A whole number; `maximum`: the most that keeps the promise the setting is part of."""
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, maximum: float = math.inf) -> float:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name} must be positive, got {raw!r}")
    if value > maximum:
        raise ConfigError(f"{name} must be at most {maximum:g}, got {raw}")
    return value


def entropy_bits(value: str) -> float:
    """An estimate of a secret's entropy: each new character at the Shannon entropy of the whole;
    a stretch repeating an earlier one, or continuing a run (abcd, 4321, aaaa), at almost nothing.
    It cannot prove a secret random; it catches the obviously weak (repeats, runs, short alphabets)."""
    counts = Counter(value)
    per_character = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    bits, i = 0.0, 0
    while i < len(value):
        copied = _copied(value, i)
        if copied:
            bits += math.log2(i * copied)  # where the copy starts, and how long it is
            i += copied
        else:
            bits += 1.0 if _continues_run(value, i) else per_character
            i += 1
    return bits


def _copied(value: str, i: int) -> int:
    """How many characters from `i` on repeat a stretch that starts earlier (overlapping allowed),
    when at least MIN_COPY do; else 0."""
    start = value.find(value[i:i + MIN_COPY], 0, i + MIN_COPY - 1)
    if i + MIN_COPY > len(value) or start < 0:
        return 0
    n = MIN_COPY
    while i + n < len(value) and value[start + n] == value[i + n]:
        n += 1
    return n


def _continues_run(value: str, i: int) -> bool:
    """The character is the fourth or later of a run with one step of -1, 0 or +1 (4567, zyxw, 1111)."""
    steps = {ord(value[j]) - ord(value[j - 1]) for j in range(i - 2, i + 1)} if i >= 3 else set()
    return len(steps) == 1 and steps <= {-1, 0, 1}


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


def _rate_limit(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    try:
        parse(value)
    except ValueError:
        raise ConfigError(f"{name} must look like '600/minute', got {value!r}") from None
    return value


def gather_environment(
    overrides: Mapping[str, object] | None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Overrides beat the process environment, which beats a `.env` file in the working
    directory, whatever APP_ENV is: the `flask` command reads it too (Flask's own load_dotenv),
    and the service and its CLI must see the same settings."""
    environ = dict(os.environ if environ is None else environ)
    overrides = {k: str(v) for k, v in (overrides or {}).items() if v is not None}
    merged: dict[str, str] = {}
    if Path(".env").is_file():
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


# --- one area at a time ----------------------------------------------------------------


def _application(env: Mapping[str, str]) -> dict[str, Any]:
    app_env = env.get("APP_ENV", "").strip() or "development"
    if app_env not in ENVIRONMENTS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(ENVIRONMENTS)}, got {app_env!r}")
    if app_env == "production" and _bool(env, "FLASK_DEBUG", False):
        raise ConfigError("FLASK_DEBUG is on: debug mode must be off in production")
    return {
        "app_env": app_env,
        "blueprints": _csv(env.get("BLUEPRINTS")) or DEFAULT_BLUEPRINTS,
        "log_level": _choice(env, "LOG_LEVEL", LOG_LEVELS, "INFO"),
    }


def _database(env: Mapping[str, str]) -> dict[str, Any]:
    return {
        "database_url": env.get("DATABASE_URL", "").strip() or None,  # the default: last pass
        # One connection per request thread (gunicorn.conf.py: 2 threads per worker).
        "db_pool_size": _int(env, "DB_POOL_SIZE", _int(env, "GUNICORN_THREADS", 2, minimum=1), minimum=1),
        "db_statement_timeout_ms": _int(env, "DB_STATEMENT_TIMEOUT_MS", 5000, minimum=1, maximum=60_000),
    }


def _redis(env: Mapping[str, str]) -> dict[str, Any]:
    redis_url = env.get("REDIS_URL", "").strip() or None
    try:
        redis_target = parse_redis_url(redis_url) if redis_url is not None else None
    except RedisUrlError as error:
        raise ConfigError(str(error)) from None
    prefix = env.get("REDIS_KEY_PREFIX", "taskgate:")
    if "{" in prefix or "}" in prefix:
        raise ConfigError("REDIS_KEY_PREFIX must not contain { or } (the keys' own hash tags follow it)")
    return {
        "redis_url": redis_url,
        "redis_target": redis_target,
        # Bounded: a request waits at most about two of these before its 503.
        "redis_socket_timeout": _float(env, "REDIS_SOCKET_TIMEOUT", 0.5, maximum=5.0),
        "redis_key_prefix": prefix,
        # Bounded: how late a table that came back older, or a policy that evicts, is noticed.
        "revocation_sync_seconds": _float(env, "REVOCATION_SYNC_SECONDS", 2.0, maximum=60.0),
    }


def _tokens(env: Mapping[str, str]) -> dict[str, Any]:
    better_auth_url = (env.get("BETTER_AUTH_URL", "").strip().rstrip("/")) or None
    jwks_default = f"{better_auth_url}/api/auth/jwks" if better_auth_url else None
    jwks_url = _optional(env, "JWKS_URL", jwks_default)
    if jwks_url and not jwks_url.startswith(("https://", "http://")):
        raise ConfigError(f"JWKS_URL must be an http(s) URL, got {jwks_url!r}")
    algorithms = _csv(env.get("JWT_ALGORITHMS"))
    unknown = [a for a in algorithms if a not in SYMMETRIC_ALGORITHMS | ASYMMETRIC_ALGORITHMS]
    if unknown:
        supported = ", ".join(sorted(SYMMETRIC_ALGORITHMS | ASYMMETRIC_ALGORITHMS))
        raise ConfigError(f"JWT_ALGORITHMS has unsupported {', '.join(unknown)}; supported: {supported}")
    if len(set(algorithms)) != len(algorithms):
        raise ConfigError("JWT_ALGORITHMS lists an algorithm twice")
    return {
        "secret": env.get("BETTER_AUTH_SECRET", "") or None,
        "secret_generated": False,
        "better_auth_url": better_auth_url,
        "jwks_url": jwks_url,
        "jwks_timeout_seconds": _float(env, "JWKS_TIMEOUT_SECONDS", 2.0, maximum=10.0),
        # Bounded: a key Better Auth withdrew stops verifying tokens within this.
        "jwks_cache_seconds": _float(env, "JWKS_CACHE_SECONDS", 600.0, maximum=86400.0),
        "jwks_min_refetch_seconds": _float(env, "JWKS_MIN_REFETCH_SECONDS", 10.0, maximum=300.0),
        "algorithms": algorithms,  # the default depends on the secret and the JWKS URL: last pass
        "issuer": _optional(env, "JWT_ISSUER", better_auth_url),
        "audience": _optional(env, "JWT_AUDIENCE", better_auth_url),
        "user_claim": env.get("JWT_USER_CLAIM", "").strip() or "sub",
        # Bounded: clock skew between hosts, never a way to stretch a token's life.
        "leeway_seconds": _int(env, "JWT_LEEWAY_SECONDS", 30, maximum=300),
        "max_age_seconds": _int(env, "JWT_MAX_AGE_SECONDS", 604800, minimum=1, maximum=604800),  # 7 days at most
        "logout_token_max_age_seconds": _int(env, "LOGOUT_TOKEN_MAX_AGE_SECONDS", 300, minimum=1, maximum=3600),
        "admin_user_ids": frozenset(_csv(env.get("ADMIN_USER_IDS"))),
        "oauth_resource_url": env.get("OAUTH_RESOURCE_URL", "").strip() or None,
        "oauth_issuer": _optional(env, "OAUTH_ISSUER", f"{better_auth_url}/api/auth" if better_auth_url else None),
        # Bounded: how long a DPoP proof is good for, and how long its jti is remembered.
        "dpop_max_age_seconds": _int(env, "DPOP_MAX_AGE_SECONDS", 60, minimum=1, maximum=300),
    }


def _http(env: Mapping[str, str], production: bool) -> dict[str, Any]:
    cors_default = "" if production else "http://localhost:3000,http://127.0.0.1:3000"
    cors_origins = tuple(origin.rstrip("/").lower() for origin in _csv(env.get("CORS_ORIGINS", cors_default)))
    for origin in cors_origins:
        # Exact origins only (app.cors compares them literally, IPv6 brackets included).
        if not ORIGIN.match(origin):
            raise ConfigError(f"CORS_ORIGINS entries must be exact origins (https://app.example.com), got {origin!r}")
    metrics_token = env.get("METRICS_TOKEN", "").strip() or None
    if metrics_token is not None and len(metrics_token) < 16:
        raise ConfigError("METRICS_TOKEN must be at least 16 characters")
    if metrics_token is not None and entropy_bits(metrics_token) < MIN_TOKEN_BITS:
        raise ConfigError("METRICS_TOKEN looks guessable (repeats, runs or a short alphabet); "
                          "use a random value, e.g. `openssl rand -hex 24`")
    return {
        "cors_origins": cors_origins,
        "max_content_length": _int(env, "MAX_CONTENT_LENGTH", 64 * 1024, minimum=1024, maximum=1 << 20),
        "proxy_hops": _int(env, "PROXY_HOPS", 0, maximum=5),
        "metrics_token": metrics_token,
    }


def _per_second(limit: str) -> float:
    item = parse(limit)
    return item.amount / item.get_expiry()


def _rate_limits(env: Mapping[str, str], testing: bool) -> dict[str, Any]:
    return {
        "rate_limits_enabled": _bool(env, "RATE_LIMITS_ENABLED", not testing),
        "rate_limit_user": _rate_limit(env, "RATE_LIMIT_USER", "600/minute"),
        "rate_limit_ip": _rate_limit(env, "RATE_LIMIT_IP", "120/minute"),
        "rate_limit_auth_failures": _rate_limit(env, "RATE_LIMIT_AUTH_FAILURES", "30/minute"),
    }


# --- the rules that tie areas together -------------------------------------------------


@dataclass
class Draft:
    """The settings as read, while the rules below fill in defaults, refuse or warn."""

    values: dict[str, Any]
    instance_path: Path
    warnings: list[str] = field(default_factory=list)

    @property
    def production(self) -> bool:
        return self.values["app_env"] == "production"

    def refuse_in_production(self, message: str, hint: str = ": a production start would refuse it") -> None:
        if self.production:
            raise ConfigError(message)
        self.warnings.append(message + hint)


def database_default(draft: Draft) -> None:
    """SQLite in the instance folder, except in production, which needs PostgreSQL; a URL of
    another database (or none at all) refused. The URL itself is never quoted: it may hold a password."""
    url = draft.values["database_url"]
    if url is None:
        if draft.production:
            raise ConfigError("DATABASE_URL is required in production (PostgreSQL)")
        draft.instance_path.mkdir(parents=True, exist_ok=True)
        draft.values["database_url"] = f"sqlite:///{draft.instance_path / 'taskgate.db'}"
        return
    scheme, separator, _ = url.partition("://")
    dialect = scheme.partition("+")[0].lower()
    if dialect == "postgres":
        raise ConfigError("DATABASE_URL starts with postgres://: write postgresql:// (SQLAlchemy's name)")
    if not separator or dialect not in DATABASES:
        raise ConfigError("DATABASE_URL must be a postgresql:// URL (or sqlite:/// outside production)")
    if draft.production and dialect == "sqlite":
        raise ConfigError("DATABASE_URL points at SQLite: production needs PostgreSQL")


def redis_required(draft: Draft) -> None:
    if draft.values["redis_url"] is not None:
        return
    if draft.production:
        raise ConfigError("REDIS_URL is required in production (revocations must be shared)")
    if draft.values["app_env"] == "development":
        draft.warnings.append("REDIS_URL is not set: using an in-process revocation store; "
                              "revocations are neither shared between processes nor kept across restarts")


def default_algorithms(draft: Draft) -> None:
    """HS256 with the secret, or the asymmetric set with a JWKS; HS256 beside a JWKS only when
    JWT_ALGORITHMS names it (a leftover secret must not keep HS256 open)."""
    jwks_url = draft.values["jwks_url"]
    algorithms = draft.values["algorithms"] or (DEFAULT_ASYMMETRIC if jwks_url else ("HS256",))
    if any(a in ASYMMETRIC_ALGORITHMS for a in algorithms) and not jwks_url:
        raise ConfigError("JWT_ALGORITHMS has asymmetric algorithms but neither JWKS_URL nor BETTER_AUTH_URL is set")
    if jwks_url and draft.production and jwks_url.startswith("http://") and not jwks_url.startswith(LOOPBACK_HTTP):
        draft.warnings.append("JWKS_URL is plain http: keys could be swapped in transit; use https")
    if jwks_url and draft.values["secret"] and "HS256" not in algorithms:
        draft.warnings.append("BETTER_AUTH_SECRET is set but HS256 is not accepted (JWKS mode); name HS256 in "
                              "JWT_ALGORITHMS to accept tokens signed with it")
    draft.values["algorithms"] = tuple(algorithms)


def shared_secret(draft: Draft) -> None:
    """BETTER_AUTH_SECRET, where HS256 is accepted: required, not the placeholder, long and
    random enough in production; a throwaway one generated in development."""
    if "HS256" not in draft.values["algorithms"]:
        return
    secret = draft.values["secret"]
    if secret is None:
        if draft.production:
            raise ConfigError("BETTER_AUTH_SECRET is required in production when HS256 is accepted")
        draft.values["secret"], draft.values["secret_generated"] = _development_secret(draft.instance_path), True
        draft.warnings.append(
            "BETTER_AUTH_SECRET is not set: generated a throwaway development secret "
            f"in {draft.instance_path / 'dev-secret'}; set BETTER_AUTH_SECRET to share one with your frontend")
    elif draft.production and "change-me" in secret:
        raise ConfigError("BETTER_AUTH_SECRET is still the .env.example placeholder")
    elif len(secret.encode()) < MIN_SECRET_BYTES:
        draft.refuse_in_production(f"BETTER_AUTH_SECRET is shorter than {MIN_SECRET_BYTES} bytes")
    elif entropy_bits(secret) < MIN_SECRET_BITS:
        draft.refuse_in_production("BETTER_AUTH_SECRET looks guessable (repeats, runs or a short "
                                   "alphabet); use `openssl rand -base64 32`")


def production_warnings(draft: Draft) -> None:
    """What a production start allows but weakens: each said once, at start."""
    if not draft.production:
        return
    values, warn = draft.values, draft.warnings.append
    if values["metrics_token"] is None:
        warn("METRICS_TOKEN is not set: /metrics is disabled (answers 404)")
    if values["issuer"] is None:
        warn("JWT_ISSUER is empty: tokens from any issuer that holds a key are accepted; set it or BETTER_AUTH_URL")
    if values["audience"] is None:
        warn("JWT_AUDIENCE is empty: tokens made for other audiences are accepted; set it or BETTER_AUTH_URL")
    if not values["rate_limits_enabled"]:
        warn("RATE_LIMITS_ENABLED is off: token guessing and floods are not slowed down")
    elif _per_second(values["rate_limit_auth_failures"]) > MAX_QUIET_FAILURES_PER_SECOND:
        warn(f"RATE_LIMIT_AUTH_FAILURES is {values['rate_limit_auth_failures']}: more than "
             f"{MAX_QUIET_FAILURES_PER_SECOND} failed authentications a second per IP, so token guessing is "
             "barely slowed down")
    if values["log_level"] == "DEBUG":
        warn("LOG_LEVEL is DEBUG in production: libraries may log request details")


def oauth_tokens(draft: Draft) -> None:
    """OAuth access tokens need this API's resource URL, their issuer, and the JWKS keys that sign them."""
    resource = draft.values["oauth_resource_url"]
    if resource is None:
        return
    if not resource.startswith(("https://", "http://")) or "#" in resource:
        raise ConfigError(f"OAUTH_RESOURCE_URL must be this API's http(s) URL, got {resource!r}")
    if draft.values["oauth_issuer"] is None:
        raise ConfigError("OAUTH_RESOURCE_URL needs OAUTH_ISSUER (or BETTER_AUTH_URL): the OAuth tokens' issuer")
    if not any(a in ASYMMETRIC_ALGORITHMS for a in draft.values["algorithms"]):
        raise ConfigError("OAUTH_RESOURCE_URL needs JWKS keys (JWKS_URL or BETTER_AUTH_URL): OAuth tokens are "
                          "signed with Better Auth's keys")
    if draft.production and resource.startswith("http://") and not resource.startswith(LOOPBACK_HTTP):
        draft.warnings.append("OAUTH_RESOURCE_URL is plain http: OAuth tokens would travel in clear")


RULES = (database_default, redis_required, default_algorithms, shared_secret, oauth_tokens, production_warnings)


def load_settings(env: Mapping[str, str], instance_path: Path) -> Settings:
    application = _application(env)
    production, testing = application["app_env"] == "production", application["app_env"] == "testing"
    values = {
        **application,
        **_database(env),
        **_redis(env),
        **_tokens(env),
        **_http(env, production),
        **_rate_limits(env, testing),
    }
    assert set(values) | {"warnings"} == {f.name for f in fields(Settings)}  # every area read, once
    draft = Draft(values, instance_path)
    for rule in RULES:
        rule(draft)
    return Settings(**draft.values, warnings=tuple(draft.warnings))


# --- the servers (serve.py, gunicorn.conf.py) ---------------------------------------------

SERVERS = ("gunicorn", "granian")  # what SERVER may name; the first is the default
# Bounds far above any sensible value, so that a typo is one line at start, not a server that
# forks without end, overflows a C integer or waits a day (the rest of each check is the server's).
MAX_WORKERS, MAX_THREADS, MAX_CONNECTIONS = 256, 1024, 1 << 20
MAX_SECONDS, MAX_COUNT, MAX_OPEN_FILES = 86_400, 10**9, 1 << 20
BIND_ADDRESS = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):(\d{1,5})")


@dataclass(frozen=True)
class ServerSettings:
    server: str
    bind: tuple[str, ...]  # gunicorn's addresses; granian listens on the first
    backlog: int
    reuse_port: bool
    reuse_port_asked: bool  # GUNICORN_REUSE_PORT set explicitly (a fallback to one socket is then an error)
    graceful_timeout: int
    # gunicorn
    worker_class: str
    workers: int
    threads: int
    worker_connections: int
    keepalive: int
    timeout: int
    max_requests: int
    max_requests_jitter: int
    nofile: int
    worker_tmp_dir: str | None
    control_socket: str | None
    access_log: str | None
    error_log: str
    log_level: str
    forwarded_allow_ips: str
    proxy_allow_ips: str
    # granian
    granian_workers: int
    granian_threads: int
    granian_backpressure: int
    granian_header_timeout: int


def cpus_available(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota (both servers'
    default worker count). os.cpu_count() alone reports every CPU of the host, which inside a
    container limited with --cpus or a Kubernetes CPU limit would start far too many workers."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    if quota:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_quota(cgroup: Path) -> float | None:
    try:  # cgroup v2
        limit, period = (cgroup / "cpu.max").read_text(encoding="ascii").split()[:2]
        return int(limit) / int(period) if limit != "max" else None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        limit = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text(encoding="ascii"))
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    return limit / period if limit > 0 and period > 0 else None


def _first_int(env: Mapping[str, str], names: tuple[str, ...], default: int, maximum: int) -> int:
    """The first of `names` that is set (a server's own variable before the one it shares)."""
    for name in names:
        if env.get(name, "").strip():
            return _int(env, name, default, minimum=1, maximum=maximum)
    return default


def _bind(env: Mapping[str, str]) -> tuple[str, ...]:
    port = _int(env, "PORT", 8000, minimum=1, maximum=65535)
    bind = tuple(part.strip() for part in env.get("GUNICORN_BIND", f"0.0.0.0:{port}").split(",") if part.strip())
    for address in bind:
        found = BIND_ADDRESS.fullmatch(address)
        if not (address.startswith("unix:") or (found and 0 < int(found[1]) <= 65535)):
            raise ConfigError(f"GUNICORN_BIND must be host:port or unix:PATH, got {address!r}")
    return bind


def _addresses(env: Mapping[str, str], name: str, default: str) -> str:
    """A comma-separated list of IP addresses or networks, or `*` (any)."""
    value = env.get(name, "").strip() or default
    for part in _csv(value):
        if part != "*":
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ConfigError(f"{name} must list IP addresses or networks (or *), got {part!r}") from None
    return value


def _gunicorn(env: Mapping[str, str]) -> dict[str, Any]:
    # Two per CPU, two threads each (gunicorn.conf.py says why; bench/RESULTS.md has the sweeps).
    workers = _first_int(env, ("GUNICORN_WORKERS", "WEB_CONCURRENCY"), max(2, 2 * cpus_available()), MAX_WORKERS)
    connections = _int(env, "GUNICORN_WORKER_CONNECTIONS", 2000, minimum=1, maximum=MAX_CONNECTIONS)
    forwarded = _addresses(env, "FORWARDED_ALLOW_IPS", "127.0.0.1")
    tmp_dir = env.get("GUNICORN_WORKER_TMP_DIR", "").strip() or ("/dev/shm" if Path("/dev/shm").is_dir() else None)  # noqa: S108
    return {
        "worker_class": env.get("GUNICORN_WORKER_CLASS", "").strip() or "gthread",
        "workers": workers,
        "threads": _int(env, "GUNICORN_THREADS", 2, minimum=1, maximum=MAX_THREADS),
        "worker_connections": connections,
        "keepalive": _int(env, "GUNICORN_KEEPALIVE", 5, maximum=MAX_SECONDS),
        "timeout": _int(env, "GUNICORN_TIMEOUT", 30, maximum=MAX_SECONDS),
        "max_requests": _int(env, "GUNICORN_MAX_REQUESTS", 0, maximum=MAX_COUNT),
        "max_requests_jitter": _int(env, "GUNICORN_MAX_REQUESTS_JITTER", 1000, maximum=MAX_COUNT),
        "nofile": _int(env, "GUNICORN_NOFILE", connections + 1024, minimum=1, maximum=MAX_OPEN_FILES),
        "worker_tmp_dir": tmp_dir,
        "control_socket": env.get("GUNICORN_CONTROL_SOCKET", "").strip() or None,
        "access_log": env.get("GUNICORN_ACCESS_LOG", "").strip() or None,
        "error_log": env.get("GUNICORN_ERROR_LOG", "").strip() or "-",
        "log_level": _choice(env, "GUNICORN_LOG_LEVEL", LOG_LEVELS,
                             _choice(env, "LOG_LEVEL", LOG_LEVELS, "INFO")).lower(),
        "forwarded_allow_ips": forwarded,
        "proxy_allow_ips": _addresses(env, "PROXY_ALLOW_IPS", forwarded),
    }


def _granian(env: Mapping[str, str]) -> dict[str, Any]:
    # One per CPU: granian's I/O runs outside the GIL.
    return {
        "granian_workers": _first_int(env, ("GRANIAN_WORKERS", "GUNICORN_WORKERS", "WEB_CONCURRENCY"),
                                      cpus_available(), MAX_WORKERS),
        "granian_threads": _first_int(env, ("GRANIAN_BLOCKING_THREADS", "GUNICORN_THREADS"), 2, MAX_THREADS),
        "granian_backpressure": _int(env, "GRANIAN_BACKPRESSURE", 4096, minimum=1, maximum=MAX_CONNECTIONS),
        "granian_header_timeout": _int(env, "GRANIAN_HEADER_TIMEOUT", 10, minimum=1, maximum=MAX_SECONDS),
    }


def load_server_settings(env: Mapping[str, str]) -> ServerSettings:
    server = env.get("SERVER", "").strip().lower() or SERVERS[0]
    if server not in SERVERS:
        raise ConfigError(f"SERVER must be {' or '.join(SERVERS)}, got {server!r}")
    return ServerSettings(
        server=server,
        bind=_bind(env),
        backlog=_int(env, "GUNICORN_BACKLOG", 2048, minimum=1, maximum=65535),
        reuse_port=_bool(env, "GUNICORN_REUSE_PORT", True),
        reuse_port_asked=bool(env.get("GUNICORN_REUSE_PORT", "").strip()),
        graceful_timeout=_int(env, "GUNICORN_GRACEFUL_TIMEOUT", 25, maximum=MAX_SECONDS),
        **_gunicorn(env),
        **_granian(env),
    )
