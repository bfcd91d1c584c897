"""The workbooks the ``xlsx`` connector reads: python-calamine's where a file's sheets fit in
memory and hold no error cell, openpyxl's streaming (read-only) mode otherwise.

python-calamine (Rust) reads a sheet about 8x faster than openpyxl's streaming reader (100k rows of
8 columns: 1.3–1.5 s against 11.4 s, the connector's own work included), but it loads the whole sheet
and it gives an error cell (``#N/A``) as an empty one. So it reads a workbook only when

* the sheets' size in memory, estimated from the file (``estimated_memory``), is at most
  ``CALAMINE_MAX_BYTES``: about 100k rows of 8 columns, so a sync's peak memory stays under its
  256 MB and flat with input size (openpyxl streams anything larger), and
* no cell is an error, which openpyxl keeps as its text: an error in an ID column must be
  refused, not read as blank.

Both give the connector the same thing: ``sheetnames``, ``book[name]``, each sheet's
``iter_rows(min_row=, max_row=, values_only=True)`` as tuples of openpyxl's values (integers as
int, date cells as datetime, empty cells as None), row numbers and columns as in the sheet.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openpyxl import load_workbook

CALAMINE_MAX_BYTES = 96 * 2**20
# Measured on python-calamine 0.9 (RSS growth when loading): 100k rows x 8 inline-text cells,
# 47.5 MiB of XML -> 78 MiB (estimated 82); 100k x 8 cells sharing three 72-byte strings, 26 MiB
# of XML -> 93 MiB (estimated 167: the shared strings' XML counts in their size).
_CELL_BYTES = 48
_CHUNK = 1 << 20
# Attributes and tags as Excel, LibreOffice and openpyxl write them (a prefixed <x:c> too).
_ERROR_MARKS = (b't="e"', b"t='e'")
_CELL_MARKS = (b"<c ", b"<c>", b":c ")
_SHARED_MARKS = (b't="s"', b"t='s'")
_UNIQUE = re.compile(rb'uniqueCount="(\d+)"')

try:  # a wheel for the usual platforms; without it every workbook goes through openpyxl
    from python_calamine import CalamineError, CalamineWorkbook
except ImportError:  # pragma: no cover - python-calamine is a dependency
    CalamineWorkbook = None  # type: ignore[assignment,misc]

    class CalamineError(Exception):  # type: ignore[no-redef]
        """Never raised: the connector's handlers list it whether calamine is there or not."""


def open_for_reading(path: Path) -> Any:
    """The workbook at ``path`` for reading rows (see the module's docstring for which reader);
    openpyxl's errors for a file that is not a readable workbook."""
    if CalamineWorkbook is not None:
        estimate = estimated_memory(path)
        if estimate is not None and estimate <= CALAMINE_MAX_BYTES:
            try:
                return _CalamineBook(path)
            except CalamineError:
                pass  # openpyxl names what is wrong with the file
    return open_streaming(path)


def open_streaming(path: Path) -> Any:
    """openpyxl's streaming (read-only) workbook, cells as their values (a formula's last
    result): how the connector reads above the limit, and the sheet it merges into when writing."""
    return load_workbook(path, read_only=True, data_only=True)


def estimated_memory(path: Path) -> int | None:
    """Bytes calamine would hold for all the worksheets (at least; it stops counting above
    ``CALAMINE_MAX_BYTES``), or None for a workbook with an error cell or that zipfile cannot
    read. The worksheets' XML counted in full (text, numbers, markup), ``_CELL_BYTES`` a cell,
    and for each cell referring to a shared string the average shared string's size (calamine
    copies it into the cell). One pass over the decompressed XML, without parsing it."""
    try:
        with zipfile.ZipFile(path) as zf:
            sheets = [
                i
                for i in zf.infolist()
                if i.filename.startswith("xl/worksheets/") and i.filename.endswith(".xml")
            ]
            estimate = sum(i.file_size for i in sheets)
            shared = _shared_string_size(zf)
            for part in sheets:
                if estimate > CALAMINE_MAX_BYTES:
                    break
                counts = _cells(zf, part)
                if counts is None:
                    return None
                estimate += counts[0] * _CELL_BYTES + int(counts[1] * shared)
            return estimate
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, EOFError, RuntimeError):
        return None


