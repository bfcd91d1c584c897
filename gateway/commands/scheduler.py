"""``gateway scheduler [--once] [--history]``: run due jobs until stopped (SIGTERM finishes the
current batch and exits cleanly)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from ..errors import EXIT_OK, EXIT_PROBLEMS


@click.command("scheduler")
@click.option("--once", is_flag=True, help="Run what is due now, then exit (for cron and tests).")
@click.option(
    "--poll",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds between looks at the schedules.",
)
@click.option(
    "--history",
    is_flag=True,
    help="Print the run history instead (status, counts, duration, mapping).",
)
@click.option("--job", help="With --history: only this job.")
@click.option(
    "--limit", type=int, default=20, show_default=True, help="With --history: how many runs."
)
@click.pass_obj
def scheduler_command(
    lazy: Any, once: bool, poll: float, history: bool, job: str | None, limit: int
) -> None:
    """Run the jobs that have a `schedule`, each due time exactly once across every scheduler
    process sharing the store."""
    site = lazy.site
    if history:
        from ..sync import recent_runs

        for r in recent_runs(site, job, limit):
            duration = f"{r.duration_s:.1f} s" if r.duration_s is not None else "-"
            click.echo(
                f"{r.id}\t{r.job}\t{r.kind}\t{r.status}\t{r.started_at:%Y-%m-%d %H:%M:%S}Z\t{duration}\t"
                f"read {r.read} ins {r.inserted} upd {r.updated} unch {r.unchanged} "
                f"quar {r.quarantined} rem {r.removed}\tmapping {r.mapping_name} {r.mapping_version}"
                + (f"\t{r.error}" if r.error else "")
            )
        return
    from ..scheduler import Scheduler
    from .sync import LineProgress, stop_on_signals

    logging.basicConfig(
        level=site.settings.gateway.log_level,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    with stop_on_signals() as stop:
        scheduler = Scheduler(site, poll_s=poll, stop=stop, progress=LineProgress(every_s=30.0))
        if once:
            summaries = scheduler.run_once()
            for s in summaries:
                click.echo(s.line())
            problems = any(s.quarantined or s.status != "succeeded" for s in summaries)
            sys.exit(EXIT_PROBLEMS if problems else EXIT_OK)
        scheduler.run_forever()
