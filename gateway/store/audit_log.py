"""The audit log's tables: entries, the subject keys each touched, signed checkpoints, the chain head
and the anchors left by pruning. The hash chain itself is computed in ``gateway.audit``.

- ``audit_entries``: one row per exchange; ``seq`` is dense (1, 2, 3, ...) and assigned under the
  lock of the ``audit_head`` row, so a gap or a duplicate is always tampering, never a race.
- ``audit_subjects``: the subject keys (blind indexes) an entry touched, indexed by ``subject_key``
  so a person's history is found without any ID number.
- ``audit_head``: one row (id 1) holding the last seq and hash; appenders lock it (``SELECT ... FOR
  UPDATE`` on PostgreSQL, the database write lock on SQLite), which serialises the chain across
  threads and processes.
- ``audit_checkpoints``: Ed25519 signatures over (seq, hash, ts, key id) of the chain head.
- ``audit_anchors``: where pruning cut the chain: the last archived seq and hash, signed.

Times are naive UTC (``DateTime`` without zone), the same in SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
_BigId = BigInteger().with_variant(Integer(), "sqlite")


class AuditEntry(Base):
    __tablename__ = "audit_entries"

    seq: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=False)
    ts: Mapped[dt.datetime] = mapped_column(DateTime, index=True)  # UTC
    actor: Mapped[str] = mapped_column(String(100), index=True)  # "job:x", "dept:x", "user:x"
    action: Mapped[str] = mapped_column(String(64), index=True)  # "sync.run", "api.lookup", ...
    outcome: Mapped[str] = mapped_column(String(16))  # ok | delivered | refused | failed
    dataset: Mapped[str | None] = mapped_column(String(64), index=True)
    purpose: Mapped[str | None] = mapped_column(String(100))
    fields: Mapped[str] = mapped_column(Text)  # JSON list of field names
    subject_count: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)  # canonical JSON; never an ID, name or secret
    alg: Mapped[str] = mapped_column(String(16))  # hash of this link: "sha256" | "sm3"
    prev_hash: Mapped[str] = mapped_column(String(128))  # hex
    hash: Mapped[str] = mapped_column(String(128))  # hex


class AuditSubject(Base):
    __tablename__ = "audit_subjects"

    entry_seq: Mapped[int] = mapped_column(
        _BigId, ForeignKey("audit_entries.seq", ondelete="CASCADE"), primary_key=True
    )
    subject_key: Mapped[str] = mapped_column(String(100), primary_key=True)

    __table_args__ = (Index("ix_audit_subjects_subject_key", "subject_key"),)


class AuditHead(Base):
    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # always 1
    seq: Mapped[int] = mapped_column(BigInteger)  # last appended seq (0: empty chain)
    hash: Mapped[str] = mapped_column(String(128))  # hash of that entry (genesis: zeros)
    ts: Mapped[dt.datetime | None] = mapped_column(
        DateTime
    )  # its time: later entries never go back
    checkpoint_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    checkpoint_ts: Mapped[dt.datetime | None] = mapped_column(DateTime)


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    hash: Mapped[str] = mapped_column(String(128))
    ts: Mapped[dt.datetime] = mapped_column(DateTime)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(200))  # hex Ed25519 signature


class AuditAnchor(Base):
    __tablename__ = "audit_anchors"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)  # last archived (and deleted) seq
    hash: Mapped[str] = mapped_column(String(128))  # its hash: the next entry's prev_hash
    ts: Mapped[dt.datetime] = mapped_column(DateTime)
    before: Mapped[dt.datetime] = mapped_column(DateTime)  # entries older than this were archived
    entries: Mapped[int] = mapped_column(BigInteger)  # how many this prune archived
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(200))
    archive: Mapped[str] = mapped_column(Text)  # archive file name (informational, unsigned)
    archive_sha256: Mapped[str] = mapped_column(String(64))
