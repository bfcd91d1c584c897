"""The ``sql`` connector: any SQLAlchemy URL, a table or a query, keyset reads, dialect upserts.

Incremental reads use a composite cursor (e.g. ``["gxsj", "id"]``) compared as a row value,
``(gxsj, id) > (:last_gxsj, :last_id)``, so rows sharing a timestamp are never skipped: the
second column breaks the tie. Tested on MariaDB, PostgreSQL and SQLite.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    NoSuchModuleError,
    NoSuchTableError,
    OperationalError,
    SQLAlchemyError,
)

from gateway.connectors import Batch, Connector, ConnectorContext, Row, WriteResult
from gateway.errors import ConfigError, SourceError, TransientSourceError
from gateway.hookspecs import hookimpl
from gateway.schemas import scrub

_UPSERT_INSERT = {
    "postgresql": postgresql.insert,
    "mysql": mysql.insert,
    "mariadb": mysql.insert,
    "sqlite": sqlite.insert,
}


def _jsonable(value: Any) -> Any:
    """Cursor values go into the store as JSON; typed back on the way in by the column type."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def _typed(value: Any, column: sa.ColumnElement[Any]) -> Any:
    """A cursor value read back from JSON, in the column's Python type."""
    if not isinstance(value, str):
        return value
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return value
    if python_type is dt.datetime:
        return dt.datetime.fromisoformat(value)
    if python_type is dt.date:
        return dt.date.fromisoformat(value)
    if python_type is decimal.Decimal:
        return decimal.Decimal(value)
    return value


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [orig.__class__.__name__])[0]


