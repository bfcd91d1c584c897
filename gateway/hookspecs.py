"""Every hook the gateway calls, one documented stub each (pluggy).

Families, after pytest's naming: ``register_*`` hooks contribute things (collected from every
plugin), ``prepare_*`` hooks may adjust something before use, and event hooks (``on_*``) let a
plugin observe what happened without changing it. The built-in connectors and systems in
``plugins/`` implement these exactly as a third-party plugin would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .connectors import Connector
    from .systems import SystemSpec

hookspec = pluggy.HookspecMarker("gateway")
hookimpl = pluggy.HookimplMarker("gateway")


@hookspec
def register_connectors() -> Sequence[type[Connector]]:
    """Return connector classes (subclasses of ``gateway.connectors.Connector``).

    Each class's ``name`` is what a system's ``connector = "..."`` in gateway.toml refers to.
    Two plugins registering the same name is a configuration error.
    """


@hookspec
def register_systems() -> Sequence[SystemSpec]:
    """Return the department systems this plugin knows (``gateway.systems.SystemSpec``): their
    datasets with default mapping files, and their code tables.

    A system's ``name`` is what ``plugin = "..."`` in a ``[systems.*]`` table refers to. Two
    plugins registering the same name is a configuration error.
    """


@hookspec
def register_transforms() -> Mapping[str, Callable[..., Any]]:
    """Return mapping transforms by name, usable in mapping files as ``transforms = ["name"]``.

    A transform is called as ``fn(value, **params)`` and returns the new value, or raises
    ``gateway.mapping.TransformError(code, message)`` to reject the field. Two plugins
    registering the same name is a configuration error.

    Optional refinements, for transforms that need them: an object with a ``compile(**params)``
    method is compiled once per mapping field and the callable it returns is applied per row;
    keyword-only parameters named ``native`` (the whole native row) or ``record`` (the canonical
    fields mapped so far) are passed when declared; a ``table=`` parameter naming a code table is
    resolved to that table (``gateway.mapping.CodeTable``) before the call.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands or groups to ``cli``, the ``gateway`` command line.

    A command whose name is already taken is refused (a configuration error naming the plugin).
    """


@hookspec
def on_run_finished(run: Mapping[str, Any]) -> None:
    """Called after a sync or match run is recorded: ``run`` (read-only) has ``job``, ``kind``,
    ``status``, ``counts``, ``mapping_version``, ``started_at``, ``finished_at`` and ``error``.
    It never holds an ID number. Emitted through ``gateway.plugins.emit_run_finished``: an
    observer that raises is logged and neither stops the others nor fails the run.
    """


@hookspec
def on_record_delivered(target: str, dataset: str, subject_keys: Sequence[str]) -> None:
    """Called after records were written to ``target`` (the name of a department's system or a
    peer gateway): ``dataset`` is the canonical dataset, ``subject_keys`` the blind indexes of
    the records delivered (never ID numbers). Emitted through
    ``gateway.plugins.emit_record_delivered``, with the same isolation as ``on_run_finished``.
    """
