"""The flask CLI: migrations, the wait for the database, and development tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import jwt as pyjwt
from sqlalchemy.engine import make_url

from app.factory import create_app
from tests.conftest import SECRET, bearer
from tests.support.servers import ROOT, TcpProxy


def test_token_mint_prints_a_token_the_api_accepts(app, client):
    result = app.test_cli_runner().invoke(args=["token", "mint", "carol", "--admin", "--ttl", "600"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    claims = pyjwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "carol" and claims["role"] == "admin" and claims["exp"] - claims["iat"] == 600
    me = client.get("/api/v1/auth/me", headers=bearer(token)).get_json()
    assert me["user_id"] == "carol" and me["is_admin"] is True


def test_token_mint_is_refused_in_production(monkeypatch):
    app = create_app({"APP_ENV": "production", "DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:1/x",
                      "REDIS_URL": "redis://127.0.0.1:1/0", "BETTER_AUTH_SECRET": SECRET})
    result = app.test_cli_runner().invoke(args=["token", "mint", "carol"])
    assert result.exit_code != 0
    assert "refused" in result.output


def test_db_upgrade_downgrade_current(tmp_path):
    app = create_app({"APP_ENV": "testing", "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
                      "BETTER_AUTH_SECRET": SECRET, "REDIS_URL": ""})
    runner = app.test_cli_runner()
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    with engine.connect() as connection:
        assert "tasks" in sa.inspect(connection).get_table_names()
    assert runner.invoke(args=["db", "downgrade", "base"]).exit_code == 0
    with engine.connect() as connection:
        assert "tasks" not in sa.inspect(connection).get_table_names()
    engine.dispose()


def flask_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    """`flask --app wsgi ...` on the database `url`."""
    env = {**os.environ, "APP_ENV": "testing", "DATABASE_URL": url, "BETTER_AUTH_SECRET": SECRET, "REDIS_URL": ""}
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_command_against_an_unreachable_database_is_one_line_that_quotes_no_password():
    for args in (["db", "upgrade"], ["db", "downgrade", "base"], ["db", "current"], ["revoke", "user", "bob"],
                 ["revoke", "verify"], ["revoke", "prune"]):
        result = flask_cli("postgresql+psycopg://taskgate:pa%24%24w0rd-s3cret@127.0.0.1:1/taskgate", *args)
        errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # JSON: warnings
        assert result.returncode == 1, (args, result.stderr)
        assert errors == [errors[0]] and errors[0].startswith("Error: the database failed: OperationalError"), \
            (args, result.stderr)
        assert "Traceback" not in result.stderr and "s3cret" not in result.stderr, (args, result.stderr)


def logged(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


def test_db_wait_returns_once_the_database_answers(postgres_url):
    proxy = TcpProxy(make_url(postgres_url).port or 5432)
    url = make_url(postgres_url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    threading.Timer(2.5, proxy.start).start()  # the database comes up while the command waits
    try:
        result = flask_cli(url, "db", "wait", "--timeout", "20")
    finally:
        proxy.stop()
    lines = logged(result)
    assert result.returncode == 0, result.stderr
    assert [line["message"] for line in lines][-1] == "the database is reachable", lines
    assert lines[-1]["attempt"] >= 2 and all(line["logger"] == "taskgate.db" for line in lines)


def test_db_wait_gives_up_in_time_and_never_prints_the_password():
    url = "postgresql+psycopg://taskgate:pa%24%24w0rd-s3cret@127.0.0.1:1/taskgate"
    started = time.monotonic()
    result = flask_cli(url, "db", "wait", "--timeout", "3")
    assert result.returncode == 1 and time.monotonic() - started < 30, result.stderr
    assert logged(result)[-1]["message"] == "the database is still unreachable: giving up"
    assert "s3cret" not in result.stdout + result.stderr and "pa$$w0rd" not in result.stderr