class SqlConnector(Connector):
    name = "sql"
    options = ("url", "table", "query", "cursor", "key", "schema")

    def __init__(self, options: Mapping[str, Any], context: ConnectorContext):
        super().__init__(options, context)
        if not self.config.get("url"):
            raise ConfigError(f"systems.{context.system}.url: required by the sql connector")
        if bool(self.config.get("table")) == bool(self.config.get("query")):
            raise ConfigError(
                f"systems.{context.system}: the sql connector needs exactly one of table, query"
            )
        try:
            url = make_url(self.config["url"])
            self.engine = sa.create_engine(url, pool_pre_ping=True)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise ConfigError(f"systems.{context.system}.url: {exc}") from None
        self.source = (
            f"{url.render_as_string(hide_password=True)} {self.config.get('table') or 'query'}"
        )
        self._selectable: sa.FromClause | None = None

    # -- helpers -------------------------------------------------------------------------------

    def _fail(self, exc: SQLAlchemyError) -> SourceError:
        cls = TransientSourceError if isinstance(exc, OperationalError) else SourceError
        return cls(self.context.system, self.source, _first_line(exc))

    def _table(self) -> sa.FromClause:
        if self._selectable is None:
            try:
                if self.config.get("table"):
                    self._selectable = sa.Table(
                        self.config["table"],
                        sa.MetaData(),
                        autoload_with=self.engine,
                        schema=self.config.get("schema"),
                    )
                else:
                    query = self.config["query"].strip().rstrip(";")
                    with self.engine.connect() as conn:  # learn the query's columns without rows
                        probe = conn.execute(sa.text(f"SELECT * FROM ({query}) AS q WHERE 1 = 0"))
                        columns = list(probe.keys())
                    text = sa.text(query).columns(*(sa.column(c) for c in columns))
                    self._selectable = text.subquery("q")
            except NoSuchTableError:
                raise SourceError(self.context.system, self.source, "no such table") from None
            except SQLAlchemyError as exc:
                raise self._fail(exc) from None
        return self._selectable

    def _columns(self, names: Sequence[str], what: str) -> list[sa.ColumnElement[Any]]:
        table = self._table()
        missing = [n for n in names if n not in table.c]
        if missing:
            raise SourceError(
                self.context.system,
                self.source,
                f"{what} column(s) not found: {', '.join(missing)}",
            )
        return [table.c[n] for n in names]

    def _order_names(self) -> list[str]:
        if self.config.get("cursor"):
            return list(self.config["cursor"])
        if self.config.get("key"):
            return list(self.config["key"])
        table = self._table()
        pk = [c.name for c in getattr(table, "primary_key", [])]
        if pk:
            return pk
        raise SourceError(
            self.context.system,
            self.source,
            "no primary key: set `cursor` or `key` so rows can be read in order",
        )

    # -- reading -------------------------------------------------------------------------------

    def read(self, cursor: Any = None, batch_size: int = 5000) -> Iterator[Batch]:
        table = self._table()
        names = self._order_names()
        order = self._columns(names, "cursor" if self.config.get("cursor") else "key")
        label = self.config.get("table") or "query"
        last = list(cursor) if cursor else None
        while True:
            query = sa.select(table).order_by(*order).limit(batch_size)
            if last is not None:
                bound = [
                    sa.literal(_typed(v, c), type_=c.type) if v is not None else sa.null()
                    for v, c in zip(last, order, strict=True)
                ]
                query = query.where(sa.tuple_(*order) > sa.tuple_(*bound))
            try:
                with self.engine.connect() as conn:
                    result = conn.execute(query).mappings().all()
            except SQLAlchemyError as exc:
                raise self._fail(exc) from None
            if not result:
                return
            rows = []
            for record in result:
                # Positions are stored in the clear (quarantine): a key may be an ID number.
                position = scrub(f"{label}:" + ",".join(f"{n}={record[n]}" for n in names))
                rows.append(Row(position, dict(record)))
            last = [_jsonable(result[-1][n]) for n in names]
            yield Batch(rows, cursor=last)
            if len(result) < batch_size:
                return

    # -- writing -------------------------------------------------------------------------------

    def write(self, rows: Sequence[Mapping[str, Any]], key: Sequence[str]) -> WriteResult:
        if not rows:
            return WriteResult()
        table = self._table()
        if not isinstance(table, sa.Table):
            raise ConfigError(
                f"systems.{self.context.system}: the sql connector writes to a table, not a query"
            )
        key_cols = self._columns(key, "key")
        unknown = sorted({c for r in rows for c in r} - set(table.c.keys()))
        if unknown:
            raise SourceError(
                self.context.system,
                self.source,
                f"no such column(s) to write: {', '.join(unknown)}",
            )
        result = WriteResult()
        try:
            with self.engine.begin() as conn:
                existing = self._existing(conn, table, key_cols, key, rows)
                changed = []
                for row in rows:
                    before = existing.get(tuple(row[k] for k in key))
                    if before is None:
                        result.inserted += 1
                        changed.append(row)
                    elif any(before.get(c) != v for c, v in row.items()):
                        result.updated += 1
                        changed.append(row)
                    else:
                        result.unchanged += 1
                if changed:
                    conn.execute(self._upsert(conn.dialect.name, table, key, changed), changed)
        except SQLAlchemyError as exc:
            raise self._fail(exc) from None
        return result

    @staticmethod
    def _existing(conn, table, key_cols, key, rows) -> dict[tuple, dict[str, Any]]:
        found: dict[tuple, dict[str, Any]] = {}
        wanted = [tuple(r[k] for k in key) for r in rows]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            clause = (
                key_cols[0].in_([w[0] for w in chunk])
                if len(key) == 1
                else sa.tuple_(*key_cols).in_(chunk)
            )
            for record in conn.execute(sa.select(table).where(clause)).mappings():
                found[tuple(record[k] for k in key)] = dict(record)
        return found

    @staticmethod
    def _upsert(dialect: str, table: sa.Table, key: Sequence[str], rows: list[Mapping[str, Any]]):
        make = _UPSERT_INSERT.get(dialect)
        if make is None:
            raise SourceError(
                "sql", dialect, "upsert is supported on PostgreSQL, MySQL/MariaDB and SQLite"
            )
        # Parameters go in as an executemany (conn.execute(stmt, rows)): no giant statement to
        # build, and no limit on bound variables per statement.
        stmt = make(table)
        updates = [c for c in rows[0] if c not in key]
        if dialect in ("mysql", "mariadb"):
            return (
                stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in updates})
                if updates
                else stmt.prefix_with("IGNORE")
            )
        if not updates:
            return stmt.on_conflict_do_nothing(index_elements=list(key))
        return stmt.on_conflict_do_update(
            index_elements=list(key), set_={c: stmt.excluded[c] for c in updates}
        )

    def close(self) -> None:
        self.engine.dispose()


@hookimpl
def register_connectors() -> list[type[Connector]]:
    return [SqlConnector]
