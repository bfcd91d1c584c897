"""``gateway sync JOB [--dry-run] [--full]``: run one job now, with a progress bar on a terminal."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from ..errors import EXIT_OK, EXIT_PROBLEMS


class BarProgress:
    """A rich progress bar on stderr: rows, rows/s and, when the source knows its size, the ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task: Any = None

    def start(self, summary: Any) -> None:
        self._bar.start()
        self._task = self._bar.add_task(summary.job, total=summary.total, rate="-")

    def advance(self, summary: Any) -> None:
        rate = f"{summary.read / summary.duration_s:,.0f}" if summary.duration_s > 0 else "-"
        self._bar.update(self._task, completed=summary.read, rate=rate)

    def finish(self, summary: Any) -> None:
        if self._task is not None:
            self._bar.update(
                self._task, completed=summary.read, total=summary.total or summary.read
            )
        self._bar.stop()


class LineProgress:
    """Plain lines on stderr (not a terminal: cron, CI, a log file), at most one every few seconds."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self._last = 0.0

    def start(self, summary: Any) -> None:
        total = f" of {summary.total}" if summary.total else ""
        resumed = f", resuming run {summary.resumed_from}" if summary.resumed_from else ""
        click.echo(
            f"{summary.job}: started (run {summary.run_id or '-'}{resumed}){total}", err=True
        )
        self._last = time.monotonic()

    def advance(self, summary: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        rate = summary.read / summary.duration_s if summary.duration_s > 0 else 0.0
        total = f"/{summary.total}" if summary.total else ""
        click.echo(f"{summary.job}: {summary.read}{total} rows, {rate:,.0f} rows/s", err=True)

    def finish(self, summary: Any) -> None:
        pass


def make_progress() -> BarProgress | LineProgress:
    return BarProgress() if sys.stderr.isatty() else LineProgress()


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM (and a first Ctrl-C) ask the run to stop after its current batch; a second Ctrl-C
    interrupts at once (the uncommitted batch rolls back and is read again next time)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT and stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("stopping after the current batch (Ctrl-C again to stop at once)", err=True)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@click.command("sync")
@click.argument("job")
@click.option(
    "--dry-run", is_flag=True, help="Read, map and compare; print the counts; write nothing."
)
@click.option(
    "--full", is_flag=True, help="Ignore the saved cursor: read the source from its start."
)
@click.pass_obj
def sync_command(lazy: Any, job: str, dry_run: bool, full: bool) -> None:
    """Run one job now: read, map, protect, store the changes, deliver them to the targets.

    Exit 1 when rows were quarantined or the run did not finish, 0 otherwise, 2 for a config error.
    """
    from ..sync import run_job

    site = lazy.site
    with stop_on_signals() as stop:
        summary = run_job(
            site, job, dry_run=dry_run, full=full, progress=make_progress(), stop=stop
        )
    click.echo(summary.line())
    if summary.error:
        click.echo(f"{job}: {summary.error}", err=True)
    if summary.quarantined:
        click.echo(
            f"{summary.quarantined} row(s) quarantined: see `gateway quarantine list --job {job}`",
            err=True,
        )
    sys.exit(EXIT_PROBLEMS if summary.quarantined or summary.status != "succeeded" else EXIT_OK)
