"""What a production start does with each setting that could weaken a promise: refused in one
line (ConfigError, exit 78 from serve.py and wsgi.py), warned once at start, or accepted; and
every setting the readers take is documented, as every documented one is read."""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import MIN_SECRET_BITS, ConfigError, entropy_bits, load_server_settings, load_settings
from tests.conftest import PRODUCTION
from tests.support.servers import ROOT

REFUSED = [
    ({"JWT_LEEWAY_SECONDS": "86400"}, "JWT_LEEWAY_SECONDS must be at most 300, got 86400"),
    ({"JWT_MAX_AGE_SECONDS": "315360000"}, "JWT_MAX_AGE_SECONDS must be at most 604800, got 315360000"),
    ({"LOGOUT_TOKEN_MAX_AGE_SECONDS": "31536000"}, "LOGOUT_TOKEN_MAX_AGE_SECONDS must be at most 3600"),
    ({"REDIS_SOCKET_TIMEOUT": "120"}, "REDIS_SOCKET_TIMEOUT must be at most 5, got 120"),
    ({"REVOCATION_SYNC_SECONDS": "86400"}, "REVOCATION_SYNC_SECONDS must be at most 60, got 86400"),
    ({"DB_STATEMENT_TIMEOUT_MS": "3600000"}, "DB_STATEMENT_TIMEOUT_MS must be at most 60000"),
    ({"JWKS_CACHE_SECONDS": "604800"}, "JWKS_CACHE_SECONDS must be at most 86400"),
    ({"JWKS_TIMEOUT_SECONDS": "60"}, "JWKS_TIMEOUT_SECONDS must be at most 10"),
    ({"JWKS_MIN_REFETCH_SECONDS": "3600"}, "JWKS_MIN_REFETCH_SECONDS must be at most 300"),
    ({"MAX_CONTENT_LENGTH": str(1 << 30)}, "MAX_CONTENT_LENGTH must be at most 1048576"),
    ({"PROXY_HOPS": "10"}, "PROXY_HOPS must be at most 5"),
    ({"BETTER_AUTH_SECRET": "a" * 32}, "BETTER_AUTH_SECRET looks guessable"),
    ({"BETTER_AUTH_SECRET": "ab" * 32}, "BETTER_AUTH_SECRET looks guessable"),
    ({"BETTER_AUTH_SECRET": "too-short"}, "BETTER_AUTH_SECRET is shorter than 32 bytes"),
    ({"BETTER_AUTH_SECRET": "abcdefgh" * 4}, "BETTER_AUTH_SECRET looks guessable"),
    ({"BETTER_AUTH_SECRET": "0123456789abcdef" * 2}, "BETTER_AUTH_SECRET looks guessable"),
    ({"BETTER_AUTH_SECRET": "Summer2026!" * 3}, "BETTER_AUTH_SECRET looks guessable"),
    ({"METRICS_TOKEN": "a" * 16}, "METRICS_TOKEN looks guessable"),
    ({"METRICS_TOKEN": "0123456789abcdef"}, "METRICS_TOKEN looks guessable"),
    ({"METRICS_TOKEN": "short"}, "METRICS_TOKEN must be at least 16 characters"),
    ({"BETTER_AUTH_SECRET": ""}, "BETTER_AUTH_SECRET is required"),
    ({"BETTER_AUTH_SECRET": "change-me-to-at-least-32-random-bytes"}, "placeholder"),
    ({"DATABASE_URL": ""}, "DATABASE_URL is required"),
    ({"DATABASE_URL": "sqlite:///x.db"}, "SQLite"),
    ({"REDIS_URL": ""}, "REDIS_URL is required"),
    ({"FLASK_DEBUG": "1"}, "debug"),
    ({"JWKS_URL": "file:///etc/passwd", "JWT_ALGORITHMS": "EdDSA"}, "http"),
]

