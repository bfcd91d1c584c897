"""``gateway init DIR``: a working site a county IT officer can start from."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway import config
from gateway.cli import cli
from gateway.commands import BUILTIN
from gateway.crypto import Keyring
from gateway.site import Site
from gateway.store import migrate

for _command in BUILTIN():
    cli.add_command(_command)

GATEWAY = Path(sys.executable).with_name("gateway")


@pytest.mark.parametrize("suite", ["aes-gcm+hmac-sha256", "sm4-gcm+hmac-sm3"])
def test_init_writes_a_working_site(tmp_path: Path, suite: str) -> None:
    folder = tmp_path / "county"
    result = CliRunner().invoke(cli, ["init", str(folder), "--suite", suite])
    assert result.exit_code == 0, result.output
    settings = config.load(folder / "gateway.toml")
    assert settings.gateway.suite == suite
    assert stat.S_IMODE(os.stat(folder / "keyring.json").st_mode) == 0o600
    site = Site.from_config(folder / "gateway.toml")
    # The keyring serves the site's suite: a seal opens, a blind index is keyed.
    token = site.protector.seal("张三", dataset="students", field="name", record="k")
    assert site.protector.open(token, dataset="students", field="name", record="k") == "张三"
    assert migrate.is_current(site.engine)
    for system in settings.systems:
        assert (folder / "inbox" / system).is_dir()
    copies = sorted(
        p.relative_to(folder / "mappings").as_posix()
        for p in (folder / "mappings").glob("*/*.toml")
    )
    assert (
        "student_status/students.toml" in copies
        and "poverty_registry/poverty_export.toml" in copies
    )
    # The copies are valid mappings.
    check = CliRunner().invoke(
        cli, ["mappings", "check", *map(str, (folder / "mappings").glob("*/*.toml"))]
    )
    assert check.exit_code == 0, check.output
    # No secret in what init printed.
    ring = Keyring.load(folder / "keyring.json")
    for key in ring:
        assert key.material.hex() not in result.output
    site.engine.dispose()


def test_init_refuses_to_overwrite_a_site(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["init", str(tmp_path)]).exit_code == 0
    before = (tmp_path / "keyring.json").read_bytes()
    again = runner.invoke(cli, ["init", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.output
    assert (tmp_path / "keyring.json").read_bytes() == before


def test_init_through_the_installed_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(GATEWAY), "init", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    status = subprocess.run(
        [str(GATEWAY), "--config", str(tmp_path / "site" / "gateway.toml"), "db", "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.returncode == 0 and "current" in status.stdout
