"""Alembic environment: the URL comes from the app's settings (see app/cli.py), or from
a connection handed in by tests through `config.attributes["connection"]`."""

from alembic import context
from sqlalchemy import create_engine, pool, text

from app.models import Base

config = context.config
target_metadata = Base.metadata
# Every replica's entrypoint runs `db upgrade`; on PostgreSQL the first to start takes this
# transaction-level advisory lock and the others wait for its commit, then find the schema
# at head. (Without it, replicas starting together collide creating the same tables.)
MIGRATION_LOCK_ID = 0x7461736B67617465  # "taskgate"


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:
    # render_as_batch lets ALTERs work on SQLite too (it rebuilds the table).
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Not app.db's engine: migrations run in one transaction (its DDL, and the advisory lock
    # held until its commit), and need no pool.
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