WARNED = [
    ({"JWT_ISSUER": ""}, "JWT_ISSUER is empty"),
    ({"JWT_AUDIENCE": ""}, "JWT_AUDIENCE is empty"),
    ({"RATE_LIMITS_ENABLED": "false"}, "RATE_LIMITS_ENABLED is off"),
    ({"RATE_LIMIT_AUTH_FAILURES": "1000000/second"}, "RATE_LIMIT_AUTH_FAILURES is 1000000/second"),
    ({"METRICS_TOKEN": ""}, "METRICS_TOKEN is not set"),
    ({"LOG_LEVEL": "debug"}, "LOG_LEVEL is DEBUG in production"),
    ({"JWKS_URL": "http://auth.example.com/jwks"}, "JWKS_URL is plain http"),
    ({"JWKS_URL": "https://auth.example.com/jwks"}, "BETTER_AUTH_SECRET is set but HS256 is not accepted"),
]


def start(tmp_path: Path, **change: str):
    return load_settings({**PRODUCTION, **change}, tmp_path)


def test_the_baseline_starts_without_a_warning(tmp_path):
    assert start(tmp_path).warnings == ()


@pytest.mark.parametrize("change,message", REFUSED, ids=[next(iter(c)) for c, _ in REFUSED])
def test_a_setting_that_breaks_a_promise_is_refused_in_one_line(tmp_path, change, message):
    with pytest.raises(ConfigError) as refused:
        start(tmp_path, **change)
    assert message in str(refused.value) and "\n" not in str(refused.value), str(refused.value)


UNREADABLE = [
    ("REDIS_URL", "memcached://127.0.0.1:11211"), ("REDIS_URL", "redis://127.0.0.1:notaport/0"),
    ("REDIS_URL", "redis:///0"), ("REDIS_URL", "redis://127.0.0.1:6379/zero"),
    ("DATABASE_URL", "mysql://u:hunter2pass@127.0.0.1/x"), ("DATABASE_URL", "postgres://u:hunter2pass@127.0.0.1/x"),
    ("DATABASE_URL", "postgresql+asyncpg://u:hunter2pass@127.0.0.1/x"),
    ("DATABASE_URL", "postgresql://u:hunter2pass@127.0.0.1:notaport/x"), ("DATABASE_URL", "127.0.0.1:5432"),
    ("DATABASE_URL", "postgresql://u:hunter2pass@[/x"), ("DATABASE_URL", "postgresql://u:hunter2pass@127.0.0.1:65536/x"),
    ("DATABASE_URL", "postgresql://u:hunter2pass@db host/x"),
    ("LOG_LEVEL", "verbose"),
]


@pytest.mark.parametrize(("name", "value"), UNREADABLE, ids=[f"{n}={v}" for n, v in UNREADABLE])
def test_a_value_that_cannot_be_read_is_a_one_line_error_that_quotes_no_password(name, value):
    env = {**os.environ, **PRODUCTION, name: value}  # nothing to warn of: the error is the one line
    result = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 78, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"taskgate: configuration error: {name}"), result.stderr
    assert "Traceback" not in result.stderr and "hunter2pass" not in result.stderr, result.stderr


