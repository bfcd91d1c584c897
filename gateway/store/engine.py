"""The store's engine: SQLite (WAL, foreign keys on) by default, PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import StoreError


def resolve_url(url: str, base_dir: Path) -> str:
    """A relative SQLite path in the config is relative to the config file, not the cwd."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"gateway.store: not a database URL: {url!r}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database)
        if not path.is_absolute():
            parsed = parsed.set(database=str((base_dir / path).resolve()))
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # the driver we install
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")  # safe under WAL; a crash loses no committed batch
    cursor.execute("PRAGMA busy_timeout=30000")  # several processes share one county file
    cursor.close()


def create_store_engine(url: str, base_dir: Path | str = ".") -> Engine:
    url = resolve_url(url, Path(base_dir))
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
            # Let SQLAlchemy issue BEGIN itself so "BEGIN IMMEDIATE" can serialise writers.
            event.listen(engine, "connect", lambda conn, _r: setattr(conn, "isolation_level", None))
            event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ImportError) as exc:
        raise StoreError(
            f"gateway.store: cannot use {make_url(url).render_as_string()}: {exc}"
        ) from None
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
