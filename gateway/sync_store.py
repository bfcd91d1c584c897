"""The sync engine's bulk reads and writes of one dataset table, through the database driver.

A batch of thousands of rows pays per row for every layer between Python and the database, so the
hot statements (look-ups by fingerprint and by record key, inserts, updates) go straight to the
driver's cursor on the SQLAlchemy connection, inside its transaction: ``executemany`` on SQLite,
``COPY`` and pipelined ``executemany`` on PostgreSQL. Values are turned into what the database
stores by the column types' own SQLAlchemy bind processors (SQLite keeps dates as text in
SQLAlchemy's format), so rows written here read back through the ORM exactly as if it had
written them. Other dialects take the same statements through SQLAlchemy Core.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, false, func, insert, select, text, update
from sqlalchemy.schema import CreateIndex, DropIndex

if TYPE_CHECKING:
    from sqlalchemy import Connection, Index, Table

# Keys per look-up: SQLite's bound-parameter limit is 32766; PostgreSQL's planner (default
# costs) answers ANY(...) of a few thousand keys with index scans, of 5000 with a table scan.
LOOKUP_CHUNK = 2000
# SQLite page cache of a connection the sync works on, in KiB (the default is 2 MiB): the indexes
# of a dataset table take random inserts, and a cache that holds them (100k rows: ~25 MB) saves
# ~40% of the insert cost. Memory is taken only as pages are used.
SQLITE_CACHE_KIB = 32768
# Bulk load (SQLite): a run into a table holding no row of its source, and at most this many rows
# of other sources, drops the table's indexes and builds them once at the end. A batch's random
# keys would otherwise dirty most pages of each index, and every commit writes them all to the WAL;
# building an index afterwards sorts once (100k rows: ~0.1 s per index).
BULK_LOAD_MAX_OTHER_ROWS = 100_000
# While the natural-key index is away, the run finds its own earlier rows through this temporary
# table of the connection: (hash of the record key, the batch that inserted it), 8-byte keys in
# the connection's temp store, never in the WAL.
BULK_KEYS = "gateway_bulk_keys"


def _sqlite_in(
    cur: Any, head: str, params: Sequence[Any], column: str, values: Sequence[Any]
) -> Iterator[tuple[Any, ...]]:
    """The rows of ``{head} {column} IN (...)`` on a SQLite cursor for every one of ``values``,
    asked ``LOOKUP_CHUNK`` at a time (SQLite caps the parameters of one statement)."""
    for i in range(0, len(values), LOOKUP_CHUNK):
        part = values[i : i + LOOKUP_CHUNK]
        cur.execute(f"{head} {column} IN ({', '.join('?' * len(part))})", [*params, *part])
        yield from cur.fetchall()


# What a look-up by record key gives back per stored row.
Found = tuple[int, str, bool, int | None, bytes | None]  # id, content_hash, removed, last_run, fp


class DatasetTable:
    """Bulk statements for one canonical dataset table on one dialect."""

    def __init__(self, table: Table, dialect_name: str, dialect: Any):
        self.table = table
        self.name = table.name
        # Every column but the id, in the table's order: what an INSERT supplies.
        self.columns: tuple[str, ...] = tuple(c.name for c in table.columns if c.name != "id")
        # An UPDATE rewrites the same columns, except who first inserted the row.
        self.update_columns: tuple[str, ...] = tuple(c for c in self.columns if c != "first_run_id")
        self.driver = dialect_name if dialect_name in ("sqlite", "postgresql") else None
        self.mark = "?" if dialect_name == "sqlite" else "%s"
        processors: dict[str, Callable[[Any], Any]] = {}
        for column in table.columns:
            proc = column.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None and column.name != "fingerprint":  # bytes go through as they are
                processors[column.name] = proc
        self.processors = processors
        m = self.mark
        self._insert_sql = (
            f"INSERT INTO {self.name} ({', '.join(self.columns)}) "
            f"VALUES ({', '.join(m for _ in self.columns)})"
        )
        self._update_sql = (
            f"UPDATE {self.name} SET {', '.join(f'{c} = {m}' for c in self.update_columns)} "
            f"WHERE id = {m}"
        )
        self._fingerprint_sql = f"UPDATE {self.name} SET fingerprint = {m} WHERE id = {m}"

    def planner_rows(self, conn: Connection) -> tuple[int, int] | None:
        """PostgreSQL: (rows the planner's statistics of the table count, 0 if it was never
        analyzed; live rows as the server's activity statistics count them). None elsewhere
        (SQLite plans these look-ups well without statistics)."""
        if self.driver != "postgresql":
            return None
        row = conn.execute(
            text(
                "SELECT c.reltuples, coalesce(s.n_live_tup, 0) FROM pg_class c "
                "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
                "WHERE c.oid = CAST(:name AS regclass)"
            ),
            {"name": self.name},
        ).one()
        return max(0, int(row[0] or 0)), int(row[1] or 0)

    def analyze(self, conn: Connection) -> None:
        """Refresh PostgreSQL's planner statistics of the table. Without them (a table filled
        since its last ANALYZE) the planner takes ``source = ...`` for selective and answers the
        look-ups by reading every row of the source, once per batch."""
        if self.driver == "postgresql":
            conn.exec_driver_sql(f"ANALYZE {self.name}")

    def tune(self, conn: Connection) -> None:
        """Connection settings for bulk work (SQLite: a larger page cache). Durability is the
        engine's (WAL, synchronous=NORMAL): a committed batch survives a crash of the process."""
        if self.driver == "sqlite":
            conn.exec_driver_sql(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")

    # -- bulk load: indexes dropped during a first ingest, built once at its end -----------------

    def deferred_indexes(self, unique: bool | None = None) -> list[Index]:
        """The indexes a bulk load drops (all of the table's; ``unique``: only those that are, or
        are not, unique), in a fixed order."""
        return sorted(
            (ix for ix in self.table.indexes if unique is None or bool(ix.unique) == unique),
            key=lambda ix: ix.name,
        )

    def can_bulk_load(self, conn: Connection, source: str) -> bool:
        """SQLite, no row of ``source`` stored (present or removed), few rows of other sources."""
        if self.driver != "sqlite" or not self.deferred_indexes():
            return False
        t = self.table
        if self.any_rows(conn, source):
            return False
        few = select(t.c.id).limit(BULK_LOAD_MAX_OTHER_ROWS + 1).subquery()
        return conn.execute(select(func.count()).select_from(few)).scalar_one() <= (
            BULK_LOAD_MAX_OTHER_ROWS
        )

    def drop_deferred_indexes(self, conn: Connection) -> None:
        for index in self.deferred_indexes():
            conn.execute(DropIndex(index, if_exists=True))

    def missing_indexes(self, conn: Connection) -> list[str]:
        """Names of the table's indexes that do not exist (SQLite; elsewhere none are dropped)."""
        if self.driver != "sqlite":
            return []
        have = set(
            conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
                (self.name,),
            ).scalars()
        )
        return [ix.name for ix in self.deferred_indexes() if ix.name not in have]

    def create_missing_indexes(self, conn: Connection, unique: bool | None = None) -> list[str]:
        """Build the indexes a bulk load (maybe a killed one) left out; returns their names.
        Unique ones first: if one fails (duplicate keys, which the run never writes) nothing is
        built. IF NOT EXISTS, so two runs ending together do not collide."""
        missing = set(self.missing_indexes(conn))
        built = []
        for index in sorted(self.deferred_indexes(unique), key=lambda ix: not ix.unique):
            if index.name in missing:
                conn.execute(CreateIndex(index, if_not_exists=True))
                built.append(index.name)
        return built

    def bulk_keys_create(self, conn: Connection) -> None:
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS {BULK_KEYS} "
            "(h INTEGER PRIMARY KEY, batch INTEGER NOT NULL)"
        )

    def bulk_keys_drop(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{BULK_KEYS}")

    def bulk_keys_add(self, conn: Connection, hashes: Sequence[int], batch: int) -> None:
        """Remember the hashes of the record keys ``batch`` inserted (in its transaction)."""
        with self._cursor(conn) as cur:
            cur.executemany(
                f"INSERT INTO temp.{BULK_KEYS} (h, batch) VALUES (?, ?)",
                [(h, batch) for h in hashes],
            )

    def bulk_keys_hits(self, conn: Connection, hashes: Sequence[int]) -> list[tuple[int, int]]:
        """(hash, batch) of the ``hashes`` an earlier batch of the bulk load inserted."""
        with self._cursor(conn) as cur:
            return list(
                _sqlite_in(cur, f"SELECT h, batch FROM temp.{BULK_KEYS} WHERE", (), "h", hashes)
            )

    def by_record_key_between(
        self, conn: Connection, source: str, key: str, after_id: int, upto_id: int
    ) -> Found | None:
        """The row of ``source`` with ``key`` among ids ``after_id < id <= upto_id`` (a range one
        batch inserted): read through the primary key, no other index needed."""
        row = conn.exec_driver_sql(
            f"SELECT id, content_hash, removed, last_run_id, fingerprint FROM {self.name} "
            "WHERE id > ? AND id <= ? AND source = ? AND record_key = ?",
            (after_id, upto_id, source, key),
        ).first()
        if row is None:
            return None
        rid, ch, removed, last_run, fp = row
        return rid, ch, bool(removed), last_run, fp

    @staticmethod
    @contextlib.contextmanager
    def _cursor(conn: Connection) -> Iterator[Any]:
        """The driver's cursor on ``conn`` (in its transaction), closed afterwards."""
        cur = conn.connection.cursor()
        try:
            yield cur
        finally:
            cur.close()

    # -- values -----------------------------------------------------------------------------------

    def _tuples(
        self, columns: dict[str, list[Any]], names: Sequence[str], extra: Sequence[str] = ()
    ) -> list[tuple[Any, ...]]:
        """Rows as driver tuples from column lists (``names`` then ``extra``)."""
        lists = []
        for name in (*names, *extra):
            values = columns[name]
            proc = self.processors.get(name)
            if proc is not None:
                # Each distinct value once: a batch repeats its time stamp, flags, dates.
                done = {v: proc(v) for v in set(values) if v is not None}
                done[None] = None
                values = [done[v] for v in values]
            lists.append(values)
        return list(zip(*lists, strict=True))

    # -- reads ------------------------------------------------------------------------------------

    def _rows_in(
        self,
        conn: Connection,
        columns: tuple[str, ...],
        source: str,
        column: str,
        values: Sequence[Any],
        present_only: bool = False,
    ) -> Iterator[tuple[Any, ...]]:
        """``columns`` of the rows of ``source`` whose ``column`` is one of ``values`` (only those
        not removed if ``present_only``), asked in chunks of ``LOOKUP_CHUNK``."""
        cols = ", ".join(columns)
        if self.driver == "postgresql":
            where = "source = %s" + (" AND removed = false" if present_only else "")
            sql = f"SELECT {cols} FROM {self.name} WHERE {where} AND {column} = ANY(%s)"
            with self._cursor(conn) as cur:
                for i in range(0, len(values), LOOKUP_CHUNK):
                    cur.execute(sql, (source, list(values[i : i + LOOKUP_CHUNK])))
                    yield from cur.fetchall()
            return
        if self.driver == "sqlite":
            where = "source = ?" + (" AND removed = 0" if present_only else "")
            with self._cursor(conn) as cur:
                head = f"SELECT {cols} FROM {self.name} WHERE {where} AND"
                yield from _sqlite_in(cur, head, (source,), column, values)
            return
        t = self.table
        stmt = select(*(t.c[c] for c in columns)).where(
            t.c.source == source, t.c[column].in_(bindparam("values", expanding=True))
        )
        if present_only:
            stmt = stmt.where(t.c.removed == false())
        for i in range(0, len(values), LOOKUP_CHUNK):
            yield from conn.execute(stmt, {"values": list(values[i : i + LOOKUP_CHUNK])})

    def by_fingerprint(
        self, conn: Connection, source: str, fingerprints: Sequence[bytes]
    ) -> dict[bytes, tuple[int, int | None]]:
        """fingerprint -> (id, last_run_id) of the present (not removed) rows of ``source``
        carrying one of ``fingerprints``: read from the fingerprint index alone."""
        rows = self._rows_in(
            conn,
            ("id", "fingerprint", "last_run_id"),
            source,
            "fingerprint",
            fingerprints,
            present_only=True,
        )
        return {bytes(fp): (row_id, last_run) for row_id, fp, last_run in rows}

    def following(
        self, conn: Connection, source: str, after: int, limit: int, skip_runs: Collection[int]
    ) -> tuple[bytes, list[int]]:
        """The next ``limit`` present rows of ``source`` with an id above ``after``, in id order,
        leaving out rows last written by ``skip_runs``: (their fingerprints joined, 16 zero bytes
        for none; their ids). A caller checks the length (a fingerprint is 16 bytes when the sync
        wrote it; anything else makes the window unusable, not wrong). The stored rows a snapshot exported in the same order as
        before meets next, read in one aggregate (no Python object per row) through the primary
        key (SQLite: ``+source`` keeps the planner off the fingerprint index, which would read
        every row of the source and sort them). Fingerprints and ids come from one pass of the
        aggregate, so they pair up whatever order it takes (SQLite 3.40 has no ORDER BY inside
        group_concat; it follows the subquery's order)."""
        runs = sorted(skip_runs) or [0]
        if self.driver == "sqlite":
            sql = (
                "SELECT CAST(group_concat(coalesce(fingerprint, zeroblob(16)), '') AS BLOB), "
                "group_concat(id) FROM ("
                f"SELECT id, fingerprint FROM {self.name} WHERE +source = ? AND +removed = 0 "
                f"AND id > ? AND coalesce(last_run_id, 0) NOT IN ({', '.join('?' * len(runs))}) "
                "ORDER BY id LIMIT ?)"
            )
            with self._cursor(conn) as cur:
                cur.execute(sql, (source, after, *runs, limit))
                blob, ids = cur.fetchone()
            return (blob, list(map(int, ids.split(",")))) if ids else (b"", [])
        if self.driver == "postgresql":
            sql = (
                "SELECT string_agg(coalesce(fingerprint, "
                "'\\x00000000000000000000000000000000'::bytea), ''::bytea ORDER BY id), "
                f"array_agg(id ORDER BY id) FROM (SELECT id, fingerprint FROM {self.name} "
                "WHERE source = %s AND removed = false AND id > %s "
                "AND coalesce(last_run_id, 0) <> ALL(%s) ORDER BY id LIMIT %s) w"
            )
            with self._cursor(conn) as cur:
                cur.execute(sql, (source, after, runs, limit))
                blob, ids = cur.fetchone()
            return (bytes(blob), list(ids)) if ids else (b"", [])
        t = self.table
        stmt = (
            select(t.c.fingerprint, t.c.id)
            .where(
                t.c.source == source,
                t.c.removed == false(),
                t.c.id > after,
                func.coalesce(t.c.last_run_id, 0).not_in(runs),
            )
            .order_by(t.c.id)
            .limit(limit)
        )
        fps, ids = [], []
        for fp, row_id in conn.execute(stmt):
            fps.append(bytes(16) if fp is None else bytes(fp))
            ids.append(row_id)
        return b"".join(fps), ids

    def any_present(self, conn: Connection, source: str) -> bool:
        """Whether any row of ``source`` is present (not removed)."""
        t = self.table
        return (
            conn.execute(
                select(t.c.id).where(t.c.source == source, t.c.removed == false()).limit(1)
            ).first()
            is not None
        )

    def any_rows(self, conn: Connection, source: str, besides: Collection[int] = ()) -> bool:
        """Whether any row of ``source`` is stored, present or removed; ``besides``: other than
        rows the runs ``besides`` wrote last."""
        t = self.table
        stmt = select(t.c.id).where(t.c.source == source)
        if besides:
            stmt = stmt.where(t.c.last_run_id.is_(None) | t.c.last_run_id.not_in(list(besides)))
        return conn.execute(stmt.limit(1)).first() is not None

    def present(self, conn: Connection, source: str) -> int:
        """How many rows of ``source`` are present (not removed): counted in the fingerprint
        index, whose first columns are (source, removed)."""
        t = self.table
        return conn.execute(
            select(func.count()).select_from(t).where(t.c.source == source, t.c.removed == false())
        ).scalar_one()

    def by_record_key(self, conn: Connection, source: str, keys: Sequence[str]) -> dict[str, Found]:
        """record_key -> (id, content_hash, removed, last_run_id, fingerprint) of the stored rows
        of ``source`` among ``keys``."""
        columns = ("record_key", "id", "content_hash", "removed", "last_run_id", "fingerprint")
        return {
            rk: (rid, ch, bool(removed), last_run, None if fp is None else bytes(fp))
            for rk, rid, ch, removed, last_run, fp in self._rows_in(
                conn, columns, source, "record_key", keys
            )
        }

    # -- writes -----------------------------------------------------------------------------------

    def insert(self, conn: Connection, columns: dict[str, list[Any]]) -> None:
        """Insert rows given column by column (every name of ``self.columns``)."""
        if self.driver is None:
            n = len(columns[self.columns[0]])
            conn.execute(
                insert(self.table),
                [{c: columns[c][i] for c in self.columns} for i in range(n)],
            )
            return
        rows = self._tuples(columns, self.columns)
        if not rows:
            return
        with self._cursor(conn) as cur:
            if self.driver == "postgresql":
                with cur.copy(f"COPY {self.name} ({', '.join(self.columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                cur.executemany(self._insert_sql, rows)

    def update(self, conn: Connection, columns: dict[str, list[Any]], ids: Sequence[int]) -> None:
        """Rewrite the rows ``ids`` (every name of ``self.update_columns``)."""
        if not ids:
            return
        if self.driver is None:
            t = self.table
            conn.execute(
                update(t).where(t.c.id == bindparam("_id")),
                [
                    {"_id": row_id, **{c: columns[c][i] for c in self.update_columns}}
                    for i, row_id in enumerate(ids)
                ],
            )
            return
        rows = self._tuples({**columns, "id": list(ids)}, self.update_columns, ("id",))
        with self._cursor(conn) as cur:
            cur.executemany(self._update_sql, rows)

    def set_fingerprints(self, conn: Connection, pairs: Sequence[tuple[bytes, int]]) -> None:
        """Store new fingerprints ``(fingerprint, id)`` on rows found unchanged (nothing else of
        the row, its updated_at included, changes: it is no change for the change feed)."""
        if not pairs:
            return
        if self.driver is None:
            t = self.table
            conn.execute(
                update(t).where(t.c.id == bindparam("_id")).values(fingerprint=bindparam("_fp")),
                [{"_fp": fp, "_id": row_id} for fp, row_id in pairs],
            )
            return
        with self._cursor(conn) as cur:
            cur.executemany(self._fingerprint_sql, list(pairs))