def test_the_servers_log_level_is_one_of_logging_s_levels():
    with pytest.raises(ConfigError, match="GUNICORN_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        load_server_settings({"GUNICORN_LOG_LEVEL": "loud"})
    assert load_server_settings({"LOG_LEVEL": "Warning"}).log_level == "warning"


@pytest.mark.parametrize("change,message", WARNED, ids=[next(iter(c)) for c, _ in WARNED])
def test_a_setting_that_weakens_production_is_said_once_at_start(tmp_path, change, message):
    warnings = start(tmp_path, **change).warnings
    assert [w for w in warnings if message in w] == [next(w for w in warnings if message in w)], warnings


@pytest.mark.parametrize("change", [
    {"JWT_LEEWAY_SECONDS": "300"}, {"JWT_MAX_AGE_SECONDS": "604800"}, {"REDIS_SOCKET_TIMEOUT": "5"},
    {"REVOCATION_SYNC_SECONDS": "60"}, {"BETTER_AUTH_SECRET": "9f3c1a7e5b2d48c6a0e4f7b19d3c5a82"},
    {"METRICS_TOKEN": "f3a9c21e7b5d4068"},
], ids=lambda change: next(iter(change)))
def test_the_bounds_themselves_are_accepted(tmp_path, change):
    assert start(tmp_path, **change).warnings == ()


def test_a_jwks_leaves_hs256_closed_unless_named(tmp_path):
    jwks = {"JWKS_URL": "https://auth.example.com/jwks"}
    assert "HS256" not in start(tmp_path, **jwks).algorithms
    assert "HS256" in start(tmp_path, **jwks, JWT_ALGORITHMS="HS256,EdDSA").algorithms


def test_the_same_bounds_hold_in_development(tmp_path):
    with pytest.raises(ConfigError, match="JWT_LEEWAY_SECONDS must be at most 300"):
        load_settings({"APP_ENV": "development", "JWT_LEEWAY_SECONDS": "86400"}, tmp_path)
    weak = load_settings({"APP_ENV": "development", "BETTER_AUTH_SECRET": "a" * 32}, tmp_path)
    assert any("looks guessable" in warning and "would refuse" in warning for warning in weak.warnings)


@pytest.mark.parametrize("weak", ["a" * 64, "ab" * 32, "abcd" * 12, "0123456789abcdef" * 4, "Summer2026!" * 3,
                                  "Summer2026!Summer2026!" + "zyxwvutsrq", "passwordpassword1234567890"])
def test_repeats_runs_and_short_alphabets_are_estimated_below_what_production_accepts(weak):
    assert entropy_bits(weak) < MIN_SECRET_BITS, f"{weak!r}: {entropy_bits(weak):.1f} bits"


@pytest.mark.parametrize("make", [lambda: secrets.token_hex(16), lambda: secrets.token_hex(32),
                                  lambda: secrets.token_urlsafe(32),
                                  lambda: base64.b64encode(secrets.token_bytes(32)).decode()])
def test_random_secrets_of_the_documented_sizes_pass(make):
    estimates = sorted(entropy_bits(make()) for _ in range(2000))
    assert estimates[0] >= MIN_SECRET_BITS, f"lowest of 2000 random secrets: {estimates[0]:.1f} bits"


class Reading(dict):
    """An environment that notes every name a settings reader looks up."""

    def __init__(self, values: dict[str, str], read: set[str]) -> None:
        super().__init__(values)
        self.read = read

    def get(self, name, default=None):
        self.read.add(name)
        return super().get(name, default)

    def __getitem__(self, name):
        self.read.add(name)
        return super().__getitem__(name)

    def __contains__(self, name):
        self.read.add(name)
        return super().__contains__(name)


def test_every_setting_read_is_documented_and_every_documented_one_is_read(tmp_path):
    read: set[str] = set()
    oauth = {**PRODUCTION, "BETTER_AUTH_SECRET": "", "JWKS_URL": "https://auth.example.com/jwks",
             "OAUTH_RESOURCE_URL": "https://api.example.com", "OAUTH_ISSUER": "https://auth.example.com/api/auth"}
    for env in ({"APP_ENV": "development"}, PRODUCTION, oauth):
        load_settings(Reading(env, read), tmp_path)
    for env in ({}, {"SERVER": "granian"}):
        load_server_settings(Reading(env, read))
    documents = (ROOT / "README.md").read_text() + (ROOT / "docs" / "DEPLOY.md").read_text()
    undocumented = sorted(name for name in read if f"`{name}`" not in documents)
    assert len(read) > 50 and not undocumented, f"settings read ({len(read)}) that no document names: {undocumented}"
    rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", documents, re.MULTILINE))
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()  # the image's own, read before Python starts
    stale = [name for name in rows - read if name not in entrypoint]
    assert not stale, f"documented settings nothing reads: {stale}"
