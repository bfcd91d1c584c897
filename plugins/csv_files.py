"""The ``csv`` connector: a CSV file or a drop folder of them, in whatever encoding departments use.

Encoding ``auto`` (the default) tries strict decodes of the whole file, in order: a BOM (UTF-8,
UTF-16, GB18030), then UTF-8, then GB18030 (a superset of GBK, so GBK exports decode too), and
records which one worked. A file none of them decodes is an error naming the line that failed;
charset-normalizer's guess is added as a hint only - a guess is never used to read data. An
explicit ``encoding`` is used as given and a byte it cannot decode is reported with its line.

Rows stream through the csv module (files of a million rows never sit in memory). A row with the
wrong number of fields is kept with a problem (position ``file:line``) so the sync quarantines it
and goes on. Writing upserts by key into one file, in the encoding the receiver asks for.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
import io
import itertools
import json
import logging
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.connectors import Batch, Connector, ConnectorContext, Row, WriteResult
from gateway.errors import ConfigError, SourceError
from gateway.hookspecs import hookimpl
from gateway.protect import row_text

from . import _files

log = logging.getLogger(__name__)

AUTO_ORDER = ("utf-8", "gb18030")  # strict decodes tried in this order when there is no BOM
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
    ("\ufeff".encode("gb18030"), "gb18030"),
)
WRITE_DEFAULT_ENCODING = "utf-8-sig"  # what Excel opens correctly when nobody asked otherwise


class CsvConnector(Connector):
    """Options: ``path`` (file or glob, relative to the site folder), ``encoding`` ("auto"),
    ``delimiter`` (","), ``quotechar`` ('"'), ``header_row`` (1-based, default 1) or ``skip_rows``
    (lines above the header), ``required_columns`` (checked in every file's header)."""

    name = "csv"
    options = (
        "path",
        "encoding",
        "delimiter",
        "quotechar",
        "header_row",
        "skip_rows",
        "required_columns",
    )

    def __init__(self, options: Mapping[str, Any], context: ConnectorContext):
        super().__init__(options, context)
        key = f"systems.{context.system}"
        self.path = _files.required_path(self.config, context, self.name)
        self.encoding = str(self.config.get("encoding", "auto")).strip().lower()
        if self.encoding != "auto":
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ConfigError(f"{key}.encoding: unknown encoding {self.encoding!r}") from None
        self.delimiter = self.config.get("delimiter", ",")
        self.quotechar = self.config.get("quotechar", '"')
        for name, value in (("delimiter", self.delimiter), ("quotechar", self.quotechar)):
            if not isinstance(value, str) or len(value) != 1:
                raise ConfigError(f'{key}.{name}: must be a single character, e.g. "," or "\\t"')
        self.header_row = _header_row(self.config, key)
        required = self.config.get("required_columns", [])
        if not isinstance(required, list) or not all(isinstance(c, str) for c in required):
            raise ConfigError(f"{key}.required_columns: must be a list of column names")
        self.required_columns: list[str] = required
        self.base_dir = Path(context.base_dir).resolve()
        # file name -> the encoding it was read with (auto detection reports what it found here)
        self.detected: dict[str, str] = {}
        # Batches of rows kept as their bytes until the sync asks for them (_files.RawRows), with
        # the bytes for fingerprints; False gives plain lists of rows (each row built as read).
        self.raw = True

    # --- reading -------------------------------------------------------------------------------

    def read(self, cursor: Any = None, batch_size: int = 5000) -> Iterator[Batch]:
        files = _files.source_files(self.path, self.context)
        encodings: dict[Path, str] = {}

        def file_digest(path: Path) -> str:
            sha, encodings[path] = self._scan(path)
            return sha

        def file_items(path: Path, resume: _files.Where | None) -> Iterator[_files.Item]:
            return self._rows(path, encodings[path], int((resume or {}).get("row", 0)))

        def file_blocks(path: Path, resume: _files.Where | None) -> Iterator[_files.Block]:
            skip = int((resume or {}).get("row", 0))
            if _raw_safe(encodings[path], self.delimiter, self.quotechar):
                return self._raw_blocks(path, encodings[path], skip)
            return _blocks(self._rows(path, encodings[path], skip))

        if self.raw:
            yield from _files.read_files_raw(
                files, cursor, batch_size, file_digest, file_blocks, _row_where
            )
        else:
            yield from _files.read_files(
                files, cursor, batch_size, file_digest, file_items, _row_where
            )

    def _name(self, path: Path) -> str:
        return _files.display(path, self.base_dir)

    def _scan(self, path: Path) -> tuple[str, str]:
        """One pass over the bytes: the content hash, and a strict decode with the encoding to use
        (auto: the first that decodes the whole file). Fails before any row of the file is read."""
        name = self._name(path)
        if self.encoding != "auto":
            check = _DecodeCheck(self.encoding)
            sha = _files.digest(path, self.context, check)
            if not check.finish():
                line = _failing_line(path, self.encoding)
                at = f"{name}:{line}" if line else name
                raise SourceError(
                    self.context.system,
                    at,
                    f"cannot be decoded as {self.encoding} (the configured encoding)",
                )
            self.detected[name] = self.encoding
            return sha, self.encoding
        try:
            with path.open("rb") as f:
                head = f.read(4)
        except OSError as exc:
            raise _files.unreadable(path, self.context, exc) from None
        candidates = [enc for bom, enc in _BOMS if head.startswith(bom)][:1] or list(AUTO_ORDER)
        sha, chosen = "", None
        for enc in candidates:
            check = _DecodeCheck(enc)
            digest = _files.digest(path, self.context, check)  # the same bytes each pass
            sha = sha or digest
            if check.finish():
                chosen = enc
                break
        if chosen is None:
            # Only now, for the message: the line where each encoding failed.
            tried = ", ".join(
                f"{enc} (line {line})" if (line := _failing_line(path, enc)) else enc
                for enc in candidates
            )
            raise SourceError(
                self.context.system,
                name,
                f"cannot be decoded as {tried}{_guess(path)}; "
                "set `encoding` for this system if you know it",
            )
        log.info("%s: %s read as %s", self.context.system, name, chosen)
        self.detected[name] = chosen
        return sha, chosen

    def _rows(self, path: Path, encoding: str, skip: int) -> Iterator[_files.Item]:
        name = self._name(path)
        try:
            f = path.open("r", encoding=encoding, newline="", errors="strict")
        except OSError as exc:
            raise _files.unreadable(path, self.context, exc) from None
        with f:
            reader = csv.reader(f, delimiter=self.delimiter, quotechar=self.quotechar)
            # A decoding error is on the line after the last one the reader finished.
            with self._read_errors(
                path, encoding, lambda: reader.line_num, lambda: reader.line_num + 1
            ):
                header = self._header(reader, name)
                width = len(header)
                consumed = skip
                if skip:
                    for _ in itertools.islice(reader, skip):
                        pass
                last_line = reader.line_num
                for fields in reader:
                    line = last_line + 1
                    last_line = reader.line_num
                    consumed += 1
                    if len(fields) == width and any(fields):
                        yield Row(f"{name}:{line}", dict(zip(header, fields))), consumed  # noqa: B905 - same length
                    elif not "".join(fields).strip():
                        yield None, consumed  # a blank line (or only delimiters): no data
                    else:
                        yield self._misshapen(f"{name}:{line}", header, fields), consumed

    def _raw_blocks(self, path: Path, encoding: str, skip: int) -> Iterator[_files.Block]:
        """The rows of one file as raw records, without parsing them: a line holding no quote
        character is one CSV record (the csv module ends an unquoted record at its line end), so
        its bytes are the record; a line with a quote character is parsed by the csv module,
        pulling in as many lines as its record spans. Blank records are left out exactly as
        ``_rows`` leaves them out. Positions and the cursor (``row``: records after the header)
        are the same as ``_rows`` gives."""
        name = self._name(path)
        system = self.context.system
        delimiter, quote = self.delimiter, self.quotechar
        qb = quote.encode("ascii")
        sure = _sure_bytes(delimiter, quote)
        try:
            f = path.open("rb")
        except OSError as exc:
            raise _files.unreadable(path, self.context, exc) from None
        src = _Lines(f, qb)
        taken: list[bytes] = []
        pushed: list[bytes] = []
        decode = codecs.getincrementaldecoder(encoding)(errors="strict").decode

        def feed() -> Iterator[str]:
            while True:
                line = pushed.pop() if pushed else src.next()
                if line is None:
                    return
                taken.append(line)
                yield decode(line)

        reader = csv.reader(feed(), delimiter=delimiter, quotechar=quote)
        with f, self._read_errors(path, encoding, lambda: src.number, lambda: src.number):
            header = self._header(reader, name)
            form = _CsvForm(name, header, _line_codec(encoding), delimiter, quote, system)
            width = len(header)
            consumed = 0
            while src.ready():
                first = src.number + 1  # the line number of the next line
                records: list[bytes] = []
                lines: list[int] = []
                marks: list[int] = []
                if not src.quoted:
                    chunk = src.rest()
                    if consumed < skip:
                        drop = min(skip - consumed, len(chunk))
                        consumed += drop
                        first += drop
                        chunk = chunk[drop:]
                    heads = bytes(map(_FIRST, chunk))
                    if not heads.translate(None, sure):  # no line can be blank
                        records = chunk
                        lines = list(range(first, first + len(chunk)))
                        marks = list(range(consumed + 1, consumed + len(chunk) + 1))
                        consumed += len(chunk)
                    else:
                        for line_no, line in enumerate(chunk, first):
                            consumed += 1
                            if line[0] in sure or not form.blank(line, width):
                                records.append(line)
                                lines.append(line_no)
                                marks.append(consumed)
                else:
                    for line in src.rest_of_chunk():
                        line_no = src.number
                        if qb in line:
                            taken.clear()
                            pushed.append(line)
                            fields = next(reader)
                            record = b"".join(taken)
                            blank = not (len(fields) == width and any(fields)) and not (
                                "".join(fields).strip()
                            )
                        else:
                            record = line
                            blank = line[0] not in sure and form.blank(line, width)
                        consumed += 1
                        if blank or consumed <= skip:
                            continue
                        records.append(record)
                        lines.append(line_no)
                        marks.append(consumed)
                if records:
                    yield form, records, lines, marks, None

    @contextlib.contextmanager
    def _read_errors(
        self, path: Path, encoding: str, at: Callable[[], int], decode_at: Callable[[], int]
    ) -> Iterator[None]:
        """What goes wrong while one file is read, as the error of the line it happened on (``at``,
        or ``decode_at`` for a decoding error): the same messages from both readers."""
        where = self._name(path)
        try:
            yield
        except csv.Error as exc:
            raise SourceError(
                self.context.system, f"{where}:{at()}", f"malformed CSV: {_files.scrub(str(exc))}"
            ) from None
        except UnicodeDecodeError as exc:  # the file changed after it was checked
            raise SourceError(
                self.context.system,
                f"{where}:{decode_at()}",
                f"cannot be decoded as {encoding}: {exc.reason}",
            ) from None
        except OSError as exc:
            raise _files.unreadable(path, self.context, exc) from None

    def _header(self, reader: Any, name: str) -> list[str]:
        records = list(itertools.islice(reader, self.header_row))
        if not records:
            raise SourceError(self.context.system, name, "empty file: no header row")
        if len(records) < self.header_row:
            raise SourceError(
                self.context.system,
                name,
                f"has no line {self.header_row} for the header (header_row)",
            )
        record = records[-1]
        header = [cell.strip() for cell in record]
        if header:
            header[0] = (
                header[0].lstrip("\ufeff").strip()
            )  # a BOM kept by codecs without -sig handling
        if not any(header):
            raise SourceError(
                self.context.system, f"{name}:{reader.line_num}", "the header row is blank"
            )
        header = [h or f"_column{i}" for i, h in enumerate(header, 1)]
        seen: set[str] = set()
        for column in header:
            if column in seen:
                raise SourceError(
                    self.context.system,
                    f"{name}:{reader.line_num}",
                    f"column {column!r} appears twice in the header",
                )
            seen.add(column)
        missing = [c for c in self.required_columns if c not in seen]
        if missing:
            raise SourceError(
                self.context.system,
                name,
                f"missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} "
                f"in the header (line {reader.line_num})",
            )
        return header

    @staticmethod
    def _misshapen(position: str, header: list[str], fields: list[str]) -> Row:
        data: dict[str, Any] = dict(zip(header, fields, strict=False))
        if len(fields) < len(header):
            field, what = header[len(fields)], "missing"
        else:
            field, what = "", "extra"
            data["_extra"] = fields[len(header) :]
        message = f"{len(fields)} fields where the header has {len(header)} ({what} fields: a stray delimiter or quote?)"
        return Row(position, data, [(field, "field_count", message)])

    # --- writing -------------------------------------------------------------------------------

    def write(self, rows: Sequence[Mapping[str, Any]], key: Sequence[str]) -> WriteResult:
        """Upsert by ``key`` into the one file ``path``: matching rows replaced in place, new rows
        appended, everything else (title lines above the header included) kept. Nothing to change
        leaves the file untouched; otherwise the new version is written beside it and swapped in.
        The same rows always give the same bytes. Encoding: the configured one; with "auto", the
        existing file's own, or UTF-8 with a BOM for a new file."""
        system = self.context.system
        if _files.is_glob(self.path):
            raise ConfigError(f"systems.{system}.path: writing needs one file, not a glob")
        if not key:
            raise ConfigError(f"systems.{system}: writing needs a key")
        target = Path(self.path) if Path(self.path).is_absolute() else self.base_dir / self.path
        name = self._name(target)
        incoming: dict[tuple[str, ...], dict[str, str]] = {}
        columns: dict[str, None] = {}  # ordered set: the columns in the order rows bring them
        for i, row in enumerate(rows, 1):
            missing = [k for k in key if k not in row]
            if missing:
                raise SourceError(system, name, f"row {i} to write has no key field {missing[0]!r}")
            text = {column: _text(value) for column, value in row.items()}
            incoming[tuple(text[k] for k in key)] = text  # the same key twice: the last one wins
            columns.update(dict.fromkeys(text))
        plan = _Merge(incoming, key, list(columns), preamble=self.header_row - 1)
        encoding = WRITE_DEFAULT_ENCODING if self.encoding == "auto" else self.encoding
        read_encoding: str | None = None
        if target.exists():
            _, read_encoding = self._scan(target)
            encoding = read_encoding if self.encoding == "auto" else encoding
            plan.scan(self._records(target, read_encoding), system, name)
        else:
            plan.scan(iter(()), system, name)
        if plan.changes():
            existing = self._records(target, read_encoding) if read_encoding else iter(())
            _files.atomic_replace(
                target,
                self.context,
                lambda tmp: self._write_file(
                    tmp, plan.merged(existing), plan.header, encoding, name
                ),
            )
        return plan.result

    def _records(self, path: Path, encoding: str) -> Iterator[list[str]]:
        try:
            with path.open("r", encoding=encoding, newline="", errors="strict") as f:
                yield from csv.reader(f, delimiter=self.delimiter, quotechar=self.quotechar)
        except csv.Error as exc:
            raise SourceError(
                self.context.system, self._name(path), f"malformed CSV: {_files.scrub(str(exc))}"
            ) from None
        except OSError as exc:
            raise _files.unreadable(path, self.context, exc) from None

    def _write_file(
        self, tmp: Path, records: Iterator[list[str]], header: list[str], encoding: str, name: str
    ) -> None:
        with tmp.open("x", encoding=encoding, newline="", errors="strict") as f:
            writer = csv.writer(
                f, delimiter=self.delimiter, quotechar=self.quotechar, lineterminator="\r\n"
            )
            for line, record in enumerate(records, 1):
                try:
                    writer.writerow(record)
                except UnicodeEncodeError:
                    # Name the column, never the value (it may be an ID number).
                    bad = next(
                        i for i, value in enumerate(record) if not _encodable(value, encoding)
                    )
                    column = header[bad] if bad < len(header) else f"field {bad + 1}"
                    raise SourceError(
                        self.context.system,
                        f"{name}:{line}",
                        f"the value of {column!r} has characters that {encoding} cannot encode",
                    ) from None


# -- raw records (rows kept as bytes until the sync asks for them) ----------------------------------

# Encodings in which the bytes of "\r", "\n" and of the ASCII characters ``safe`` allows never
# occur inside a multi-byte character, so lines and quote characters can be found in the bytes.
_GB_SAFE = frozenset(range(0x30)) | frozenset(range(0x3A, 0x40))  # no GBK/GB18030 trail byte
_RAW_CODECS: dict[str, frozenset[int]] = {
    "utf-8": frozenset(range(0x80)),
    "utf-8-sig": frozenset(range(0x80)),
    "ascii": frozenset(range(0x80)),
    "gb18030": _GB_SAFE,
    "gbk": _GB_SAFE,
}
_WHITESPACE = frozenset(b for b in range(0x80) if chr(b).isspace())
_FIRST = operator.itemgetter(0)


def _raw_safe(encoding: str, delimiter: str, quotechar: str) -> bool:
    safe = _RAW_CODECS.get(codecs.lookup(encoding).name)
    return safe is not None and all(ord(c) in safe for c in (delimiter, quotechar))


def _line_codec(encoding: str) -> str:
    """The codec a data line decodes with (a BOM only ever starts the file)."""
    name = codecs.lookup(encoding).name
    return "utf-8" if name == "utf-8-sig" else name


def _sure_bytes(delimiter: str, quotechar: str) -> bytes:
    """First bytes that make a line a row: an ASCII character that is neither whitespace nor the
    delimiter (a line starts on a character boundary, so the byte is that character)."""
    skip = {ord(delimiter), ord(quotechar)} | _WHITESPACE
    return bytes(b for b in range(0x80) if b not in skip)


class _Lines:
    """A binary file's lines, read a chunk at a time and split the way a text file opened with
    ``newline=""`` splits them ("\n", "\r\n" or "\r" ends a line), counting the lines handed
    out. ``quoted``: whether the current chunk holds the quote character at all."""

    def __init__(self, f: Any, quote: bytes):
        self.f, self.quote = f, quote
        self.buf: list[bytes] = []
        self.pos = 0
        self.carry = b""
        self.eof = False
        self.quoted = False
        self.number = 0

    def _fill(self) -> bool:
        while not self.eof:
            chunk = self.f.read(_files.CHUNK)
            if chunk:
                data = self.carry + chunk if self.carry else chunk
                lines = data.splitlines(True)
                self.carry = lines.pop()  # may be cut, or a "\r" whose "\n" comes next
            else:
                self.eof = True
                data, self.carry = self.carry, b""
                lines = data.splitlines(True)
            self.buf, self.pos = lines, 0
            self.quoted = self.quote in data
            if lines:
                return True
        return False

    def ready(self) -> bool:
        return self.pos < len(self.buf) or self._fill()

    def next(self) -> bytes | None:
        if self.pos >= len(self.buf) and not self._fill():
            return None
        line = self.buf[self.pos]
        self.pos += 1
        self.number += 1
        return line

    def rest(self) -> list[bytes]:
        """The current chunk's lines not handed out yet, all at once."""
        lines = self.buf[self.pos :] if self.pos else self.buf
        self.pos = len(self.buf)
        self.number += len(lines)
        return lines

    def rest_of_chunk(self) -> Iterator[bytes]:
        """The current chunk's lines one by one (others may take lines in between)."""
        buf = self.buf
        while self.buf is buf and self.pos < len(buf):
            line = buf[self.pos]
            self.pos += 1
            self.number += 1
            yield line


class _CsvForm:
    """How the raw records of one file become rows: its name (positions), header, encoding and
    dialect. ``form`` is what a fingerprint of the bytes is bound to."""

    def __init__(
        self, name: str, header: list[str], codec: str, delimiter: str, quote: str, system: str
    ):
        self.name, self.header, self.codec = name, header, codec
        self.delimiter, self.quote, self.system = delimiter, quote, system
        self.form = json.dumps(["csv", codec, delimiter, quote, header], ensure_ascii=False)

    def blank(self, line: bytes, width: int) -> bool:
        """Whether an unquoted line is left out as ``_rows`` leaves it out (no data)."""
        text = line.decode(self.codec).rstrip("\r\n")
        fields = text.split(self.delimiter) if text else []
        return not (len(fields) == width and any(fields)) and not "".join(fields).strip()

    def build(self, records: list[bytes], lines: list[int]) -> list[Row]:
        """The rows of ``records`` (whole CSV records of this file), as ``_rows`` makes them."""
        name, header = self.name, self.header
        width = len(header)
        codec = self.codec
        try:
            # The records one after the other, decoded at once and split into lines as a text
            # file splits them (only a file's last record can lack a line end: it comes last).
            text = io.StringIO(b"".join(records).decode(codec), newline="")
            parsed = csv.reader(text, delimiter=self.delimiter, quotechar=self.quote)
            out = []
            for fields, line in zip(parsed, lines, strict=True):
                if len(fields) == width and any(fields):
                    out.append(Row(f"{name}:{line}", dict(zip(header, fields))))  # noqa: B905
                else:
                    out.append(CsvConnector._misshapen(f"{name}:{line}", header, fields))
        except csv.Error as exc:
            raise SourceError(
                self.system, name, f"malformed CSV: {_files.scrub(str(exc))}"
            ) from None
        except UnicodeDecodeError as exc:  # the file changed after it was checked
            raise SourceError(
                self.system, name, f"cannot be decoded as {codec}: {exc.reason}"
            ) from None
        return out


def _blocks(items: Iterator[_files.Item], size: int = 4096) -> Iterator[_files.Block]:
    """Rows read the ordinary way (an encoding whose bytes cannot be split, such as UTF-16), as
    blocks of built rows whose records are the rows' unambiguous text (protect.row_text)."""
    rows: list[Row] = []
    marks: list[Any] = []
    for row, mark in items:
        if row is not None:
            rows.append(row)
            marks.append(mark)
            if len(rows) >= size:
                yield _built_block(rows, marks)
                rows, marks = [], []
    if rows:
        yield _built_block(rows, marks)


def _built_block(rows: list[Row], marks: list[Any]) -> _files.Block:
    records = [row_text(r.data).encode("utf-8", "surrogatepass") for r in rows]
    return _BUILT, records, [0] * len(rows), marks, rows


class _BuiltForm:
    """The form of records that are the text of rows built as they were read."""

    form = json.dumps(["csv-rows"])

    def build(self, records: list[bytes], lines: list[int]) -> list[Row]:
        raise AssertionError("rows read as text are built already")


_BUILT = _BuiltForm()


def _row_where(consumed: int) -> _files.Where:
    return {"row": consumed}  # records read after the header (blank ones too)


class _Merge:
    """An upsert of keyed rows into a stream of existing CSV records, counted before writing."""

    def __init__(
        self,
        incoming: dict[tuple[str, ...], dict[str, str]],
        key: Sequence[str],
        columns: list[str],
        preamble: int,
    ):
        self.incoming = incoming
        self.key = list(key)
        self.columns = columns
        self.preamble = preamble  # records above the header (title lines), copied as they are
        self.header: list[str] = []
        self.result = WriteResult()
        self._grown = False  # the header gains columns: every line is rewritten

    def scan(self, records: Iterator[list[str]], system: str, name: str) -> None:
        """First pass over the existing file: its header, and what the write would change."""
        for _ in itertools.islice(records, self.preamble):
            pass
        first = next(records, None)
        if first is None:  # a new (or empty) file
            self.header, self._grown = list(self.columns), True
            self.result.inserted = len(self.incoming)
            return
        self.header = [c.lstrip("\ufeff").strip() for c in first]
        missing = [k for k in self.key if k not in self.header]
        if missing:
            raise SourceError(system, name, f"the existing file has no key column {missing[0]!r}")
        added = [c for c in self.columns if c not in self.header]
        self._grown = bool(added)
        self.header += added
        matched: set[tuple[str, ...]] = set()
        for k, record in self._keyed(records):
            new = self.incoming.get(k)
            if new is None or k in matched:
                continue
            matched.add(k)
            if self._line(new) == _padded(record, len(self.header)):
                self.result.unchanged += 1
            else:
                self.result.updated += 1
        self.result.inserted = len(self.incoming) - len(matched)

    def changes(self) -> bool:
        return bool(self.result.inserted or self.result.updated or self._grown)

    def merged(self, records: Iterator[list[str]]) -> Iterator[list[str]]:
        """Second pass: the existing records with matching rows replaced, then the new rows."""
        yield from itertools.islice(records, self.preamble)
        next(records, None)
        yield self.header
        placed: set[tuple[str, ...]] = set()
        for k, record in self._keyed(records):
            new = self.incoming.get(k)
            if new is not None and k not in placed:
                placed.add(k)
                yield self._line(new)
            else:
                yield _padded(record, len(self.header))
        for k, new in self.incoming.items():
            if k not in placed:
                yield self._line(new)

    def _keyed(self, records: Iterator[list[str]]) -> Iterator[tuple[tuple[str, ...], list[str]]]:
        index = [self.header.index(k) for k in self.key]
        for record in records:
            yield tuple(record[i] if i < len(record) else "" for i in index), record

    def _line(self, row: Mapping[str, str]) -> list[str]:
        return [row.get(c, "") for c in self.header]


def _padded(record: list[str], width: int) -> list[str]:
    return record + [""] * (width - len(record)) if len(record) < width else record


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _encodable(value: str, encoding: str) -> bool:
    try:
        value.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


class _DecodeCheck:
    """Feeds chunks to a strict incremental decoder; remembers whether the bytes so far decode."""

    def __init__(self, encoding: str):
        self.decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        self.ok = True

    def __call__(self, chunk: bytes) -> None:
        if self.ok:
            try:
                self.decoder.decode(chunk)
            except UnicodeDecodeError:
                self.ok = False

    def finish(self) -> bool:
        if self.ok:
            try:
                self.decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                self.ok = False
        return self.ok


def _failing_line(path: Path, encoding: str) -> int | None:
    """The 1-based line whose bytes do not decode. Line ends are single bytes in every ASCII-
    compatible encoding (UTF-8, GBK, GB18030), so lines can be decoded one by one; None where
    that does not hold (UTF-16)."""
    if codecs.lookup(encoding).name.startswith("utf-16"):
        return None
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    with path.open("rb") as f:
        number = 0
        for number, line in enumerate(f, 1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError:
                return number
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return number
    return None


def _guess(path: Path) -> str:
    """charset-normalizer's guess, as a hint in an error message only."""
    try:
        from charset_normalizer import from_path

        best = from_path(path, steps=5, chunk_size=4096).best()
    except Exception:  # noqa: BLE001 - a hint that cannot be computed is left out
        return ""
    return f" (charset-normalizer guesses {best.encoding})" if best is not None else ""


def _header_row(config: Mapping[str, Any], key: str) -> int:
    header_row, skip_rows = config.get("header_row"), config.get("skip_rows")
    for name, value, low in (("header_row", header_row, 1), ("skip_rows", skip_rows, 0)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < low
        ):
            raise ConfigError(f"{key}.{name}: must be a whole number >= {low}")
    if header_row is not None and skip_rows is not None and header_row != skip_rows + 1:
        raise ConfigError(
            f"{key}.skip_rows: contradicts header_row (header_row = skip_rows + 1); give one of them"
        )
    if header_row is not None:
        return header_row
    return (skip_rows or 0) + 1


@hookimpl
def register_connectors() -> list[type[Connector]]:
    return [CsvConnector]
