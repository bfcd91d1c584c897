"""``gateway mappings check|preview``: validate mapping files; show sample rows mapped, IDs masked."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, ConfigError

if TYPE_CHECKING:
    import pluggy

    from ..connectors import Row
    from ..mapping import Mapper

# Sample file suffix -> the connector that reads it.
SAMPLE_CONNECTORS = {".csv": "csv", ".txt": "csv", ".tsv": "csv", ".xlsx": "xlsx", ".xlsm": "xlsx"}


def _context(obj: Any) -> tuple[pluggy.PluginManager, list[Path]]:
    """The plugin manager (the site's, honouring [plugins] blocked, when a config file exists)
    and the folders searched for mapping names (the site's mappings/ first)."""
    from ..plugins import get_plugin_manager

    config_path = getattr(obj, "config_path", None)
    if config_path is not None and Path(config_path).is_file():
        site = obj.site
        return site.plugins, [site.path("mappings")]
    return get_plugin_manager(), []


@click.group("mappings")
def mappings_group() -> None:
    """Mapping files: native layouts <-> canonical datasets."""


@mappings_group.command("check")
@click.argument("files", nargs=-1)
@click.pass_obj
def check_command(obj: Any, files: Sequence[str]) -> None:
    """Validate mapping FILES (paths or names such as student_status/students; none: every shipped
    mapping). Prints every problem as file:line: key: reason. Exit 1 if any, 2 if a file is missing."""
    from ..mapping import (
        MappingNotFound,
        builtin_mappings,
        check_mapping,
        find_mapping_file,
        plugin_context,
    )

    pm, base_dirs = _context(obj)
    transforms, tables = plugin_context(pm)
    targets: list[str] = list(files) or [str(path) for _, path in builtin_mappings()]
    if not targets:
        raise ConfigError("no mapping files given and none shipped")
    missing = problems = 0
    for spec in targets:
        try:
            path = find_mapping_file(spec, base_dirs)
        except MappingNotFound as exc:
            missing += 1
            for line in exc.problems:
                click.echo(f"error: {line}", err=True)
            continue
        found = check_mapping(path, transforms=transforms, code_tables=tables)
        if found:
            problems += len(found)
            for line in found:
                click.echo(line)
        else:
            click.echo(f"ok: {path}")
    ctx = click.get_current_context()
    if missing:
        ctx.exit(EXIT_USAGE)
    if problems:
        click.echo(f"{problems} problem(s) found", err=True)
        ctx.exit(EXIT_PROBLEMS)
    ctx.exit(EXIT_OK)


def _mask_personal(value: str) -> str:
    """A name, phone or address in a preview: its first character only."""
    return value[:1] + "*" * min(max(len(value) - 1, 1), 8)


def _shown(value: Any, sensitivity: str) -> str:
    from ..ids import mask

    if value is None:
        return ""
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    if sensitivity == "national_id":
        return mask(text)
    if sensitivity == "personal":
        return _mask_personal(text)
    return text


def _sample_rows(
    pm: pluggy.PluginManager, mapper: Mapper, sample: Path, options: dict[str, Any]
) -> Iterator[Row]:
    """The sample's rows through the connector that reads its kind of file (stateless: reading
    with no cursor records nothing)."""
    from ..connectors import ConnectorContext
    from ..plugins import connectors

    kind = SAMPLE_CONNECTORS.get(sample.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"{sample}: cannot preview a {sample.suffix or 'suffix-less'} file (use .csv or .xlsx)"
        )
    cls = connectors(pm).get(kind)
    if cls is None:
        raise ConfigError(
            f"{sample}: the {kind} connector is not installed or its plugin is blocked"
        )
    connector = cls(
        {"path": str(sample.resolve()), **options},
        ConnectorContext(system=mapper.system, base_dir="."),
    )
    try:
        for batch in connector.read(None, batch_size=200):
            yield from batch.rows
    finally:
        connector.close()


@mappings_group.command("preview")
@click.argument("file")
@click.argument("sample", type=click.Path(path_type=Path))
@click.option(
    "--rows",
    "limit",
    default=5,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Rows to show.",
)
@click.option("--encoding", default=None, help="CSV encoding (default: detected).")
@click.option(
    "--header-row",
    type=click.IntRange(1),
    default=None,
    help="1-based header row (default: detected for XLSX, 1 for CSV).",
)
@click.pass_obj
def preview_command(
    obj: Any, file: str, sample: Path, limit: int, encoding: str | None, header_row: int | None
) -> None:
    """Map the first rows of SAMPLE (CSV or XLSX) with mapping FILE and print them. ID numbers are
    masked (first 6, last 4), names, phones and addresses too. Exit 1 if a shown row has problems."""
    from ..mapping import load_mapping, plugin_context
    from ..schemas import scrub

    pm, base_dirs = _context(obj)
    transforms, tables = plugin_context(pm)
    mapper = load_mapping(file, transforms=transforms, code_tables=tables, base_dirs=base_dirs)
    if mapper.direction != "inbound":
        raise ConfigError(f"{file}: preview maps native sample rows; this is an outbound mapping")
    if not sample.is_file():
        raise ConfigError(f"{sample}: no such sample file")
    options: dict[str, Any] = {}
    if encoding:
        options["encoding"] = encoding
    if header_row:
        options["header_row"] = header_row
    click.echo(
        f"mapping {mapper.name} version {mapper.version} ({mapper.system} -> {mapper.dataset})"
    )
    shown_fields = ["id_type", *[f for f in mapper.sensitivity if f != "id_type"]]
    width = max(len(f) for f in shown_fields)
    bad = count = 0
    header_checked = False
    for row in _sample_rows(pm, mapper, sample, options):
        if not header_checked:
            header_checked = True
            missing = mapper.missing_columns(row.data)
            if missing:
                bad += 1
                click.echo(f"missing required column(s): {', '.join(missing)}")
        count += 1
        click.echo(f"\nrow {row.position}")
        record, errors = mapper.map_checked(row.data)
        # Connectors and mappers mask IDs in their messages; scrub once more all the same, a
        # preview is the output most likely to be pasted into a ticket.
        problems = [scrub(f"{f}: {code}: {message}") for f, code, message in row.problems]
        problems += [scrub(f"{e.field}: {e.code}: {e.message}") for e in errors]
        for name in shown_fields:
            sensitivity = mapper.sensitivity.get(name, "plain")
            click.echo(f"  {name:<{width}}  {_shown(record.get(name), sensitivity)}")
        if record.get("converted"):
            click.echo(f"  {'':<{width}}  (ID number converted from 15 to 18 digits)")
        for problem in problems:
            click.echo(f"  ! {problem}")
        bad += bool(problems)
        if count >= limit:
            break
    if count == 0:
        click.echo("(the sample has no data rows)")
    click.echo(f"\n{count} row(s) shown, {bad} with problems")
    click.get_current_context().exit(EXIT_PROBLEMS if bad else EXIT_OK)
