"""The hash-chained audit log: append, checkpoint, search, per-person report.

Every exchange of personal data leaves one entry. Other modules call this API (it is stable):

``record(target, *, suite=None, site=None, actor, action, outcome="ok", dataset=None, purpose=None,
fields=(), subject_keys=(), subject_count=None, detail=None) -> int``
    Append one entry and return its seq. ``target`` is either a SQLAlchemy ``Session`` (the entry
    joins the caller's transaction, so a sync batch and its audit entry commit together; pass
    ``site=`` to get the site's suite and automatic checkpoints, or at least ``suite=``) or a
    ``Site`` (the entry is written and committed in its own short transaction before ``record``
    returns: use this when a request must be audited before its response is sent).

``transaction(site)``
    A context manager giving a Session for work that reads and then records in one transaction;
    on SQLite it takes the write lock first so the append cannot fail on a stale read snapshot.

``append_many(target, events, *, suite=None, site=None) -> list[int]``
    Many entries in one transaction (``events``: ``AuditEvent`` or mappings of ``record``'s keywords).

``AuditWriter(site, *, max_entries=500, max_delay_ms=250)``
    A buffer for hot paths: ``add(**record keywords)`` returns at once; entries are written by
    ``append_many`` every ``max_entries`` entries or ``max_delay_ms`` and on ``flush()``/``close()``.
    Entries still buffered when the process dies are lost: use ``record`` where that matters.

``checkpoint(site) -> dict | None``
    Sign the chain head now (callers invoke it at the end of every run). Checkpoints are also made
    automatically while appending with a site, at least every ``[audit] checkpoint_every`` entries or
    ``checkpoint_minutes`` minutes; ``checkpoint_if_due(site)`` lets a long-lived loop (the scheduler)
    sign a head that stopped moving.

``search(site, *, limit=100, before_seq=None, after_seq=None, ascending=False, **filters)``
    -> list[dict] and ``count(site, **filters) -> int``; filters: id_number (+ id_type),
    subject_keys, actor (trailing * = prefix), department, purpose, dataset, action (trailing *),
    outcome, since, until (UTC).
``subject_report(site, id_number=None, *, id_type="1", subject_keys=None, actor=None) -> list[dict]``,
``subject_keys_for_id(site, id_number, id_type="1") -> list[str]``, ``get_entry(site, seq)``,
``head(site)``, ``transaction(site)``.

Elsewhere: ``gateway.audit_verify.verify_store(site)`` / ``verify_exports(paths, PublicKeys)`` ->
``VerifyReport``; ``gateway.audit_export.export(site, path, ...)`` and ``prune(site, before=...,
archive=..., actor=...)``.

Entry fields: ``seq`` (dense, from 1), ``ts`` (UTC, never going back), ``actor`` (``kind:name``, e.g.
``job:students``, ``dept:education``, ``user:auditor1``), ``action`` (``sync.run``, ``api.lookup``,
...), ``outcome`` (ok | delivered | refused | failed), ``dataset``, ``purpose``, ``fields``,
``subject_count``, ``detail`` (JSON: counts, mapping and plugin versions, reason of refusal; when the
actor is not who received the data, put the receiving party in ``detail["recipient"]``), ``alg``,
``prev_hash``, ``hash``. The subject keys (blind indexes) an entry touched are stored beside it.
``detail`` must never hold an ID number, a name or a secret: values that look like an ID number
(a run of 15 or more digits, or 17 digits and an X) are refused with ``AuditError``.

Hash chain (format version 1)::

    hash = H(bytes.fromhex(prev_hash) || canonical(entry))        H: SHA-256, or SM3 (national suite)
    canonical(entry) = UTF-8 JSON of {"v": 1, "seq", "ts", "actor", "action", "outcome", "dataset",
        "purpose", "fields", "subject_count", "subject_keys", "detail", "alg"}
        with keys sorted at every level, separators "," and ":", no ASCII escaping, no NaN;
        ts as "YYYY-MM-DDTHH:MM:SS.ffffffZ", subject_keys sorted and unique, fields in given order,
        absent values as null.
    prev_hash of entry 1 = 64 zeros ("genesis"); after pruning, the anchor's hash.

A checkpoint is an Ed25519 signature (the keyring's active ``audit_signing`` key) over the canonical
JSON ``{"v": 1, "type": "checkpoint", "seq", "hash", "ts", "key_id"}``; an anchor (left by pruning)
over ``{"v": 1, "type": "anchor", "seq", "hash", "ts", "before", "entries", "key_id"}``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Select, and_, exists, func, insert, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from .errors import GatewayError, ProblemsFound, StoreError
from .store.audit_log import AuditCheckpoint, AuditEntry, AuditHead, AuditSubject

if TYPE_CHECKING:
    from .crypto import Suite
    from .site import Site

log = logging.getLogger("gateway.audit")

FORMAT_VERSION = 1
GENESIS = "0" * 64
OUTCOMES = ("ok", "delivered", "refused", "failed")
# hash name in an entry's ``alg`` -> the suite whose ``hash`` computes it
SUITE_FOR_ALG = {"sha256": "aes-gcm+hmac-sha256", "sm3": "sm4-gcm+hmac-sm3"}
MAX_DETAIL_BYTES = 64 * 1024

ENTRIES = AuditEntry.__table__
SUBJECTS = AuditSubject.__table__
HEAD = AuditHead.__table__
CHECKPOINTS = AuditCheckpoint.__table__

_ACTOR = re.compile(r"^[a-z][a-z0-9_]*:\S{1,90}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SUBJECT_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}:[0-9a-f]{16,}$")
_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
# An ID number in the clear: 15+ digits in a row (18-digit, 15-digit legacy, a 20-char disability
# certificate, "G" + ID student numbers) or 17 digits and X. A run touching a hex letter is part of
# a hex digest, not an ID, so digests of mapping files may be logged.
_ID_LIKE = re.compile(r"(?<![0-9A-Fa-f])(?:\d{15,}|\d{17}[Xx])(?![0-9A-Fa-f])")
_FORBIDDEN_KEYS = frozenset({"id_number", "id_no", "password", "secret", "private_key", "api_key"})


class AuditError(GatewayError):
    """An entry was refused (an ID number in ``detail``, a bad actor name...) or the log is unusable."""


class ChainBroken(ProblemsFound):
    """Verification found a break (exit 1)."""


def utcnow() -> dt.datetime:
    """Naive UTC now; the one clock of the log (tests move it to make old entries)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


