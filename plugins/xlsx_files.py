"""The ``xlsx`` connector: Excel exports as departments make them, read with python-calamine where
the workbook fits in memory and openpyxl's streaming (read-only) mode otherwise (_xlsx_books);
formatted sheets written for departments that want Excel back.

Exports often start with title rows above the header ("XX县学籍信息导出", "导出时间 ..."): the header
is the first row holding every required column, or, with none configured, the first row with the
most filled text cells; ``header_row`` fixes it. An ID number that Excel stored as a number has
lost its last digits (Excel keeps 15 significant digits): such a cell is reported as
``excel_damaged`` on its row, never converted. Date cells come through as datetimes.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.utils.exceptions import InvalidFileException

from gateway.connectors import Batch, Connector, ConnectorContext, Row, WriteResult
from gateway.errors import ConfigError, SourceError
from gateway.hookspecs import hookimpl

from . import _files, _xlsx_books

# Header words of columns holding ID numbers (身份证件号, 证件号码, 公民身份号码, 残疾人证号 ...);
# 身份证件类型 (the document type, a small code) holds no number.
ID_HEADER_WORDS = ("身份证", "证件号", "公民身份号码", "残疾人证号")
NOT_ID_WORDS = ("类型", "类别")
HEADER_SCAN_ROWS = 30
_BROKEN = (
    zipfile.BadZipFile,
    InvalidFileException,
    KeyError,
    ValueError,
    TypeError,
    ParseError,
    EOFError,
    _xlsx_books.CalamineError,
)
_BOLD = Font(bold=True)


def is_id_column(header: str) -> bool:
    return any(w in header for w in ID_HEADER_WORDS) and not any(w in header for w in NOT_ID_WORDS)


class XlsxConnector(Connector):
    """Options: ``path`` (file or glob), ``sheets`` (names, or "*" for all; default the first),
    ``header_row`` (1-based; default detected), ``required_columns``, ``id_columns`` (default:
    headers naming an ID number), ``header_scan_rows`` (30); for writing ``sheet`` (default the
    first name in ``sheets``, else "Sheet1")."""

    name = "xlsx"
    options = (
        "path",
        "sheets",
        "sheet",
        "header_row",
        "required_columns",
        "id_columns",
        "header_scan_rows",
    )

    def __init__(self, options: Mapping[str, Any], context: ConnectorContext):
        super().__init__(options, context)
        key = f"systems.{context.system}"
        self.path = _files.required_path(self.config, context, self.name)
        sheets = self.config.get("sheets")
        if not (
            sheets is None
            or sheets == "*"
            or (isinstance(sheets, list) and sheets and all(isinstance(s, str) for s in sheets))
        ):
            raise ConfigError(f'{key}.sheets: must be "*" or a list of sheet names')
        self.sheets: str | list[str] | None = sheets
        self.header_row = self.config.get("header_row")
        self.scan_rows = self.config.get("header_scan_rows", HEADER_SCAN_ROWS)
        for name, value in (("header_row", self.header_row), ("header_scan_rows", self.scan_rows)):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ConfigError(f"{key}.{name}: must be a whole number >= 1")
        for name in ("required_columns", "id_columns"):
            value = self.config.get(name)
            if value is not None and not (
                isinstance(value, list) and all(isinstance(c, str) for c in value)
            ):
                raise ConfigError(f"{key}.{name}: must be a list of column names")
        self.required_columns: list[str] = self.config.get("required_columns") or []
        self.id_columns: list[str] | None = self.config.get("id_columns")
        sheet = self.config.get("sheet")
        if sheet is not None and not isinstance(sheet, str):
            raise ConfigError(f"{key}.sheet: must be a sheet name")
        self.write_sheet: str = sheet or (sheets[0] if isinstance(sheets, list) else "Sheet1")
        self.base_dir = Path(context.base_dir).resolve()

    # --- reading -------------------------------------------------------------------------------

    def read(self, cursor: Any = None, batch_size: int = 5000) -> Iterator[Batch]:
        files = _files.source_files(self.path, self.context)
        yield from _files.read_files(
            files,
            cursor,
            batch_size,
            lambda path: _files.digest(path, self.context),
            self._file_rows,
            lambda mark: {"sheet": mark[0], "row": mark[1]},
        )

    def _name(self, path: Path) -> str:
        return _files.display(path, self.base_dir)

    def _open(self, path: Path, *, reading: bool = False) -> Any:
        """The workbook: for reading rows, the faster reader where it applies (_xlsx_books);
        for merging into it (``write``), openpyxl's."""
        try:
            if reading:
                return _xlsx_books.open_for_reading(path)
            return _xlsx_books.open_streaming(path)
        except OSError as exc:
            raise _files.unreadable(path, self.context, exc) from None
        except _BROKEN as exc:
            raise SourceError(
                self.context.system,
                self._name(path),
                f"not a readable .xlsx workbook: {_cause(exc)}",
            ) from None

    def _selected(self, wb: Any, name: str) -> list[str]:
        if self.sheets is None:
            return wb.sheetnames[:1]
        if self.sheets == "*":
            return list(wb.sheetnames)
        missing = [s for s in self.sheets if s not in wb.sheetnames]
        if missing:
            raise SourceError(
                self.context.system,
                name,
                f"no sheet {missing[0]!r} (the workbook has {', '.join(wb.sheetnames)})",
            )
        return list(self.sheets)

    def _file_rows(self, path: Path, resume: _files.Where | None) -> Iterator[_files.Item]:
        name = self._name(path)
        wb = self._open(path, reading=True)
        try:
            sheets = self._selected(wb, name)
            if resume and resume.get("sheet") in sheets:
                sheets = sheets[sheets.index(resume["sheet"]) :]
            for sheet in sheets:
                after = int(resume.get("row", 0)) if resume and resume.get("sheet") == sheet else 0
                yield from self._sheet_rows(wb[sheet], f"{name}!{sheet}", sheet, after)
        finally:
            wb.close()

    def _sheet_rows(self, ws: Any, where: str, sheet: str, after: int) -> Iterator[_files.Item]:
        system = self.context.system
        try:
            ws.reset_dimensions()  # many exporters write a wrong <dimension>; trust the rows
            header_at, header = self._header(ws, where)
            width = len(header)
            ids = [
                i
                for i, h in enumerate(header)
                if (h in self.id_columns if self.id_columns is not None else is_id_column(h))
            ]
            start = max(header_at, after) + 1
            for number, cells in enumerate(ws.iter_rows(min_row=start, values_only=True), start):
                progress = (sheet, number)
                if not any(cells) and all(v is None or v == "" for v in cells):
                    yield None, progress
                    continue
                problems: list[tuple[str, str, str]] = []
                if len(cells) < width:
                    cells = cells + (None,) * (width - len(cells))
                elif len(cells) > width:
                    extra = [v for v in cells[width:] if v is not None and v != ""]
                    if extra:
                        problems.append(
                            (
                                "",
                                "field_count",
                                f"{len(extra)} value(s) right of the last header column",
                            )
                        )
                    cells = cells[:width]
                for i in ids:
                    value = cells[i]
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        problems.append(
                            (
                                header[i],
                                "excel_damaged",
                                "stored by Excel as a number, which keeps only 15 digits: "
                                "re-export this column as text",
                            )
                        )
                yield (
                    Row(f"{where}:{number}", dict(zip(header, cells, strict=True)), problems),
                    progress,
                )
        except OSError as exc:
            raise SourceError(system, where, f"cannot read: {exc.strerror or exc}") from None
        except _BROKEN as exc:
            raise SourceError(system, where, f"damaged sheet: {_cause(exc)}") from None

    def _header(self, ws: Any, where: str) -> tuple[int, list[str]]:
        """(row number, column names) of the header row."""
        system = self.context.system
        last = self.header_row or self.scan_rows
        top = [tuple(r) for r in ws.iter_rows(min_row=1, max_row=last, values_only=True)]
        if not any(any(v is not None and v != "" for v in r) for r in top):
            raise SourceError(system, where, "empty sheet: no header row")
        texts = [[_header_text(v) for v in r] for r in top]
        if self.header_row is not None:
            if len(top) < self.header_row:
                raise SourceError(
                    system, where, f"has no row {self.header_row} for the header (header_row)"
                )
            at = self.header_row
        elif self.required_columns:
            hits = [sum(c in r for c in self.required_columns) for r in texts]
            best = max(hits)
            at = hits.index(best) + 1
            if best == 0:
                raise SourceError(
                    system,
                    where,
                    f"no header row: none of the columns {', '.join(map(repr, self.required_columns))} "
                    f"in the first {len(top)} rows",
                )
        else:
            # Title rows have one or two filled cells; the header has the most, all of them text.
            counts = [
                sum(1 for v in r if v is not None and v != "")
                if all(v is None or isinstance(v, str) for v in r)
                else 0
                for r in top
            ]
            at = counts.index(max(counts)) + 1
        header = texts[at - 1]
        while header and not header[-1]:
            header.pop()
        if not header:
            raise SourceError(system, f"{where}:{at}", "the header row is blank")
        header = [h or f"_column{i}" for i, h in enumerate(header, 1)]
        seen: set[str] = set()
        for column in header:
            if column in seen:
                raise SourceError(
                    system, f"{where}:{at}", f"column {column!r} appears twice in the header"
                )
            seen.add(column)
        missing = [c for c in self.required_columns if c not in seen]
        if missing:
            raise SourceError(
                system,
                where,
                f"missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} in the header (row {at})",
            )
        return at, header

    # --- writing -------------------------------------------------------------------------------

    def write(self, rows: Sequence[Mapping[str, Any]], key: Sequence[str]) -> WriteResult:
        """Upsert by ``key`` into sheet ``sheet`` of the one file ``path``: a bold header row,
        column widths fitted to the content, ID columns as text (number format "@"). Nothing to
        change leaves the file untouched; otherwise the new workbook is written beside it and
        swapped in. A workbook with other sheets is refused rather than have them dropped."""
        system = self.context.system
        if _files.is_glob(self.path):
            raise ConfigError(f"systems.{system}.path: writing needs one file, not a glob")
        if not key:
            raise ConfigError(f"systems.{system}: writing needs a key")
        target = Path(self.path) if Path(self.path).is_absolute() else self.base_dir / self.path
        name = self._name(target)
        where = f"{name}!{self.write_sheet}"
        incoming: dict[tuple[str, ...], dict[str, Any]] = {}
        columns: dict[str, None] = {}
        for i, row in enumerate(rows, 1):
            missing = [k for k in key if k not in row]
            if missing:
                raise SourceError(
                    system, where, f"row {i} to write has no key field {missing[0]!r}"
                )
            cells = {c: self._cell(c, v) for c, v in row.items()}
            incoming[tuple(_key_text(cells[k]) for k in key)] = cells  # last one wins
            columns.update(dict.fromkeys(cells))
        plan = _SheetMerge(incoming, list(key), list(columns))
        if target.exists():
            wb = self._open(target)
            try:
                others = [s for s in wb.sheetnames if s != self.write_sheet]
                if others:
                    raise SourceError(
                        system,
                        name,
                        f"has other sheets ({', '.join(others)}): the gateway only writes workbooks it owns",
                    )
                if self.write_sheet in wb.sheetnames:
                    ws = wb[self.write_sheet]
                    ws.reset_dimensions()
                    plan.scan(ws.iter_rows(values_only=True), system, where)
            except _BROKEN as exc:
                raise SourceError(system, where, f"damaged sheet: {_cause(exc)}") from None
            finally:
                wb.close()
        plan.finish_scan()
        if plan.changes():
            _files.atomic_replace(
                target, self.context, lambda tmp: self._write_book(tmp, target, plan)
            )
        return plan.result

    def _cell(self, column: str, value: Any) -> Any:
        """The value as it is stored: ID numbers as text, dates as datetimes, the rest as is."""
        if value is None or value == "":
            return None
        if self._is_id(column):
            return str(value)
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return dt.datetime(value.year, value.month, value.day)
        if isinstance(value, str | int | float | bool | dt.datetime):
            return value
        return str(value)

    def _is_id(self, column: str) -> bool:
        return column in self.id_columns if self.id_columns is not None else is_id_column(column)

    def _write_book(self, tmp: Path, target: Path, plan: _SheetMerge) -> None:
        wb = Workbook(write_only=True)
        ws = wb.create_sheet(self.write_sheet)
        for i, width in enumerate(plan.widths, 1):
            ws.column_dimensions[get_column_letter(i)].width = width
        ws.freeze_panes = f"A{plan.header_at + 1}"
        ids = {i for i, c in enumerate(plan.header) if self._is_id(c)}

        def out(values: Sequence[Any]) -> list[Any]:
            cells = list(values)
            for i in ids:
                if i < len(cells) and isinstance(cells[i], str):
                    cell = WriteOnlyCell(ws, value=cells[i])
                    cell.number_format = "@"
                    cells[i] = cell
            return cells

        existing: Iterator[tuple[Any, ...]] = iter(())
        source = None
        if plan.had_sheet:
            source = _xlsx_books.open_streaming(target)
            sheet = source[self.write_sheet]
            sheet.reset_dimensions()
            existing = sheet.iter_rows(values_only=True)
        try:
            for kind, values in plan.merged(existing):
                if kind == "header":
                    header = []
                    for value in values:
                        cell = WriteOnlyCell(ws, value=value)
                        cell.font = _BOLD
                        header.append(cell)
                    ws.append(header)
                elif kind == "title":
                    ws.append(list(values))
                else:
                    ws.append(out(values))
        finally:
            if source is not None:
                source.close()
        wb.save(tmp)


