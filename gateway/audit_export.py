"""Audit exports (JSONL or CSV) carrying everything needed to verify them, reading them back, and
retention: archiving old entries to a verified export and pruning them.

JSONL export, one JSON object per line, in this order::

    {"type": "header", "format": "gateway-audit-export", "version": 1, "site": ..., "exported_at": ...,
     "start": {"seq": S, "hash": H, "anchor": <signed anchor record> | null}, "first_seq", "last_seq"}
    {"type": "checkpoint", "seq", "hash", "ts", "key_id", "signature"}        (and "anchor" records)
    {"type": "entry", "seq", "ts", "actor", "action", "outcome", "dataset", "purpose", "fields",
     "subject_count", "subject_keys", "detail", "alg", "prev_hash", "hash"}
    {"type": "end", "entries": N, "last_seq": L, "last_hash": ...}

``start`` is where the exported chain begins: seq 0 and 64 zeros (genesis), or the anchor left by
pruning, or (for a partial export) the entry before the first one exported. CSV holds the same
records, one per row, under the columns ``CSV_COLUMNS`` (``record_type`` says which); ``fields`` and
``detail`` are JSON, ``subject_keys`` space-separated, header and end records in ``extra``. CSV is
written with a UTF-8 BOM so spreadsheets show Chinese text.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select

from .audit import (
    CHECKPOINTS,
    ENTRIES,
    FORMAT_VERSION,
    GENESIS,
    SUBJECTS,
    AuditError,
    AuditEvent,
    ChainBroken,
    _append,
    _lock_head,
    _naive_utc,
    _utcnow,
    anchor_message,
    checkpoint_record,
    format_ts,
    sign,
    write_outside_copy,
)
from .audit_verify import (
    ANCHORS,
    Problem,
    PublicKeys,
    anchor_record,
    snapshot,
    stream_entries,
    verify_exports,
    verify_store,
)

if TYPE_CHECKING:
    from .site import Site

EXPORT_FORMAT = "gateway-audit-export"
MIN_RETENTION_DAYS = 183  # the law: at least six months
CSV_COLUMNS = [
    "record_type",
    "seq",
    "ts",
    "actor",
    "action",
    "outcome",
    "dataset",
    "purpose",
    "fields",
    "subject_count",
    "subject_keys",
    "detail",
    "alg",
    "prev_hash",
    "hash",
    "key_id",
    "signature",
    "extra",
]
_ENTRY_PREFIX = '{"type":"entry"'


def _dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------------------------------ writing


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def _cell(value: Any) -> Any:
    """Spreadsheets run a cell starting with = + - @ as a formula, and a refused request's purpose
    is whatever the caller sent: such text gets a leading apostrophe (as does text that starts with
    one, so the reader can always take exactly one away)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _uncell(value: str) -> str:
    return value[1:] if value.startswith("'") else value


class _Writer:
    """Writes records as JSONL or CSV to a binary stream, hashing what it writes."""

    def __init__(self, raw: IO[bytes], fmt: str):
        self.raw, self.fmt = raw, fmt
        self.digest = hashlib.sha256()
        if fmt == "csv":
            self.text = io.StringIO()
            self.csv = csv.writer(self.text, lineterminator="\r\n")
            self._emit("\ufeff")
            self.csv.writerow(CSV_COLUMNS)
            self._drain()

    def _emit(self, text: str) -> None:
        data = text.encode("utf-8")
        self.digest.update(data)
        self.raw.write(data)

    def _drain(self) -> None:
        self._emit(self.text.getvalue())
        self.text.seek(0)
        self.text.truncate()

    def write(self, rec: Mapping[str, Any]) -> None:
        if self.fmt == "jsonl":
            self._emit(_dumps(rec) + "\n")
            return
        kind = rec["type"]
        row = dict.fromkeys(CSV_COLUMNS, "")
        row["record_type"] = kind
        if kind == "entry":
            row.update(
                seq=rec["seq"],
                ts=rec["ts"],
                actor=rec["actor"],
                action=rec["action"],
                outcome=rec["outcome"],
                dataset=rec["dataset"] or "",
                purpose=rec["purpose"] or "",
                fields=_dumps(rec["fields"]),
                subject_count=rec["subject_count"],
                subject_keys=" ".join(rec["subject_keys"]),
                detail="" if rec["detail"] is None else _dumps(rec["detail"]),
                alg=rec["alg"],
                prev_hash=rec["prev_hash"],
                hash=rec["hash"],
            )
        elif kind in ("checkpoint", "anchor"):
            row.update(
                seq=rec["seq"],
                ts=rec["ts"],
                hash=rec["hash"],
                key_id=rec["key_id"],
                signature=rec["signature"],
            )
            if kind == "anchor":
                row["extra"] = _dumps({"before": rec["before"], "entries": rec["entries"]})
        else:  # header, end
            row["extra"] = _dumps({k: v for k, v in rec.items() if k != "type"})
        self.csv.writerow([_cell(row[c]) for c in CSV_COLUMNS])
        self._drain()


