"""A configured gateway installation: settings plus the store, keyring and plugins it opens lazily.

The CLI, the web app and the scheduler all work through one ``Site``; nothing is opened until used,
so ``gateway id check`` needs no config at all.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import config as config_mod

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pluggy
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from .config import Settings
    from .crypto import Keyring, Protector, Suite


class Site:
    def __init__(self, settings: Settings, base_dir: Path | str = "."):
        self.settings = settings
        self.base_dir = Path(base_dir).resolve()

    @classmethod
    def from_config(cls, path: str | Path) -> Site:
        path = Path(path)
        return cls(config_mod.load(path), path.parent)

    def path(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(value)
        return p if p.is_absolute() else self.base_dir / p

    @cached_property
    def engine(self) -> Engine:
        from .store import create_store_engine

        return create_store_engine(self.settings.gateway.store, self.base_dir)

    @cached_property
    def sessions(self):
        from .store import make_session_factory

        return make_session_factory(self.engine)

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """One transaction: ``with site.begin() as session: ...`` commits or rolls back."""
        with self.sessions.begin() as session:
            yield session

    @cached_property
    def suite(self) -> Suite:
        from .crypto import get_suite

        return get_suite(self.settings.gateway.suite)

    @cached_property
    def keyring(self) -> Keyring:
        from .crypto import Keyring

        spec = self.settings.gateway.keyring
        return Keyring.load(spec if spec.startswith("env:") else self.path(spec))

    @cached_property
    def protector(self) -> Protector:
        from .crypto import Protector

        return Protector(self.keyring, self.suite)

    @cached_property
    def plugins(self) -> pluggy.PluginManager:
        from .plugins import get_plugin_manager

        return get_plugin_manager(blocked=self.settings.blocked_plugins)


class LazySite:
    """What the CLI passes down: loads the config only when a command first needs it."""

    def __init__(self, config_path: str | Path):
        self.config_path = Path(config_path)
        self._site: Site | None = None

    @property
    def site(self) -> Site:
        if self._site is None:
            self._site = Site.from_config(self.config_path)
        return self._site

    def __getattr__(self, name: str) -> Any:
        return getattr(self.site, name)
