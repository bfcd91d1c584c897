"""``gateway match``: run the comparisons, print the monthly figures, write the lists."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from ..errors import EXIT_PROBLEMS, GatewayError


def _site(obj: object):
    from ..site import LazySite

    return obj.site if isinstance(obj, LazySite) else obj


@click.command("match")
@click.option(
    "--as-of",
    "as_of",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Date the comparison is for (YYYY-MM-DD; default today). Ages count at the cut-off of its school year.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the lists to this file (.xlsx workbook or .json); '-' with --format json for stdout.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["xlsx", "json"]), help="Default: from the --out suffix."
)
@click.option(
    "--reveal",
    is_flag=True,
    help='Full names and ID numbers (needs [match] permissions = ["reveal"]; audited).',
)
@click.option(
    "--run",
    "run_id",
    type=int,
    help="Write a stored run's lists instead of running the comparisons again.",
)
@click.option(
    "--keep-months",
    type=click.IntRange(min=1),
    help="After the run, delete the list rows of older runs, keeping the last run of each of the "
    "newest N months (counts stay for the trend).",
)
@click.option(
    "--deliver/--no-deliver",
    default=None,
    help="Write the student flags to [match] flags_target. Default: after a new run when a "
    "target is configured; with --run only when asked (re-delivers that run).",
)
@click.pass_obj
def match_command(
    obj: object,
    as_of: dt.datetime | None,
    out: Path | None,
    fmt: str | None,
    reveal: bool,
    run_id: int | None,
    keep_months: int | None,
    deliver: bool | None,
) -> None:
    """Compare the student roster with the registries: flags, children out of school, home
    teaching, rosters, aid gaps and the monthly counts (kept in the store for the trend)."""
    from .. import match, match_delivery, match_report

    site = _site(obj)
    to_stdout = out is not None and str(out) == "-"
    if fmt is None:
        fmt = "json" if out is not None and (to_stdout or out.suffix.lower() == ".json") else "xlsx"
    if to_stdout and fmt != "json":
        raise click.UsageError("--out - writes JSON only (--format json)")
    if reveal and out is None:
        raise click.UsageError("--reveal needs --out: it only changes what the written lists show")
    if run_id is not None and as_of is not None:
        raise click.UsageError(
            "--run writes a stored run; --as-of starts a new one: give one of them"
        )
    flags_target = site.settings.match.flags_target
    if deliver and not flags_target:
        raise click.UsageError(
            "--deliver needs [match] flags_target: the system the student flags are written to"
        )
    if deliver is None:
        deliver = bool(flags_target) and run_id is None
    actor = match.default_actor()
    if reveal:
        match_report.check_reveal(site, actor)  # before any work; the refusal is audited
    if deliver:
        match_delivery.check_target(site)  # a wrong target fails before the run, not after
    echo = (lambda text: click.echo(text, err=True)) if to_stdout else click.echo

    if run_id is None:
        run = match.run_match(site, as_of.date() if as_of else None, actor=actor)
    else:
        run = match.get_run(site, run_id)
        if run.status != "ok":
            raise GatewayError(f"match run {run_id} {run.status}: {run.error or 'no lists'}")
    echo(
        f"match run {run.run_id}: as of {run.as_of}, ages {run.youngest}-{run.oldest} at {run.cutoff}"
        + (f", compared with run {run.previous_run_id}" if run.previous_run_id else ", first run")
    )
    width = max(len(name) for name in match.LISTS)
    echo(f"  {'list':<{width}}  {'count':>8}  {'new':>6}  {'resolved':>8}")
    for name in match.LISTS:
        c = run.counts.get(name, match.ListCount(0, 0, 0))
        echo(
            f"  {name:<{width}}  {c.count:>8}  {c.new:>6}  {c.resolved:>8}  {match.LISTS[name].title}"
        )
    if run.aid_dataset is None:
        echo("  (aid_gaps: no [match] aid_dataset configured)")

    if out is not None:
        target = sys.stdout if to_stdout else out
        result = match_report.export(site, run, target, fmt=fmt, actor=actor, reveal=reveal)
        where = "stdout" if to_stdout else str(out)
        shown = "names and IDs revealed" if reveal else "IDs masked"
        echo(
            f"wrote {sum(result.rows.values())} rows about {result.subject_count} people to {where} ({fmt}, {shown})"
        )
        if result.unopened:
            echo(
                f"warning: {result.unopened} sealed names/IDs did not open (check the keyring); shown empty"
            )
    outbox = site.settings.match.township_outbox
    if outbox and run_id is None:
        files = match_report.write_township_files(site, run, site.path(outbox), actor=actor)
        echo(f"wrote {len(files)} township files to {site.path(outbox) / run.period}")
    delivery = None
    if deliver:
        delivery = match_delivery.deliver_flags(site, run, actor=actor)
        echo(delivery.line())
    if keep_months is not None:
        deleted = match.prune_rows(site, keep_months=keep_months)
        echo(f"pruned {deleted} list rows of runs older than the last {keep_months} months")
    if delivery is not None and delivery.skipped:
        click.get_current_context().exit(EXIT_PROBLEMS)  # students whose flags were not sent