_utcnow = utcnow  # indirection so tests can monkeypatch the clock


def format_ts(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(doc: Any) -> bytes:
    return json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def canonical_entry(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry's hash covers (see the module docstring); ``prev_hash``/``hash`` excluded."""
    return canonical_json(
        {
            "v": FORMAT_VERSION,
            "seq": entry["seq"],
            "ts": entry["ts"],
            "actor": entry["actor"],
            "action": entry["action"],
            "outcome": entry["outcome"],
            "dataset": entry["dataset"],
            "purpose": entry["purpose"],
            "fields": list(entry["fields"]),
            "subject_count": entry["subject_count"],
            "subject_keys": sorted(set(entry["subject_keys"])),
            "detail": entry["detail"],
            "alg": entry["alg"],
        }
    )


@cache
def hasher(alg: str):
    """``alg`` ("sha256" | "sm3") -> bytes -> digest, through the crypto suite that owns it."""
    from .crypto import get_suite

    try:
        return get_suite(SUITE_FOR_ALG[alg]).hash
    except KeyError:
        raise AuditError(f"unknown audit hash algorithm {alg!r}") from None


def link_hash(alg: str, prev_hash: str, canonical: bytes) -> str:
    return hasher(alg)(bytes.fromhex(prev_hash) + canonical).hex()


def checkpoint_message(seq: int, head_hash: str, ts: str, key_id: str) -> bytes:
    return canonical_json(
        {
            "v": FORMAT_VERSION,
            "type": "checkpoint",
            "seq": seq,
            "hash": head_hash,
            "ts": ts,
            "key_id": key_id,
        }
    )


def anchor_message(
    seq: int, head_hash: str, ts: str, before: str, entries: int, key_id: str
) -> bytes:
    return canonical_json(
        {
            "v": FORMAT_VERSION,
            "type": "anchor",
            "seq": seq,
            "hash": head_hash,
            "ts": ts,
            "before": before,
            "entries": entries,
            "key_id": key_id,
        }
    )


# --------------------------------------------------------------------------------------------- events


def looks_like_id(text: str) -> bool:
    return _ID_LIKE.search(text) is not None


def _shown(value: object) -> str:
    """A rejected value as an error may show it: short, and never one that looks like an ID."""
    text = repr(value)
    return "(a value that looks like an ID number)" if looks_like_id(text) else text[:40]


def _printable(value: str) -> str:
    """Control characters (terminal escapes, line breaks) become U+FFFD: a refused request's
    purpose is recorded as asked, but must not garble a terminal or a report."""
    return _CONTROL.sub("\ufffd", value)


def _check_text(where: str, value: str) -> None:
    if looks_like_id(value):
        raise AuditError(
            f"audit {where}: looks like an ID number; audit entries must never carry one "
            "(pass the person's subject key in subject_keys instead)"
        )


def _clean_detail(value: Any, where: str = "detail", depth: int = 0) -> Any:
    """A JSON-safe copy of ``detail``; refuses ID-like values, secrets' keys and odd types."""
    if depth > 8:
        raise AuditError(f"audit {where}: nested too deeply")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) >= 10**14:  # an ID number that became an int (Excel)
            raise AuditError(
                f"audit {where}: number looks like an ID number; audit entries must never carry one"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditError(f"audit {where}: not a finite number")
        if abs(value) >= 1e14:
            raise AuditError(
                f"audit {where}: number looks like an ID number; audit entries must never carry one"
            )
        return value
    if isinstance(value, str):
        _check_text(where, value)
        return value
    if isinstance(value, dt.datetime):
        return format_ts(value) if value.tzinfo else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditError(f"audit {where}: keys must be strings, got {type(key).__name__}")
            _check_text(f"{where} key", key)
            if key.lower() in _FORBIDDEN_KEYS:
                raise AuditError(
                    f"audit {where}.{key}: not allowed in the audit log (ID number or secret)"
                )
            out[key] = _clean_detail(item, f"{where}.{key}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_clean_detail(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise AuditError(f"audit {where}: {type(value).__name__} is not a JSON value")


@dataclass(frozen=True)
class AuditEvent:
    """One entry to append, validated; seq, ts and the hashes are added by the log."""

    actor: str
    action: str
    outcome: str = "ok"
    dataset: str | None = None
    purpose: str | None = None
    fields: tuple[str, ...] = ()
    subject_keys: tuple[str, ...] = ()  # sorted, unique
    subject_count: int = 0
    detail: Any = None  # JSON-safe (already cleaned)

    @classmethod
    def create(
        cls,
        *,
        actor: str,
        action: str,
        outcome: str = "ok",
        dataset: str | None = None,
        purpose: str | None = None,
        fields: Sequence[str] = (),
        subject_keys: Iterable[str] = (),
        subject_count: int | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        if isinstance(actor, str):
            _check_text("actor", actor)  # before anything echoes it
        if not isinstance(actor, str) or not _ACTOR.match(actor):
            raise AuditError(
                f"audit actor {_shown(actor)}: must be kind:name, e.g. job:students, "
                "dept:education, user:auditor1"
            )
        if not isinstance(action, str) or not _ACTION.match(action) or len(action) > 64:
            raise AuditError(
                f"audit action {_shown(action)}: must be dotted lower-case words, e.g. sync.run, api.lookup"
            )
        if outcome not in OUTCOMES:
            raise AuditError(
                f"audit outcome {_shown(outcome)}: must be one of {', '.join(OUTCOMES)}"
            )
        texts: dict[str, str | None] = {}
        for name, value, limit in (("dataset", dataset, 64), ("purpose", purpose, 100)):
            if value is not None:
                if not isinstance(value, str) or not value or len(value) > limit:
                    raise AuditError(
                        f"audit {name}: must be a non-empty string of at most {limit} characters"
                    )
                _check_text(name, value)
                value = _printable(value)
            texts[name] = value
        if isinstance(fields, str):
            raise AuditError("audit fields: must be a list of field names, not a string")
        fields_t = tuple(fields)
        for f in fields_t:
            if not isinstance(f, str) or not f or len(f) > 64:
                raise AuditError("audit fields: each must be a field name of 1 to 64 characters")
            _check_text("fields", f)
        fields_t = tuple(_printable(f) for f in fields_t)
        if isinstance(subject_keys, str):
            raise AuditError("audit subject_keys: must be a list of subject keys, not a string")
        keys = sorted(set(subject_keys))
        for key in keys:
            if not isinstance(key, str) or len(key) > 100 or not _SUBJECT_KEY.match(key):
                raise AuditError(
                    "audit subject_keys: each must be a blind index '<key id>:<hex>' "
                    "(Protector.blind_index), never an ID number"
                )
        if subject_count is None:
            subject_count = len(keys)
        elif not isinstance(subject_count, int) or subject_count < 0:
            raise AuditError("audit subject_count: must be a non-negative integer")
        clean = None
        if detail is not None:
            if not isinstance(detail, Mapping):
                raise AuditError("audit detail: must be a mapping (JSON object)")
            clean = _clean_detail(detail)
            if len(canonical_json(clean)) > MAX_DETAIL_BYTES:
                raise AuditError(
                    f"audit detail: larger than {MAX_DETAIL_BYTES} bytes; list persons in subject_keys, not detail"
                )
        return cls(
            actor,
            action,
            outcome,
            texts["dataset"],
            texts["purpose"],
            fields_t,
            tuple(keys),
            subject_count,
            clean,
        )

    def entry(self, seq: int, ts: str, alg: str) -> dict[str, Any]:
        return {
            "seq": seq,
            "ts": ts,
            "actor": self.actor,
            "action": self.action,
            "outcome": self.outcome,
            "dataset": self.dataset,
            "purpose": self.purpose,
            "fields": list(self.fields),
            "subject_count": self.subject_count,
            "subject_keys": list(self.subject_keys),
            "detail": self.detail,
            "alg": alg,
        }


def _as_event(item: AuditEvent | Mapping[str, Any]) -> AuditEvent:
    if isinstance(item, AuditEvent):
        return item
    return AuditEvent.create(**item)


# --------------------------------------------------------------------------------------------- append


@dataclass
class _Head:
    seq: int
    hash: str
    ts: dt.datetime | None
    checkpoint_seq: int
    checkpoint_ts: dt.datetime | None


_HEAD_COLS = (HEAD.c.seq, HEAD.c.hash, HEAD.c.ts, HEAD.c.checkpoint_seq, HEAD.c.checkpoint_ts)
# Built once: constructing statements costs more than running them on SQLite.
_LOCK_SQLITE = update(HEAD).where(HEAD.c.id == 1).values(seq=HEAD.c.seq).returning(*_HEAD_COLS)
_LOCK_FOR_UPDATE = select(*_HEAD_COLS).where(HEAD.c.id == 1).with_for_update()
_SET_HEAD = update(HEAD).where(HEAD.c.id == 1)
_INSERT_ENTRIES = insert(ENTRIES)
_INSERT_SUBJECTS = insert(SUBJECTS)


def _create_head(conn: Connection) -> None:
    values = {
        "id": 1,
        "seq": 0,
        "hash": GENESIS,
        "ts": None,
        "checkpoint_seq": 0,
        "checkpoint_ts": None,
    }
    if conn.dialect.name in ("postgresql", "sqlite"):
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        # Two first appenders at once: one creates the row, the other waits and finds it.
        conn.execute(
            dialect_insert(HEAD).values(**values).on_conflict_do_nothing(index_elements=["id"])
        )
    else:
        conn.execute(insert(HEAD).values(**values))


def _lock_head(session: Session | Connection) -> _Head:
    """Lock the chain head for this transaction (creating it on first use) and read it.

    The lock is the database's, held until commit: on SQLite an ``UPDATE .. RETURNING`` of the
    head row is a write, so it takes the database write lock (waiting up to busy_timeout) before
    anything is read; elsewhere ``SELECT .. FOR UPDATE`` locks the row. Appenders in any thread or
    process therefore always start from the head the previous one left.
    """
    conn = session.connection() if isinstance(session, Session) else session
    sqlite = conn.dialect.name == "sqlite"
    stmt = _LOCK_SQLITE if sqlite else _LOCK_FOR_UPDATE
    try:
        row = conn.execute(stmt).first()
    except OperationalError as exc:
        if sqlite and "locked" in str(exc.orig):
            raise StoreError(
                "audit: the SQLite store stayed locked by another writer, or this transaction read "
                "before appending while another process wrote (SQLite cannot then upgrade it to a "
                "writer): open such transactions with audit.transaction(site)"
            ) from None
        raise
    if row is None:
        _create_head(conn)
        row = conn.execute(stmt).one()
    return _Head(row.seq, row.hash, row.ts, row.checkpoint_seq or 0, row.checkpoint_ts)


@contextmanager
def transaction(site: Site) -> Iterator[Session]:
    """``with audit.transaction(site) as session:`` for work that reads and then audits in one
    transaction (an API lookup and its entry). On SQLite the chain head, hence the database write
    lock, is taken first, so the append can never fail for a read snapshot that went stale (the
    effect of BEGIN IMMEDIATE); other databases lock the head only when appending."""
    with site.begin() as session:
        if session.get_bind().dialect.name == "sqlite":
            _lock_head(session)
        yield session


@dataclass
class _Links:
    """Rows that extend the chain from a locked head (built before anything is written)."""

    rows: list[dict[str, Any]]
    subjects: list[dict[str, Any]]
    seq: int  # the new head
    hash: str
    when: dt.datetime  # the entries' ts
    now: dt.datetime  # the clock when they were built (checkpoint timing)


def _links(head: _Head, events: Sequence[AuditEvent], suite: Suite) -> _Links:
    now = _utcnow()
    when = max(now, head.ts) if head.ts is not None else now  # the log's time never goes back
    ts = format_ts(when)
    alg = suite.hash_name
    seq, prev = head.seq, head.hash
    rows: list[dict[str, Any]] = []
    subjects: list[dict[str, Any]] = []
    for ev in events:
        seq += 1
        digest = suite.hash(bytes.fromhex(prev) + canonical_entry(ev.entry(seq, ts, alg))).hex()
        rows.append(
            {
                "seq": seq,
                "ts": when,
                "actor": ev.actor,
                "action": ev.action,
                "outcome": ev.outcome,
                "dataset": ev.dataset,
                "purpose": ev.purpose,
                "fields": json.dumps(list(ev.fields), ensure_ascii=False),
                "subject_count": ev.subject_count,
                "detail": None if ev.detail is None else canonical_json(ev.detail).decode(),
                "alg": alg,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        subjects.extend({"entry_seq": seq, "subject_key": key} for key in ev.subject_keys)
        prev = digest
    return _Links(rows, subjects, seq, prev, when, now)


def _append(
    session: Session, events: Sequence[AuditEvent], suite: Suite, site: Site | None
) -> list[int]:
    if not events:
        return []
    head = _lock_head(session)
    links = _links(head, events, suite)
    # Core statements on the session's connection: the ORM adds nothing here but overhead.
    conn = session.connection()
    conn.execute(_INSERT_ENTRIES, links.rows)
    if links.subjects:
        conn.execute(_INSERT_SUBJECTS, links.subjects)
    values: dict[str, Any] = {"seq": links.seq, "hash": links.hash, "ts": links.when}
    if site is not None and _checkpoint_due(site, head, links.seq, links.now):
        cp = _sign_checkpoint(session, site, links.seq, links.hash, links.now)
        if cp is not None:
            values.update(checkpoint_seq=links.seq, checkpoint_ts=links.now)
    conn.execute(_SET_HEAD, values)
    return [r["seq"] for r in links.rows]


def _resolve(target: Any, suite: Suite | None, site: Site | None) -> tuple[Suite, Site | None]:
    if suite is None and site is not None:
        suite = site.suite
    if suite is None:
        raise TypeError("audit: pass suite= or site= when appending within a Session")
    return suite, site


def append_many(
    target: Session | Site,
    events: Iterable[AuditEvent | Mapping[str, Any]],
    *,
    suite: Suite | None = None,
    site: Site | None = None,
) -> list[int]:
    """Append many entries in one transaction; returns their seqs (dense, in the given order).

    With a ``Session`` the entries join the caller's transaction; with a ``Site`` they are committed
    before this returns.
    """
    evs = [_as_event(e) for e in events]
    if isinstance(target, Session):
        suite, site = _resolve(target, suite, site)
        return _append(target, evs, suite, site)
    own_site = target
    with own_site.begin() as session:
        return _append(session, evs, suite or own_site.suite, own_site)


def record(
    target: Session | Site,
    *,
    suite: Suite | None = None,
    site: Site | None = None,
    actor: str,
    action: str,
    outcome: str = "ok",
    dataset: str | None = None,
    purpose: str | None = None,
    fields: Sequence[str] = (),
    subject_keys: Iterable[str] = (),
    subject_count: int | None = None,
    detail: Mapping[str, Any] | None = None,
) -> int:
    """Append one entry and return its seq (see the module docstring for the two kinds of target)."""
    ev = AuditEvent.create(
        actor=actor,
        action=action,
        outcome=outcome,
        dataset=dataset,
        purpose=purpose,
        fields=fields,
        subject_keys=subject_keys,
        subject_count=subject_count,
        detail=detail,
    )
    return append_many(target, [ev], suite=suite, site=site)[0]


class AuditWriter:
    """Buffered appends for hot paths: ``add`` never waits for the database (unless far behind).

    A background thread writes the buffer with one ``append_many`` transaction when it holds
    ``max_entries`` entries or its oldest entry is ``max_delay_ms`` old; ``flush()`` and ``close()``
    write what is left. A failed write keeps the entries buffered and retries them; the error is
    raised by the next ``add``/``flush``/``close``. Use as a context manager.
    """

    def __init__(self, site: Site, *, max_entries: int = 500, max_delay_ms: int = 250):
        if max_entries < 1 or max_delay_ms < 1:
            raise ValueError("AuditWriter: max_entries and max_delay_ms must be positive")
        self.site = site
        self.max_entries = max_entries
        self.max_delay = max_delay_ms / 1000
        self._buffer: list[AuditEvent] = []
        self._cond = threading.Condition()
        self._flush_lock = threading.Lock()  # keeps batches in add() order
        self._error: BaseException | None = None
        self._closed = False
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise AuditError(
                f"audit writer: earlier write failed ({len(self._buffer)} entries buffered): {error}"
            )

    def add(self, **kwargs: Any) -> None:
        """Buffer one entry (``record``'s keywords); validated now, so a bad entry fails here."""
        ev = AuditEvent.create(**kwargs)
        with self._cond:
            if self._closed:
                raise AuditError("audit writer is closed")
            self._raise_pending()
            self._buffer.append(ev)
            size = len(self._buffer)
            if size >= self.max_entries:
                self._cond.notify()
        if (
            size >= 20 * self.max_entries
        ):  # the database is far behind: write in the caller's thread
            self.flush()

    def flush(self) -> list[int]:
        with self._flush_lock:
            with self._cond:
                batch, self._buffer = self._buffer, []
            if not batch:
                with self._cond:
                    self._raise_pending()
                return []
            try:
                seqs = append_many(self.site, batch)
            except Exception:
                with self._cond:
                    self._buffer[:0] = batch  # keep order; retried by the next flush
                raise
            self.written += len(seqs)
            return seqs

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                self._cond.wait(self.max_delay)
                if self._closed:
                    return
                pending = bool(self._buffer)
            if pending:
                try:
                    self.flush()
                except Exception as exc:  # noqa: BLE001 - kept and raised in the caller's thread
                    log.error("audit writer: write failed, will retry: %s", exc)
                    with self._cond:
                        self._error = exc

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self._error = None
        try:
            self.flush()
        except Exception as exc:
            raise AuditError(
                f"audit writer: {len(self._buffer)} entries could not be written: {exc}"
            ) from exc


# ---------------------------------------------------------------------------------------- checkpoints


def _checkpoint_due(site: Site, head: _Head, seq: int, now: dt.datetime) -> bool:
    cfg = site.settings.audit
    if seq - head.checkpoint_seq >= cfg.checkpoint_every or head.checkpoint_ts is None:
        return True
    return now - head.checkpoint_ts >= dt.timedelta(minutes=cfg.checkpoint_minutes)


def sign(site: Site, message_for: Any) -> tuple[str, bytes, bytes]:
    """Sign ``message_for(key_id)`` with the active audit_signing key: (key id, message, signature).

    The key id is part of what is signed, so it is read first; if a rotation slips in between,
    the message is rebuilt for the key that actually signed.
    """
    key_id = site.keyring.active("audit_signing").id
    for _ in range(3):
        message = message_for(key_id)
        signed_by, signature = site.protector.sign(message)
        if signed_by == key_id:
            return key_id, message, signature
        key_id = signed_by
    raise AuditError("audit: the audit_signing key kept changing while signing")


def _sign_checkpoint(
    session: Session, site: Site, seq: int, head_hash: str, now: dt.datetime
) -> dict | None:
    """Insert a signed checkpoint of (seq, head_hash); exported to the outside copy after commit.

    A keyring problem must not lose the entries being appended: it is logged, and verification
    reports the entries past the last checkpoint as not covered.
    """
    ts = format_ts(now)
    try:
        key_id, _message, signature = sign(
            site, lambda kid: checkpoint_message(seq, head_hash, ts, kid)
        )
    except GatewayError as exc:
        log.error("audit: cannot sign a checkpoint at %s: %s", seq, exc)
        return None
    cp = {"seq": seq, "hash": head_hash, "ts": now, "key_id": key_id, "signature": signature.hex()}
    session.execute(insert(CHECKPOINTS), [cp])
    record_ = checkpoint_record(cp)
    if site.settings.audit.checkpoint_export:
        _export_after_commit(session, site, record_)
    return record_


def checkpoint_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint as written to exports and the outside copy (JSON-ready)."""
    ts = row["ts"]
    return {
        "type": "checkpoint",
        "seq": int(row["seq"]),
        "hash": row["hash"],
        "ts": ts if isinstance(ts, str) else format_ts(ts),
        "key_id": row["key_id"],
        "signature": row["signature"],
    }


def _export_after_commit(session: Session, site: Site, record_: dict) -> None:
    """Queue an outside copy of a checkpoint, written only once the transaction commits.

    Written before the commit, a rolled-back checkpoint would later look like a truncated tail.
    """
    pending: list = session.info.setdefault("audit_checkpoint_exports", [])
    if not pending:

        def written(sess: Session) -> None:
            items = sess.info.pop("audit_checkpoint_exports", [])
            for site_, rec in items:
                try:
                    write_outside_copy(site_, [rec])
                except (OSError, AuditError) as exc:
                    log.error("audit: checkpoint at %s not copied outside: %s", rec["seq"], exc)

        def dropped(sess: Session) -> None:
            sess.info.pop("audit_checkpoint_exports", None)

        sa_event.listen(session, "after_commit", written, once=True)
        sa_event.listen(session, "after_rollback", dropped, once=True)
    pending.append((site, record_))


def outside_copy_path(site: Site) -> Path | None:
    value = site.settings.audit.checkpoint_export
    return None if not value else site.path(value)


def write_outside_copy(site: Site, records: Sequence[Mapping[str, Any]]) -> None:
    """Append checkpoint/anchor records to ``[audit] checkpoint_export``.

    A file: one JSON line per record, appended with O_APPEND and fsync (an append-only file, e.g.
    ``chattr +a``). An existing folder (or a path ending in "/"): one new file per record, created
    exclusively (for write-once storage where files can be added but never changed).
    """
    path = outside_copy_path(site)
    if path is None or not records:
        return
    if path.is_dir() or str(site.settings.audit.checkpoint_export).endswith(("/", os.sep)):
        path.mkdir(parents=True, exist_ok=True)
        for rec in records:
            name = f"{rec['type']}-{rec['seq']:012d}-{rec['key_id']}-{rec['signature'][:16]}.json"
            try:
                fd = os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            except FileExistsError:
                continue
            try:
                os.write(fd, (json.dumps(rec, sort_keys=True) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(rec, sort_keys=True) + "\n" for rec in records).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)  # one write: concurrent appenders never interleave lines
        os.fsync(fd)
    finally:
        os.close(fd)


def read_outside_copy(path: Path) -> list[dict[str, Any]]:
    """Checkpoint and anchor records from an outside copy (file or folder); bad lines are skipped
    with a warning (a torn last line after a crash is not a reason to stop verifying)."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    out: list[dict[str, Any]] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise AuditError(f"{file}: cannot read checkpoint copy: {exc}") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: not a JSON line, skipped", file, lineno)
                continue
            if isinstance(rec, dict) and rec.get("type") in ("checkpoint", "anchor"):
                out.append(rec)
    return out


def checkpoint(site: Site) -> dict[str, Any] | None:
    """Sign the current chain head (if not signed already); returns the checkpoint record, or None
    for an empty log. Raises ``KeyringError``/``AuditError`` if it cannot sign."""
    with site.begin() as session:
        head = _lock_head(session)
        if head.seq == 0:
            return None
        if head.checkpoint_seq == head.seq:
            row = (
                session.execute(
                    select(CHECKPOINTS)
                    .where(CHECKPOINTS.c.seq == head.seq)
                    .order_by(CHECKPOINTS.c.id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
            if row is not None and row["hash"] == head.hash:
                return checkpoint_record(row)
        now = _utcnow()
        ts = format_ts(now)
        key_id, _m, signature = sign(
            site, lambda kid: checkpoint_message(head.seq, head.hash, ts, kid)
        )
        cp = {
            "seq": head.seq,
            "hash": head.hash,
            "ts": now,
            "key_id": key_id,
            "signature": signature.hex(),
        }
        session.execute(insert(CHECKPOINTS), [cp])
        session.execute(
            update(HEAD).where(HEAD.c.id == 1).values(checkpoint_seq=head.seq, checkpoint_ts=now)
        )
    rec = checkpoint_record(cp)
    write_outside_copy(site, [rec])
    return rec


def checkpoint_if_due(site: Site) -> dict[str, Any] | None:
    """Sign the head if it moved and the last checkpoint is ``checkpoint_minutes`` old or
    ``checkpoint_every`` entries behind; for loops that run while no entry is appended."""
    with site.begin() as session:
        row = session.execute(select(HEAD).where(HEAD.c.id == 1)).mappings().first()
    if row is None or row["seq"] == (row["checkpoint_seq"] or 0):
        return None
    head = _Head(
        row["seq"], row["hash"], row["ts"], row["checkpoint_seq"] or 0, row["checkpoint_ts"]
    )
    if not _checkpoint_due(site, head, head.seq, _utcnow()):
        return None
    return checkpoint(site)


def sync_outside_copy(site: Site) -> int:
    """Copy to ``[audit] checkpoint_export`` every checkpoint the store has and the copy lacks
    (after an outage of the outside place). Returns how many were written."""
    path = outside_copy_path(site)
    if path is None:
        raise AuditError("[audit] checkpoint_export is not configured")
    have = (
        {(r.get("seq"), r.get("signature")) for r in read_outside_copy(path)}
        if path.exists()
        else set()
    )
    with site.begin() as session:
        rows = (
            session.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.seq, CHECKPOINTS.c.id))
            .mappings()
            .all()
        )
    missing = [checkpoint_record(r) for r in rows if (int(r["seq"]), r["signature"]) not in have]
    write_outside_copy(site, missing)
    return len(missing)


# ------------------------------------------------------------------------------------ search / report


def entry_from_row(
    row: Mapping[str, Any], subject_keys: Sequence[str] | None = None
) -> dict[str, Any]:
    """A stored row -> the entry dict used by reports and exports (fields/detail decoded)."""
    out = {
        "seq": int(row["seq"]),
        "ts": format_ts(row["ts"]),
        "actor": row["actor"],
        "action": row["action"],
        "outcome": row["outcome"],
        "dataset": row["dataset"],
        "purpose": row["purpose"],
        "fields": json.loads(row["fields"]) if row["fields"] else [],
        "subject_count": int(row["subject_count"]),
        "detail": json.loads(row["detail"]) if row["detail"] else None,
        "alg": row["alg"],
        "prev_hash": row["prev_hash"],
        "hash": row["hash"],
    }
    if subject_keys is not None:
        out["subject_keys"] = sorted(subject_keys)
    return out


def subject_keys_for_id(site: Site, id_number: object, id_type: str = "1") -> list[str]:
    """An ID number -> its blind index under every blind_index key (rotation-safe). The number is
    used for this computation only: never stored, logged or echoed (errors show it masked)."""
    from . import ids

    result = ids.check(id_number, id_type)
    if not result.ok or not result.value:
        shown = (
            ids.mask(ids.normalise_text(id_number)) if id_number not in (None, "") else "(empty)"
        )
        raise AuditError(f"ID number {shown} is not valid: {result.message or result.code}")
    return list(
        site.protector.blind_indexes(ids.index_material(result.id_type or id_type, result.value))
    )


def _filters(
    stmt: Select,
    *,
    subject_keys: Sequence[str] | None = None,
    actor: str | None = None,
    department: str | None = None,
    purpose: str | None = None,
    dataset: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> Select:
    e = ENTRIES.c
    conds = []
    if subject_keys is not None:
        conds.append(
            exists().where(
                and_(SUBJECTS.c.entry_seq == e.seq, SUBJECTS.c.subject_key.in_(list(subject_keys)))
            )
        )
    if actor:
        conds.append(
            e.actor.like(actor[:-1].replace("%", r"\%") + "%", escape="\\")
            if actor.endswith("*")
            else e.actor == actor
        )
    if department:
        conds.append(e.actor == f"dept:{department}")
    if purpose:
        conds.append(e.purpose == purpose)
    if dataset:
        conds.append(e.dataset == dataset)
    if action:
        conds.append(
            e.action.like(action[:-1] + "%") if action.endswith("*") else e.action == action
        )
    if outcome:
        conds.append(e.outcome == outcome)
    if since:
        conds.append(e.ts >= _naive_utc(since))
    if until:
        conds.append(e.ts < _naive_utc(until))
    return stmt.where(*conds) if conds else stmt


def _naive_utc(value: dt.datetime | dt.date) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day)
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


@dataclass
class SearchFilters:
    """The filters of ``search``/``count``; ``id_number`` becomes subject keys, never stored."""

    id_number: object = None
    id_type: str = "1"
    subject_keys: Sequence[str] | None = None
    actor: str | None = None
    department: str | None = None
    purpose: str | None = None
    dataset: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def resolved(self, site: Site) -> dict[str, Any]:
        keys = list(self.subject_keys) if self.subject_keys is not None else None
        if self.id_number not in (None, ""):
            keys = (keys or []) + subject_keys_for_id(site, self.id_number, self.id_type)
        return {
            "subject_keys": keys,
            "actor": self.actor,
            "department": self.department,
            "purpose": self.purpose,
            "dataset": self.dataset,
            "action": self.action,
            "outcome": self.outcome,
            "since": self.since,
            "until": self.until,
        }


def search(
    site: Site,
    *,
    limit: int = 100,
    before_seq: int | None = None,
    after_seq: int | None = None,
    ascending: bool = False,
    **filters: Any,
) -> list[dict[str, Any]]:
    """Entries matching ``filters`` (``SearchFilters`` fields), newest first unless ``ascending``.

    Paging is by seq: pass the last seq shown as ``before_seq`` (newest first) or ``after_seq``.
    Subject keys are not listed (an entry may touch thousands); ``subject_count`` says how many.
    """
    where = SearchFilters(**filters).resolved(site)
    stmt = _filters(select(ENTRIES), **where)
    if before_seq is not None:
        stmt = stmt.where(ENTRIES.c.seq < before_seq)
    if after_seq is not None:
        stmt = stmt.where(ENTRIES.c.seq > after_seq)
    stmt = stmt.order_by(ENTRIES.c.seq.asc() if ascending else ENTRIES.c.seq.desc()).limit(
        max(1, limit)
    )
    with site.begin() as session:
        return [entry_from_row(r) for r in session.execute(stmt).mappings()]


def count(site: Site, **filters: Any) -> int:
    where = SearchFilters(**filters).resolved(site)
    with site.begin() as session:
        return int(
            session.execute(
                _filters(select(func.count()).select_from(ENTRIES), **where)
            ).scalar_one()
        )


def get_entry(site: Site, seq: int) -> dict[str, Any] | None:
    """One entry with its subject keys (for an entry's detail page)."""
    with site.begin() as session:
        row = session.execute(select(ENTRIES).where(ENTRIES.c.seq == seq)).mappings().first()
        if row is None:
            return None
        keys = (
            session.execute(select(SUBJECTS.c.subject_key).where(SUBJECTS.c.entry_seq == seq))
            .scalars()
            .all()
        )
    return entry_from_row(row, keys)


def subject_report(
    site: Site,
    id_number: object = None,
    *,
    id_type: str = "1",
    subject_keys: Sequence[str] | None = None,
    actor: str | None = None,
) -> list[dict[str, Any]]:
    """Every exchange that touched one person, oldest first: who received what, when, why.

    Give the ID number (turned into its blind indexes under every key, never kept) or the subject
    keys. Each item: seq, ts, actor, recipient (``detail["recipient"]`` or the actor), action,
    outcome, dataset, fields, purpose, subject_count, detail. With ``actor``, the lookup itself is
    audited (``audit.subject``): asking who saw a person's data is itself an access to it.
    """
    keys = list(subject_keys or [])
    if id_number not in (None, ""):
        keys += subject_keys_for_id(site, id_number, id_type)
    if not keys:
        raise AuditError("subject report: give an ID number or subject keys")
    stmt = _filters(select(ENTRIES), subject_keys=keys).order_by(ENTRIES.c.seq)
    with site.begin() as session:
        rows = [entry_from_row(r) for r in session.execute(stmt).mappings()]
    report = []
    for e in rows:
        detail = e["detail"] or {}
        recipient = detail.get("recipient") if isinstance(detail, dict) else None
        report.append(
            {
                "seq": e["seq"],
                "ts": e["ts"],
                "actor": e["actor"],
                "recipient": recipient or e["actor"],
                "action": e["action"],
                "outcome": e["outcome"],
                "dataset": e["dataset"],
                "fields": e["fields"],
                "purpose": e["purpose"],
                "subject_count": e["subject_count"],
                "detail": e["detail"],
            }
        )
    if actor is not None:
        record(
            site,
            actor=actor,
            action="audit.subject",
            subject_keys=keys,
            detail={"entries": len(report)},
        )
    return report


def head(site: Site) -> dict[str, Any] | None:
    """The chain head as stored (seq, hash, ts), or None for a log never written."""
    with site.begin() as session:
        row = session.execute(select(HEAD).where(HEAD.c.id == 1)).mappings().first()
    if row is None:
        return None
    return {
        "seq": int(row["seq"]),
        "hash": row["hash"],
        "ts": format_ts(row["ts"]) if row["ts"] else None,
    }
