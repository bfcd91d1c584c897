"""``gateway db``: the store's schema."""

from __future__ import annotations

import click
from sqlalchemy import Engine

from ..store import migrate


@click.group("db")
def db_group() -> None:
    """The store database: migrations."""


@db_group.command("upgrade")
@click.pass_obj
def upgrade(site) -> None:
    """Apply the store's migrations (safe to run on a live site: only adds what is missing)."""
    before, after = migrate.upgrade(site.engine)
    if before == after:
        click.echo(f"store is current (revision {after})")
    else:
        click.echo(f"store upgraded: {before or 'empty'} -> {after}")
    for name in rebuild_deferred_indexes(site.engine):
        click.echo(f"index rebuilt: {name} (left out by an interrupted first ingest)")


def rebuild_deferred_indexes(engine: Engine) -> list[str]:
    """Build the dataset indexes a killed SQLite bulk load left out (gateway/sync_store.py); the
    next sync of that table would build them too, but match and the API want them now."""
    from ..store.records import DATASET_MODELS
    from ..sync_store import DatasetTable

    built: list[str] = []
    with engine.begin() as conn:
        for model in DATASET_MODELS.values():
            table = DatasetTable(model.__table__, engine.dialect.name, engine.dialect)
            built += table.create_missing_indexes(conn)
    return built


@db_group.command("status")
@click.pass_obj
def status(site) -> None:
    """Show the store's revision and whether migrations are pending (exit 1 if so)."""
    current, head = migrate.current_revision(site.engine), migrate.head_revision()
    click.echo(f"current: {current or 'empty'}\nhead:    {head}")
    if current != head:
        click.echo("migrations pending: run `gateway db upgrade`")
        raise SystemExit(1)