class _SheetMerge:
    """An upsert of keyed rows into the rows of an existing sheet, counted before writing, with
    the column widths the result needs."""

    def __init__(
        self, incoming: dict[tuple[str, ...], dict[str, Any]], key: list[str], columns: list[str]
    ):
        self.incoming = incoming
        self.key = key
        self.columns = columns
        self.header: list[str] = []
        self.header_at = 1
        self.had_sheet = False
        self.result = WriteResult()
        self.widths: list[float] = []
        self._grown = False
        self._max: dict[int, int] = {}

    def _measure(self, values: Sequence[Any]) -> None:
        for i, value in enumerate(values):
            if value is None:
                continue
            text = (
                value.strftime("%Y-%m-%d %H:%M:%S")
                if isinstance(value, dt.datetime)
                else str(value)
            )
            w = len(text)
            if w * 2 > self._max.get(i, 0) and not text.isascii():
                w = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
            if w > self._max.get(i, 0):
                self._max[i] = w

    def scan(self, rows: Iterator[tuple[Any, ...]], system: str, where: str) -> None:
        """First pass over the existing sheet: title rows, header (the first row holding every
        key column), and what the write would change."""
        self.had_sheet = True
        filled = False
        for number, cells in enumerate(rows, 1):
            filled = filled or any(v is not None and v != "" for v in cells)
            texts = [_header_text(v) for v in cells]
            if all(k in texts for k in self.key):
                self.header_at = number
                self.header = texts
                while self.header and not self.header[-1]:
                    self.header.pop()
                break
            if number >= HEADER_SCAN_ROWS:
                break
        else:
            if not filled:
                return  # an empty sheet: written afresh
        if not self.header:
            raise SourceError(
                system,
                where,
                f"no header row with the key column(s) {', '.join(map(repr, self.key))}",
            )
        added = [c for c in self.columns if c not in self.header]
        self._grown = bool(added)
        self.header += added
        self._measure(self.header)
        index = [self.header.index(k) for k in self.key]
        matched: set[tuple[str, ...]] = set()
        for cells in rows:
            self._measure(cells)
            k = tuple(_key_text(cells[i] if i < len(cells) else None) for i in index)
            new = self.incoming.get(k)
            if new is None or k in matched:
                continue
            matched.add(k)
            if [_comparable(new.get(c)) for c in self.header] == [
                _comparable(v) for v in _fit(cells, len(self.header))
            ]:
                self.result.unchanged += 1
            else:
                self.result.updated += 1
        self.result.inserted = len(self.incoming) - len(matched)

    def finish_scan(self) -> None:
        if not self.header:
            self.header, self._grown = list(self.columns), True
            self.result.inserted = len(self.incoming)
            self._measure(self.header)
        for new in self.incoming.values():
            self._measure([new.get(c) for c in self.header])
        # Excel's width unit is about one Latin character; a little air, and never wider than 60.
        self.widths = [min(max(self._max.get(i, 0) + 2, 8), 60) for i in range(len(self.header))]

    def changes(self) -> bool:
        return bool(self.result.inserted or self.result.updated or self._grown)

    def merged(self, rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[str, Sequence[Any]]]:
        """Second pass: title rows, the header, existing rows with matches replaced, new rows."""
        for number, cells in enumerate(rows, 1):
            if number == self.header_at:
                break
            yield "title", cells
        yield "header", self.header
        index = [self.header.index(k) for k in self.key]
        placed: set[tuple[str, ...]] = set()
        for cells in rows:
            k = tuple(_key_text(cells[i] if i < len(cells) else None) for i in index)
            new = self.incoming.get(k)
            if new is not None and k not in placed:
                placed.add(k)
                yield "row", [new.get(c) for c in self.header]
            else:
                yield "row", _fit(cells, len(self.header))
        for k, new in self.incoming.items():
            if k not in placed:
                yield "row", [new.get(c) for c in self.header]


def _fit(cells: Sequence[Any], width: int) -> list[Any]:
    cells = list(cells[:width])
    return cells + [None] * (width - len(cells))


def _header_text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _key_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return str(value)


def _comparable(value: Any) -> Any:
    if value == "":
        return None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day)
    return value


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return _files.scrub(f"{exc.__class__.__name__}: {text[0]}") if text else exc.__class__.__name__


@hookimpl
def register_connectors() -> list[type[Connector]]:
    return [XlsxConnector]
