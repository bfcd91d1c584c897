"""The plugin manager: a fresh one per app or command (a factory, never an import-time global).

Built-in plugins in ``plugins/`` are registered through the ``gateway`` entry-point group exactly as
a third-party distribution's would be.
"""

from __future__ import annotations

from collections.abc import Iterable

import click
import pluggy

from . import hookspecs


def get_plugin_manager(blocked: Iterable[str] = ()) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("gateway")
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    pm.load_setuptools_entrypoints("gateway")
    pm.check_pending()  # an implementation with no matching spec is an error
    return pm


def add_plugin_commands(cli: click.Group) -> None:
    get_plugin_manager().hook.register_commands(cli=cli)