@dataclass
class ExportSummary:
    path: Path
    format: str
    entries: int
    first_seq: int | None
    last_seq: int | None
    signed: int  # checkpoints and anchors included
    sha256: str


def _fmt_for(path: Path, fmt: str | None) -> str:
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    if fmt not in ("jsonl", "csv"):
        raise AuditError(f"export format {fmt!r}: choose jsonl or csv")
    return fmt


def _seq_range(
    conn: Any, since: dt.datetime | None, until: dt.datetime | None
) -> tuple[int | None, int | None]:
    lo = hi = None
    if since is not None:
        lo = conn.execute(
            select(func.min(ENTRIES.c.seq)).where(ENTRIES.c.ts >= _naive_utc(since))
        ).scalar()
        lo = lo if lo is not None else sys.maxsize
    if until is not None:
        hi = conn.execute(
            select(func.max(ENTRIES.c.seq)).where(ENTRIES.c.ts < _naive_utc(until))
        ).scalar()
        hi = hi if hi is not None else 0
    return lo, hi


def export(
    site: Site,
    out: Path | str,
    *,
    fmt: str | None = None,
    from_seq: int | None = None,
    to_seq: int | None = None,
    since: dt.datetime | dt.date | None = None,
    until: dt.datetime | dt.date | None = None,
    overwrite: bool = False,
    extra_signed: Sequence[Mapping[str, Any]] = (),
) -> ExportSummary:
    """Write a contiguous range of the chain (all of it by default) with its checkpoints.

    ``since``/``until`` (UTC) select by time, ``from_seq``/``to_seq`` by seq. The file appears
    complete or not at all (written beside, then renamed). Only contiguous ranges: a filtered
    subset could not be verified (use ``search`` for that).
    """
    out = Path(out)
    fmt = _fmt_for(out, fmt)
    if out.exists() and not overwrite:
        raise AuditError(f"{out}: already exists; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with snapshot(site) as conn, conn.begin():
        anchors = [
            anchor_record(r)
            for r in conn.execute(select(ANCHORS).order_by(ANCHORS.c.seq)).mappings()
        ]
        base = anchors[-1] if anchors else None
        base_seq = base["seq"] if base else 0
        lo, hi = _seq_range(conn, since, until)
        first = max(x for x in (from_seq, lo, base_seq + 1) if x is not None)
        top = conn.execute(select(func.max(ENTRIES.c.seq))).scalar() or base_seq
        last = min(x for x in (to_seq, hi, top) if x is not None)
        if from_seq is not None and from_seq <= base_seq:
            raise AuditError(
                f"entries up to {base_seq} were archived by pruning (see the archive files); "
                f"export from {base_seq + 1} on"
            )
        if first == base_seq + 1:
            start_seq, start_hash, start_anchor = (
                base_seq,
                (base["hash"] if base else GENESIS),
                base,
            )
        else:
            prev = conn.execute(select(ENTRIES.c.prev_hash).where(ENTRIES.c.seq == first)).scalar()
            start_seq, start_hash, start_anchor = first - 1, prev or GENESIS, None
        if last < first:
            last = first - 1  # an empty range: header and end only
        cps = [
            checkpoint_record(r)
            for r in conn.execute(
                select(CHECKPOINTS)
                .where(CHECKPOINTS.c.seq >= start_seq, CHECKPOINTS.c.seq <= last)
                .order_by(CHECKPOINTS.c.seq, CHECKPOINTS.c.id)
            ).mappings()
        ]
        signed = cps + [a for a in anchors if start_seq <= a["seq"] <= last] + list(extra_signed)
        header = {
            "type": "header",
            "format": EXPORT_FORMAT,
            "version": FORMAT_VERSION,
            "site": site.settings.gateway.site_name,
            "exported_at": format_ts(_utcnow()),
            "start": {"seq": start_seq, "hash": start_hash, "anchor": start_anchor},
            "first_seq": first if last >= first else None,
            "last_seq": last if last >= first else None,
        }
        count, last_hash = 0, start_hash
        try:
            with open(tmp, "wb") as raw:
                writer = _Writer(raw, fmt)
                writer.write(header)
                for rec in signed:
                    writer.write(rec)
                if last >= first:
                    for entry in stream_entries(conn, from_seq=first, to_seq=last):
                        writer.write({"type": "entry", **entry})
                        count += 1
                        last_hash = entry["hash"]
                writer.write(
                    {
                        "type": "end",
                        "entries": count,
                        "last_seq": last if count else start_seq,
                        "last_hash": last_hash,
                    }
                )
                raw.flush()
                os.fsync(raw.fileno())
            if out.exists() and not overwrite:
                raise AuditError(f"{out}: already exists; refusing to overwrite it")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return ExportSummary(
        out,
        fmt,
        count,
        first if count else None,
        last if count else None,
        len(signed),
        writer.digest.hexdigest(),
    )


# ------------------------------------------------------------------------------------------ reading


def _csv_record(row: dict[str, str], where: str) -> dict[str, Any]:
    kind = row.get("record_type")
    if kind == "entry":
        return {
            "type": "entry",
            "seq": int(row["seq"]),
            "ts": row["ts"],
            "actor": row["actor"],
            "action": row["action"],
            "outcome": row["outcome"],
            "dataset": row["dataset"] or None,
            "purpose": row["purpose"] or None,
            "fields": json.loads(row["fields"]) if row["fields"] else [],
            "subject_count": int(row["subject_count"]),
            "subject_keys": row["subject_keys"].split() if row["subject_keys"] else [],
            "detail": json.loads(row["detail"]) if row["detail"] else None,
            "alg": row["alg"],
            "prev_hash": row["prev_hash"],
            "hash": row["hash"],
        }
    if kind in ("checkpoint", "anchor"):
        rec = {
            "type": kind,
            "seq": int(row["seq"]),
            "ts": row["ts"],
            "hash": row["hash"],
            "key_id": row["key_id"],
            "signature": row["signature"],
        }
        if kind == "anchor":
            rec.update(json.loads(row["extra"]))
        return rec
    if kind in ("header", "end"):
        return {"type": kind, **json.loads(row["extra"])}
    raise ValueError(f"{where}: unknown record_type {kind!r}")


@dataclass
class ExportFile:
    """An export read back: header facts and signed records at once, entries streamed on demand."""

    path: Path
    fmt: str
    header: dict[str, Any]
    signed: list[dict[str, Any]]
    end: dict[str, Any] | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def start_seq(self) -> int:
        return int(self.header["start"]["seq"])

    @property
    def start_hash(self) -> str:
        return str(self.header["start"]["hash"])

    @property
    def start_anchor(self) -> dict[str, Any] | None:
        return self.header["start"].get("anchor")

    def _records(self) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
        """(line/row, record or None, entry-line prefix) for every record; bad ones give None."""
        if self.fmt == "jsonl":
            with open(self.path, encoding="utf-8-sig") as handle:
                for lineno, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        yield (
                            lineno,
                            rec if isinstance(rec, dict) else None,
                            line[: len(_ENTRY_PREFIX)],
                        )
                    except json.JSONDecodeError:
                        yield lineno, None, line[: len(_ENTRY_PREFIX)]
            return
        csv.field_size_limit(sys.maxsize)  # an entry may list many thousand subject keys
        with open(self.path, encoding="utf-8-sig", newline="") as handle:
            for rowno, raw_row in enumerate(csv.DictReader(handle), 2):
                row = {k: _uncell(v) if isinstance(v, str) else v for k, v in raw_row.items()}
                try:
                    rec = _csv_record(row, f"row {rowno}")
                    yield rowno, rec, None
                except (ValueError, KeyError, TypeError):
                    yield rowno, None, None

    def entries(self) -> Iterator[dict[str, Any]]:
        """The entries in file order; unreadable lines become problems (the file was damaged)."""
        what = "line" if self.fmt == "jsonl" else "row"
        for where, rec, _prefix in self._records():
            if rec is None:
                self.problems.append(
                    Problem(
                        0,
                        "format",
                        f"{self.path.name} {what} {where}: unreadable record (file damaged)",
                    )
                )
                continue
            if rec.get("type") != "entry":
                continue
            try:
                rec["seq"] = int(rec["seq"])
                yield rec
            except (KeyError, TypeError, ValueError):
                self.problems.append(
                    Problem(0, "format", f"{self.path.name} {what} {where}: entry without a seq")
                )


def _detect(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            head = handle.read(64).lstrip(b"\xef\xbb\xbf").lstrip()
    except FileNotFoundError:
        raise AuditError(f"{path}: no such export file") from None
    except OSError as exc:
        raise AuditError(f"{path}: cannot read: {exc.strerror}") from None
    if head.startswith(b"{"):
        return "jsonl"
    if head.startswith(b"record_type"):
        return "csv"
    raise AuditError(
        f"{path}: not an audit export (expected JSONL or CSV written by `gateway audit export`)"
    )


def read_export(path: Path | str) -> ExportFile:
    """Read an export's header, signed records and end record (entries come from ``.entries()``)."""
    path = Path(path)
    export = ExportFile(path, _detect(path), {}, [], None)
    header: dict[str, Any] | None = None
    for _where, rec, prefix in export._records():
        if prefix == _ENTRY_PREFIX or rec is None or rec.get("type") == "entry":
            continue  # entries and damage are seen by the second pass
        kind = rec.get("type")
        if kind == "header" and header is None:
            header = rec
        elif kind in ("checkpoint", "anchor"):
            export.signed.append(rec)
        elif kind == "end":
            export.end = rec
    if header is None or header.get("format") != EXPORT_FORMAT:
        raise AuditError(f"{path}: no audit export header (not written by `gateway audit export`)")
    if header.get("version") != FORMAT_VERSION:
        raise AuditError(
            f"{path}: export format version {header.get('version')} is not supported (this gateway reads {FORMAT_VERSION})"
        )
    start = header.get("start")
    if not isinstance(start, dict) or "seq" not in start or "hash" not in start:
        raise AuditError(f"{path}: the header lacks the chain start (seq and hash)")
    export.header = header
    if export.end is None:
        export.problems.append(
            Problem(
                sys.maxsize,
                "truncated",
                f"{path.name}: no end record: the file was cut short (truncated)",
            )
        )
    return export


# ----------------------------------------------------------------------------------------- retention


@dataclass
class PruneResult:
    archive: Path
    entries: int
    first_seq: int
    last_seq: int
    anchor: dict[str, Any]
    sha256: str


def retention_limit(site: Site, now: dt.datetime | None = None) -> dt.datetime:
    """The newest cut-off pruning may use: now minus the retention period (at least 183 days)."""
    days = max(MIN_RETENTION_DAYS, site.settings.audit.retention_days)
    return (now or _utcnow()) - dt.timedelta(days=days)


def prune(
    site: Site, *, before: dt.datetime | dt.date, archive: Path | str, actor: str
) -> PruneResult | None:
    """Archive the entries older than ``before`` to a verified export file, then delete them.

    Refused if ``before`` is within the retention period or the chain does not verify. The archive
    is written, re-read and verified offline before anything is deleted; the deletion, the signed
    anchor (last archived seq and hash: where verification of the rest starts) and an
    ``audit.prune`` entry commit together. Returns None when nothing is old enough.
    """
    cut_off = _naive_utc(before)
    limit = retention_limit(site)
    if cut_off > limit:
        days = max(MIN_RETENTION_DAYS, site.settings.audit.retention_days)
        raise AuditError(
            f"refused: audit entries are kept {days} days ([audit] retention_days, at least {MIN_RETENTION_DAYS}); "
            f"the cut-off may be {limit.date().isoformat()} at the latest"
        )
    with snapshot(site) as conn, conn.begin():
        base = (
            conn.execute(select(ANCHORS).order_by(ANCHORS.c.seq.desc()).limit(1)).mappings().first()
        )
        base_seq = int(base["seq"]) if base else 0
        newer = conn.execute(
            select(func.min(ENTRIES.c.seq)).where(ENTRIES.c.ts >= cut_off)
        ).scalar()
        top = conn.execute(select(func.max(ENTRIES.c.seq))).scalar() or base_seq
        cut = (newer - 1) if newer is not None else top
        cut_hash = conn.execute(select(ENTRIES.c.hash).where(ENTRIES.c.seq == cut)).scalar()
    if cut <= base_seq or cut_hash is None:
        return None
    report = verify_store(site, to_seq=cut)
    if not report.ok:
        first = (
            report.sorted_problems()[0].message if report.problems else "see `gateway audit verify`"
        )
        raise ChainBroken(f"refused to prune: the chain does not verify up to entry {cut}: {first}")
    now = _utcnow()
    ts, before_s, entries = format_ts(now), format_ts(cut_off), cut - base_seq
    key_id, _msg, signature = sign(
        site, lambda kid: anchor_message(cut, report.last_hash, ts, before_s, entries, kid)
    )
    anchor = {
        "type": "anchor",
        "seq": cut,
        "hash": report.last_hash,
        "ts": ts,
        "before": before_s,
        "entries": entries,
        "key_id": key_id,
        "signature": signature.hex(),
    }
    archive = Path(archive)
    if archive.is_dir():
        archive = archive / f"audit-{base_seq + 1:012d}-{cut:012d}.jsonl"
    summary = export(site, archive, from_seq=base_seq + 1, to_seq=cut, extra_signed=[anchor])
    check = verify_exports([archive], PublicKeys.from_site(site))
    if not check.ok or check.last_seq != cut or check.entries != entries:
        problem = (
            check.sorted_problems()[0].message
            if check.problems
            else f"holds {check.entries} entries up to {check.last_seq}"
        )
        raise AuditError(
            f"refused to prune: the archive {archive} did not verify ({problem}); nothing was deleted"
        )
    with site.begin() as session:
        _lock_head(session)  # one pruner at a time, and no append sees a half-pruned log
        latest = session.execute(select(func.max(ANCHORS.c.seq))).scalar() or 0
        if latest != base_seq:
            raise AuditError("refused to prune: another prune ran meanwhile; run it again")
        session.execute(
            insert(ANCHORS),
            [
                {
                    "seq": cut,
                    "hash": report.last_hash,
                    "ts": now,
                    "before": cut_off,
                    "entries": entries,
                    "key_id": key_id,
                    "signature": anchor["signature"],
                    "archive": archive.name,
                    "archive_sha256": summary.sha256,
                }
            ],
        )
        session.execute(delete(SUBJECTS).where(SUBJECTS.c.entry_seq <= cut))
        session.execute(delete(ENTRIES).where(ENTRIES.c.seq <= cut))
        event = AuditEvent.create(
            actor=actor,
            action="audit.prune",
            detail={
                "archived": entries,
                "first_seq": base_seq + 1,
                "last_seq": cut,
                "before": before_s,
                "archive": archive.name,
                "archive_sha256": summary.sha256,
            },
        )
        _append(session, [event], site.suite, site)
    write_outside_copy(site, [anchor])
    return PruneResult(archive, entries, base_seq + 1, cut, anchor, summary.sha256)
