"""The xlsx connector on workbooks written by openpyxl the way department exports look."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from gateway_plugins import _xlsx_books
from gateway_plugins.xlsx_files import XlsxConnector, is_id_column
from openpyxl import Workbook, load_workbook

from gateway.connectors import ConnectorContext
from gateway.errors import ConfigError, SourceError
from tests.conformance import COLUMNS, SYSTEM, ConnectorContract, rows_of
from tests.test_connector_csv import GBK_STUDENTS, HEADER, csv_bytes
from tests.test_connector_csv import connector as csv_connector

TITLES = ["XX县中小学生学籍信息导出", "导出时间：2026-03-01 09:30    导出人：admin"]


@pytest.fixture(autouse=True, params=["calamine", "openpyxl"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test of this module runs with each of the two readers (_xlsx_books): python-calamine
    (the workbooks here are small) and openpyxl's streaming one (as for a workbook over the
    size limit)."""
    if request.param == "openpyxl":
        monkeypatch.setattr(_xlsx_books, "CALAMINE_MAX_BYTES", -1)
    return request.param


def export(
    path: Path,
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    titles: Sequence[str] = TITLES,
    sheet: str = "学生名单",
    extra_sheets: dict[str, tuple[Sequence[str], Sequence[Sequence[Any]]]] | None = None,
) -> Path:
    """A workbook as the 学籍 system exports it: merged title rows above the header."""
    wb = Workbook()
    ws = wb.active
    ws.title = sheet
    sheets = {sheet: (header, rows), **(extra_sheets or {})}
    for name, (head, body) in sheets.items():
        ws = wb[name] if name in wb.sheetnames else wb.create_sheet(name)
        for title in titles:
            ws.append([title])
        if titles:
            for i in range(1, len(titles) + 1):
                ws.merge_cells(start_row=i, start_column=1, end_row=i, end_column=max(len(head), 2))
        ws.append(list(head))
        for row in body:
            ws.append(list(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path


def connector(base: Path, path: str = "inbox/*.xlsx", **options: Any) -> XlsxConnector:
    return XlsxConnector(
        {"path": path, **options}, ConnectorContext(system=SYSTEM, base_dir=str(base))
    )


def read_all(c: XlsxConnector, cursor: Any = None, batch_size: int = 1000) -> list:
    return rows_of(c.read(cursor=cursor, batch_size=batch_size))


def contract_cells(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    return [[r[c] for c in COLUMNS] for r in rows]


class TestXlsxContract(ConnectorContract):
    """The shared contract over a drop folder of exports with two title rows each."""

    @pytest.fixture
    def connector_factory(self, tmp_path: Path) -> Callable[..., XlsxConnector]:
        (tmp_path / "inbox").mkdir()
        return lambda **options: connector(tmp_path, **options)

    @pytest.fixture
    def seed(self, tmp_path: Path) -> Callable[[list[dict[str, Any]]], None]:
        def seed(rows: list[dict[str, Any]]) -> None:
            export(tmp_path / "inbox" / "001.xlsx", COLUMNS, contract_cells(rows))

        return seed

    @pytest.fixture
    def append(self, tmp_path: Path) -> Callable[[list[dict[str, Any]]], None]:
        def append(rows: list[dict[str, Any]]) -> None:
            export(tmp_path / "inbox" / "002.xlsx", COLUMNS, contract_cells(rows))

        return append

    @pytest.fixture
    def seed_with_bad_row(self, tmp_path: Path) -> Callable[[list[dict[str, Any]]], str]:
        def seed(rows: list[dict[str, Any]]) -> str:
            cells = contract_cells(rows)
            cells.insert(4, [99, "多出", "一列", dt.datetime(2026, 3, 1), "备注在表头之外"])
            export(tmp_path / "inbox" / "001.xlsx", COLUMNS, cells)
            return "inbox/001.xlsx!学生名单:8"  # 2 title rows, the header on row 3, data from row 4

        return seed

    @pytest.fixture
    def break_source(self, tmp_path: Path) -> Callable[[], None]:
        def brk() -> None:
            (tmp_path / "inbox" / "001.xlsx").write_bytes(b"\x00\x01 not a zip archive at all")

        return brk

    @pytest.fixture
    def writer_factory(self, tmp_path: Path) -> Callable[..., XlsxConnector]:
        return lambda **options: connector(tmp_path, "outbox/roster.xlsx", **options)

    @pytest.fixture(autouse=True)
    def _outbox(self, tmp_path: Path) -> None:
        (tmp_path / "outbox").mkdir()


# --- exports with title rows -------------------------------------------------------------------


def test_export_with_two_title_rows_gives_the_same_rows_as_the_gbk_csv(tmp_path: Path) -> None:
    export(tmp_path / "inbox" / "students.xlsx", HEADER, GBK_STUDENTS)
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "students.csv").write_bytes(csv_bytes(HEADER, GBK_STUDENTS, "gbk"))
    from_xlsx = read_all(connector(tmp_path))
    from_csv = rows_of(csv_connector(tmp_path, "csv/students.csv").read())
    assert (
        [r.data for r in from_xlsx]
        == [r.data for r in from_csv]
        == [dict(zip(HEADER, s, strict=True)) for s in GBK_STUDENTS]
    )
    assert [r.position for r in from_xlsx] == [
        f"inbox/students.xlsx!学生名单:{n}" for n in (4, 5, 6)
    ]
    assert all(not r.problems for r in from_xlsx)


def test_header_found_by_required_columns_or_fixed_by_header_row(tmp_path: Path) -> None:
    # A title row with many filled cells would fool the "most filled cells" guess: required
    # columns or header_row say where the header is.
    wide_title = [
        "汇总",
        "共3人",
        "在读2人",
        "休学1人",
        "疑似辍学0人",
        "辍学0人",
        "毕业0人",
        "转出0人",
        "备注",
    ]
    wb = Workbook()
    ws = wb.active
    ws.append(wide_title)
    ws.append(HEADER)
    for row in GBK_STUDENTS:
        ws.append(row)
    (tmp_path / "inbox").mkdir()
    wb.save(tmp_path / "inbox" / "s.xlsx")
    by_required = read_all(connector(tmp_path, required_columns=["姓名", "身份证件号"]))
    by_row = read_all(connector(tmp_path, header_row=2))
    assert (
        [r.data for r in by_required]
        == [r.data for r in by_row]
        == [dict(zip(HEADER, s, strict=True)) for s in GBK_STUDENTS]
    )


def test_missing_required_column_names_file_sheet_and_column(tmp_path: Path) -> None:
    header = [h for h in HEADER if h != "身份证件号"]
    export(tmp_path / "inbox" / "s.xlsx", header, [r[:5] + r[6:] for r in GBK_STUDENTS])
    with pytest.raises(SourceError) as info:
        read_all(connector(tmp_path, required_columns=["姓名", "身份证件号"]))
    assert (
        str(info.value)
        == f"{SYSTEM}: inbox/s.xlsx!学生名单: missing column '身份证件号' in the header (row 3)"
    )


def test_id_numbers_stored_as_numbers_are_reported_damaged_not_converted(tmp_path: Path) -> None:
    rows = [list(r) for r in GBK_STUDENTS]
    rows[0][5] = 110105201003040013  # what Excel keeps: 1.10105201003040E+17
    rows[0][4] = 1  # 身份证件类型 as a number is a fine small code
    rows[1][5] = float("1.10105201106110E+17")
    export(tmp_path / "inbox" / "s.xlsx", HEADER, rows)
    got = read_all(connector(tmp_path))
    assert [r.problems and [p[:2] for p in r.problems] for r in got] == [
        [("身份证件号", "excel_damaged")],
        [("身份证件号", "excel_damaged")],
        [],
    ]
    # Passed on as the number the cell holds (for quarantine), never turned into an ID string.
    assert all(isinstance(got[i].data["身份证件号"], int | float) for i in (0, 1))
    assert got[0].data["身份证件类型"] == 1
    assert all("110105" not in p[2] for r in got for p in r.problems)


def test_id_columns_option_names_them_explicitly(tmp_path: Path) -> None:
    export(
        tmp_path / "inbox" / "s.xlsx",
        ["编号", "zjhm"],
        [[1, 110105201003040013], [2, "11010520110611002X"]],
    )
    assert [bool(r.problems) for r in read_all(connector(tmp_path))] == [False, False]
    flagged = read_all(connector(tmp_path, id_columns=["zjhm"]))
    assert [[p[:2] for p in r.problems] for r in flagged] == [[("zjhm", "excel_damaged")], []]


def test_default_id_columns() -> None:
    assert all(
        map(
            is_id_column,
            [
                "身份证件号",
                "身份证号码",
                "证件号码",
                "公民身份号码",
                "残疾人证号",
                "监护人身份证号",
            ],
        )
    )
    assert not any(map(is_id_column, ["身份证件类型", "证件类别", "姓名", "全国学籍号"]))


def test_date_cells_come_through_as_datetimes(tmp_path: Path) -> None:
    export(
        tmp_path / "inbox" / "c.xlsx",
        ["姓名", "开始日期", "结束日期"],
        [
            ["张三", dt.date(2024, 5, 1), None],
            ["李四", dt.datetime(2023, 1, 9, 0, 0), dt.datetime(2025, 12, 31)],
        ],
    )
    got = read_all(connector(tmp_path))
    assert [r.data for r in got] == [
        {"姓名": "张三", "开始日期": dt.datetime(2024, 5, 1), "结束日期": None},
        {
            "姓名": "李四",
            "开始日期": dt.datetime(2023, 1, 9),
            "结束日期": dt.datetime(2025, 12, 31),
        },
    ]


# --- sheets, resume ----------------------------------------------------------------------------


def two_sheet_book(base: Path) -> Path:
    return export(
        base / "inbox" / "civil.xlsx",
        ["姓名", "救助类别"],
        [[f"低保{i}", "低保"] for i in range(1, 6)],
        sheet="低保",
        extra_sheets={
            "特困": (["姓名", "救助类别"], [[f"特困{i}", "特困供养"] for i in range(1, 5)]),
            "孤儿": (["姓名", "救助类别"], []),
        },
    )


def test_sheets_default_first_list_or_all(tmp_path: Path) -> None:
    two_sheet_book(tmp_path)
    assert [r.data["姓名"] for r in read_all(connector(tmp_path))] == [
        f"低保{i}" for i in range(1, 6)
    ]
    both = read_all(connector(tmp_path, sheets=["特困", "低保"]))
    assert [r.position for r in both][:2] == ["inbox/civil.xlsx!特困:4", "inbox/civil.xlsx!特困:5"]
    assert len(both) == 9
    assert len(read_all(connector(tmp_path, sheets="*"))) == 9  # 孤儿 has a header and no rows
    with pytest.raises(
        SourceError,
        match=r"inbox/civil\.xlsx: no sheet '临时救助' \(the workbook has 低保, 特困, 孤儿\)",
    ):
        read_all(connector(tmp_path, sheets=["临时救助"]))
    with pytest.raises(ConfigError, match=r"systems\.contract_system\.sheets"):
        connector(tmp_path, sheets="低保")


def test_resume_inside_the_second_sheet(tmp_path: Path) -> None:
    two_sheet_book(tmp_path)
    c = connector(tmp_path, sheets=["低保", "特困"])
    batches = list(c.read(batch_size=3))
    assert batches[1].cursor["sheet"] == "特困" and batches[1].cursor["row"] == 4
    rest = read_all(
        connector(tmp_path, sheets=["低保", "特困"]), json.loads(json.dumps(batches[1].cursor))
    )
    assert [r.data["姓名"] for r in rest] == ["特困2", "特困3", "特困4"]


# --- bad files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"", "not a readable .xlsx workbook: BadZipFile: File is not a zip file"),
        (
            "姓名,身份证号\n".encode("gbk"),
            "not a readable .xlsx workbook: BadZipFile: File is not a zip file",
        ),
        (
            bytes.fromhex("d0cf11e0a1b11ae1") + b"\x00" * 504,
            "not a readable .xlsx workbook: BadZipFile: File is not a zip file",
        ),
    ],
    ids=["empty", "csv-renamed", "old-xls"],
)
def test_a_file_that_is_not_an_xlsx_is_one_source_error(
    tmp_path: Path, content: bytes, cause: str
) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "export.xlsx").write_bytes(content)
    with pytest.raises(SourceError) as info:
        read_all(connector(tmp_path))
    assert (info.value.system, info.value.source, info.value.cause) == (
        SYSTEM,
        "inbox/export.xlsx",
        cause,
    )


