"""Group commit of the API's audit entries and nonces: durable before the answer, batched.

Every answer waits until its audit entry (and its request's nonce) is committed. The audit log is
one hash chain, so appends are serialised by the chain head's row lock, held until the commit's
WAL flush: one request per transaction would cap a whole province at one fsync per request. Here
the requests of a process that finish while another commit is in flight are committed together,
in one transaction and one flush, by whichever request thread gets there first (leader/follower:
no extra thread, no added wait when the gateway is quiet, bigger batches as load grows).

A nonce that turns out to be recorded already (a replay, from this batch or from any process
sharing the store) makes its request a refusal: its data entry is replaced by the refusal's entry
in the same transaction, and the caller is told with ``Replayed``.

On PostgreSQL the committer writes through its own connection (no pool checkout, no ping) with two
fixed statements taking JSON documents (prepared once, whatever the batch size): BEGIN, nonces + chain head,
entries + subjects + new head, COMMIT; the general path sent eight statements and a ping. A
batch that needs a checkpoint, or the chain's first entry, takes the general path
(``audit.append_many``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import audit
from ..errors import StoreError
from ..store.api import NONCES, remember_nonces

if TYPE_CHECKING:
    from ..site import Site

log = logging.getLogger("gateway.web.commit")

Nonce = tuple[str, str, dt.datetime]  # key id, nonce, expiry (naive UTC)
# What to write instead when the nonce turns out to be replayed: the entries, or a function making
# them (called only then, by whichever thread writes the batch: it must not need the request).
OnReplay = Sequence[audit.AuditEvent] | Callable[[], Sequence[audit.AuditEvent]]
MAX_BATCH = 500  # requests per transaction


class Replayed(Exception):
    """The request's nonce was already recorded: it has been audited as a replay instead."""


@dataclass(eq=False)  # identity: two requests may carry equal contents (a replay)
class _Item:
    nonce: Nonce | None
    events: Sequence[audit.AuditEvent]
    on_replay: OnReplay
    done: bool = False
    replayed: bool = False
    error: BaseException | None = None

    def replay_events(self) -> Sequence[audit.AuditEvent]:
        return self.on_replay() if callable(self.on_replay) else self.on_replay


def _wanted(batch: Sequence[_Item]) -> tuple[list[Nonce], set[int]]:
    """The distinct nonces to record, and the positions whose nonce repeats one before it in the
    batch (replays whatever the store says)."""
    seen: set[tuple[str, str]] = set()
    wanted: list[Nonce] = []
    repeated: set[int] = set()
    for i, item in enumerate(batch):
        if item.nonce is None:
            continue
        key = item.nonce[:2]
        if key in seen:
            repeated.add(i)
        else:
            seen.add(key)
            wanted.append(item.nonce)
    return wanted, repeated


def _outcome(
    batch: Sequence[_Item], repeated: set[int], fresh: set[tuple[str, str]]
) -> tuple[list[bool], list[audit.AuditEvent]]:
    """Which items are replays, and the entries the batch writes."""
    replayed = [
        i in repeated or (item.nonce is not None and item.nonce[:2] not in fresh)
        for i, item in enumerate(batch)
    ]
    events: list[audit.AuditEvent] = []
    for item, again in zip(batch, replayed, strict=True):
        events.extend(item.replay_events() if again else item.events)
    return replayed, events


@dataclass
class GroupCommitter:
    site: Site
    max_batch: int = MAX_BATCH
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _pending: list[_Item] = field(default_factory=list)
    _leading: bool = False
    _pg: _PgWriter | None = None
    batches: int = 0  # transactions written (for the benchmark)
    items: int = 0

    def __post_init__(self) -> None:
        if self.site.engine.dialect.name == "postgresql":
            self._pg = _PgWriter(self.site)

    def commit(
        self,
        nonce: Nonce | None,
        events: Sequence[audit.AuditEvent],
        on_replay: OnReplay = (),
    ) -> None:
        """Return once the nonce and the events are committed; ``Replayed`` if the nonce was used
        before (``on_replay`` was committed instead of ``events``); the store's error if it failed."""
        item = _Item(nonce, events, on_replay)
        with self._cond:
            self._pending.append(item)
            while not item.done and self._leading:
                self._cond.wait()
            if not item.done:
                # Lead: this request's item and whatever else is waiting, up to max_batch.
                self._leading = True
                self._pending.remove(item)
                take = self.max_batch - 1
                batch = [item, *self._pending[:take]]
                del self._pending[:take]
        if not item.done:
            try:
                self._write(batch)
            except BaseException:  # noqa: BLE001 - every item of the batch carries the error
                pass
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if item.error is not None:
            raise item.error
        if item.replayed:
            raise Replayed()

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()

    def _write(self, batch: list[_Item]) -> None:
        try:
            replayed = None
            if self._pg is not None:
                replayed = self._pg.write(batch)
            if replayed is None:
                replayed = self._write_session(batch)
        except BaseException as exc:
            for item in batch:
                item.error = exc
                item.done = True
            raise
        finally:
            self.batches += 1
            self.items += len(batch)
        for item, again in zip(batch, replayed, strict=True):
            item.replayed = again
            item.done = True

    def _write_session(self, batch: list[_Item]) -> list[bool]:
        """Any store: the nonces and the entries through a Session (``audit.append_many``)."""
        wanted, repeated = _wanted(batch)
        with self.site.begin() as session:
            fresh = remember_nonces(session, wanted)
            replayed, events = _outcome(batch, repeated, fresh)
            if events:
                audit.append_many(session, events, site=self.site)
        return replayed