def _shared_string_size(zf: zipfile.ZipFile) -> float:
    """Average bytes of a shared string's entry (its XML, so a little more than its text); the
    whole table's size when it does not say how many it holds."""
    try:
        info = zf.getinfo("xl/sharedStrings.xml")
    except KeyError:
        return 0.0
    with zf.open(info) as f:
        found = _UNIQUE.search(f.read(2048))
    return info.file_size / max(1, int(found.group(1)) if found else 1)


def _cells(zf: zipfile.ZipFile, part: zipfile.ZipInfo) -> tuple[int, int] | None:
    """(cells, cells referring to a shared string) of one worksheet; None if one is an error."""
    cells = shared = 0
    tail = b""
    with zf.open(part) as f:
        while chunk := f.read(_CHUNK):
            # tail: the last bytes of the chunk before, for a mark cut in two; marks wholly
            # inside it were counted with that chunk.
            window = tail + chunk
            if any(mark in window for mark in _ERROR_MARKS):
                return None
            cells += sum(window.count(m) - tail.count(m) for m in _CELL_MARKS)
            shared += sum(window.count(m) - tail.count(m) for m in _SHARED_MARKS)
            tail = window[-8:]
    return cells, shared


def _value(v: Any) -> Any:
    """A calamine cell value as openpyxl gives it."""
    t = type(v)
    if t is str:
        return v or None
    if t is float:
        # openpyxl gives int for a number Excel wrote without a fraction or exponent (below
        # 1e15: Excel writes longer numbers with an exponent, which openpyxl keeps as float).
        return int(v) if v.is_integer() and -1e15 < v < 1e15 else v
    if t is dt.date:  # a date cell at midnight: openpyxl's datetime
        return dt.datetime(v.year, v.month, v.day)
    return v


class _CalamineSheet:
    """One sheet, loaded on its first read (inside the connector's error handling); a sheet
    calamine cannot parse is read by openpyxl, which then names what is wrong with it."""

    def __init__(self, book: _CalamineBook, name: str):
        self._book, self._name = book, name
        self._sheet: Any = None  # loaded once: the header scan and the rows read the same one

    def reset_dimensions(self) -> None:
        """calamine reads the cells, not the sheet's <dimension>: nothing to reset."""

    def iter_rows(
        self, min_row: int = 1, max_row: int | None = None, values_only: bool = True
    ) -> Iterator[tuple[Any, ...]]:
        try:
            if self._sheet is None:
                self._sheet = self._book.calamine.get_sheet_by_name(self._name)
            sheet = self._sheet
        except CalamineError:
            fallback = self._book.openpyxl()[self._name]
            fallback.reset_dimensions()
            yield from fallback.iter_rows(min_row=min_row, max_row=max_row, values_only=True)
            return
        # calamine's rows start at the sheet's first row, its columns at the first filled one.
        pad = (None,) * (sheet.start[1] if sheet.start else 0)
        for row in itertools.islice(sheet.iter_rows(), min_row - 1, max_row):
            yield pad + tuple(map(_value, row))


class _CalamineBook:
    def __init__(self, path: Path):
        self._path = path
        self.calamine = CalamineWorkbook.from_path(str(path))
        self.sheetnames: list[str] = list(self.calamine.sheet_names)
        self._openpyxl: Any = None

    def __getitem__(self, name: str) -> _CalamineSheet:
        return _CalamineSheet(self, name)

    def openpyxl(self) -> Any:
        if self._openpyxl is None:
            self._openpyxl = open_streaming(self._path)
        return self._openpyxl

    def close(self) -> None:
        self.calamine.close()
        if self._openpyxl is not None:
            self._openpyxl.close()
