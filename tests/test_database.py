"""The connection pool on real PostgreSQL: idle connections are pinged before use, so a
server restart costs nothing to the first request after a quiet spell; a connection that
dies while in constant use costs one 503, never a wrong answer, and the pool recovers."""

from __future__ import annotations

import importlib

import pytest
import sqlalchemy as sa

from app.services import services

db_module = importlib.import_module("app.db")  # `app.db` the attribute is the Database extension

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def kill_app_connections(database_url: str) -> int:
    """pg_terminate_backend every other session on the app's database (a restart, as the pool sees it)."""
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        killed = connection.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
    engine.dispose()
    return killed


def test_an_idle_connection_that_died_is_replaced_before_use(client, as_user, database_url, monkeypatch):
    assert client.get("/api/v1/tasks", headers=as_user("alice")).status_code == 200
    assert kill_app_connections(database_url) >= 1
    monkeypatch.setattr(db_module, "PING_IF_IDLE_SECONDS", 0.0)  # every pooled connection counts as idle
    response = client.get("/api/v1/tasks", headers=as_user("alice"))
    assert response.status_code == 200, response.get_json()


def test_a_connection_that_died_in_use_costs_one_503_then_the_pool_recovers(client, as_user, database_url,
                                                                              monkeypatch):
    assert client.post("/api/v1/tasks", json={"title": "kept"}, headers=as_user("alice")).status_code == 201
    monkeypatch.setattr(db_module, "PING_IF_IDLE_SECONDS", 3600.0)  # never pinged
    assert kill_app_connections(database_url) >= 1
    failed = client.get("/api/v1/tasks", headers=as_user("alice"))
    assert failed.status_code == 503
    assert failed.get_json()["code"] == "service_unavailable"
    recovered = client.get("/api/v1/tasks", headers=as_user("alice"))
    assert recovered.status_code == 200
    assert [task["title"] for task in recovered.get_json()] == ["kept"]


def test_concurrent_toggles_never_lose_a_flip(client, as_user, app):
    """Toggle is one UPDATE ... RETURNING: 20 toggles from 4 threads leave the task as it began."""
    from concurrent.futures import ThreadPoolExecutor

    headers = as_user("alice")
    task_id = client.post("/api/v1/tasks", json={"title": "flip"}, headers=headers).get_json()["id"]

    def toggle(_: int) -> int:
        return app.test_client().patch(f"/api/v1/tasks/{task_id}/complete", headers=headers).status_code

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(toggle, range(20))) == {200}
    assert client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()["completed"] is False


def test_a_statement_on_tasks_not_scoped_by_owned_is_refused(app):
    import sqlalchemy as sa

    from app.models import Task
    from app.tasks import OwnedTasks

    tasks = OwnedTasks(services(app).database, "alice")
    with pytest.raises(RuntimeError, match="not scoped to its owner"):
        tasks._run(sa.select(Task.id))
