"""The README's commands: the two at the top are what CI runs, and every other `gateway ...`
command it shows names a real command with real options (the commands themselves are exercised by
their own topic's tests; tests/test_demo.py runs the demo)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from gateway.cli import cli
from gateway.commands import BUILTIN

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

for _command in BUILTIN():
    cli.add_command(_command)


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.S)


def gateway_commands() -> list[tuple[list[str], bool]]:
    """(arguments, complete): shell-block commands are complete; inline ones in the prose may
    elide arguments (``gateway keys rotate blind_index|seal|audit_signing``)."""
    found = []
    for block in shell_blocks():
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("gateway "):
                found.append((shlex.split(line)[1:], True))
    for inline in re.findall(r"`(gateway [^`]+)`", README.replace("\n", " ")):
        found.append((shlex.split(inline)[1:], False))
    return found


def test_the_two_commands_open_the_readme_and_ci_runs_the_second() -> None:
    blocks = shell_blocks()
    demo, tests = blocks[0].strip(), blocks[1].strip()
    assert README.index(demo) < README.index("## ")  # before any section: the first thing read
    assert demo.endswith("gateway demo") and "pip install" in demo
    assert tests.endswith(".venv/bin/pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests.replace("pip install -q", "pip install -q") in ci, (
        "the CI runs the README's test command"
    )


def _resolve(args: list[str]) -> tuple[click.Command, list[str]]:
    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        if rest[0] not in command.commands:
            break
        command = command.commands[rest.pop(0)]
    return command, rest


@pytest.mark.parametrize(
    ("args", "complete"),
    gateway_commands(),
    ids=lambda a: " ".join(a[:3]) if isinstance(a, list) else "",
)
def test_every_readme_command_exists_with_its_options(args: list[str], complete: bool) -> None:
    args = [a for a in args if a != "..."]
    if args and args[0] == "--config":
        args = args[2:]
    command, rest = _resolve(args)
    assert command is not cli, f"`gateway {' '.join(args)}`: no such command"
    assert not isinstance(command, click.Group) or not rest, (
        f"`gateway {' '.join(args)}`: needs a subcommand"
    )
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in rest:
        option = word.split("=", 1)[0]
        if option.startswith("-"):
            assert option in known, f"`gateway {' '.join(args)}`: unknown option {option}"
    if complete:  # every required option and argument is given
        for param in command.params:
            if param.required and isinstance(param, click.Option):
                assert set(param.opts) & {w.split("=", 1)[0] for w in rest}, f"{param.opts} missing"
        positional = [
            w
            for i, w in enumerate(rest)
            if not w.startswith("-") and not _is_value(rest, i, command)
        ]
        needed = [p for p in command.params if isinstance(p, click.Argument) and p.required]
        assert len(positional) >= len(needed), (
            f"`gateway {' '.join(args)}`: missing {needed[len(positional)].name}"
        )


def _is_value(rest: list[str], i: int, command: click.Command) -> bool:
    """Whether rest[i] is the value of the option before it."""
    if i == 0 or not rest[i - 1].startswith("-") or "=" in rest[i - 1]:
        return False
    for param in command.params:
        if isinstance(param, click.Option) and rest[i - 1] in param.opts:
            return not param.is_flag
    return False


def test_readme_python_client_example_names_real_functions() -> None:
    from gateway import client, crypto

    assert callable(crypto.read_secret_file) and callable(crypto.get_suite)
    assert hasattr(client.GatewayClient, "lookup") and hasattr(client.GatewayClient, "paginate")
