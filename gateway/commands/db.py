"""``gateway db``: the store's schema."""

from __future__ import annotations

import click

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


@db_group.command("status")
@click.pass_obj
def status(site) -> None:
    """Show the store's revision and whether migrations are pending (exit 1 if so)."""
    current, head = migrate.current_revision(site.engine), migrate.head_revision()
    click.echo(f"current: {current or 'empty'}\nhead:    {head}")
    if current != head:
        click.echo("migrations pending: run `gateway db upgrade`")
        raise SystemExit(1)
