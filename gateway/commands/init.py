"""``gateway init DIR``: a working site — config, keyring (0600), mapping copies, inbox folders."""

from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

import click

from ..config import SUITES
from ..errors import ConfigError


def write_site(folder: Path, *, suite: str, site_name: str) -> list[Path]:
    """Create a new site in ``folder``; refuses to overwrite an existing config or keyring."""
    from ..crypto import Keyring
    from ..mapping import builtin_mappings
    from ..site import Site
    from ..store import migrate

    config_path, keyring_path = folder / "gateway.toml", folder / "keyring.json"
    for existing in (config_path, keyring_path):
        if existing.exists():
            raise ConfigError(f"{existing}: already exists; not overwriting a site")
    folder.mkdir(parents=True, exist_ok=True)
    template = files("gateway").joinpath("data/site.toml").read_text(encoding="utf-8")
    config_path.write_text(template.format(suite=suite, site_name=site_name), encoding="utf-8")
    Keyring.create(keyring_path, suite=suite)
    written = [config_path, keyring_path]
    for spec, source in builtin_mappings():
        target = folder / "mappings" / f"{spec}.toml"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written.append(target)
    site = Site.from_config(config_path)
    for system in site.settings.systems:
        (folder / "inbox" / system).mkdir(parents=True, exist_ok=True)
    migrate.upgrade(site.engine)
    site.engine.dispose()
    return written


@click.command("init")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--suite", type=click.Choice(SUITES), default=SUITES[0], show_default=True)
@click.option(
    "--site-name", default="county", show_default=True, help="Printed on reports and audit entries."
)
def init_command(folder: Path, suite: str, site_name: str) -> None:
    """Create a working site in FOLDER: gateway.toml, keyring.json (0600), mappings/, inbox/, store."""
    written = write_site(folder, suite=suite, site_name=site_name)
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"store created; next: drop exports into {folder / 'inbox'}/<system>/ and run")
    click.echo(f"  gateway --config {folder / 'gateway.toml'} sync students")
