"""The plugin manager: a fresh one per app or command (a factory, never an import-time global).

Built-in plugins in ``plugins/`` are registered through the ``gateway`` entry-point group exactly as
a third-party distribution's would be. Everything a plugin contributes is collected here, checked
(no duplicate names, no hook implementation without a spec) and handed out as plain dicts.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import os
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import click
import pluggy

from . import hookspecs
from .connectors import Connector, ConnectorContext
from .errors import ConfigError
from .systems import SystemSpec

if TYPE_CHECKING:
    from .site import Site

GROUP = "gateway"
log = logging.getLogger(__name__)


class GatewayPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers which distribution each plugin came from."""

    def __init__(self) -> None:
        super().__init__(GROUP)
        self.distributions: dict[str, importlib.metadata.Distribution] = {}


def get_plugin_manager(blocked: Iterable[str] = ()) -> GatewayPluginManager:
    """Build a new plugin manager: hookspecs, then every ``gateway`` entry point not in ``blocked``.

    Raises ConfigError when a plugin fails to import, two distributions claim the same plugin
    name, or a plugin implements a hook the gateway does not declare.
    """
    pm = GatewayPluginManager()
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    _load_entry_points(pm)
    _check_pending(pm)
    return pm


def _load_entry_points(pm: GatewayPluginManager) -> None:
    # Hand-written instead of pm.load_setuptools_entrypoints(): pluggy's loop silently skips a
    # second distribution that uses an already-taken plugin name, and an import failure surfaces
    # as a bare traceback that does not say which plugin broke. Both must be a clear ConfigError.
    for ep in importlib.metadata.entry_points(group=GROUP):
        if pm.is_blocked(ep.name):
            continue
        dist = ep.dist
        if ep.name in pm.distributions or pm.has_plugin(ep.name):
            other = pm.distributions.get(ep.name)
            if other is not None and dist is not None and _dist_name(other) == _dist_name(dist):
                continue  # the same distribution seen twice on sys.path
            raise ConfigError(
                f"plugins: plugin name {ep.name!r} is registered by both "
                f"{_describe(other)} and {_describe(dist)}; uninstall one or add it to "
                "[plugins] blocked"
            )
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is its fault
            raise ConfigError(
                f"plugins: plugin {ep.name!r} ({_describe(dist)}) failed to load: "
                f"{exc.__class__.__name__}: {exc}; fix or uninstall it, or add {ep.name!r} "
                "to [plugins] blocked"
            ) from None
        try:
            pm.register(plugin, name=ep.name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            # A hook implementation whose arguments the spec lacks, or one object registered
            # under two entry-point names.
            raise ConfigError(f"plugins: plugin {ep.name!r} is invalid: {_one_line(exc)}") from None
        if dist is not None:
            pm.distributions[ep.name] = dist


def _check_pending(pm: pluggy.PluginManager) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError:
        # pluggy names only the first offender, by repr: list every one by plugin and hook name.
        known = sorted(
            n for n in dir(hookspecs) if getattr(getattr(hookspecs, n), "gateway_spec", None)
        )
        problems = []
        for hook_name in sorted(vars(pm.hook)):
            caller = getattr(pm.hook, hook_name)
            if hook_name.startswith("_") or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                hint = difflib.get_close_matches(hook_name, known, n=1)
                problems.append(
                    f"plugin {impl.plugin_name!r} implements hook {hook_name!r}, which the gateway "
                    "does not declare" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                )
        raise ConfigError("plugins: " + "; ".join(problems)) from None


def _dist_name(dist: importlib.metadata.Distribution) -> str:
    return (dist.metadata["Name"] or "").lower().replace("_", "-")


def _describe(dist: importlib.metadata.Distribution | None) -> str:
    if dist is None:
        return "an unknown distribution"
    return f"distribution {dist.metadata['Name']} {dist.version}"


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or exc.__class__.__name__


# --- what plugins contribute ------------------------------------------------------------------


def _per_plugin(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Call a hook once per implementing plugin, so every result can be traced to its plugin."""
    everyone = pm.get_plugins()
    out = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        only = pm.subset_hook_caller(
            hook_name, remove_plugins=[p for p in everyone if p is not impl.plugin]
        )
        for result in only(**kwargs):
            out.append((impl.plugin_name, result))
    return out


def _named(
    pm: pluggy.PluginManager,
    hook_name: str,
    what: str,
    items: Callable[[str, Any], Iterable[tuple[str, Any]]],
) -> dict[str, tuple[str, Any]]:
    """name -> (plugin, thing) over every plugin's contribution; a name claimed twice is an error."""
    found: dict[str, tuple[str, Any]] = {}
    for plugin, result in _per_plugin(pm, hook_name):
        if result is None:
            continue
        for name, thing in items(plugin, result):
            if name in found:
                first, second = sorted((found[name][0], plugin))
                raise ConfigError(
                    f"plugins: {what} {name!r} is registered by both plugin {first!r} and "
                    f"plugin {second!r}; add one of them to [plugins] blocked"
                )
            found[name] = (plugin, thing)
    return dict(sorted(found.items()))


def _connector_items(plugin: str, result: Any) -> Iterable[tuple[str, Any]]:
    for cls in result:
        if not (isinstance(cls, type) and issubclass(cls, Connector)) or not cls.name:
            raise ConfigError(
                f"plugins: plugin {plugin!r} registered {cls!r} as a connector: it must be a "
                "subclass of gateway.connectors.Connector with a non-empty `name`"
            )
        yield cls.name, cls


def _system_items(plugin: str, result: Any) -> Iterable[tuple[str, Any]]:
    for spec in result:
        if not isinstance(spec, SystemSpec):
            raise ConfigError(
                f"plugins: plugin {plugin!r} registered {spec!r} as a system: it must be a "
                "gateway.systems.SystemSpec"
            )
        yield spec.name, spec


def _transform_items(plugin: str, result: Any) -> Iterable[tuple[str, Any]]:
    if not isinstance(result, Mapping):
        raise ConfigError(
            f"plugins: plugin {plugin!r}: register_transforms must return a mapping of name -> callable"
        )
    for name, fn in result.items():
        if not callable(fn):
            raise ConfigError(f"plugins: plugin {plugin!r}: transform {name!r} is not callable")
        yield name, fn


def connectors(pm: pluggy.PluginManager) -> dict[str, type[Connector]]:
    """Connector name -> class, from every plugin's ``register_connectors``."""
    return {
        n: cls
        for n, (_, cls) in _named(pm, "register_connectors", "connector", _connector_items).items()
    }


def systems(pm: pluggy.PluginManager) -> dict[str, SystemSpec]:
    """System name -> its SystemSpec, from every plugin's ``register_systems``."""
    return {
        n: spec for n, (_, spec) in _named(pm, "register_systems", "system", _system_items).items()
    }


def transforms(pm: pluggy.PluginManager) -> dict[str, Callable[..., Any]]:
    """Transform name -> callable, from every plugin's ``register_transforms``."""
    return {
        n: fn
        for n, (_, fn) in _named(pm, "register_transforms", "transform", _transform_items).items()
    }


def make_connector(site: Site, system_name: str) -> Connector:
    """The connector of ``[systems.<system_name>]``, built from its options.

    Unknown system, unknown connector or an option the connector does not understand is a
    ConfigError naming the key path.
    """
    system = site.settings.systems.get(system_name)
    if system is None:
        known = ", ".join(sorted(site.settings.systems)) or "none configured"
        raise ConfigError(f"systems.{system_name}: no such system in [systems] (known: {known})")
    available = connectors(site.plugins)
    cls = available.get(system.connector)
    if cls is None:
        raise ConfigError(
            f"systems.{system_name}.connector: unknown connector {system.connector!r} "
            f"(installed: {', '.join(available) or 'none'}; is its plugin blocked or not installed?)"
        )
    unknown = sorted(set(system.options) - set(cls.options))
    if unknown:
        raise ConfigError(
            "; ".join(
                f"systems.{system_name}.{key}: unknown option for connector {cls.name!r} "
                f"(it understands: {', '.join(cls.options) or 'no options'})"
                for key in unknown
            )
        )
    context = ConnectorContext(
        system=system_name, base_dir=str(site.base_dir), extras={"site": site}
    )
    return cls(system.options, context)


# --- what is installed -------------------------------------------------------------------------


@dataclass
class PluginInfo:
    """One registered plugin and what it contributes (for ``gateway plugins`` and the web pages)."""

    name: str
    version: str
    distribution: str
    connectors: list[str] = field(default_factory=list)
    systems: list[str] = field(default_factory=list)
    transforms: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)


def _registered(pm: pluggy.PluginManager) -> list[tuple[str, Any]]:
    """(name, plugin) of every loaded plugin, by name; blocked names (kept by pluggy as None) left out."""
    return sorted(
        ((n, p) for n, p in pm.list_name_plugin() if p is not None), key=lambda item: item[0]
    )


def plugin_versions(pm: GatewayPluginManager) -> dict[str, str]:
    """Plugin name -> version of the distribution it was installed from ("unknown" if none)."""
    return {
        name: (pm.distributions[name].version if name in pm.distributions else "unknown")
        for name, _ in _registered(pm)
    }


def plugin_infos(pm: GatewayPluginManager) -> list[PluginInfo]:
    """Every registered plugin, sorted by name, with its version and contributions."""
    versions = plugin_versions(pm)
    infos = {
        name: PluginInfo(
            name=name,
            version=versions[name],
            distribution=pm.distributions[name].metadata["Name"]
            if name in pm.distributions
            else "",
            hooks=sorted(h.name for h in pm.get_hookcallers(plugin) or ()),
        )
        for name, plugin in _registered(pm)
    }
    for name, (plugin, _) in _named(
        pm, "register_connectors", "connector", _connector_items
    ).items():
        infos[plugin].connectors.append(name)
    for name, (plugin, _) in _named(pm, "register_systems", "system", _system_items).items():
        infos[plugin].systems.append(name)
    for name, (plugin, _) in _named(
        pm, "register_transforms", "transform", _transform_items
    ).items():
        infos[plugin].transforms.append(name)
    for plugin, group in _command_groups(pm):
        infos[plugin].commands.extend(sorted(group.commands))
    return [infos[n] for n in sorted(infos)]


# --- commands ----------------------------------------------------------------------------------


def _command_groups(pm: pluggy.PluginManager) -> list[tuple[str, click.Group]]:
    """Each plugin's commands, registered on a scratch group of its own."""
    out = []
    for impl in pm.hook.register_commands.get_hookimpls():
        scratch = click.Group()
        others = [p for p in pm.get_plugins() if p is not impl.plugin]
        pm.subset_hook_caller("register_commands", remove_plugins=others)(cli=scratch)
        out.append((impl.plugin_name, scratch))
    return out


def add_plugin_commands(cli: click.Group, argv: Sequence[str] | None = None) -> None:
    """Add every plugin's commands to ``cli``; a name that is already taken is a ConfigError.

    Runs before click has parsed the command line, so the blocked list is read from the config
    file the command line will use (``--config``, else ``$GATEWAY_CONFIG``, else ./gateway.toml).
    """
    pm = get_plugin_manager(
        blocked=blocked_from_config(_config_path(sys.argv[1:] if argv is None else argv))
    )
    for plugin, group in _command_groups(pm):
        for name, command in group.commands.items():
            if name in cli.commands:
                raise ConfigError(
                    f"plugins: plugin {plugin!r} adds command {name!r}, which already exists; "
                    f"add {plugin!r} to [plugins] blocked"
                )
            cli.add_command(command, name)


def _config_path(argv: Sequence[str]) -> Path:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
        if arg == "--":
            break
    return Path(os.environ.get("GATEWAY_CONFIG") or "gateway.toml")


def blocked_from_config(path: Path) -> list[str]:
    """``[plugins] blocked`` of a config file, or [] when the file is absent or unreadable.

    Only this one key is read here: the command that needs the full config validates it and
    reports every problem with its key path.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    blocked = (
        data.get("plugins", {}).get("blocked", []) if isinstance(data.get("plugins"), dict) else []
    )
    return [b for b in blocked if isinstance(b, str)] if isinstance(blocked, list) else []


# --- events ------------------------------------------------------------------------------------


def _notify(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[str]:
    """Call an event hook on every observer; one failing observer neither stops the others nor
    the run that emitted the event. Returns the names of the plugins that failed."""
    failed = []
    everyone = pm.get_plugins()
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        only = pm.subset_hook_caller(
            hook_name, remove_plugins=[p for p in everyone if p is not impl.plugin]
        )
        try:
            only(**kwargs)
        except Exception as exc:  # noqa: BLE001 - an observer's bug must not fail the run
            log.warning(
                "plugin %r failed in %s: %s: %s",
                impl.plugin_name,
                hook_name,
                exc.__class__.__name__,
                exc,
            )
            failed.append(impl.plugin_name)
    return failed


def emit_run_finished(pm: pluggy.PluginManager, run: Mapping[str, Any]) -> list[str]:
    """Tell observers a run finished. ``run`` is passed read-only; it must hold no ID numbers."""
    return _notify(pm, "on_run_finished", run=MappingProxyType(dict(run)))


def emit_record_delivered(
    pm: pluggy.PluginManager, target: str, dataset: str, subject_keys: Iterable[str]
) -> list[str]:
    """Tell observers records were delivered to ``target`` (subject keys only, never IDs)."""
    return _notify(
        pm, "on_record_delivered", target=target, dataset=dataset, subject_keys=tuple(subject_keys)
    )
