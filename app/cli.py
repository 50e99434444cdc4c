"""The `flask` command line (CONTRACT §5): `db`, `token` and `revoke` groups."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import jwt as pyjwt
from alembic import command
from alembic.config import Config
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy.exc import DBAPIError

from app.errors import ApiError
from app.revocation.layout import BUCKETS
from app.revocation.records import Record
from app.revocation.store import RevocationStore
from app.security.policy import claims_for_revocation
from app.security.tokens import is_identifier, token_digest
from app.services import services

log = logging.getLogger("taskgate.db")
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

db_cli = AppGroup("db", help="Database migrations (Alembic).")
token_cli = AppGroup("token", help="Development tokens.")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's ini interpolation treats % specially (URL-encoded passwords).
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def _config() -> Config:
    return alembic_config(services().settings.database_url)


@contextmanager
def command_errors() -> Iterator[None]:
    """A database that cannot be reached or refuses a statement, or what a request would get as
    an API error (Redis unavailable: a 503; a token that cannot be read), is one line and exit
    status 1, not a traceback."""
    try:
        yield
    except DBAPIError as error:
        reason = (str(error.orig).strip().splitlines() or [""])[0]
        raise click.ClickException(f"the database failed: {type(error.orig).__name__}: {reason}") from None
    except ApiError as error:
        raise click.ClickException(error.detail) from None


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    with command_errors():
        command.upgrade(_config(), revision)


@db_cli.command("wait")
@click.option("--timeout", "seconds", default=60, show_default=True, type=click.IntRange(0, 3600),
              help="Give up after this many seconds (0: one attempt).")
def db_wait(seconds: int) -> None:
    """Wait until the database accepts a connection (the image's entrypoint, before migrating).
    Each attempt is a JSON log line; exit status 1 when it gives up."""
    database, started = services().database, time.monotonic()
    for attempt in itertools.count(1):
        problem = database.reachable()
        waited = time.monotonic() - started
        fields = {"attempt": attempt, "seconds": round(waited, 1)}
        if problem is None:
            log.info("the database is reachable", extra={"fields": fields})
            return
        if waited + 2 > seconds:
            log.error("the database is still unreachable: giving up", extra={"fields": {**fields, "error": problem}})
            raise SystemExit(1)
        log.warning("the database is not ready", extra={"fields": {**fields, "error": problem}})
        time.sleep(2)


@db_cli.command("downgrade")
@click.argument("revision", default="-1")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (default: one step)."""
    with command_errors():
        command.downgrade(_config(), revision)


@db_cli.command("current")
def db_current() -> None:
    """Show the revision the database is at."""
    with command_errors():
        command.current(_config(), verbose=False)


@db_cli.command("history")
def db_history() -> None:
    """List the migrations."""
    command.history(_config())


@db_cli.command("revision")
@click.option("-m", "--message", required=True)
@click.option("--autogenerate", is_flag=True, help="Diff the models against the database.")
def db_revision(message: str, autogenerate: bool) -> None:
    """Create a new migration script."""
    with command_errors():
        command.revision(_config(), message=message, autogenerate=autogenerate)


def mint_token(
    secret: str,
    user_id: str,
    *,
    admin: bool = False,
    email: str | None = None,
    name: str | None = None,
    ttl: int = 3600,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """An HS256 token shaped like the one a Better Auth frontend signs with its secret."""
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user_id,
        "email": email or f"{user_id}@example.com",
        "name": name or user_id,
        "role": "admin" if admin else "user",
        "iat": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return pyjwt.encode(claims, secret, algorithm="HS256")


@token_cli.command("mint")
@click.argument("user_id")
@click.option("--admin", is_flag=True, help="Give the token role=admin.")
@click.option("--email", default=None)
@click.option("--name", default=None)
@click.option("--ttl", default=3600, show_default=True, type=click.IntRange(1, 604800), help="Seconds.")
def token_mint(user_id: str, admin: bool, email: str | None, name: str | None, ttl: int) -> None:
    """Print an HS256 token for USER_ID signed with BETTER_AUTH_SECRET (not in production)."""
    settings = services().settings
    if settings.is_production:
        raise click.ClickException("token mint is refused when APP_ENV=production")
    if "HS256" not in settings.algorithms or not settings.secret:
        raise click.ClickException("token mint needs HS256 and BETTER_AUTH_SECRET")
    click.echo(mint_token(settings.secret, user_id, admin=admin, email=email, name=name, ttl=ttl,
                          issuer=settings.issuer, audience=settings.audience))


revoke_cli = AppGroup("revoke", help="Revoke tokens (recorded in the audit log as done by the CLI).")
REASON = click.option("--reason", default=None, help="Why, for the audit log.")


def _revoke(action: Callable[[RevocationStore], Record], *ids: str) -> None:
    for value in ids:
        if not is_identifier(value):
            raise click.ClickException("an id is 1-255 printable characters")
    with command_errors():
        record = action(services().store)
    click.echo(f"revoked {record.kind} {record.target} (until {record.expires_at.isoformat()})")


@revoke_cli.command("user")
@click.argument("user_id")
@REASON
def revoke_user(user_id: str, reason: str | None) -> None:
    """Revoke every token of USER_ID issued up to now."""
    _revoke(lambda store: store.revoke_user(user_id, "cli", reason), user_id)


@revoke_cli.command("session")
@click.argument("sid")
@REASON
def revoke_session(sid: str, reason: str | None) -> None:
    """Revoke every token carrying the session id SID."""
    _revoke(lambda store: store.revoke_session(sid, "cli", reason), sid)


@revoke_cli.command("token")
@click.argument("jti_or_token")
@REASON
def revoke_token(jti_or_token: str, reason: str | None) -> None:
    """Revoke one token, given its jti or the token itself."""
    if jti_or_token.count(".") == 2:
        with command_errors():
            claims = claims_for_revocation(jti_or_token, services().settings, services().keys)
        _revoke(lambda store: store.revoke_token(claims, token_digest(claims), "cli", reason))
    else:
        _revoke(lambda store: store.revoke_jti(jti_or_token, "cli", reason), jti_or_token)


@revoke_cli.command("client")
@click.argument("client_id")
@REASON
def revoke_client(client_id: str, reason: str | None) -> None:
    """Revoke every OAuth access token of the app CLIENT_ID issued up to now, for every user."""
    _revoke(lambda store: store.revoke_client(client_id, "cli", reason), client_id)


@revoke_cli.command("grant")
@click.argument("user_id")
@click.argument("client_id")
@REASON
def revoke_grant(user_id: str, client_id: str, reason: str | None) -> None:
    """Revoke USER_ID's OAuth access tokens of the app CLIENT_ID issued up to now."""
    _revoke(lambda store: store.revoke_grant(user_id, client_id, "cli", reason), user_id, client_id)


@revoke_cli.command("prune")
@click.option("--keep-days", default=30, show_default=True, type=click.IntRange(0, 36500),
              help="Keep this many days of history after a revocation stops mattering.")
def revoke_prune(keep_days: int) -> None:
    """Delete audit rows that can no longer affect any token (expired more than KEEP_DAYS ago)."""
    with command_errors():
        deleted = services().store.prune(keep_days * 86400)
    click.echo(f"deleted {deleted} revocation records that expired more than {keep_days} days ago")


@revoke_cli.command("verify")
def revoke_verify() -> None:
    """Check every bucket of Redis against the audit table now, and repair those that differ
    (after restoring Redis or the database; every instance also does it on its own)."""
    with command_errors():
        repaired = services().store.verify()
    named = f": {', '.join(map(str, repaired))}" if repaired else ""
    click.echo(f"Redis verified against the audit table: {BUCKETS} buckets, {len(repaired)} repaired{named}")


def register_cli(app: Flask) -> None:
    app.cli.add_command(db_cli)
    app.cli.add_command(token_cli)
    app.cli.add_command(revoke_cli)
