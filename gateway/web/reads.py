"""The lookup's read on PostgreSQL: the driver directly, on connections kept for it.

A single lookup is one indexed SELECT. Through SQLAlchemy it also cost a pool checkout with a ping
(one more round trip) and the statement's compilation and result wrapping, several times the
query's own cost. Here the statement text is built once per (dataset, columns, areas), psycopg
prepares it after a few uses on each connection, and rows come back as plain tuples.

Connections are kept in a small stack per process (the most recently used first, so a quiet
gateway keeps touching the same few). A connection that died while idle (server restart) is found
by the query and replaced once: a read can be repeated.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Engine, Table

KEEP = 16  # idle connections kept per process


@lru_cache(maxsize=256)
def lookup_sql(table: Table, columns: tuple[str, ...], areas: int) -> str:
    """Rows of these subject keys (one array parameter), not removed, optionally within ``areas``
    area-code prefixes (LIKE parameters), in record order."""
    where = "subject_key = ANY(%s) AND removed = false"
    if areas:
        where += " AND (" + " OR ".join(["area_code LIKE %s"] * areas) + ")"
    return f"SELECT {', '.join(columns)} FROM {table.name} WHERE {where} ORDER BY id"


class ReadConnections:
    """Driver connections for reads, in autocommit (no BEGIN/ROLLBACK around a SELECT)."""

    def __init__(self, engine: Engine, keep: int = KEEP):
        self.engine = engine
        self.keep = keep
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def _open(self) -> Any:
        pooled = self.engine.raw_connection()
        conn = pooled.driver_connection  # the psycopg connection
        pooled.detach()  # ours: never pinged, never reset by the pool
        conn.autocommit = True
        # One cursor per connection, kept: a new cursor sets up its result loaders afresh.
        return conn.cursor()

    def _take(self) -> tuple[Any, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._open(), False

    def _give_back(self, cur: Any) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(cur)
                return
        cur.connection.close()

    def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows (tuples, in the statement's column order)."""
        import psycopg

        for attempt in (1, 2):
            cur, reused = self._take()
            try:
                cur.execute(sql, params)
                rows = cur.fetchall()
            except psycopg.OperationalError:
                lost = cur.connection.broken
                with contextlib.suppress(Exception):
                    cur.connection.close()
                if attempt == 1 and reused and lost:
                    continue
                raise
            except BaseException:
                with contextlib.suppress(Exception):
                    cur.connection.close()
                raise
            self._give_back(cur)
            return rows
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for cur in idle:
            with contextlib.suppress(Exception):
                cur.connection.close()
