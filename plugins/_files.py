"""What the file connectors (csv, xlsx) share: a file or a drop folder, content hashes, the cursor,
batching, and atomic replacement of a written file.

The cursor of a file source is ``{"done": [sha256, ...], "file": sha256 | None, ...where}``: the
content hashes of files fully read (never read again, whatever their name), and the file being
read with the connector's position inside it (``row``; xlsx adds ``sheet``). A renamed or copied
file with the same content counts as read; a changed file is new content and is read.
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from gateway import ids
from gateway.connectors import Batch, ConnectorContext, LazyRows, RawRecords, Row
from gateway.errors import ConfigError, SourceError

CHUNK = 1 << 18  # bytes per read when hashing and checking a file's encoding
_MAGIC = set("*?[")

# Where a file reader is inside one file, as it goes into the cursor (JSON-serialisable).
Where = dict[str, Any]
# (Row, or None for a record that carries no data such as a blank line; a mark of the reader's
# place after it). The mark is turned into a Where only when a batch ends: per row it stays cheap.
Item = tuple[Row | None, Any]


# 15 or more digits (an ID number, a 15-digit legacy one, or what Excel left of one).
_ID_LIKE = re.compile(r"\d{14,}[\dXx]")


def scrub(text: str) -> str:
    """A library's error message with anything that looks like an ID number masked: parsers
    quote the offending value, and errors must never carry an ID in the clear."""
    return _ID_LIKE.sub(lambda m: ids.mask(m.group()), text)


def is_glob(pattern: str) -> bool:
    return not _MAGIC.isdisjoint(pattern)


def display(path: Path, base_dir: Path) -> str:
    """How a file is named in positions and errors: relative to the site folder when inside it."""
    try:
        return path.relative_to(base_dir).as_posix()
    except ValueError:
        return str(path)


def required_path(config: Mapping[str, Any], context: ConnectorContext, connector: str) -> str:
    value = config.get("path")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"systems.{context.system}.path: required by the {connector} connector (a file or a glob)"
        )
    return value


def source_files(pattern: str, context: ConnectorContext) -> list[Path]:
    """The files to read, sorted by name: one file, or every match of a glob over a drop folder.

    Hidden files and Office lock files (``~$name.xlsx``) are not data. An empty drop folder is
    not an error; a missing file or folder is.
    """
    base = Path(context.base_dir).resolve()
    target = Path(pattern)
    full = target if target.is_absolute() else base / target
    if not is_glob(pattern):
        if not full.is_file():
            cause = "is a folder, not a file" if full.is_dir() else "no such file"
            raise SourceError(context.system, display(full, base), cause)
        return [full]
    fixed = Path(
        *[p for p in full.parts[: next(i for i, p in enumerate(full.parts) if is_glob(p))]]
    )
    if not fixed.is_dir():
        raise SourceError(
            context.system, display(full, base), f"no such folder {display(fixed, base)}"
        )
    prefix = glob.escape(str(fixed))
    rest = full.relative_to(fixed).as_posix()
    found = (Path(p) for p in glob.glob(f"{prefix}/{rest}", recursive=True))
    return sorted(p for p in found if p.is_file() and not p.name.startswith((".", "~$")))


def digest(
    path: Path, context: ConnectorContext, on_chunk: Callable[[bytes], None] | None = None
) -> str:
    """sha256 of a file's content, read in chunks; ``on_chunk`` sees every chunk (decode checks)."""
    sha = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                sha.update(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
    except OSError as exc:
        raise unreadable(path, context, exc) from None
    return sha.hexdigest()


def unreadable(path: Path, context: ConnectorContext, exc: OSError) -> SourceError:
    return SourceError(
        context.system,
        display(path, Path(context.base_dir).resolve()),
        f"cannot read: {exc.strerror or exc}",
    )


def _resume(
    cursor: Mapping[str, Any] | None, batch_size: int
) -> tuple[list[str], str | None, dict[str, Any]]:
    """(digests of the files fully read, the digest of the file to resume in, the position in
    it) from a file reader's cursor."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cursor = dict(cursor or {})
    done: list[str] = list(cursor.get("done", []))
    resume_where = {k: v for k, v in cursor.items() if k not in ("done", "file")}
    return done, cursor.get("file"), resume_where


def read_files(
    files: Iterable[Path],
    cursor: Mapping[str, Any] | None,
    batch_size: int,
    file_digest: Callable[[Path], str],
    file_items: Callable[[Path, Where | None], Iterator[Item]],
    where_of: Callable[[Any], Where],
) -> Iterator[Batch]:
    """Batches over every file not read yet, resuming inside the file the cursor names.

    ``file_items(path, resume)`` yields a file's rows each with its position inside the file;
    ``resume`` is the cursor's position when this is the file the cursor names; ``where_of``
    turns a reader's mark into that position. A batch's cursor is the position after its last row. The last batch (possibly empty, when only files without
    rows were finished) records every finished file as done.
    """
    done, resume_file, resume_where = _resume(cursor, batch_size)
    seen = set(done)
    started_with = len(done)
    batch: list[Row] = []
    append = batch.append
    for path in files:
        sha = file_digest(path)
        if sha in seen:
            continue  # fully read before (or the same content twice in this folder)
        mark: Any = None  # None: the start of this file
        for row, after in file_items(path, resume_where if sha == resume_file else None):
            if len(batch) >= batch_size:
                where = where_of(mark) if mark is not None else {}
                yield Batch(batch, {"done": list(done), "file": sha, **where})
                batch = []
                append = batch.append
            if row is not None:
                append(row)
            mark = after
        done.append(sha)
        seen.add(sha)
    if batch or len(done) > started_with:
        yield Batch(batch, {"done": done, "file": None})


class RawRows(LazyRows):
    """Rows kept as their source bytes until asked for (``LazyRows``), with the ``RawRecords``
    view the sync fingerprints. A file reader appends blocks of records with their ``form``
    (whatever its ``build`` needs to turn bytes into rows: the file's name, header, encoding)."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.lines: list[int] = []  # where each record starts (1-based line), for positions
        self.parts: list[tuple[int, Any]] = []  # (first index, form) ascending
        self._built: dict[int, Row] = {}

    def __len__(self) -> int:
        return len(self.records)

    def add(
        self, form: Any, records: list[bytes], lines: list[int], built: list[Row] | None = None
    ) -> None:
        if not self.parts or self.parts[-1][1] is not form:
            self.parts.append((len(self.records), form))
        if built is not None:  # rows that were read as rows already
            self._built.update(enumerate(built, len(self.records)))
        self.records += records
        self.lines += lines

    def raw(self) -> RawRecords:
        return RawRecords(self.records, [(start, form.form) for start, form in self.parts])

    def take(self, indexes: Iterable[int]) -> list[Row]:
        built = self._built
        indexes = list(indexes)
        todo = sorted({i for i in indexes if i not in built}) if built else sorted(set(indexes))
        if todo:
            starts = [start for start, _ in self.parts]
            k = 0
            while k < len(todo):
                part = bisect.bisect_right(starts, todo[k]) - 1
                end = starts[part + 1] if part + 1 < len(starts) else len(self.records)
                stop = bisect.bisect_left(todo, end, k)
                group = todo[k:stop]
                form = self.parts[part][1]
                rows = form.build([self.records[i] for i in group], [self.lines[i] for i in group])
                built.update(zip(group, rows, strict=True))
                k = stop
        return [built[i] for i in indexes]


# (form, records, their first lines, the reader's mark after each record, the rows when they are
# built already, else None): a piece of one file.
Block = tuple[Any, list[bytes], list[int], list[Any], list[Row] | None]


def read_files_raw(
    files: Iterable[Path],
    cursor: Mapping[str, Any] | None,
    batch_size: int,
    file_digest: Callable[[Path], str],
    file_blocks: Callable[[Path, Where | None], Iterator[Block]],
    where_of: Callable[[Any], Where],
) -> Iterator[Batch]:
    """``read_files`` for readers that give blocks of raw records: batches of ``RawRows`` (rows
    built only when the sync asks for them) with their ``RawRecords``; the same cursor."""
    done, resume_file, resume_where = _resume(cursor, batch_size)
    seen = set(done)
    started_with = len(done)
    rows = RawRows()
    for path in files:
        sha = file_digest(path)
        if sha in seen:
            continue
        mark: Any = None  # None: the start of this file
        for form, records, lines, marks, built in file_blocks(
            path, resume_where if sha == resume_file else None
        ):
            k, n = 0, len(records)
            while k < n:
                if len(rows) >= batch_size:
                    where = where_of(mark) if mark is not None else {}
                    yield Batch(rows, {"done": list(done), "file": sha, **where}, rows.raw())
                    rows = RawRows()
                take = min(n - k, batch_size - len(rows))
                if k == 0 and take == n:
                    rows.add(form, records, lines, built)
                else:
                    part = slice(k, k + take)
                    rows.add(
                        form, records[part], lines[part], None if built is None else built[part]
                    )
                k += take
                mark = marks[k - 1]
        done.append(sha)
        seen.add(sha)
    if len(rows) or len(done) > started_with:
        yield Batch(rows, {"done": done, "file": None}, rows.raw())


def atomic_replace(path: Path, context: ConnectorContext, write: Callable[[Path], None]) -> None:
    """Write a new version of ``path`` next to it, flush it to disk, then swap it in: a reader
    sees the old file or the new one, never half of one. The old file's permissions are kept."""
    base = Path(context.base_dir).resolve()
    if not path.parent.is_dir():
        raise SourceError(
            context.system,
            display(path, base),
            f"cannot write: no such folder {display(path.parent, base)}",
        )
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except OSError as exc:
        raise SourceError(
            context.system,
            display(path, Path(context.base_dir).resolve()),
            f"cannot write: {exc.strerror or exc}",
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