# -- PostgreSQL ---------------------------------------------------------------------------------


def _json_insert(table: Any, columns: Sequence[str], source: str = "%s::json") -> str:
    """``INSERT .. SELECT .. FROM json_to_recordset(..)``: one statement text for any row count,
    and one text parameter (json.dumps is C; psycopg's array adaptation is Python, per element)."""
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()
    names = ", ".join(columns)
    types = ", ".join(f"{c} {table.c[c].type.compile(dialect=dialect)}" for c in columns)
    return (
        f"INSERT INTO {table.name} ({names}) SELECT {names} "
        f"FROM json_to_recordset({source}) AS x({types})"
    )


_ENTRY_COLUMNS = (
    "seq",
    "ts",
    "actor",
    "action",
    "outcome",
    "dataset",
    "purpose",
    "fields",
    "subject_count",
    "detail",
    "alg",
    "prev_hash",
    "hash",
)
# Round trip 1 (after BEGIN): record the nonces, then lock and read the chain head. The head's
# condition on n makes the nonces go first, as on the general path (a duplicate nonce waits for
# its first holder's transaction before this one takes the head: no lock-order deadlock).
_NONCES_AND_HEAD_SQL = (
    "WITH n AS ("
    + _json_insert(NONCES, ("key_id", "nonce", "expires_at"))
    + " ON CONFLICT (key_id, nonce) DO NOTHING RETURNING key_id, nonce) "
    "SELECT (SELECT array_agg(key_id) FROM n), (SELECT array_agg(nonce) FROM n), "
    "h.seq, h.hash, h.ts, h.checkpoint_seq, h.checkpoint_ts FROM (SELECT 1) AS one "
    f"LEFT JOIN LATERAL (SELECT * FROM {audit.HEAD.name} WHERE id = 1 "
    "AND (SELECT count(*) FROM n) >= 0 FOR UPDATE) AS h ON true"
)
# Round trip 2: the entries, their subjects and the new head in one statement (one JSON document
# {"e": entries, "s": subjects}).
_ENTRIES_SQL = _json_insert(audit.ENTRIES, _ENTRY_COLUMNS, "(SELECT doc->'e' FROM d)")
_SUBJECTS_SQL = _json_insert(
    audit.SUBJECTS, ("entry_seq", "subject_key"), "(SELECT doc->'s' FROM d)"
)
_LINKS_SQL = (
    f"WITH d AS (SELECT %s::json AS doc), e AS ({_ENTRIES_SQL}), s AS ({_SUBJECTS_SQL}) "
    f"UPDATE {audit.HEAD.name} SET seq = %s, hash = %s, ts = %s WHERE id = 1"
)


class _PgWriter:
    """The committer's own connection and its two pipelined round trips per batch.

    Used by one thread at a time (the batch's leader). Any error drops the connection (the server
    rolls back what it had); the next batch opens a new one. A connection that died while idle
    (server restart) is found by the first round trip, which is then tried once more on a new one:
    nothing had been written.
    """

    def __init__(self, site: Site):
        self.site = site
        self._conn: Any = None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing more to release
                conn.close()

    def _connection(self) -> tuple[Any, bool]:
        if self._conn is not None and not self._conn.closed:
            return self._conn, True
        self.close()
        pooled = self.site.engine.raw_connection()
        conn = pooled.driver_connection  # the psycopg connection
        pooled.detach()  # ours for good: never handed back to the pool, never pinged
        conn.autocommit = True  # BEGIN / COMMIT are sent in the pipelines
        self._conn = conn
        return conn, False

    def write(self, batch: list[_Item]) -> list[bool] | None:
        """Commit the batch; its replay flags, or None when the general path must write it.

        Four short statements (BEGIN, nonces + head, links, COMMIT), each prepared by psycopg after
        a few uses: cheaper in CPU, here and in the server, than pipelining eight.
        """
        import psycopg

        wanted, repeated = _wanted(batch)
        params = (
            json.dumps(
                [{"key_id": k, "nonce": n, "expires_at": e.isoformat()} for k, n, e in wanted]
            ),
        )
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                conn.execute("BEGIN")
                break
            except psycopg.OperationalError as exc:
                lost = conn.broken
                self.close()
                if attempt == 1 and reused and lost:
                    continue  # the idle connection was gone: nothing was written
                raise StoreError(f"audit commit: {str(exc).splitlines()[0]}") from exc
        try:
            row = conn.execute(_NONCES_AND_HEAD_SQL, params).fetchone()
            fresh = set(zip(row[0] or (), row[1] or (), strict=True))
            replayed, events = _outcome(batch, repeated, fresh)
            if row[2] is None:  # the chain's first entry: the general path creates the head
                conn.execute("ROLLBACK")
                return None
            head = audit._Head(row[2], row[3], row[4], row[5] or 0, row[6])
            links = audit._links(head, events, self.site.suite) if events else None
            if links is not None:
                if audit._checkpoint_due(self.site, head, links.seq, links.now):
                    conn.execute("ROLLBACK")  # signed and exported by the general path
                    return None
                entries = [{**r, "ts": r["ts"].isoformat()} for r in links.rows]
                doc = json.dumps({"e": entries, "s": links.subjects}, ensure_ascii=False)
                conn.execute(_LINKS_SQL, (doc, links.seq, links.hash, links.when))
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            self.close()  # the server rolls back what it had
            raise StoreError(f"audit commit: {str(exc).splitlines()[0]}") from exc
        except BaseException:
            self.close()
            raise
        return replayed
