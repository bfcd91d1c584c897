"""``gateway plugins``: what is installed - plugins with versions, connectors, systems, transforms."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from ..errors import ConfigError
from ..plugins import get_plugin_manager, plugin_infos


def _blocked(ctx: click.Context) -> list[str]:
    """The config's blocked plugins; with no config file at the default place, none.

    A config named explicitly (--config or $GATEWAY_CONFIG) must exist and be valid.
    """
    lazy = ctx.obj
    path = Path(lazy.config_path) if lazy is not None else Path("gateway.toml")
    root = ctx.find_root()
    source = root.get_parameter_source("config_path") if "config_path" in root.params else None
    if not path.exists() and source in (None, click.core.ParameterSource.DEFAULT):
        return []
    if lazy is None:
        raise ConfigError(f"{path}: no such config file")
    return list(lazy.site.settings.blocked_plugins)


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool) -> None:
    """List plugins with their versions, and the connectors, systems and transforms they add."""
    blocked = _blocked(ctx)
    pm = get_plugin_manager(blocked=blocked)
    infos = plugin_infos(pm)
    if as_json:
        click.echo(
            json.dumps(
                {"plugins": [asdict(i) for i in infos], "blocked": blocked},
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    rows = [("PLUGIN", "VERSION", "DISTRIBUTION", "PROVIDES")]
    for info in infos:
        provides = "; ".join(
            f"{kind if len(names) == 1 else kind + 's'} {', '.join(names)}"
            for kind, names in (
                ("connector", info.connectors),
                ("system", info.systems),
                ("transform", info.transforms),
                ("command", info.commands),
            )
            if names
        )
        rows.append((info.name, info.version, info.distribution or "-", provides or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True))
            + "  "
            + row[3]
        )
    click.echo("")
    for label, names in (
        ("connectors", [n for i in infos for n in i.connectors]),
        ("systems", [n for i in infos for n in i.systems]),
        ("transforms", [n for i in infos for n in i.transforms]),
        ("commands", [n for i in infos for n in i.commands]),
    ):
        click.echo(f"{label}: {', '.join(sorted(names)) or '(none)'}")
    if blocked:
        click.echo(f"blocked (not loaded): {', '.join(sorted(blocked))}")
