"""Group commit of the API's audit entries and nonces: durable before the answer, batched.

Every answer waits until its audit entry (and its request's nonce) is committed. The audit log is
one hash chain, so appends are serialised by the chain head's row lock, held until the commit's
WAL flush: one request per transaction would cap a whole province at one fsync per request. Here
the requests of a process that come to commit while another commit is in flight are committed
together, in one transaction and one flush, by whichever request thread gets there first
(leader/follower: no extra thread). The leader also waits up to ``GATHER_S`` for the requests of
its process still being handled (``working``), and only while there are some: a quiet gateway
adds no wait, a busy one writes bigger batches.

A nonce that turns out to be recorded already (a replay, from this batch or from any process
sharing the store) makes its request a refusal: its data entry is replaced by the refusal's entry
and the caller is told with ``Replayed``.

On PostgreSQL the committer writes a batch as one statement on its own connection (no pool
checkout, no ping; see ``_BATCH_SQL``), optimistic on the chain head it wrote last. When another
writer moved the head meanwhile, the statement sees it in its snapshot and writes nothing, or (if
that writer committed while the statement waited for the head's row lock) writes only the batch's
new nonces; the batch is then hashed again from the head returned (or read anew) and written by
the next statement, its nonces already known. Either way every entry and nonce is committed
before any answer of the batch is sent. The general path sent eight statements and a ping. A
batch that needs a checkpoint, or the chain's first entry, takes the general path
(``audit.append_many``), which waits for the head's lock.

The workers of one host take turns (``_HostTurn``: a lock file that also holds the head the last
batch left, as a hint the statement checks), so a worker's statement starts from the head the
other worker just wrote instead of missing it (two workers missed on most batches: 1.8-1.9
statements per batch). The batch statement commits without waiting for its WAL flush, so neither
the turn nor the head's row lock is held through the flush; the batch is then made durable by a
barrier (``_FLUSH_SQL``, synchronous_commit as configured) before any of its answers is sent. The
workers' barriers hold no lock, so PostgreSQL flushes them together.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
# How long a batch's leader waits for requests of its process still being handled (only while
# there are some): a few hundred µs of latency for fewer transactions and WAL flushes.
GATHER_S = 0.001


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
    gather_s: float = GATHER_S
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: list[_Item] = field(default_factory=list)
    _leading: bool = False
    _working: int = 0  # requests being handled that have not come to commit yet
    _gathering: bool = False  # the leader waits for them
    _pg: _PgWriter | None = None
    batches: int = 0  # transactions written (for the benchmark)
    items: int = 0

    def __post_init__(self) -> None:
        self._cond = threading.Condition(self._lock)  # a batch was written
        self._arrived = threading.Condition(self._lock)  # an item joined the pending ones
        if self.site.engine.dialect.name == "postgresql":
            self._pg = _PgWriter(self.site)

    def working(self, change: int) -> None:
        """A request that will commit started (+1), or ended without committing (-1)."""
        with self._lock:
            self._working += change

    def commit(
        self,
        nonce: Nonce | None,
        events: Sequence[audit.AuditEvent],
        on_replay: OnReplay = (),
        *,
        was_working: bool = False,
    ) -> None:
        """Return once the nonce and the events are committed; ``Replayed`` if the nonce was used
        before (``on_replay`` was committed instead of ``events``); the store's error if it failed.
        ``was_working``: this request was counted by ``working(+1)`` and arrives now."""
        item = _Item(nonce, events, on_replay)
        with self._lock:
            if was_working:
                self._working -= 1
            self._pending.append(item)
            if self._gathering:
                self._arrived.notify()
            while not item.done and self._leading:
                self._cond.wait()
            if not item.done:
                # Lead: this request's item and whatever else is waiting, up to max_batch; while
                # other requests of this process are about to commit, wait a little for them (one
                # transaction and one WAL flush for all). A quiet gateway waits for nothing.
                self._leading = True
                deadline = None
                while self._working > 0 and len(self._pending) < self.max_batch:
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self.gather_s
                    elif now >= deadline:
                        break
                    self._gathering = True
                    self._arrived.wait(deadline - now)
                    self._gathering = False
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
                with self._lock:
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
            recorded: set[tuple[str, str]] = set()
            if self._pg is not None:
                replayed, recorded = self._pg.write(batch)
            if replayed is None:
                replayed = self._write_session(batch, recorded)
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

    def _write_session(
        self, batch: list[_Item], recorded: set[tuple[str, str]] = frozenset()
    ) -> list[bool]:
        """Any store: the nonces and the entries through a Session (``audit.append_many``).
        ``recorded``: nonces of this batch already recorded by this committer (fresh ones)."""
        wanted, repeated = _wanted(batch)
        with self.site.begin() as session:
            fresh = remember_nonces(session, [n for n in wanted if n[:2] not in recorded])
            replayed, events = _outcome(batch, repeated, fresh | recorded)
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


_ENTRY_COLUMNS = tuple(c.name for c in audit.ENTRIES.columns)  # every key of audit._links rows
_ENTRIES_SQL = _json_insert(audit.ENTRIES, _ENTRY_COLUMNS, "(SELECT doc->'e' FROM d)")
_SUBJECTS_SQL = _json_insert(
    audit.SUBJECTS, ("entry_seq", "subject_key"), "(SELECT doc->'s' FROM d)"
)
_NONCES_SQL = _json_insert(NONCES, ("key_id", "nonce", "expires_at"))
_HEAD = audit.HEAD.name
# One statement, hence one implicit transaction, per batch: record the nonces, if the head (as of
# the statement's snapshot) is still where the entries were hashed from; move the head only from
# there, and only if every nonce was new; write the entries and their subjects only if the head
# moved. A head visibly moved by another writer costs a read-only statement (no insert, no WAL
# flush). The head's condition reads n, so the nonces go in before the head row is locked, as on
# the general path (no lock-order deadlock with a duplicate nonce in flight). Returns whether the
# head moved, which nonces were recorded and the head of the snapshot (a locking read here could
# deadlock with the other writers' UPDATE).
_BATCH_SQL = (
    f"WITH cur AS (SELECT seq, hash, ts, checkpoint_seq, checkpoint_ts FROM {_HEAD} WHERE id = 1), "
    f"n AS ({_NONCES_SQL} WHERE EXISTS (SELECT FROM cur WHERE seq = %s AND hash = %s) "
    "ON CONFLICT (key_id, nonce) DO NOTHING RETURNING key_id, nonce), "
    f"h AS (UPDATE {_HEAD} SET seq = %s, hash = %s, ts = %s "
    "WHERE id = 1 AND seq = %s AND hash = %s AND (SELECT count(*) FROM n) = %s RETURNING seq), "
    "d AS (SELECT %s::json AS doc), "
    f"e AS ({_ENTRIES_SQL} WHERE EXISTS (SELECT FROM h)), "
    f"s AS ({_SUBJECTS_SQL} WHERE EXISTS (SELECT FROM h)) "
    "SELECT (SELECT count(*) FROM h), (SELECT array_agg(key_id) FROM n), "
    "(SELECT array_agg(nonce) FROM n), "
    "cur.seq, cur.hash, cur.ts, cur.checkpoint_seq, cur.checkpoint_ts, "
    "set_config('synchronous_commit', %s, true) "
    "FROM (SELECT 1) AS one LEFT JOIN cur ON true"
)
# Durability barrier after a batch's statements (committed without waiting for their WAL flush,
# so the chain head's row lock is not held through it): a transaction that writes a WAL record
# (a transactional logical message; nothing is stored) and so, with synchronous_commit on,
# returns only once the WAL is flushed up to its commit record, that is past every earlier
# commit record, the batch's included. The two workers' barriers hold no lock: PostgreSQL
# flushes them together (its own group commit) instead of one after the other.
_FLUSH_SQL = "SELECT pg_logical_emit_message(true, 'gateway.audit', '')"
_READ_HEAD_SQL = f"SELECT seq, hash, ts, checkpoint_seq, checkpoint_ts FROM {_HEAD} WHERE id = 1"
ATTEMPTS = 4  # then the general path, which waits for the head's lock instead


def _head_of(row: Sequence[Any]) -> audit._Head | None:
    if row[0] is None:
        return None
    return audit._Head(row[0], row[1], row[2], row[3] or 0, row[4])


class _PgWriter:
    """The committer's own connection, and a batch in one statement (optimistic on the head).

    The chain head this process wrote last is kept: the batch's entries are hashed from it and
    the statement moves the head only from there. When another writer (the other workers, a sync
    run) moved it meanwhile, nothing but the new nonces is written; the statement returns the head
    it saw, and the batch is hashed again from that. The nonces it recorded are this batch's (the
    others were replays): they are not asked for again.

    Used by one thread at a time (the batch's leader). Any error drops the connection; the next
    batch opens a new one. A connection that died while idle (server restart) is found by the
    first statement and replaced once: a failed statement wrote nothing.
    """

    def __init__(self, site: Site):
        self.site = site
        self._conn: Any = None
        self._cur: Any = None
        self._head: audit._Head | None = None
        # Commit the batch statements without waiting for their WAL flush, then wait for it with
        # _FLUSH_SQL (off: when the server refused the barrier, each statement waits itself).
        self._wait_flush = True
        self._unflushed = False
        self._turn = _HostTurn(site.engine.url.render_as_string(hide_password=True))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._head = None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing more to release
                conn.close()

    def _cursor(self) -> tuple[Any, bool]:
        if self._conn is not None and not self._conn.closed:
            return self._cur, True
        self.close()
        pooled = self.site.engine.raw_connection()
        conn = pooled.driver_connection  # the psycopg connection
        pooled.detach()  # ours for good: never handed back to the pool, never pinged
        conn.autocommit = True  # each statement is its own transaction
        self._conn = conn
        self._cur = conn.cursor()  # kept: a new cursor sets up its result loaders afresh
        return self._cur, False

    def _execute(self, sql: str, params: Sequence[Any]) -> Any:
        import psycopg

        for attempt in (1, 2):
            cur, reused = self._cursor()
            try:
                cur.execute(sql, params)
                return cur.fetchone()
            except psycopg.Error as exc:
                lost = cur.connection.broken
                self.close()
                if attempt == 1 and reused and lost:
                    continue  # the idle connection was gone: the statement did not run
                raise StoreError(f"audit commit: {str(exc).splitlines()[0]}") from exc
        raise AssertionError("unreachable")

    def write(self, batch: list[_Item]) -> tuple[list[bool] | None, set[tuple[str, str]]]:
        """Commit the batch (``_write``) in this host's turn, then wait until it is durable
        (``_FLUSH_SQL``, outside the turn: the workers' flushes overlap)."""
        self._unflushed = False
        with self._turn:
            self._head = self._turn.newer(self._head)
            result = self._write(batch)  # on an error nothing of the batch is answered as done
            self._turn.publish(self._head)
        if self._unflushed:
            self._flush()
        return result

    def _flush(self) -> None:
        """Return once everything this connection committed is flushed to disk."""
        import psycopg

        cur = self._cur
        try:
            cur.execute(_FLUSH_SQL)
            cur.fetchone()
        except psycopg.Error as exc:
            self.close()
            if isinstance(
                exc, psycopg.errors.InsufficientPrivilege | psycopg.errors.UndefinedFunction
            ):
                # Not allowed on this server: commit synchronously from now on. This batch is
                # not known to be durable, so it fails (its requests are refused and audited).
                self._wait_flush = False
            raise StoreError(f"audit commit (flush): {str(exc).splitlines()[0]}") from exc
        finally:
            self._unflushed = False

    def _write(self, batch: list[_Item]) -> tuple[list[bool] | None, set[tuple[str, str]]]:
        """Commit the batch: (its replay flags, the nonces recorded); flags None when the general
        path must write it (a checkpoint is due, the chain has no head yet, or the head kept
        moving), with the nonces already recorded."""
        wanted, repeated = _wanted(batch)
        recorded: set[tuple[str, str]] = set()
        pending = wanted  # nonces not yet known to be new or replayed
        for _ in range(ATTEMPTS):
            head = self._head
            if head is None:
                head = self._head = _head_of(self._execute(_READ_HEAD_SQL, ()) or (None,))
                if head is None:  # the chain's first entry: the general path creates the head
                    return None, recorded
            # Hashed as if every pending nonce were new; the statement writes nothing else if not.
            assumed = recorded | {n[:2] for n in pending}
            replayed, events = _outcome(batch, repeated, assumed)
            links = audit._links(head, events, self.site.suite)
            if not events:  # nonces only: the head stays as it is (its time too)
                links.when = head.ts  # type: ignore[assignment]
            elif audit._checkpoint_due(self.site, head, links.seq, links.now):
                self._head = None  # the general path signs and moves it
                return None, recorded
            nonces = [{"key_id": k, "nonce": n, "expires_at": e.isoformat()} for k, n, e in pending]
            entries = [{**r, "ts": r["ts"].isoformat()} for r in links.rows]
            row = self._execute(
                _BATCH_SQL,
                (
                    json.dumps(nonces),
                    head.seq,
                    head.hash,
                    links.seq,
                    links.hash,
                    links.when,
                    head.seq,
                    head.hash,
                    len(pending),
                    json.dumps({"e": entries, "s": links.subjects}, ensure_ascii=False),
                    "off" if self._wait_flush else "on",
                ),
            )
            self._unflushed = self._wait_flush
            seen = _head_of(row[3:])
            if seen is not None and (seen.seq, seen.hash) == (head.seq, head.hash):
                # The nonces went in: those not returned were recorded before (replays).
                recorded |= set(zip(row[1] or (), row[2] or (), strict=True))
                pending = []
            if row[0]:
                self._head = audit._Head(
                    links.seq, links.hash, links.when, head.checkpoint_seq, head.checkpoint_ts
                )
                return replayed, recorded
            # Moved by another writer (or a replay was found). The snapshot still showing our
            # head means the UPDATE waited for a writer that committed after it: read it anew.
            self._head = None if seen is None or seen.seq == head.seq else seen
        return None, recorded


def hint_file(store: str) -> Path:
    """The lock file through which this user's committers of ``store`` (its URL as the engine
    renders it, password hidden) take turns on this host (``_HostTurn``)."""
    digest = hashlib.sha256(f"{os.getuid()}:{store}".encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"gateway-audit-head-{digest}.lock"


class _HostTurn:
    """The committers of one host (the gunicorn workers) write their batches in turns, and each
    leaves the chain head it wrote for the next one: a lock file holding the head as a hint.

    Without it the workers' optimistic statements kept missing a head the other worker had just
    moved (1.8-1.9 statements per batch with two workers). The hint is only a hint: the batch
    statement still checks the head in the database, so a stale or forged file costs a retry,
    never a wrong link; other hosts and sync runs are serialised by the database as before. The
    file is created 0600 in the temporary directory; one not owned by this user is not used (the
    committers then race as before)."""

    SIZE = 256

    def __init__(self, store: str):
        self.path = hint_file(store)
        self._fd: int | None = None
        self._pid = 0
        self._usable = True
        self._mutex = threading.Lock()

    def _open(self) -> int | None:
        if self._fd is not None and self._pid != os.getpid():
            # Inherited over a fork: flock is per open file, so each process opens its own.
            self._fd = None
        if self._fd is None and self._usable:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            except OSError as exc:
                log.warning("audit head hint %s not usable: %s", self.path, exc)
                self._usable = False
                return None
            st = os.fstat(fd)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                os.close(fd)
                log.warning("audit head hint %s: not this user's private file; not used", self.path)
                self._usable = False
                return None
            self._fd, self._pid = fd, os.getpid()
        return self._fd

    def __enter__(self) -> None:
        self._mutex.acquire()
        fd = self._open()
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def newer(self, head: audit._Head | None) -> audit._Head | None:
        """The head left by the last batch of this host if it is ahead of ``head`` (in turn)."""
        if self._fd is None:
            return head
        try:
            seq, digest, ts, cp_seq, cp_ts = os.pread(self._fd, self.SIZE, 0).split()
            hint = audit._Head(
                int(seq),
                digest.decode(),
                dt.datetime.fromisoformat(ts.decode()),
                int(cp_seq),
                None if cp_ts == b"-" else dt.datetime.fromisoformat(cp_ts.decode()),
            )
        except (ValueError, OSError):  # empty (first batch) or garbled: the database decides
            return head
        return hint if head is None or hint.seq > head.seq else head

    def publish(self, head: audit._Head | None) -> None:
        """Leave ``head`` for the next batch; None (not known: the general path moved it, or a
        checkpoint) empties the hint, so the next batch reads the head from the database."""
        if self._fd is None:
            return
        text = ""
        if head is not None and head.ts is not None:
            cp_ts = head.checkpoint_ts.isoformat() if head.checkpoint_ts else "-"
            text = f"{head.seq} {head.hash} {head.ts.isoformat()} {head.checkpoint_seq} {cp_ts}"
        with contextlib.suppress(OSError):
            os.pwrite(self._fd, text.encode().ljust(self.SIZE), 0)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
