"""The flask CLI: migrations and development tokens."""

from __future__ import annotations

import jwt as pyjwt

from app.factory import create_app
from tests.conftest import SECRET, bearer


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
