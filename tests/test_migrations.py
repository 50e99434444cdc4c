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
from tests.services import create_postgres_database


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