def test_empty_sheet_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    Workbook().save(tmp_path / "inbox" / "blank.xlsx")
    with pytest.raises(SourceError, match=r"inbox/blank\.xlsx!Sheet: empty sheet: no header row"):
        read_all(connector(tmp_path))
    with pytest.raises(SourceError, match=r"inbox/none\.xlsx: no such file"):
        read_all(connector(tmp_path, "inbox/none.xlsx"))


# --- writing -----------------------------------------------------------------------------------


def roster_rows() -> list[dict[str, Any]]:
    return [
        {
            "身份证件号": "110105201003040013",
            "姓名": "王小明",
            "户籍地村(社区)": "城关镇东街社区居民委员会",
            "发证日期": dt.date(2020, 5, 1),
            "年级": 3,
        },
        {
            "身份证件号": "11010520110611002X",
            "姓名": "李吉",
            "户籍地村(社区)": "河西村",
            "发证日期": None,
            "年级": 2,
        },
    ]


def test_written_sheet_is_formatted_and_ids_are_text(tmp_path: Path) -> None:
    w = connector(tmp_path, "out/roster.xlsx", sheet="花名册")
    with pytest.raises(SourceError, match=r"out/roster\.xlsx: cannot write: no such folder out"):
        w.write(roster_rows(), ["身份证件号"])
    (tmp_path / "out").mkdir()
    result = w.write(roster_rows(), ["身份证件号"])
    assert (result.inserted, result.updated, result.unchanged) == (2, 0, 0)
    ws = load_workbook(tmp_path / "out" / "roster.xlsx")["花名册"]
    assert [c.value for c in ws[1]] == list(roster_rows()[0])
    assert all(c.font.bold for c in ws[1])
    assert ws["A2"].value == "110105201003040013" and ws["A2"].number_format == "@"
    assert ws["A3"].data_type == "s" and ws["A3"].number_format == "@"
    assert ws["D2"].value == dt.datetime(2020, 5, 1) and ws["E2"].value == 3
    widths = {col: ws.column_dimensions[col].width for col in "ABCE"}
    assert widths["A"] >= 20  # 18 digits fit
    assert widths["C"] >= 2 * len("城关镇东街社区居民委员会")  # CJK characters are two wide
    assert widths["E"] < widths["A"]
    assert ws.freeze_panes == "A2"
    # The gateway reads its own file back as it wrote it.
    back = read_all(connector(tmp_path, "out/roster.xlsx"))
    assert [r.data["身份证件号"] for r in back] == ["110105201003040013", "11010520110611002X"]
    assert all(not r.problems for r in back)


