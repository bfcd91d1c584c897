"""``gateway audit``: verify the chain, search it, export it, report on one person, sign, prune.

No ID number is ever printed: searches by ID turn it into blind indexes, reports show it masked.
Looking up a person's history is itself audited (``audit.search``/``audit.subject``), as is an
export (``audit.export``); the actor is ``user:<login name>`` of whoever ran the command.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from .. import audit
from ..errors import EXIT_PROBLEMS

_ID_HELP = "ID number of the person (or - to read it from stdin, keeping it out of shell history)."


class _When(click.ParamType):
    """A date (YYYY-MM-DD) or ISO date-time; without a zone it is UTC."""

    name = "DATE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        text = str(value).strip()
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                return dt.datetime.fromisoformat(text)
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{text!r} is not a date (YYYY-MM-DD) or an ISO date-time", param, ctx)
        return parsed.astimezone(dt.UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


WHEN = _When()


def _cli_actor() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    return "user:" + (re.sub(r"[^A-Za-z0-9_.@-]", "_", name)[:80] or "unknown")


def _site(obj: Any) -> Any:
    """The Site behind the CLI's lazy handle (the config is read only when a command needs it)."""
    return getattr(obj, "site", obj)


def _read_id(value: str) -> str:
    if value == "-":
        return sys.stdin.readline().strip()
    return value


def _fmt_entry(e: dict[str, Any]) -> str:
    fields = ",".join(e["fields"]) or "-"
    return (
        f"{e['seq']:>8}  {e['ts'][:19]}Z  {e['actor']:<20} {e['action']:<16} {e['outcome']:<9} "
        f"{e['dataset'] or '-':<11} {e['purpose'] or '-':<18} {fields}  ({e['subject_count']} persons)"
    )


@contextmanager
def _progress(site: Any) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr for a long verification, only when a person is watching."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    total = audit.count(site)
    with Progress(
        "verifying",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("verify", total=total)
        yield lambda done: bar.update(task, completed=done)


@click.group("audit")
def audit_group() -> None:
    """The audit log: verify, search, export, per-person report, checkpoints, retention."""


@audit_group.command("verify")
@click.option(
    "--export",
    "exports",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verify export file(s) offline instead of the store (in order: archives first).",
)
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Audit-signing public key file(s) (PEM/base64, from `gateway keys public audit_signing`) or folders of them.",
)
@click.option(
    "--checkpoints",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="More copies of the checkpoints (files or folders) besides [audit] checkpoint_export.",
)
@click.option("--max-problems", default=20, show_default=True, help="How many problems to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def verify(
    obj,
    exports: tuple[Path, ...],
    public_keys: tuple[Path, ...],
    checkpoints: tuple[Path, ...],
    max_problems: int,
    as_json: bool,
) -> None:
    """Check the hash chain and its signed checkpoints; exit 1 on any break.

    With --export and --public-key it needs no store and no keyring: an auditor's own check.
    """
    from ..audit_verify import PublicKeys, verify_exports, verify_store

    if exports:
        if not public_keys:
            raise click.UsageError(
                "--export needs --public-key (the audit_signing public key file)"
            )
        if checkpoints:
            raise click.UsageError(
                "--checkpoints applies to the store; an export carries its checkpoints"
            )
        report = verify_exports(list(exports), PublicKeys.from_files(public_keys))
    else:
        keys = PublicKeys.from_files(public_keys) if public_keys else None
        site = _site(obj)
        with _progress(site) as progress:
            report = verify_store(
                site, outside=list(checkpoints), public_keys=keys, progress=progress
            )
    if as_json:
        click.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        click.echo(report.summary())
        problems = report.sorted_problems()
        for problem in problems[:max_problems]:
            click.echo(f"  {problem.message}")
        if report.problem_count > max_problems:
            click.echo(f"  ... and {report.problem_count - max_problems} more")
        for note in report.notes:
            click.echo(f"note: {note}")
    if not report.ok:
        sys.exit(EXIT_PROBLEMS)


