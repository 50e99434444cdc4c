"""The schema comes from Alembic: it upgrades an empty database, matches the models, and
downgrades cleanly, on SQLite and on a PostgreSQL database created for the test."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.cli import alembic_config
from app.models import Base
from tests.support.services import create_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    url, drop = create_postgres_database()
    yield url
    drop()


def test_upgrade_matches_models_and_downgrades(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    engine = sa.create_engine(empty_database)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert set(sa.inspect(connection).get_table_names()) >= {"tasks", "alembic_version"}
        command.downgrade(config, "base")
        with engine.connect() as connection:
            assert sa.inspect(connection).get_table_names() == ["alembic_version"]
    finally:
        engine.dispose()


UPGRADE_AT = """
import sys, time
from alembic import command
from app.cli import alembic_config
config = alembic_config(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
command.upgrade(config, "head")
"""


def test_replicas_starting_together_migrate_once(tmp_path):
    """Every replica's entrypoint runs `db upgrade`; started at the same moment against one
    fresh PostgreSQL database, they must all succeed and leave the schema at head once."""
    import subprocess
    import sys
    import time

    url, drop = create_postgres_database()
    try:
        start_at = time.time() + 3.0  # after every process has imported alembic and the app
        processes = [subprocess.Popen([sys.executable, "-c", UPGRADE_AT, url, str(start_at)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                     for _ in range(4)]
        outputs = [process.communicate(timeout=60)[0] for process in processes]
        assert [process.returncode for process in processes] == [0, 0, 0, 0], "\n".join(outputs)
        engine = sa.create_engine(url)
        try:
            with engine.connect() as connection:
                context = MigrationContext.configure(connection)
                assert context.get_current_heads() == tuple(
                    command.ScriptDirectory.from_config(alembic_config(url)).get_heads())
        finally:
            engine.dispose()
    finally:
        drop()