def test_writing_the_same_rows_again_leaves_the_file_untouched(tmp_path: Path) -> None:
    target = tmp_path / "roster.xlsx"
    w = connector(tmp_path, "roster.xlsx")
    w.write(roster_rows(), ["身份证件号"])
    data = target.read_bytes()
    old = target.stat().st_mtime_ns - 10**9
    os.utime(target, ns=(old, old))
    again = connector(tmp_path, "roster.xlsx").write(list(reversed(roster_rows())), ["身份证件号"])
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    assert target.read_bytes() == data and target.stat().st_mtime_ns == old
    moved = [
        {**roster_rows()[1], "年级": 3},
        {"身份证件号": "110105200901010011", "姓名": "赵六", "年级": 4},
    ]
    third = w.write(moved, ["身份证件号"])
    assert (third.inserted, third.updated, third.unchanged) == (1, 1, 0)
    back = [r.data for r in read_all(connector(tmp_path, "roster.xlsx"))]
    assert [(r["姓名"], r["年级"]) for r in back] == [("王小明", 3), ("李吉", 3), ("赵六", 4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roster.xlsx"]


def test_writer_keeps_title_rows_and_refuses_workbooks_with_other_sheets(tmp_path: Path) -> None:
    export(
        tmp_path / "r.xlsx",
        ["身份证件号", "姓名"],
        [["110105201003040013", "王小明"]],
        sheet="Sheet1",
    )
    connector(tmp_path, "r.xlsx").write(
        [{"身份证件号": "11010520110611002X", "姓名": "李吉"}], ["身份证件号"]
    )
    ws = load_workbook(tmp_path / "r.xlsx")["Sheet1"]
    assert [ws.cell(row=n, column=1).value for n in range(1, 6)] == [
        TITLES[0],
        TITLES[1],
        "身份证件号",
        "110105201003040013",
        "11010520110611002X",
    ]
    two_sheet_book(tmp_path)
    before = (tmp_path / "inbox" / "civil.xlsx").read_bytes()
    with pytest.raises(SourceError, match="has other sheets"):
        connector(tmp_path, "inbox/civil.xlsx", sheet="低保").write(
            [{"姓名": "x", "救助类别": "低保"}], ["姓名"]
        )
    assert (tmp_path / "inbox" / "civil.xlsx").read_bytes() == before


# --- the two readers ---------------------------------------------------------------------------


def tricky_book(path: Path) -> Path:
    """Title rows, a blank first column, ints, floats, long numbers, dates at midnight and not,
    times, booleans, a formula without a cached value, ragged rows and a blank row."""
    wb = Workbook()
    ws = wb.active
    ws.title = "名单"
    ws["C2"] = "XX县导出"
    names = ["编号", "身份证件号", "出生日期", "登记", "在校", "分数", "备注"]
    for col, name in zip("BCDEFGH", names, strict=True):
        ws[f"{col}4"] = name
    ws.append(
        [
            None,
            1,
            "11010520100304001X",
            dt.date(2010, 3, 4),
            dt.datetime(2024, 1, 2, 3, 4, 5),
            True,
            1.5,
            " 空格 ",
        ]
    )
    ws.append(
        [None, 2, 110105201003040013, dt.datetime(2011, 6, 11), dt.time(8, 30), False, 90, "=1+1"]
    )
    ws.append([])
    ws.append([None, 3, 110105800101001, None, None, None, 1e16, None, "右边多一格"])
    ws.append([None, 4.0, "110105201106110021"])
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path


def _read_with(reader: str, base: Path, monkeypatch: pytest.MonkeyPatch, **options: Any) -> list:
    with monkeypatch.context() as m:
        m.setattr(_xlsx_books, "CALAMINE_MAX_BYTES", 96 * 2**20 if reader == "calamine" else -1)
        batches = list(connector(base, **options).read(batch_size=2))
    return [(b.cursor, [(r.position, r.data, r.problems) for r in b.rows]) for b in batches]


def test_both_readers_give_the_same_rows_problems_and_cursors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tricky_book(tmp_path / "inbox" / "t.xlsx")
    calamine = _read_with("calamine", tmp_path, monkeypatch)
    assert calamine == _read_with("openpyxl", tmp_path, monkeypatch)
    rows = [r for _, batch in calamine for r in batch]
    assert [r[0] for r in rows] == [f"inbox/t.xlsx!名单:{n}" for n in (5, 6, 8, 9)]
    first, second, third, fourth = (r[1] for r in rows)
    assert first["_column1"] is None and first["编号"] == 1 and type(first["编号"]) is int
    assert first["出生日期"] == dt.datetime(2010, 3, 4)
    assert first["登记"] == dt.datetime(2024, 1, 2, 3, 4, 5) and second["登记"] == dt.time(8, 30)
    assert first["在校"] is True and first["分数"] == 1.5 and first["备注"] == " 空格 "
    assert second["备注"] is None  # a formula openpyxl saved without a value
    assert third["分数"] == 1e16 and type(third["分数"]) is float
    assert type(fourth["编号"]) is int
    assert [[p[:2] for p in r[2]] for r in rows] == [
        [],
        [("身份证件号", "excel_damaged")],
        [("", "field_count"), ("身份证件号", "excel_damaged")],
        [],
    ]


def test_error_cells_keep_their_text_and_big_workbooks_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """calamine would read an error cell (#N/A) as blank: a workbook with one goes to openpyxl,
    which keeps the text, so a broken ID cell is refused, not read as missing. So does a workbook
    whose sheets are estimated over the memory limit (memory flat with input size)."""
    book = tricky_book(tmp_path / "inbox" / "t.xlsx")
    monkeypatch.setattr(_xlsx_books, "CALAMINE_MAX_BYTES", 2**40)  # whichever `reader`: all counted
    estimate = _xlsx_books.estimated_memory(book)
    assert estimate is not None
    for limit, calamine in ((estimate, True), (estimate - 1, False)):
        monkeypatch.setattr(_xlsx_books, "CALAMINE_MAX_BYTES", limit)
        opened = _xlsx_books.open_for_reading(book)
        opened.close()
        assert isinstance(opened, _xlsx_books._CalamineBook) is calamine

    parts = _zip_parts(book)
    sheet = parts["xl/worksheets/sheet1.xml"].decode()
    cell = re.search(r'<c r="C5"[^>]*>.*?</c>', sheet)
    assert cell is not None
    parts["xl/worksheets/sheet1.xml"] = sheet.replace(
        cell.group(0), '<c r="C5" t="e"><f>NA()</f><v>#N/A</v></c>'
    ).encode()
    _write_zip(book, parts)
    assert _xlsx_books.estimated_memory(book) is None
    monkeypatch.setattr(_xlsx_books, "CALAMINE_MAX_BYTES", 2**40)
    rows = read_all(connector(tmp_path))
    assert rows[0].data["身份证件号"] == "#N/A"


def _zip_parts(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i.filename) for i in zf.infolist()}


def _write_zip(path: Path, parts: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in parts.items():
            zf.writestr(name, data)


def test_the_memory_estimate_counts_every_cell_and_each_copy_of_a_shared_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared string is stored once in the file but copied into every cell by calamine: 3,000
    cells referring to one long string are estimated at 3,000 copies of it; the count is right
    when a cell's tag is cut in two by the 1 MB read chunk."""
    monkeypatch.setattr(_xlsx_books, "CALAMINE_MAX_BYTES", 2**40)  # whichever `reader`
    book = export(tmp_path / "b.xlsx", ["a"], [["x"]], titles=[], sheet="Sheet")
    parts = _zip_parts(book)
    text = "凯里市第一中学附属小学" * 4  # 132 bytes of UTF-8
    parts["xl/sharedStrings.xml"] = (
        '<?xml version="1.0" encoding="UTF-8"?><sst xmlns="http://schemas.openxmlformats.org/'
        f'spreadsheetml/2006/main" count="3000" uniqueCount="1"><si><t>{text}</t></si></sst>'
    ).encode()
    rows = "".join(f'<row r="{r}"><c r="A{r}" t="s"><v>0</v></c></row>' for r in range(1, 3001))
    sheet = parts["xl/worksheets/sheet1.xml"].decode()
    sheet = re.sub(
        r"<sheetData>.*</sheetData>|<sheetData ?/>", f"<sheetData>{rows}</sheetData>", sheet
    )
    parts["xl/worksheets/sheet1.xml"] = sheet.encode()
    # The part's content type and the workbook's link to it (openpyxl wrote inline strings).
    for name, closing, entry in (
        (
            "[Content_Types].xml",
            "</Types>",
            '<Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.'
            'openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>',
        ),
        (
            "xl/_rels/workbook.xml.rels",
            "</Relationships>",
            '<Relationship Id="rIdS" Type="http://schemas.openxmlformats.org/officeDocument/'
            '2006/relationships/sharedStrings" Target="sharedStrings.xml"/>',
        ),
    ):
        part = parts[name].decode()
        if "sharedStrings" not in part:
            parts[name] = part.replace(closing, entry + closing).encode()
    _write_zip(book, parts)
    xml = len(parts["xl/worksheets/sheet1.xml"])
    per_copy = len(parts["xl/sharedStrings.xml"])  # one unique string: its entry is the table
    expected = xml + 3000 * _xlsx_books._CELL_BYTES + 3000 * per_copy
    assert _xlsx_books.estimated_memory(book) == expected
    monkeypatch.setattr(_xlsx_books, "_CHUNK", 1000)  # tags cut at chunk boundaries
    assert _xlsx_books.estimated_memory(book) == expected
    # calamine reads it as 3,000 copies of the string
    opened = _xlsx_books.open_for_reading(book)
    try:
        assert isinstance(opened, _xlsx_books._CalamineBook)
        values = [r[0] for r in opened["Sheet"].iter_rows()]
    finally:
        opened.close()
    assert values == [text] * 3000


def test_a_sheet_calamine_cannot_parse_is_read_by_openpyxl(tmp_path: Path) -> None:
    """The fallback when calamine opens a workbook but fails on a sheet: the same rows, through
    openpyxl, which then names anything really wrong with the sheet."""
    from python_calamine import XmlError

    book = tricky_book(tmp_path / "t.xlsx")
    opened = _xlsx_books._CalamineBook(book)
    real = opened.calamine

    class Failing:
        sheet_names = real.sheet_names

        def get_sheet_by_name(self, name: str) -> Any:
            raise XmlError(f"cannot parse {name}")

        def close(self) -> None:
            real.close()

    def trimmed(rows: Iterator[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        # calamine's rows are all as wide as the sheet, openpyxl's end at their last cell.
        out = []
        for row in rows:
            cells = list(row)
            while cells and cells[-1] is None:
                cells.pop()
            out.append(tuple(cells))
        return out

    try:
        expected = trimmed(opened["名单"].iter_rows(min_row=4))
        opened.calamine = Failing()
        assert trimmed(opened["名单"].iter_rows(min_row=4)) == expected
        assert opened._openpyxl is not None and len(expected) == 6
    finally:
        opened.close()
