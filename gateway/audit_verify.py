"""Verification of the audit chain: from the store (online) or from export files (offline).

One ``ChainVerifier`` does the work for both: it is fed entries in seq order, knows the signed
checkpoints (and anchors) beforehand, and names the first entry that was altered, removed,
inserted or reordered, a truncated tail and a re-hashed suffix::

    entry 1234: hash mismatch (altered)
    entry 1235 missing: seq gap after 1234 (removed)
    entry 88: prev_hash does not match entry 87 (inserted or reordered)
    entry 50: inserted (entry 51 also follows entry 49)
    chain ends at 900 but checkpoint signed at 950 (tail truncated)
    checkpoint at 950: head hash differs (re-hashed suffix: an entry in 901-950 was altered)

Online verification streams the store (``yield_per``) in one snapshot; offline verification needs
only export files and the audit_signing public keys (PEM or base64, ``gateway keys public
audit_signing``): no store, no keyring.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from .audit import (
    CHECKPOINTS,
    ENTRIES,
    GENESIS,
    HEAD,
    SUBJECTS,
    AuditError,
    anchor_message,
    canonical_entry,
    checkpoint_message,
    format_ts,
    link_hash,
    outside_copy_path,
    read_outside_copy,
)
from .store.audit_log import AuditAnchor

if TYPE_CHECKING:
    from .site import Site

ANCHORS = AuditAnchor.__table__
MAX_KEPT_PROBLEMS = 1000  # a renumbered tail breaks every later entry: keep the first ones
_STREAM = 5000


@dataclass
class Problem:
    seq: int  # where in the chain (for ordering; the first problem is the first break)
    kind: (
        str  # altered | removed | inserted | reordered | truncated | rehashed | signature | format
    )
    message: str


@dataclass
class VerifyReport:
    entries: int = 0
    first_seq: int | None = None
    last_seq: int = 0
    last_hash: str = GENESIS
    start_seq: int = 0
    start_hash: str = GENESIS
    anchored: bool = False  # the start is a signed anchor (pruned log) or genesis
    checkpoints: int = 0  # valid signed checkpoints compared with the chain
    last_checkpoint_seq: int | None = None
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    notes: list[str] = field(default_factory=list)
    source: str = "store"

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, problem: Problem) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_KEPT_PROBLEMS:
            self.problems.append(problem)

    def sorted_problems(self) -> list[Problem]:
        return sorted(self.problems, key=lambda p: p.seq)

    def summary(self) -> str:
        span = f"{self.first_seq}-{self.last_seq}" if self.first_seq is not None else "none"
        start = "genesis" if self.start_seq == 0 else f"anchor at {self.start_seq}"
        cps = f"{self.checkpoints} signed checkpoints" + (
            f", last at {self.last_checkpoint_seq}" if self.last_checkpoint_seq is not None else ""
        )
        verdict = "chain verified" if self.ok else f"CHAIN BROKEN: {self.problem_count} problem(s)"
        return f"{verdict}: {self.entries} entries ({span}) from {start}; {cps}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source,
            "entries": self.entries,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "start_seq": self.start_seq,
            "checkpoints": self.checkpoints,
            "last_checkpoint_seq": self.last_checkpoint_seq,
            "problem_count": self.problem_count,
            "problems": [p.__dict__ for p in self.sorted_problems()],
            "notes": list(self.notes),
        }


class PublicKeys:
    """Ed25519 public keys to check signatures with: by key id (from a keyring) and/or without
    (PEM/base64 files, each tried on every signature)."""

    def __init__(self, by_id: Mapping[str, bytes] | None = None, anonymous: Sequence[bytes] = ()):
        self.by_id = dict(by_id or {})
        self.anonymous = list(anonymous)

    @classmethod
    def from_site(cls, site: Site) -> PublicKeys:
        return cls(
            {k.id: site.protector.public_key(k.id) for k in site.keyring.keys("audit_signing")}
        )

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> PublicKeys:
        """PEM or base64 public key files (``gateway keys public audit_signing``), or folders of them."""
        from .crypto import parse_public_key

        keys: list[bytes] = []
        for path in paths:
            files = (
                sorted(p for p in path.iterdir() if p.suffix in (".pem", ".pub", ".b64"))
                if path.is_dir()
                else [path]
            )
            if not files:
                raise AuditError(f"{path}: no public key files (*.pem, *.pub) in this folder")
            for file in files:
                try:
                    text = file.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise AuditError(f"{file}: cannot read public key: {exc}") from None
                keys.append(parse_public_key(text, kind="ed25519", source=str(file)))
        return cls({}, keys)

    def verify(self, key_id: str, message: bytes, signature_hex: str) -> str | None:
        """None if valid, else why not ("bad signature", "unknown key ...")."""
        from .crypto import verify_signature

        try:
            signature = bytes.fromhex(signature_hex)
        except (TypeError, ValueError):
            return "malformed signature"
        candidates = [self.by_id[key_id]] if key_id in self.by_id else self.anonymous
        if not candidates:
            return f"signed with unknown key {key_id!r}"
        if any(verify_signature(pub, message, signature) for pub in candidates):
            return None
        return f"bad signature (key {key_id})"


def _signed_message(rec: Mapping[str, Any]) -> bytes:
    if rec.get("type") == "anchor":
        return anchor_message(
            int(rec["seq"]),
            rec["hash"],
            rec["ts"],
            rec["before"],
            int(rec["entries"]),
            rec["key_id"],
        )
    return checkpoint_message(int(rec["seq"]), rec["hash"], rec["ts"], rec["key_id"])


class ChainVerifier:
    """Feed entries in seq order with ``feed``; ``finish`` returns the report.

    ``start_seq``/``start_hash``: where the chain begins (0 and genesis, or a pruning anchor).
    ``signed``: checkpoint and anchor records; their signatures are checked here, and each valid
    one is compared with the entry at its seq.
    """

    def __init__(
        self,
        *,
        public_keys: PublicKeys,
        signed: Iterable[Mapping[str, Any]] = (),
        start_seq: int = 0,
        start_hash: str = GENESIS,
        report: VerifyReport | None = None,
    ):
        self.report = report or VerifyReport()
        self.report.start_seq, self.report.start_hash = start_seq, start_hash
        self.last_seq, self.last_hash = start_seq, start_hash
        self._prev_prev: str | None = None  # prev_hash of the last entry fed
        self._by_seq: dict[int, list[dict[str, Any]]] = {}
        self._max_signed: dict[str, Any] | None = None
        self._last_good = start_seq  # highest seq known to match a signature
        seen: set[tuple] = set()
        for rec in signed:
            ident = (
                rec.get("type"),
                rec.get("seq"),
                rec.get("hash"),
                rec.get("key_id"),
                rec.get("signature"),
            )
            if ident in seen:
                continue  # the same checkpoint from the store and from the outside copy
            seen.add(ident)
            self._add_signed(dict(rec), public_keys)

    def _add_signed(self, rec: dict[str, Any], keys: PublicKeys) -> None:
        what = rec.get("type", "checkpoint")
        try:
            seq = int(rec["seq"])
            why = keys.verify(str(rec["key_id"]), _signed_message(rec), str(rec["signature"]))
        except (KeyError, TypeError, ValueError):
            self.report.add(
                Problem(
                    int(rec.get("seq") or 0),
                    "format",
                    f"{what} record malformed: {json.dumps(rec)[:120]}",
                )
            )
            return
        if why is not None:
            self.report.add(Problem(seq, "signature", f"{what} at {seq}: {why}"))
            return
        if seq < self.last_seq:
            return  # covers archived entries: verified with the archive
        if seq == self.last_seq:
            if rec["hash"] != self.last_hash:
                self.report.add(
                    Problem(
                        seq,
                        "rehashed",
                        f"{what} at {seq}: hash differs from the chain's start at {seq}",
                    )
                )
            else:
                self.report.checkpoints += 1
            return
        self._by_seq.setdefault(seq, []).append(rec)
        if self._max_signed is None or seq > int(self._max_signed["seq"]):
            self._max_signed = rec

    def feed(self, e: Mapping[str, Any]) -> None:
        rep = self.report
        seq = e["seq"]
        expected = self.last_seq + 1
        explained = False  # a gap or bad link already explains a bad hash of this entry
        if seq < expected:
            rep.add(
                Problem(
                    seq,
                    "reordered",
                    f"entry {seq}: appears after entry {self.last_seq} (duplicated or reordered)",
                )
            )
            return
        rep.entries += 1
        if rep.first_seq is None:
            rep.first_seq = seq
        if seq > expected:
            gone = (
                f"entry {expected} missing"
                if seq == expected + 1
                else f"entries {expected}-{seq - 1} missing"
            )
            if expected == 1:
                where = f"the chain starts at {seq}"
            elif expected - 1 == rep.start_seq:
                where = f"seq gap after the anchor at {rep.start_seq}"
            else:
                where = f"seq gap after {expected - 1}"
            rep.add(Problem(expected, "removed", f"{gone}: {where} (removed)"))
            explained = True
        elif e["prev_hash"] != self.last_hash:
            if self._prev_prev is not None and e["prev_hash"] == self._prev_prev:
                rep.add(
                    Problem(
                        seq - 1,
                        "inserted",
                        f"entry {seq - 1}: inserted (entry {seq} also follows entry {seq - 2})",
                    )
                )
            elif seq - 1 == rep.start_seq and rep.start_seq > 0:
                rep.add(
                    Problem(
                        seq,
                        "reordered",
                        f"entry {seq}: prev_hash does not match the anchor at {seq - 1} (inserted or reordered)",
                    )
                )
            else:
                rep.add(
                    Problem(
                        seq,
                        "reordered",
                        f"entry {seq}: prev_hash does not match entry {seq - 1} (inserted or reordered)",
                    )
                )
            explained = True
        try:
            computed = link_hash(e["alg"], e["prev_hash"], canonical_entry(e))
        except (AuditError, KeyError, TypeError, ValueError):
            computed = None
        if computed != e["hash"] and not explained:
            rep.add(
                Problem(
                    seq,
                    "altered",
                    f"entry {seq}: hash mismatch (altered){self._renumbered_hint(e)}",
                )
            )
        for rec in self._by_seq.pop(seq, ()):
            what = rec.get("type", "checkpoint")
            if rec["hash"] == e["hash"]:
                rep.checkpoints += 1
                rep.last_checkpoint_seq = seq
                self._last_good = seq
            else:
                span = f"{self._last_good + 1}-{seq}" if self._last_good + 1 < seq else str(seq)
                rep.add(
                    Problem(
                        seq,
                        "rehashed",
                        f"{what} at {seq}: head hash differs (re-hashed suffix: an entry in {span} was altered)",
                    )
                )
        self._prev_prev = e["prev_hash"]
        self.last_seq, self.last_hash = seq, e["hash"]

    @staticmethod
    def _renumbered_hint(e: Mapping[str, Any]) -> str:
        """An entry whose hash fits a neighbouring seq was moved, not edited: say so."""
        for shift in (-1, 1):
            try:
                if (
                    link_hash(
                        e["alg"], e["prev_hash"], canonical_entry({**e, "seq": e["seq"] + shift})
                    )
                    == e["hash"]
                ):
                    return f"; it is entry {e['seq'] + shift} renumbered"
            except (AuditError, KeyError, TypeError, ValueError):
                return ""
        return ""

    def finish(self, head: Mapping[str, Any] | None = None) -> VerifyReport:
        rep = self.report
        rep.last_seq, rep.last_hash = self.last_seq, self.last_hash
        if self._by_seq:
            beyond = [s for s in self._by_seq if s > self.last_seq]
            if beyond:
                top = max(beyond)
                what = self._by_seq[top][0].get("type", "checkpoint")
                rep.add(
                    Problem(
                        self.last_seq + 1,
                        "truncated",
                        f"chain ends at {self.last_seq} but {what} signed at {top} (tail truncated)",
                    )
                )
            for s in sorted(s for s in self._by_seq if s <= self.last_seq):
                rep.add(Problem(s, "removed", f"checkpoint at {s}: entry {s} is missing (removed)"))
        if head is not None:
            hseq = int(head["seq"])
            if hseq > self.last_seq:
                rep.add(
                    Problem(
                        self.last_seq + 1,
                        "truncated",
                        f"chain ends at {self.last_seq} but the chain head records {hseq} (tail truncated)",
                    )
                )
            elif hseq < self.last_seq:
                rep.add(
                    Problem(
                        hseq + 1,
                        "inserted",
                        f"entries {hseq + 1}-{self.last_seq} lie beyond the chain head at {hseq} (appended outside the log)",
                    )
                )
            elif head["hash"] != self.last_hash:
                rep.add(
                    Problem(hseq, "altered", f"chain head hash differs from entry {hseq} (altered)")
                )
        if rep.last_checkpoint_seq is None and self.last_seq > rep.start_seq:
            rep.notes.append(
                "no signed checkpoint covers this chain: a truncated tail or a re-hashed chain would go unnoticed"
            )
        elif rep.last_checkpoint_seq is not None and rep.last_checkpoint_seq < self.last_seq:
            rep.notes.append(
                f"entries {rep.last_checkpoint_seq + 1}-{self.last_seq} are not yet covered by a signed checkpoint "
                "(`gateway audit checkpoint` signs the head)"
            )
        return rep


# ------------------------------------------------------------------------------------------ online


_COLUMNS = (
    ENTRIES.c.seq,
    ENTRIES.c.ts,
    ENTRIES.c.actor,
    ENTRIES.c.action,
    ENTRIES.c.outcome,
    ENTRIES.c.dataset,
    ENTRIES.c.purpose,
    ENTRIES.c.fields,
    ENTRIES.c.subject_count,
    ENTRIES.c.detail,
    ENTRIES.c.alg,
    ENTRIES.c.prev_hash,
    ENTRIES.c.hash,
)


def _entry_dict(row: tuple, keys: list[str]) -> dict[str, Any]:
    """A stored row as the verifier sees it; undecodable JSON makes the hash fail, not a crash."""
    seq, ts, actor, action, outcome, dataset, purpose, fields_, count, detail, alg, prev, digest = (
        row
    )
    try:
        fields_ = json.loads(fields_) if fields_ else []
        detail = json.loads(detail) if detail else None
    except (TypeError, ValueError):
        fields_, detail = ["<undecodable>"], "<undecodable>"
    return {
        "seq": int(seq),
        "ts": format_ts(ts) if ts is not None else None,
        "actor": actor,
        "action": action,
        "outcome": outcome,
        "dataset": dataset,
        "purpose": purpose,
        "fields": fields_,
        "subject_count": count,
        "subject_keys": keys,
        "detail": detail,
        "alg": alg,
        "prev_hash": prev,
        "hash": digest,
    }


def stream_entries(
    conn: Any, *, from_seq: int | None = None, to_seq: int | None = None
) -> Iterator[dict[str, Any]]:
    """Entries with their subject keys in seq order, streamed: two ordered cursors merged, so a
    million entries never sit in memory at once."""
    e, s = ENTRIES.c, SUBJECTS.c
    q_entries = select(*_COLUMNS).order_by(e.seq)
    q_subjects = select(s.entry_seq, s.subject_key).order_by(s.entry_seq)
    if from_seq is not None:
        q_entries = q_entries.where(e.seq >= from_seq)
        q_subjects = q_subjects.where(s.entry_seq >= from_seq)
    if to_seq is not None:
        q_entries = q_entries.where(e.seq <= to_seq)
        q_subjects = q_subjects.where(s.entry_seq <= to_seq)
    streamed = conn.execution_options(yield_per=_STREAM)
    subjects = iter(streamed.execute(q_subjects))
    pending = next(subjects, None)
    for row in streamed.execute(q_entries):
        seq = row[0]
        while pending is not None and pending[0] < seq:
            pending = next(subjects, None)  # keys of an entry that is gone: its gap is reported
        keys = []
        while pending is not None and pending[0] == seq:
            keys.append(pending[1])
            pending = next(subjects, None)
        yield _entry_dict(row, keys)


def anchor_record(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "anchor",
        "seq": int(row["seq"]),
        "hash": row["hash"],
        "ts": format_ts(row["ts"]),
        "before": format_ts(row["before"]),
        "entries": int(row["entries"]),
        "key_id": row["key_id"],
        "signature": row["signature"],
    }


def snapshot(site: Site):
    """A read-only connection in one consistent snapshot (REPEATABLE READ on PostgreSQL; a single
    read transaction on SQLite), so entries appended meanwhile cannot look like breaks."""
    conn = site.engine.connect()
    if conn.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    return conn


def verify_store(
    site: Site,
    *,
    outside: Sequence[Path] = (),
    public_keys: PublicKeys | None = None,
    progress: Callable[[int], None] | None = None,
    to_seq: int | None = None,
) -> VerifyReport:
    """Verify the chain in the store against its checkpoints, anchors and outside copies.

    ``outside``: more copies of checkpoints (files or folders) besides ``[audit] checkpoint_export``;
    they are read before the store snapshot is taken, so nothing they hold can be newer than it.
    ``to_seq`` stops early (pruning verifies what it archives).
    """
    records: list[dict[str, Any]] = []
    configured = outside_copy_path(site)
    for path in [
        *outside,
        *([configured] if configured is not None and configured.exists() else []),
    ]:
        if not path.exists():
            raise AuditError(f"{path}: no such checkpoint copy")
        records += read_outside_copy(path)
    keys = public_keys or PublicKeys.from_site(site)
    with snapshot(site) as conn, conn.begin():
        anchors = [
            anchor_record(r)
            for r in conn.execute(select(ANCHORS).order_by(ANCHORS.c.seq)).mappings()
        ]
        head = conn.execute(select(HEAD).where(HEAD.c.id == 1)).mappings().first()
        cps = conn.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.seq)).mappings().all()
        report = VerifyReport(source="store")
        start_seq, start_hash = 0, GENESIS
        if anchors:
            start = anchors[-1]
            start_seq, start_hash = start["seq"], start["hash"]
            report.anchored = True
        stored_anchors = {(a["seq"], a["hash"]) for a in anchors}
        for rec in records:
            if (
                rec.get("type") == "anchor"
                and (int(rec.get("seq", -1)), rec.get("hash")) not in stored_anchors
            ):
                report.add(
                    Problem(
                        int(rec.get("seq") or 0),
                        "removed",
                        f"anchor at {rec.get('seq')} (in the outside copy) is missing from the store",
                    )
                )
        from .audit import checkpoint_record

        signed = [checkpoint_record(r) for r in cps] + records + anchors
        if to_seq is not None:
            signed = [r for r in signed if int(r.get("seq") or 0) <= to_seq]
        verifier = ChainVerifier(
            public_keys=keys,
            signed=signed,
            start_seq=start_seq,
            start_hash=start_hash,
            report=report,
        )
        n = 0
        for entry in stream_entries(conn, from_seq=None, to_seq=to_seq):
            verifier.feed(entry)
            n += 1
            if progress is not None and n % 10000 == 0:
                progress(n)
        if progress is not None:
            progress(n)
        return verifier.finish(
            None if to_seq is not None else (head or {"seq": 0, "hash": GENESIS})
        )


# ----------------------------------------------------------------------------------------- offline


def verify_exports(paths: Sequence[Path], public_keys: PublicKeys) -> VerifyReport:
    """Verify one or more export files (e.g. archives then the current export), in order: each
    must verify on its own, and each must start where the previous one ended."""
    from .audit_export import read_export

    combined = VerifyReport(source=", ".join(str(p) for p in paths))
    previous: VerifyReport | None = None
    for path in paths:
        export = read_export(path)
        rep = VerifyReport(source=str(path))
        start_seq, start_hash = export.start_seq, export.start_hash
        if export.start_anchor is not None:
            anchor = export.start_anchor
            why = public_keys.verify(
                str(anchor.get("key_id")), _signed_message(anchor), str(anchor.get("signature"))
            )
            if why is not None:
                rep.add(
                    Problem(start_seq, "signature", f"{path}: start anchor at {start_seq}: {why}")
                )
            elif (int(anchor["seq"]), anchor["hash"]) != (start_seq, start_hash):
                rep.add(
                    Problem(
                        start_seq,
                        "format",
                        f"{path}: start anchor does not match the export's start",
                    )
                )
            rep.anchored = True
        elif start_seq == 0:
            rep.anchored = True
            if start_hash != GENESIS:
                rep.add(
                    Problem(0, "format", f"{path}: starts at genesis but with a non-genesis hash")
                )
        else:
            rep.notes.append(
                f"{path.name} starts after entry {start_seq} without a signed anchor: "
                "its link to earlier entries is not checked"
            )
        if previous is not None and (start_seq, start_hash) != (
            previous.last_seq,
            previous.last_hash,
        ):
            rep.add(
                Problem(
                    start_seq,
                    "removed",
                    f"{path.name} does not continue the previous file: it starts after entry {start_seq}, "
                    f"the previous one ends at {previous.last_seq}",
                )
            )
        verifier = ChainVerifier(
            public_keys=public_keys,
            signed=export.signed,
            start_seq=start_seq,
            start_hash=start_hash,
            report=rep,
        )
        for entry in export.entries():
            verifier.feed(entry)
        verifier.finish(None)
        for problem in export.problems:  # damaged lines, a missing end record
            rep.add(problem)
        end = export.end or {}
        if export.end is not None and (end.get("entries"), end.get("last_seq")) != (
            rep.entries,
            rep.last_seq,
        ):
            rep.add(
                Problem(
                    rep.last_seq + 1,
                    "truncated",
                    f"{path.name}: the end record lists {end.get('entries')} entries up to "
                    f"{end.get('last_seq')}, the file holds {rep.entries} up to {rep.last_seq} (truncated)",
                )
            )
        for p in rep.problems:
            if not p.message.startswith(str(path)) and len(paths) > 1:
                p.message = f"{path.name}: {p.message}"
        combined.entries += rep.entries
        combined.first_seq = rep.first_seq if combined.first_seq is None else combined.first_seq
        if previous is None:
            combined.start_seq, combined.start_hash, combined.anchored = (
                rep.start_seq,
                rep.start_hash,
                rep.anchored,
            )
        combined.last_seq, combined.last_hash = rep.last_seq, rep.last_hash
        combined.checkpoints += rep.checkpoints
        if rep.last_checkpoint_seq is not None:
            combined.last_checkpoint_seq = rep.last_checkpoint_seq
        for p in rep.problems:
            combined.add(p)
        combined.problem_count += rep.problem_count - len(rep.problems)
        combined.notes += rep.notes
        previous = rep
    return combined
