"""Alembic environment: runs on the engine handed over by gateway.store.migrate."""

from __future__ import annotations

from alembic import context

from gateway.store import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs table copies for ALTER
        compare_type=True,
    )
    context.run_migrations()
