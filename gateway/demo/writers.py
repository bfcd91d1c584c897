"""Streaming writers for the departments' native export files (XLSX through openpyxl's write-only
mode, CSV in the department's encoding), so a million rows never sit in memory at once.

Every ``append`` returns the row's position as the readers report it: ``(file, sheet, row)`` with
the 1-based sheet row for XLSX (title rows and header included) and the 1-based line for CSV
(header = line 1). The ground truth records invalid rows by these positions.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Alignment, Font

# Excel's hard limit is 1,048,576 rows per sheet; a bigger export is split into numbered files
# the way the 学籍 system splits its own downloads.
XLSX_MAX_ROWS = 1_048_576


class Position(NamedTuple):
    file: str  # path relative to the output directory, "/"-separated
    sheet: str | None  # XLSX sheet name; None for CSV
    row: int  # 1-based sheet row or CSV line


class XlsxExport:
    """One logical export written as one or more XLSX files (``name.xlsx``, ``name_2.xlsx`` ...).

    ``title_rows`` are written above the header, merged across the header's width, as the
    education bureau's and civil-affairs bureau's exports do.
    """

    def __init__(
        self,
        out_dir: Path,
        relpath: str,
        sheet: str,
        header: Sequence[str],
        *,
        title_rows: Sequence[str] = (),
        creator: str = "",
        created: dt.datetime | None = None,
        max_rows: int = XLSX_MAX_ROWS,
    ):
        self.out_dir = out_dir
        self.relpath = relpath
        self.sheet_name = sheet
        self.header = list(header)
        self.title_rows = list(title_rows)
        self.creator = creator
        self.created = created
        self.max_rows = max_rows
        self.files: list[str] = []
        self.rows = 0  # data rows written, all parts
        self._wb: Workbook | None = None
        self._ws: Any = None
        self._sheet_row = 0
        self._open()

    def _part_path(self) -> str:
        if not self.files:
            return self.relpath
        stem, dot, ext = self.relpath.rpartition(".")
        return f"{stem}_{len(self.files) + 1}{dot}{ext}"

    def _open(self) -> None:
        relpath = self._part_path()
        self.files.append(relpath)
        wb = Workbook(write_only=True)
        if self.created is not None:
            wb.properties.created = self.created
        if self.creator:
            wb.properties.creator = self.creator
        ws = wb.create_sheet(self.sheet_name)
        # keep the header in view as the departments' own exports do (must precede any row)
        ws.freeze_panes = f"A{len(self.title_rows) + 2}"
        width = len(self.header)
        for i, title in enumerate(self.title_rows):
            cell = WriteOnlyCell(ws, value=title)
            if i == 0:
                cell.font = Font(bold=True, size=14)
                cell.alignment = Alignment(horizontal="center")
            ws.append([cell])
            if width > 1:
                ws.merged_cells.add(f"A{i + 1}:{_column(width)}{i + 1}")
        header = []
        for name in self.header:
            cell = WriteOnlyCell(ws, value=name)
            cell.font = Font(bold=True)
            header.append(cell)
        ws.append(header)
        self._wb, self._ws = wb, ws
        self._sheet_row = len(self.title_rows) + 1

    def _save(self) -> None:
        assert self._wb is not None
        path = self.out_dir / self.files[-1]
        path.parent.mkdir(parents=True, exist_ok=True)
        self._wb.save(path)
        self._wb = self._ws = None

    def append(self, values: Sequence[Any]) -> Position:
        if self._sheet_row >= self.max_rows:
            self._save()
            self._open()
        # an empty cell is no cell at all in the sheet XML, as Excel writes it (and faster)
        self._ws.append([None if v == "" else v for v in values])
        self._sheet_row += 1
        self.rows += 1
        return Position(self.files[-1], self.sheet_name, self._sheet_row)

    def close(self) -> None:
        if self._wb is not None:
            self._save()


def _column(n: int) -> str:
    letters = ""
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


class CsvExport:
    """A CSV export in the department's encoding (``gbk``, ``utf-8-sig`` ...), CRLF line ends as
    the Windows tools that produce them write."""

    def __init__(self, out_dir: Path, relpath: str, header: Sequence[str], *, encoding: str):
        self.relpath = relpath
        self.header = list(header)
        self.encoding = encoding
        self.files = [relpath]
        path = out_dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        # errors="strict": a name the department's encoding cannot hold is a generator bug.
        self._fh = path.open("w", encoding=encoding, newline="", errors="strict")
        self._writer = csv.writer(self._fh)
        self._writer.writerow(self.header)
        self._line = 1
        self.rows = 0

    def append(self, values: Sequence[Any]) -> Position:
        self._writer.writerow(["" if v is None else v for v in values])
        self._line += 1
        self.rows += 1
        return Position(self.relpath, None, self._line)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
