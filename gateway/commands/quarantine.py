"""``gateway quarantine list|show|replay``: rows that could not be stored, ID numbers masked."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import EXIT_OK, EXIT_PROBLEMS


@click.group("quarantine")
def quarantine_group() -> None:
    """Rows that could not be stored: where they came from, why, and replaying them."""


@quarantine_group.command("list")
@click.option("--job", help="Only this job's rows.")
@click.option("--reason", help="Only this reason code (bad_check_digit, duplicate, required...).")
@click.option(
    "--status",
    type=click.Choice(["open", "resolved", "superseded", "all"]),
    default="open",
    show_default=True,
)
@click.option("--limit", type=int, default=1000, show_default=True)
@click.pass_obj
def list_command(lazy: Any, job: str | None, reason: str | None, status: str, limit: int) -> None:
    """One line per quarantined row: id, job, run, position, field, reason, message."""
    from ..quarantine import list_rows

    rows = list_rows(
        lazy.site, job=job, reason=reason, status=None if status == "all" else status, limit=limit
    )
    for q in rows:
        click.echo(
            f"{q.id}\t{q.job}\trun {q.run_id}\t{q.position}\t{q.field or '-'}\t{q.reason}\t{q.status}\t{q.message}"
        )
    click.echo(f"{len(rows)} row(s)", err=True)


@quarantine_group.command("show")
@click.argument("row_id", type=int)
@click.pass_obj
def show_command(lazy: Any, row_id: int) -> None:
    """The quarantined row with its native values (ID numbers masked) and why it was refused."""
    from ..quarantine import show_row

    shown = show_row(lazy.site, row_id)
    click.echo(f"id:       {shown.id} ({shown.status}, {shown.attempts} attempt(s))")
    click.echo(f"job:      {shown.job} (run {shown.run_id}; {shown.source} -> {shown.dataset})")
    click.echo(f"position: {shown.position}")
    click.echo(f"reason:   {shown.reason} ({shown.stage}) on {shown.field or '-'}: {shown.message}")
    click.echo("row:")
    width = max((len(k) for k in shown.row), default=0)
    for key, value in shown.row.items():
        click.echo(f"  {key.ljust(width)}  {'' if value is None else value}")


@quarantine_group.command("replay")
@click.option("--job", help="Only this job's rows.")
@click.argument("row_ids", type=int, nargs=-1)
@click.pass_obj
def replay_command(lazy: Any, job: str | None, row_ids: tuple[int, ...]) -> None:
    """Run open quarantined rows through the current mapping again (e.g. after fixing it).
    Exit 1 if some rows are still quarantined."""
    from ..quarantine import replay

    summaries = replay(lazy.site, job=job, row_ids=row_ids)
    if not summaries:
        click.echo("nothing to replay")
    still = 0
    for s in summaries:
        resolved = s.inserted + s.updated + s.unchanged
        click.echo(
            f"{s.job}: replay run {s.run_id}: {s.read} row(s): {resolved} resolved, {s.quarantined} still quarantined"
        )
        still += s.quarantined
    sys.exit(EXIT_PROBLEMS if still else EXIT_OK)
