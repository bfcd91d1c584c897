"""The store: SQLAlchemy 2.0 models, the engine, and Alembic migrations (``gateway db upgrade``).

Importing this package imports every model module, so ``Base.metadata`` is complete.
"""

from __future__ import annotations

from . import api, audit_log, jobs, matches, records  # noqa: F401 - register their tables
from .base import Base
from .engine import create_store_engine, make_session_factory

__all__ = ["Base", "create_store_engine", "make_session_factory"]
