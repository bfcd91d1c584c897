"""The ``gateway`` command: a click group whose subcommands live in ``gateway/commands/``.

Expected failures (``GatewayError``) end with their message and exit code, never a traceback.
"""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import GatewayError


class GatewayGroup(click.Group):
    """Turns a ``GatewayError`` raised anywhere below into a one-line message and its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GatewayError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=GatewayGroup)
@click.version_option(__version__, prog_name="gateway")
@click.option(
    "--config",
    "config_path",
    envvar="GATEWAY_CONFIG",
    default="gateway.toml",
    show_default=True,
    help="Site configuration (else $GATEWAY_CONFIG, else ./gateway.toml).",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str) -> None:
    """The county data-exchange gateway."""
    from .site import LazySite

    ctx.obj = LazySite(config_path)


def _add_builtin_commands() -> None:
    from .commands import BUILTIN

    for command in BUILTIN():
        cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    _add_builtin_commands()
    # Plugins may add commands too (register_commands); a broken plugin must not hide the rest.
    try:
        from .plugins import add_plugin_commands

        add_plugin_commands(cli, argv if argv is not None else sys.argv[1:])
    except GatewayError as exc:
        click.echo(f"warning: plugin commands not loaded: {exc}", err=True)
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="gateway")
