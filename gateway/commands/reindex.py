"""``gateway keys reindex``: re-key stored rows after `gateway keys rotate` (attached to the keys
group as ``reindex_command``)."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import EXIT_OK, EXIT_PROBLEMS


@click.command("reindex")
@click.option("--batch-size", type=int, default=1000, show_default=True)
@click.pass_obj
def reindex_command(lazy: Any, batch_size: int) -> None:
    """Recompute blind indexes and re-seal stored fields under the active keys, in short batches
    (other work goes on), resumable: run it again after an interruption to go on."""
    from ..reindex import reindex
    from .sync import stop_on_signals

    def progress(table: str, counts: dict[str, int]) -> None:
        click.echo(
            f"{table}: {counts['seen']} rows looked at, {counts['rekeyed']} re-keyed", err=True
        )

    with stop_on_signals() as stop:
        summary = reindex(lazy.site, batch_size=batch_size, stop=stop, progress=progress)
    click.echo(summary.line())
    sys.exit(EXIT_OK if summary.finished else EXIT_PROBLEMS)
