"""The plugin manager: built-ins through entry points, blocked plugins, hooks without a spec,
duplicate names, event observers, `gateway plugins`, and a third party's distribution installed
into this environment with no change to the gateway."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from gateway_plugins.csv_files import CsvConnector
from gateway_plugins.xlsx_files import XlsxConnector

import gateway
from gateway import config as config_mod
from gateway.errors import ConfigError
from gateway.plugins import (
    add_plugin_commands,
    connectors,
    emit_record_delivered,
    emit_run_finished,
    get_plugin_manager,
    make_connector,
    plugin_infos,
    plugin_versions,
    systems,
    transforms,
)
from gateway.site import Site
from gateway.systems import SystemSpec

HERE = Path(__file__).parent
GATEWAY = str(Path(sys.executable).parent / "gateway")


def run_gateway(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GATEWAY, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """``distribution(name, source, entry_points=None) -> module name``: a real installed
    distribution (a ``.dist-info`` folder on sys.path, as pip leaves it) whose module is ``source``.
    It is found by importlib.metadata like any other, and only by this test process."""
    root = tmp_path / "site-packages"
    root.mkdir(exist_ok=True)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))  # for the gateway commands this test starts

    def make(name: str, source: str, entry_points: dict[str, str] | None = None) -> str:
        module = f"{name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        info = root / f"{name.replace('-', '_')}-0.4.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.4\n", encoding="utf-8"
        )
        points = entry_points or {name: module}
        lines = "".join(f"{ep} = {target.format(module=module)}\n" for ep, target in points.items())
        (info / "entry_points.txt").write_text(f"[gateway]\n{lines}", encoding="utf-8")
        return module

    return make


def site_with(tmp_path: Path, **sections: Any) -> Site:
    return Site(config_mod.parse(sections), tmp_path)


# --- the built-ins, registered as a third party's would be -------------------------------------


def test_builtin_connectors_come_from_entry_points() -> None:
    """Exercises ``register_connectors``."""
    pm = get_plugin_manager()
    found = connectors(pm)
    assert found["csv"] is CsvConnector and found["xlsx"] is XlsxConnector
    # Registered through the "gateway" entry-point group of this project's distribution, nothing else.
    assert pm.distributions["csv"].metadata["Name"] == "county-gateway"
    assert {"csv", "xlsx"} <= {
        ep.name for ep in pm.distributions["csv"].entry_points if ep.group == "gateway"
    }
    assert plugin_versions(pm)["csv"] == plugin_versions(pm)["xlsx"] == gateway.__version__
    info = {i.name: i for i in plugin_infos(pm)}
    assert info["csv"].connectors == ["csv"] and info["csv"].hooks == ["register_connectors"]


def test_every_call_builds_a_fresh_manager() -> None:
    first, second = get_plugin_manager(), get_plugin_manager()
    assert first is not second
    first.unregister(name="csv")
    assert "csv" not in connectors(first) and "csv" in connectors(second)


def test_blocked_plugins_are_not_loaded(tmp_path: Path) -> None:
    pm = get_plugin_manager(blocked=["xlsx"])
    assert "xlsx" not in connectors(pm) and "csv" in connectors(pm)
    site = site_with(
        tmp_path,
        plugins={"blocked": ["xlsx"]},
        systems={"civil": {"plugin": "civil_affairs", "connector": "xlsx", "path": "in/*.xlsx"}},
    )
    with pytest.raises(ConfigError) as info:
        make_connector(site, "civil")
    assert str(info.value).startswith(
        "systems.civil.connector: unknown connector 'xlsx' (installed: "
    )
    assert "blocked" in str(info.value)


def test_a_hook_with_no_spec_is_refused_naming_plugin_and_hook(
    distribution: Callable[..., str], tmp_path: Path
) -> None:
    distribution(
        "typo-plugin",
        """
        from gateway.hookspecs import hookimpl

        @hookimpl
        def register_conectors():
            return []
        """,
    )
    with pytest.raises(ConfigError) as info:
        get_plugin_manager()
    message = str(info.value)
    assert "plugin 'typo-plugin' implements hook 'register_conectors'" in message
    assert "did you mean 'register_connectors'?" in message
    # Blocking it is the way out, and the gateway command says so without a traceback.
    assert get_plugin_manager(blocked=["typo-plugin"]).get_plugin("typo-plugin") is None
    result = run_gateway("plugins", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "error: plugins: plugin 'typo-plugin' implements hook 'register_conectors'" in result.stderr
    )
    assert "Traceback" not in result.stderr
    (tmp_path / "gateway.toml").write_text(
        '[plugins]\nblocked = ["typo-plugin"]\n', encoding="utf-8"
    )
    assert run_gateway("plugins", cwd=tmp_path).returncode == 0


def test_a_hook_implementation_with_arguments_the_spec_lacks_is_refused(
    distribution: Callable[..., str],
) -> None:
    distribution(
        "wrong-args",
        """
        from gateway.hookspecs import hookimpl

        @hookimpl
        def on_run_finished(run, extra):
            pass
        """,
    )
    with pytest.raises(ConfigError) as info:
        get_plugin_manager()
    message = str(info.value)
    assert message.startswith(
        "plugins: plugin 'wrong-args' is invalid: Plugin 'wrong-args' for hook 'on_run_finished'"
    )
    assert "{'extra'} are declared in the hookimpl but can not be found in the hookspec" in message
    assert "\n" not in message


def test_a_plugin_that_fails_to_import_is_named(distribution: Callable[..., str]) -> None:
    distribution("broken-plugin", "import no_such_module_anywhere\n")
    with pytest.raises(ConfigError) as info:
        get_plugin_manager()
    assert str(info.value).startswith(
        "plugins: plugin 'broken-plugin' (distribution broken-plugin 0.4) failed to load: ModuleNotFoundError"
    )


def test_two_plugins_claiming_one_name_are_refused(distribution: Callable[..., str]) -> None:
    distribution(
        "other-csv",
        """
        from gateway.connectors import Connector
        from gateway.hookspecs import hookimpl

        class OtherCsv(Connector):
            name = "csv"

        @hookimpl
        def register_connectors():
            return [OtherCsv]
        """,
    )
    pm = get_plugin_manager()
    with pytest.raises(
        ConfigError,
        match="connector 'csv' is registered by both plugin 'csv' and plugin 'other-csv'",
    ):
        connectors(pm)
    assert connectors(get_plugin_manager(blocked=["other-csv"]))["csv"] is CsvConnector


def test_two_distributions_with_one_plugin_name_are_refused(
    distribution: Callable[..., str],
) -> None:
    distribution("impostor", "x = 1\n", entry_points={"csv": "{module}"})
    with pytest.raises(
        ConfigError,
        match=r"plugin name 'csv' is registered by both distribution (county-gateway|impostor)",
    ):
        get_plugin_manager()


def test_systems_and_transforms_from_a_plugin(distribution: Callable[..., str]) -> None:
    """Exercises ``register_systems`` and ``register_transforms``."""
    distribution(
        "township-plugin",
        """
        from pathlib import Path

        from gateway.hookspecs import hookimpl
        from gateway.systems import SystemSpec

        @hookimpl
        def register_systems():
            return [SystemSpec(name="township_roster", title="乡镇花名册", datasets={"residents": Path("t.toml")},
                               code_tables={"sex": {"男": "1", "女": "2"}}, version="2")]

        @hookimpl
        def register_transforms():
            return {"strip_village_suffix": lambda value, **params: value.removesuffix(params.get("suffix", "村"))}
        """,
    )
    pm = get_plugin_manager()
    spec = systems(pm)["township_roster"]
    assert isinstance(spec, SystemSpec) and spec.code_tables["sex"]["女"] == "2"
    fn = transforms(pm)["strip_village_suffix"]
    assert fn("河西村") == "河西" and fn("东街社区", suffix="社区") == "东街"
    info = {i.name: i for i in plugin_infos(pm)}["township-plugin"]
    assert (info.systems, info.transforms, info.version) == (
        ["township_roster"],
        ["strip_village_suffix"],
        "0.4",
    )


def test_contributions_of_the_wrong_kind_are_refused(distribution: Callable[..., str]) -> None:
    distribution(
        "sloppy",
        """
        from gateway.hookspecs import hookimpl

        @hookimpl
        def register_systems():
            return [{"name": "not a spec"}]

        @hookimpl
        def register_transforms():
            return {"not_callable": 42}

        @hookimpl
        def register_connectors():
            return [object]
        """,
    )
    pm = get_plugin_manager()
    with pytest.raises(ConfigError, match="plugin 'sloppy' registered .* as a system"):
        systems(pm)
    with pytest.raises(
        ConfigError, match="plugin 'sloppy': transform 'not_callable' is not callable"
    ):
        transforms(pm)
    with pytest.raises(ConfigError, match="plugin 'sloppy' registered .* as a connector"):
        connectors(pm)


def test_event_hooks_reach_every_observer(
    distribution: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    """Exercises ``on_run_finished`` and ``on_record_delivered``."""
    distribution(
        "observer",
        """
        from gateway.hookspecs import hookimpl

        seen = []

        @hookimpl
        def on_run_finished(run):
            seen.append(("run", dict(run)))

        @hookimpl
        def on_record_delivered(target, dataset, subject_keys):
            seen.append(("delivered", target, dataset, subject_keys))
        """,
    )
    distribution(
        "meddler",
        """
        from gateway.hookspecs import hookimpl

        @hookimpl
        def on_run_finished(run):
            run["status"] = "changed by a plugin"   # the run is read-only: this raises

        @hookimpl
        def on_record_delivered(target, dataset, subject_keys):
            raise RuntimeError("observer bug")
        """,
    )
    pm = get_plugin_manager()
    run = {"job": "students", "kind": "sync", "status": "ok", "counts": {"read": 3}, "error": None}
    assert emit_run_finished(pm, run) == ["meddler"]
    assert emit_record_delivered(pm, "education", "poverty", ["k1:aa", "k1:bb"]) == ["meddler"]
    assert run["status"] == "ok"
    assert pm.get_plugin("observer").seen == [
        ("run", run),
        ("delivered", "education", "poverty", ("k1:aa", "k1:bb")),
    ]
    assert (
        "plugin 'meddler' failed in on_record_delivered: RuntimeError: observer bug" in caplog.text
    )


# --- connectors from configuration ------------------------------------------------------------


def test_make_connector_builds_the_configured_connector(tmp_path: Path) -> None:
    site = site_with(
        tmp_path,
        systems={
            "disability": {
                "plugin": "disability_federation",
                "connector": "csv",
                "path": "in/*.csv",
                "encoding": "gbk",
            },
            "odd": {"plugin": "x", "connector": "ftp"},
            "typo": {"plugin": "x", "connector": "csv", "path": "a.csv", "encodnig": "gbk"},
        },
    )
    c = make_connector(site, "disability")
    assert isinstance(c, CsvConnector) and c.encoding == "gbk"
    assert (c.context.system, c.context.base_dir) == ("disability", str(tmp_path))
    with pytest.raises(
        ConfigError, match=r"^systems\.odd\.connector: unknown connector 'ftp' \(installed: .*csv"
    ):
        make_connector(site, "odd")
    with pytest.raises(
        ConfigError, match=r"^systems\.typo\.encodnig: unknown option for connector 'csv'"
    ):
        make_connector(site, "typo")
    with pytest.raises(ConfigError, match=r"^systems\.nope: no such system"):
        make_connector(site, "nope")


# --- gateway plugins ---------------------------------------------------------------------------


def test_gateway_plugins_lists_builtins_without_a_config(tmp_path: Path) -> None:
    result = run_gateway("plugins", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["PLUGIN", "VERSION", "DISTRIBUTION", "PROVIDES"]
    assert any(
        line.split()[:5] == ["csv", gateway.__version__, "county-gateway", "connector", "csv"]
        for line in lines
    )
    assert any(
        line.startswith("connectors: ") and "csv" in line and "xlsx" in line for line in lines
    )
    as_json = json.loads(run_gateway("plugins", "--json", cwd=tmp_path).stdout)
    by_name = {p["name"]: p for p in as_json["plugins"]}
    assert (
        by_name["xlsx"]["connectors"] == ["xlsx"]
        and by_name["xlsx"]["version"] == gateway.__version__
    )
    # A config named explicitly must exist; a config that blocks a plugin hides it.
    missing = run_gateway("--config", "nope.toml", "plugins", cwd=tmp_path)
    assert missing.returncode == 2 and "error: nope.toml: no such config file" in missing.stderr
    (tmp_path / "site.toml").write_text(
        tomli_w.dumps({"plugins": {"blocked": ["xlsx"]}}), encoding="utf-8"
    )
    blocked = run_gateway("plugins", cwd=tmp_path, env={"GATEWAY_CONFIG": "site.toml"})
    assert blocked.returncode == 0, blocked.stderr
    assert "connector xlsx" not in blocked.stdout and "blocked (not loaded): xlsx" in blocked.stdout


# --- a third party's distribution --------------------------------------------------------------


def _can_build_without_isolation() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(p) for p in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1)  # setuptools builds wheels on its own from 70.1


def test_third_party_distribution_installs_and_works(tmp_path: Path) -> None:
    """Exercises ``register_commands`` (and connectors and transforms from another distribution)."""
    source = tmp_path / "src"
    shutil.copytree(HERE / "third_party_plugin", source)  # build outside the repository
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    isolation = ["--no-build-isolation"] if _can_build_without_isolation() else []
    subprocess.run([*pip, "install", "--no-deps", *isolation, str(source)], check=True, timeout=300)
    try:
        listed = run_gateway("plugins", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        row = next(
            line.split() for line in listed.stdout.splitlines() if line.startswith("memory ")
        )
        assert row[:3] == ["memory", "1.2.3", "gateway-memory-plugin"]
        assert " ".join(row[3:]) == "connector memory; transform shout; command memory-hello"

        hello = run_gateway("memory-hello", "县教育局", cwd=tmp_path)
        assert (hello.returncode, hello.stdout) == (
            0,
            "hello 县教育局 from gateway-memory-plugin\n",
        )

        # Configured like any built-in connector, it reads and writes through the gateway's API.
        (tmp_path / "gateway.toml").write_text(
            tomli_w.dumps(
                {"systems": {"scratch": {"plugin": "memory", "connector": "memory", "store": "t"}}}
            ),
            encoding="utf-8",
        )
        script = textwrap.dedent(
            """
            import json
            from gateway.plugins import make_connector, transforms
            from gateway.site import Site

            site = Site.from_config("gateway.toml")
            c = make_connector(site, "scratch")
            first = c.write([{"id": 1, "v": "a"}, {"id": 2, "v": "b"}], ["id"])
            second = c.write([{"id": 1, "v": "a"}, {"id": 2, "v": "b"}], ["id"])
            rows = [r.data for b in c.read() for r in b.rows]
            shout = transforms(site.plugins)["shout"]("ok", suffix="!")
            print(json.dumps([first.inserted, second.unchanged, rows, shout]))
            """
        )
        used = subprocess.run(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert used.returncode == 0, used.stderr
        assert json.loads(used.stdout) == [2, 2, [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}], "OK!"]

        # The site can block it: its command and connector are gone.
        (tmp_path / "gateway.toml").write_text(
            '[plugins]\nblocked = ["memory"]\n', encoding="utf-8"
        )
        listed = run_gateway("plugins", cwd=tmp_path).stdout
        assert "connector memory" not in listed and "blocked (not loaded): memory" in listed
        assert run_gateway("memory-hello", "x", cwd=tmp_path).returncode == 2
    finally:
        subprocess.run([*pip, "uninstall", "-y", "gateway-memory-plugin"], check=True, timeout=120)
    assert "memory" not in run_gateway("plugins", cwd=tmp_path / "src").stdout


def test_plugin_commands_honour_the_blocked_list_of_the_config_on_the_command_line(
    distribution: Callable[..., str], tmp_path: Path
) -> None:
    import click

    distribution(
        "cmd-plugin",
        """
        import click
        from gateway.hookspecs import hookimpl

        @hookimpl
        def register_commands(cli):
            cli.add_command(click.Command("extra", callback=lambda: None))
        """,
    )
    cfg = tmp_path / "g.toml"
    cfg.write_text('[plugins]\nblocked = ["cmd-plugin"]\n', encoding="utf-8")
    group = click.Group()
    add_plugin_commands(group, argv=["--config", str(cfg), "plugins"])
    assert "extra" not in group.commands
    add_plugin_commands(group, argv=[f"--config={tmp_path / 'absent.toml'}", "plugins"])
    assert "extra" in group.commands
    with pytest.raises(
        ConfigError, match="plugin 'cmd-plugin' adds command 'extra', which already exists"
    ):
        add_plugin_commands(group, argv=[])