@audit_group.command("search")
@click.option("--id", "id_number", metavar="ID", help=_ID_HELP)
@click.option(
    "--id-type",
    default="1",
    show_default=True,
    help="Document type of --id (1 resident ID, 6/7/8/9/A/Z).",
)
@click.option("--department", help="Entries by department NAME (actor dept:NAME).")
@click.option("--actor", help="Exact actor (job:x, dept:x, user:x); a trailing * matches a prefix.")
@click.option("--purpose")
@click.option("--dataset")
@click.option("--action", help="e.g. api.lookup; a trailing * matches a prefix (sync.*).")
@click.option("--outcome", type=click.Choice(audit.OUTCOMES))
@click.option("--since", type=WHEN, help="From this date/time (UTC).")
@click.option("--until", type=WHEN, help="Before this date/time (UTC).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--oldest-first", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def search_cmd(
    obj,
    id_number,
    id_type,
    department,
    actor,
    purpose,
    dataset,
    action,
    outcome,
    since,
    until,
    limit,
    oldest_first,
    as_json,
) -> None:
    """Find entries by person, department, purpose, dataset, action or time (newest first)."""
    site = _site(obj)
    keys = audit.subject_keys_for_id(site, _read_id(id_number), id_type) if id_number else None
    filters = {
        "department": department,
        "actor": actor,
        "purpose": purpose,
        "dataset": dataset,
        "action": action,
        "outcome": outcome,
        "since": since,
        "until": until,
    }
    rows = audit.search(site, subject_keys=keys, limit=limit, ascending=oldest_first, **filters)
    total = audit.count(site, subject_keys=keys, **filters)
    if keys is not None:
        # Whose history was looked at is itself an access to that person's data.
        audit.record(
            site,
            actor=_cli_actor(),
            action="audit.search",
            subject_keys=keys,
            detail={"matches": total},
        )
    for e in rows:
        click.echo(json.dumps(e, ensure_ascii=False) if as_json else _fmt_entry(e))
    if not as_json:
        click.echo(f"{len(rows)} of {total} matching entries shown")


@audit_group.command("export")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (.jsonl or .csv).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    help="Default: from the file name (.csv), else jsonl.",
)
@click.option("--since", type=WHEN, help="Entries from this date/time (UTC).")
@click.option("--until", type=WHEN, help="Entries before this date/time (UTC).")
@click.option("--from-seq", type=click.IntRange(1))
@click.option("--to-seq", type=click.IntRange(1))
@click.option("--overwrite", is_flag=True)
@click.pass_obj
def export_cmd(
    obj, out: Path, fmt: str | None, since, until, from_seq, to_seq, overwrite: bool
) -> None:
    """Export a contiguous range of the chain with what verifies it (hashes, subject keys, checkpoints)."""
    from ..audit_export import export

    site = _site(obj)
    to_head = until is None and to_seq is None
    if to_head:
        # The export records itself and is signed up to its last entry, so it verifies completely.
        audit.record(
            site,
            actor=_cli_actor(),
            action="audit.export",
            detail={"file": out.name, "since": since, "until": until},
        )
        audit.checkpoint(site)
    summary = export(
        site,
        out,
        fmt=fmt,
        since=since,
        until=until,
        from_seq=from_seq,
        to_seq=to_seq,
        overwrite=overwrite,
    )
    span = f"entries {summary.first_seq}-{summary.last_seq}" if summary.entries else "no entries"
    click.echo(
        f"wrote {summary.entries} audit entries ({span}) and {summary.signed} signed checkpoints to {out} ({summary.format}, sha256 {summary.sha256})"
    )


@audit_group.command("subject")
@click.argument("id_number", metavar="ID")
@click.option(
    "--id-type", default="1", show_default=True, help="Document type (1 resident ID, 6/7/8/9/A/Z)."
)
@click.option("--json", "as_json", is_flag=True, help="The report as a JSON list.")
@click.pass_obj
def subject_cmd(obj, id_number: str, id_type: str, as_json: bool) -> None:
    """Every exchange that touched one person: who received what, when, why, and the outcome."""
    from ..ids import check

    site = _site(obj)
    id_number = _read_id(id_number)
    report = audit.subject_report(site, id_number, id_type=id_type, actor=_cli_actor())
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
        return
    shown = check(id_number, id_type).masked or "(masked)"
    click.echo(f"access report for {shown}: {len(report)} exchanges")
    for r in report:
        fields = ",".join(r["fields"]) or "-"
        why = r["purpose"] or "-"
        click.echo(
            f"  {r['ts'][:19]}Z  {r['recipient']:<20} {r['action']:<16} {r['outcome']:<9} "
            f"dataset={r['dataset'] or '-'} fields={fields} purpose={why} (entry {r['seq']})"
        )


@audit_group.command("checkpoint")
@click.option(
    "--sync",
    "sync_copy",
    is_flag=True,
    help="Also copy to [audit] checkpoint_export every checkpoint it lacks.",
)
@click.pass_obj
def checkpoint_cmd(obj, sync_copy: bool) -> None:
    """Sign the chain head now (done automatically every N entries / M minutes and after runs)."""
    site = _site(obj)
    cp = audit.checkpoint(site)
    if cp is None:
        click.echo("the audit log is empty: nothing to sign")
    else:
        click.echo(
            f"checkpoint at {cp['seq']} signed with key {cp['key_id']} (head {cp['hash'][:16]}...)"
        )
    if sync_copy:
        n = audit.sync_outside_copy(site)
        click.echo(f"copied {n} checkpoint(s) to {audit.outside_copy_path(site)}")


@audit_group.command("prune")
@click.option("--before", type=WHEN, help="Archive and delete entries older than this date (UTC).")
@click.option(
    "--older-than-days",
    type=click.IntRange(1),
    help="Archive and delete entries older than N days.",
)
@click.option(
    "--archive",
    required=True,
    type=click.Path(path_type=Path),
    help="Archive file (.jsonl) or an existing folder for it.",
)
@click.pass_obj
def prune_cmd(obj, before: dt.datetime | None, older_than_days: int | None, archive: Path) -> None:
    """Retention: archive old entries to a verified export, then delete them from the store.

    Refuses a cut-off within the retention period ([audit] retention_days, at least 183 days).
    The chain stays verifiable: a signed anchor records the archive's last seq and hash.
    """
    from ..audit_export import prune

    if (before is None) == (older_than_days is None):
        raise click.UsageError("give exactly one of --before DATE and --older-than-days N")
    site = _site(obj)
    if before is None:
        before = audit.utcnow() - dt.timedelta(days=older_than_days)
    result = prune(site, before=before, archive=archive, actor=_cli_actor())
    if result is None:
        click.echo(f"nothing to prune: no entry older than {before.date().isoformat()}")
        return
    click.echo(
        f"archived entries {result.first_seq}-{result.last_seq} ({result.entries}) to {result.archive} "
        f"(verified, sha256 {result.sha256}) and removed them; the chain now starts after the anchor at {result.last_seq}"
    )
