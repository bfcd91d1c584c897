"""Sync runs, cursors, snapshot progress, quarantine, scheduler leases and re-index progress.

Owned by the sync engine (gateway/sync.py, quarantine.py, scheduler.py, reindex.py). The lease
functions live here beside their table because ``gateway sync`` and the scheduler both take the same
per-job lease: one runner per job, whatever started it.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from .base import Base
from .records import BigId

RUN_STATUSES = ("running", "succeeded", "failed", "interrupted")


def utcnow() -> dt.datetime:
    """Naive UTC: SQLite keeps no time zone, so every stored time in these tables is UTC."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Run(Base):
    """One run of a job (``kind`` sync, replay or reindex), with the counts that add up:
    read = inserted + updated + unchanged + quarantined; removed is reported beside them."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="sync")
    mode: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="running")
    # The first run of the snapshot this run belongs to (itself, or the run it resumes).
    snapshot_id: Mapped[int | None] = mapped_column(BigInteger)
    resumed_from: Mapped[int | None] = mapped_column(BigInteger)
    full: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str | None] = mapped_column(String(64))
    dataset: Mapped[str | None] = mapped_column(String(32))
    read: Mapped[int] = mapped_column(Integer, default=0)
    inserted: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    removed: Mapped[int] = mapped_column(Integer, default=0)
    delivered: Mapped[int] = mapped_column(Integer, default=0)
    batches: Mapped[int] = mapped_column(Integer, default=0)
    mapping_name: Mapped[str | None] = mapped_column(String(200))
    mapping_version: Mapped[str | None] = mapped_column(String(64))
    plugin_versions: Mapped[str | None] = mapped_column(Text)  # JSON {plugin: version}
    holder: Mapped[str | None] = mapped_column(String(200))  # host:pid:nonce that ran it
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    duration_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)  # one line, no ID in the clear


class JobCursor(Base):
    """Where a job resumes: the connector's position after the last committed batch, and the
    snapshot in progress (its first run) when a snapshot run did not finish."""

    __tablename__ = "cursors"
    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    cursor: Mapped[str | None] = mapped_column(Text)  # JSON
    snapshot_id: Mapped[int | None] = mapped_column(BigInteger)
    batch_no: Mapped[int] = mapped_column(Integer, default=0)
    # The snapshot's source was read to its end; only marking removals was left to do.
    reading_done: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class SnapshotSeen(Base):
    """The store row ids a committed batch of an unfinished snapshot saw (packed uint64), so a
    resumed snapshot neither marks them removed nor misses a duplicate. Deleted when it finishes."""

    __tablename__ = "snapshot_seen"
    snapshot_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    batch_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    ids: Mapped[bytes] = mapped_column(LargeBinary)
    first_position: Mapped[str | None] = mapped_column(String(200))
    last_position: Mapped[str | None] = mapped_column(String(200))
    # The table's highest id after the batch's inserts: tells which batch inserted a row.
    inserted_upto: Mapped[int | None] = mapped_column(BigInteger)


class QuarantineRow(Base):
    """A row that could not be stored. ``row_sealed`` is the native row as JSON, sealed with
    dataset "quarantine", field "row" and record ``uid``: it may hold an ID number."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    run_id: Mapped[int] = mapped_column(BigInteger, index=True)
    job: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(64))
    dataset: Mapped[str] = mapped_column(String(32))
    position: Mapped[str] = mapped_column(String(200))
    stage: Mapped[str] = mapped_column(String(16))  # read | map | validate | key | duplicate
    field: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(40), index=True)
    message: Mapped[str] = mapped_column(Text)
    row_sealed: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(
        String(16), default="open", index=True
    )  # open|resolved|superseded
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    resolved_run_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class SchedulerLease(Base):
    """One row per job: who may run it until when, and when its last scheduled run started."""

    __tablename__ = "scheduler_leases"
    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(200))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    acquired_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    first_seen_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class ReindexProgress(Base):
    """How far ``gateway keys reindex`` got in one table for one pair of active keys."""

    __tablename__ = "reindex_progress"
    table_name: Mapped[str] = mapped_column(String(32), primary_key=True)
    blind_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    seal_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_done: Mapped[int] = mapped_column(BigInteger, default=0)
    finished: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


# -- leases ---------------------------------------------------------------------------------------


def new_holder() -> str:
    """This process's identity as a lease holder: host, pid and a nonce (pids get reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _holder_is_dead(holder: str | None) -> bool:
    """A holder on this host whose process is gone: its lease may be taken at once, without
    waiting for it to expire (a SIGKILLed ``gateway sync`` must not block the next one)."""
    if not holder:
        return False
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def ensure_lease_row(session: Session, job: str) -> None:
    """Create the job's lease row if missing (free, expired), tolerating a concurrent creator."""
    if session.get(SchedulerLease, job) is not None:
        return
    now = utcnow()
    values = {"job": job, "holder": None, "expires_at": now, "first_seen_at": now}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(SchedulerLease).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(SchedulerLease).values(values).on_conflict_do_nothing())
    else:
        session.execute(insert(SchedulerLease).values(values))


def acquire_lease(session: Session, job: str, holder: str, ttl_s: float) -> bool:
    """Take or renew the job's lease: one atomic UPDATE ... WHERE free, expired or mine.

    On PostgreSQL the second of two concurrent UPDATEs re-checks the WHERE clause after the first
    commits, so exactly one wins; SQLite has a single writer. Commit after calling.
    """
    ensure_lease_row(session, job)
    now = utcnow()
    table = SchedulerLease.__table__
    took = session.execute(
        update(table)
        .where(table.c.job == job)
        .where((table.c.holder.is_(None)) | (table.c.holder == holder) | (table.c.expires_at < now))
        .values(holder=holder, expires_at=now + dt.timedelta(seconds=ttl_s), acquired_at=now)
    ).rowcount
    if took == 1:
        return True
    current = session.execute(select(table.c.holder).where(table.c.job == job)).scalar_one_or_none()
    if _holder_is_dead(current):
        took = session.execute(
            update(table)
            .where(table.c.job == job, table.c.holder == current)
            .values(holder=holder, expires_at=now + dt.timedelta(seconds=ttl_s), acquired_at=now)
        ).rowcount
        return took == 1
    return False


def renew_lease(session: Session, job: str, holder: str, ttl_s: float) -> bool:
    """Heartbeat: push the expiry on; False if the lease was lost (expired and taken)."""
    table = SchedulerLease.__table__
    return (
        session.execute(
            update(table)
            .where(table.c.job == job, table.c.holder == holder)
            .values(expires_at=utcnow() + dt.timedelta(seconds=ttl_s))
        ).rowcount
        == 1
    )


def release_lease(session: Session, job: str, holder: str) -> None:
    table = SchedulerLease.__table__
    session.execute(
        update(table)
        .where(table.c.job == job, table.c.holder == holder)
        .values(holder=None, expires_at=utcnow())
    )


def lease_holder(session: Session, job: str) -> SchedulerLease | None:
    return session.get(SchedulerLease, job)
