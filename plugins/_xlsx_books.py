"""The workbooks the ``xlsx`` connector reads: python-calamine's where a file's sheets fit in
memory and hold no error cell, openpyxl's streaming (read-only) mode otherwise.

python-calamine (Rust) reads a sheet about 12x faster than openpyxl's streaming reader (100k rows
of 8 columns: 0.9 s against 11.4 s), but it loads the whole sheet, about 1.7x the size of its XML,
and it gives an error cell (``#N/A``) as an empty one. So it reads a workbook only when the XML of
all its worksheets and shared strings is at most ``CALAMINE_MAX_XML`` bytes (about 100k rows of 8
columns: the sync's memory stays flat with input size above that, as openpyxl streams) and no cell
of it is an error, which openpyxl keeps as its text (an error in an ID column must be refused, not
read as blank). Both give the connector the same thing: ``sheetnames``, ``book[name]``, each sheet's
``iter_rows(min_row=, max_row=, values_only=True)`` as tuples of openpyxl's values (integers as
int, date cells as datetime, empty cells as None), row numbers and columns as in the sheet.
"""

from __future__ import annotations

import datetime as dt
import itertools
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openpyxl import load_workbook

CALAMINE_MAX_XML = 48 * 2**20
_CHUNK = 1 << 20
# An error cell's type attribute, as Excel, LibreOffice and openpyxl write it.
_ERROR_MARKS = (b't="e"', b"t='e'")

try:  # a wheel for the usual platforms; without it every workbook goes through openpyxl
    from python_calamine import CalamineError, CalamineWorkbook
except ImportError:  # pragma: no cover - python-calamine is a dependency
    CalamineWorkbook = None  # type: ignore[assignment,misc]
    CalamineError = Exception  # type: ignore[assignment,misc]


def open_for_reading(path: Path) -> Any:
    """The workbook at ``path`` for reading rows (see the module's docstring for which reader);
    openpyxl's errors for a file that is not a readable workbook."""
    if CalamineWorkbook is not None and _calamine_fits(path):
        try:
            return _CalamineBook(path)
        except CalamineError:
            pass  # openpyxl names what is wrong with the file
    return load_workbook(path, read_only=True, data_only=True)


def _calamine_fits(path: Path) -> bool:
    """Small enough to load whole, and no error cell in any worksheet."""
    try:
        with zipfile.ZipFile(path) as zf:
            parts = [
                i
                for i in zf.infolist()
                if i.filename.startswith("xl/worksheets/")
                and i.filename.endswith(".xml")
                or i.filename == "xl/sharedStrings.xml"
            ]
            if sum(i.file_size for i in parts) > CALAMINE_MAX_XML:
                return False
            return not any(
                _has_error_cell(zf, i) for i in parts if i.filename.startswith("xl/worksheets/")
            )
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, EOFError, RuntimeError):
        return False


def _has_error_cell(zf: zipfile.ZipFile, part: zipfile.ZipInfo) -> bool:
    tail = b""
    with zf.open(part) as f:
        while chunk := f.read(_CHUNK):
            window = tail + chunk
            if any(mark in window for mark in _ERROR_MARKS):
                return True
            tail = window[-8:]  # a mark cut in two by the chunk boundary
    return False


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

    def reset_dimensions(self) -> None:
        """calamine reads the cells, not the sheet's <dimension>: nothing to reset."""

    def iter_rows(
        self, min_row: int = 1, max_row: int | None = None, values_only: bool = True
    ) -> Iterator[tuple[Any, ...]]:
        try:
            sheet = self._book.calamine.get_sheet_by_name(self._name)
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
            self._openpyxl = load_workbook(self._path, read_only=True, data_only=True)
        return self._openpyxl

    def close(self) -> None:
        self.calamine.close()
        if self._openpyxl is not None:
            self._openpyxl.close()
