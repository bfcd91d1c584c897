"""The csv connector on real files: GBK, GB18030 with a BOM, UTF-8 with a BOM, drop folders."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from gateway_plugins import _files
from gateway_plugins.csv_files import CsvConnector

from gateway.connectors import ConnectorContext
from gateway.errors import ConfigError, SourceError
from tests.conformance import COLUMNS, SYSTEM, ConnectorContract, as_text, rows_of

# A student-status export (学籍系统导出) as the education bureau sends it.
HEADER = [
    "全国学籍号",
    "姓名",
    "性别",
    "出生日期",
    "身份证件类型",
    "身份证件号",
    "学籍状态",
    "户籍地村(社区)",
]
STUDENTS = [
    [
        "G110105201003040013",
        "王小明",
        "男",
        "20100304",
        "1",
        "110105201003040013",
        "在读",
        "城关镇东街社区",
    ],
    [
        "G11010520110611002X",
        "李𠮷",
        "女",
        "20110611",
        "1",
        "11010520110611002X",
        "疑似辍学",
        "河西村",
    ],
    ["J00000000000000001", "欧阳 娜娜", "女", "20120101", "A", "E12345678", "休学", "龙井村"],
]
GBK_STUDENTS = [[cell.replace("𠮷", "吉") for cell in row] for row in STUDENTS]  # 𠮷 is not in GBK


def csv_bytes(
    header: Sequence[str], rows: Sequence[Sequence[Any]], encoding: str, *, delimiter: str = ","
) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode(encoding)


def connector(base: Path, path: str = "inbox/*.csv", **options: Any) -> CsvConnector:
    return CsvConnector(
        {"path": path, **options}, ConnectorContext(system=SYSTEM, base_dir=str(base))
    )


def read_all(c: CsvConnector, cursor: Any = None, batch_size: int = 1000) -> list:
    return rows_of(c.read(cursor=cursor, batch_size=batch_size))


def drop(base: Path, name: str, content: bytes) -> Path:
    path = base / "inbox" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def contract_csv(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [[as_text(r[c]) for c in COLUMNS] for r in rows]


class TestCsvContract(ConnectorContract):
    """The shared contract over a GBK drop folder (new files arrive as new rows)."""

    @pytest.fixture
    def connector_factory(self, tmp_path: Path) -> Callable[..., CsvConnector]:
        (tmp_path / "inbox").mkdir()
        return lambda **options: connector(tmp_path, **options)

    @pytest.fixture
    def seed(self, tmp_path: Path) -> Callable[[list[dict[str, Any]]], None]:
        def seed(rows: list[dict[str, Any]]) -> None:
            drop(tmp_path, "001.csv", csv_bytes(COLUMNS, contract_csv(rows), "gbk"))

        return seed

    @pytest.fixture
    def append(self, tmp_path: Path) -> Callable[[list[dict[str, Any]]], None]:
        def append(rows: list[dict[str, Any]]) -> None:
            drop(tmp_path, "002.csv", csv_bytes(COLUMNS, contract_csv(rows), "gbk"))

        return append

    @pytest.fixture
    def seed_with_bad_row(self, tmp_path: Path) -> Callable[[list[dict[str, Any]]], str]:
        def seed(rows: list[dict[str, Any]]) -> str:
            lines = contract_csv(rows)
            lines.insert(
                4, ["99", "多了", "一个", "逗号", "2026-03-01 08:00:00"]
            )  # 5 fields, header has 4
            drop(tmp_path, "001.csv", csv_bytes(COLUMNS, lines, "gbk"))
            return "inbox/001.csv:6"  # header line 1, then rows from line 2

        return seed

    @pytest.fixture
    def break_source(self, tmp_path: Path) -> Callable[[], None]:
        def brk() -> None:
            path = tmp_path / "inbox" / "001.csv"
            path.write_bytes(
                path.read_bytes() + b"\xff\xfe\xff broken\r\n"
            )  # neither UTF-8 nor GB18030

        return brk

    @pytest.fixture
    def writer_factory(self, tmp_path: Path) -> Callable[..., CsvConnector]:
        return lambda **options: connector(
            tmp_path, "outbox/roster.csv", **{"encoding": "gbk", **options}
        )

    @pytest.fixture(autouse=True)
    def _outbox(self, tmp_path: Path) -> None:
        (tmp_path / "outbox").mkdir()


# --- encodings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "prefix", "students", "detected"),
    [
        ("gbk", b"", GBK_STUDENTS, "gb18030"),
        ("gb18030", "\ufeff".encode("gb18030"), STUDENTS, "gb18030"),
        ("utf-8", b"\xef\xbb\xbf", STUDENTS, "utf-8-sig"),
        ("utf-8", b"", STUDENTS, "utf-8"),
    ],
    ids=["gbk", "gb18030-bom", "utf8-bom", "utf8"],
)
def test_auto_encoding_reads_each_export_the_same(
    tmp_path: Path, encoding: str, prefix: bytes, students: list[list[str]], detected: str
) -> None:
    drop(tmp_path, "students.csv", prefix + csv_bytes(HEADER, students, encoding))
    c = connector(tmp_path)
    rows = read_all(c)
    assert [r.data for r in rows] == [dict(zip(HEADER, s, strict=True)) for s in students]
    assert list(rows[0].data)[0] == "全国学籍号"  # no BOM left on the first column name
    assert [r.position for r in rows] == [
        "inbox/students.csv:2",
        "inbox/students.csv:3",
        "inbox/students.csv:4",
    ]
    assert c.detected == {"inbox/students.csv": detected}


def test_gbk_and_gb18030_bom_and_utf8_bom_give_identical_rows(tmp_path: Path) -> None:
    # The same export, saved three ways (GBK cannot hold 𠮷, so all three use the GBK-safe names).
    drop(tmp_path, "a_gbk.csv", csv_bytes(HEADER, GBK_STUDENTS, "gbk"))
    drop(
        tmp_path,
        "b_gb18030.csv",
        "\ufeff".encode("gb18030") + csv_bytes(HEADER, GBK_STUDENTS, "gb18030"),
    )
    drop(tmp_path, "c_utf8.csv", b"\xef\xbb\xbf" + csv_bytes(HEADER, GBK_STUDENTS, "utf-8"))
    by_file: dict[str, list[dict[str, Any]]] = {}
    for name in ("a_gbk.csv", "b_gb18030.csv", "c_utf8.csv"):
        by_file[name] = [r.data for r in read_all(connector(tmp_path, f"inbox/{name}"))]
    assert by_file["a_gbk.csv"] == by_file["b_gb18030.csv"] == by_file["c_utf8.csv"]
    assert len(by_file["a_gbk.csv"]) == 3


def test_explicit_encoding_that_does_not_fit_names_file_line_and_encoding(tmp_path: Path) -> None:
    rows = [["1", "ok"], ["2", "王小明"], ["3", "李四"]]
    drop(tmp_path, "x.csv", csv_bytes(["id", "name"], rows, "gbk"))
    with pytest.raises(SourceError) as info:
        read_all(connector(tmp_path, encoding="utf-8"))
    assert info.value.system == SYSTEM
    assert info.value.source == "inbox/x.csv:3"
    assert "utf-8" in info.value.cause and "configured" in info.value.cause
    # The right override reads it.
    assert [r.data["name"] for r in read_all(connector(tmp_path, encoding="gbk"))] == [
        "ok",
        "王小明",
        "李四",
    ]


def test_undecodable_file_names_the_encodings_tried_and_the_line(tmp_path: Path) -> None:
    drop(tmp_path, "x.csv", b"id,name\r\n1,ok\r\n2,\xff\xfe\xff\r\n")
    with pytest.raises(SourceError) as info:
        read_all(connector(tmp_path))
    message = str(info.value)
    assert message.startswith(
        f"{SYSTEM}: inbox/x.csv: cannot be decoded as utf-8 (line 3), gb18030 (line 3)"
    )
    assert "set `encoding`" in message


def test_unknown_encoding_option_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"systems\.{SYSTEM}\.encoding: unknown encoding 'gbk2'"):
        connector(tmp_path, encoding="gbk2")


# --- layout: header, delimiter, required columns, bad rows -------------------------------------


def test_title_lines_above_the_header(tmp_path: Path) -> None:
    content = "XX县学籍信息导出\r\n导出时间：2026-03-01\r\n".encode("gbk") + csv_bytes(
        HEADER, GBK_STUDENTS, "gbk"
    )
    drop(tmp_path, "s.csv", content)
    by_header_row = read_all(connector(tmp_path, header_row=3))
    by_skip_rows = read_all(connector(tmp_path, skip_rows=2))
    assert [r.data for r in by_header_row] == [r.data for r in by_skip_rows]
    assert by_header_row[0].data["姓名"] == "王小明"
    assert by_header_row[0].position == "inbox/s.csv:4"
    with pytest.raises(ConfigError, match="skip_rows: contradicts header_row"):
        connector(tmp_path, header_row=3, skip_rows=1)


def test_tab_delimiter_and_quoted_line_breaks_keep_line_positions(tmp_path: Path) -> None:
    rows = [["1", "住址第一行\n第二行"], ["2", "普通"]]
    drop(tmp_path, "t.tsv", csv_bytes(["id", "住址"], rows, "utf-8", delimiter="\t"))
    got = read_all(connector(tmp_path, "inbox/t.tsv", delimiter="\t"))
    assert [r.data for r in got] == [
        {"id": "1", "住址": "住址第一行\n第二行"},
        {"id": "2", "住址": "普通"},
    ]
    assert [r.position for r in got] == ["inbox/t.tsv:2", "inbox/t.tsv:4"]


def test_missing_required_column_is_one_error_naming_file_and_column(tmp_path: Path) -> None:
    drop(
        tmp_path,
        "s.csv",
        csv_bytes(
            [h for h in HEADER if h != "身份证件号"], [r[:5] + r[6:] for r in GBK_STUDENTS], "gbk"
        ),
    )
    with pytest.raises(SourceError) as info:
        read_all(connector(tmp_path, required_columns=["姓名", "身份证件号"]))
    assert (
        str(info.value)
        == f"{SYSTEM}: inbox/s.csv: missing column '身份证件号' in the header (line 1)"
    )


def test_wrong_header_row_never_prints_the_id_numbers_it_holds(tmp_path: Path) -> None:
    drop(tmp_path, "s.csv", csv_bytes(HEADER, GBK_STUDENTS, "gbk"))
    with pytest.raises(SourceError) as info:
        read_all(connector(tmp_path, header_row=2, required_columns=["身份证件号"]))
    assert "110105201003040013" not in str(info.value)


def test_rows_with_wrong_field_count_become_problems_and_reading_goes_on(tmp_path: Path) -> None:
    lines = "id,姓名,身份证件号\r\n1,张三,110105201003040013\r\n2,李四\r\n3,王五,11010520110611002X,多余\r\n\r\n,,\r\n4,赵六,1\r\n"
    drop(tmp_path, "p.csv", lines.encode("gbk"))
    got = read_all(connector(tmp_path))
    assert [r.position for r in got] == [
        "inbox/p.csv:2",
        "inbox/p.csv:3",
        "inbox/p.csv:4",
        "inbox/p.csv:7",
    ]
    assert got[0].problems == [] and got[3].problems == []
    assert got[1].problems[0][:2] == ("身份证件号", "field_count")
    assert got[2].problems[0][:2] == ("", "field_count")
    assert got[2].data["_extra"] == ["多余"]
    for row in got:
        for _, _, message in row.problems:
            assert "1101052" not in message  # messages never carry values


# --- drop folder, content hashes, resume -------------------------------------------------------


def test_a_file_read_once_is_not_read_again_even_renamed_or_copied(tmp_path: Path) -> None:
    first = drop(tmp_path, "2026-03-01.csv", csv_bytes(HEADER, GBK_STUDENTS, "gbk"))
    c = connector(tmp_path)
    batches = list(c.read())
    assert len(rows_of(batches)) == 3
    cursor = json.loads(json.dumps(batches[-1].cursor))
    shutil.copy(first, tmp_path / "inbox" / "copy of 2026-03-01.csv")
    first.rename(tmp_path / "inbox" / "renamed.csv")
    assert read_all(c, cursor) == []
    # A new export (different content) is read, and only it.
    drop(tmp_path, "2026-03-02.csv", csv_bytes(HEADER, GBK_STUDENTS[:1], "gbk"))
    again = read_all(c, cursor)
    assert [r.position for r in again] == ["inbox/2026-03-02.csv:2"]
    # Hidden files and Office lock files in the drop folder are not data.
    drop(tmp_path, ".partial.csv", b"garbage\xff")
    drop(tmp_path, "~$2026-03-03.csv", b"garbage\xff")
    assert len(read_all(c)) == 4  # 3 + 1; the copy has the same content as the first file


def test_a_run_that_died_mid_file_resumes_at_its_row(tmp_path: Path) -> None:
    drop(
        tmp_path,
        "big.csv",
        csv_bytes(["id", "姓名"], [[str(i), f"张{i}"] for i in range(1, 101)], "gbk"),
    )
    batches = connector(tmp_path).read(batch_size=30)
    first = next(batches)
    second = next(batches)
    batches.close()  # the process died here: only the first two batches were committed
    assert second.cursor["row"] == 60 and second.cursor["done"] == []
    rest = read_all(connector(tmp_path), json.loads(json.dumps(second.cursor)), batch_size=30)
    assert [r.data["id"] for r in first.rows + second.rows + rest] == [
        str(i) for i in range(1, 101)
    ]
    assert rest[0].position == "inbox/big.csv:62"


def test_empty_drop_folder_reads_nothing_but_a_missing_one_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    assert read_all(connector(tmp_path)) == []
    with pytest.raises(SourceError, match=r"no such folder nowhere"):
        read_all(connector(tmp_path, "nowhere/*.csv"))


@pytest.mark.parametrize(
    ("make", "path", "cause"),
    [
        (lambda base: None, "inbox/missing.csv", "no such file"),
        (
            lambda base: (base / "inbox" / "dir.csv").mkdir(parents=True),
            "inbox/dir.csv",
            "is a folder, not a file",
        ),
        (lambda base: drop(base, "empty.csv", b""), "inbox/empty.csv", "empty file: no header row"),
    ],
    ids=["missing", "folder", "empty"],
)
def test_bad_files_are_one_source_error(
    tmp_path: Path, make: Callable[[Path], Any], path: str, cause: str
) -> None:
    make(tmp_path)
    with pytest.raises(SourceError) as info:
        read_all(connector(tmp_path, path))
    assert (info.value.system, info.value.source, info.value.cause) == (SYSTEM, path, cause)


def peak_memory_of_reading(base: Path, n: int) -> tuple[int, int]:
    path = drop(
        base, f"big{n}.csv", csv_bytes(HEADER, [GBK_STUDENTS[i % 3] for i in range(n)], "gbk")
    )
    tracemalloc.start()
    count = 0
    for batch in connector(base, f"inbox/big{n}.csv").read(batch_size=1000):
        count += len(batch.rows)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n
    return peak, path.stat().st_size


def test_reading_streams_instead_of_loading_the_file(tmp_path: Path) -> None:
    small, _ = peak_memory_of_reading(tmp_path, 10_000)
    large, size = peak_memory_of_reading(tmp_path, 80_000)
    # Memory is one batch plus buffers, whatever the file's length: 8x the rows, about the same peak.
    assert large < small * 1.5, (small, large)
    assert large < size / 2, (large, size)


# --- rows kept as their bytes --------------------------------------------------------------------


def _tricky_csv(seed: int, delimiter: str, eol: str) -> str:
    """A file with what CSV exports hold: blank lines, lines of delimiters or spaces only (one of
    them as wide as the header), quoted fields with delimiters, quotes and line breaks, rows with
    too few or too many fields, a last line without a line end."""
    import random

    rnd = random.Random(seed)
    values = ["110105201003040013", "", " ", "王,小明", '李"吉', "多\n行", "a\r\nb", "河西村"]
    buf = io.StringIO(newline="")
    w = csv.writer(buf, delimiter=delimiter, lineterminator=eol)
    w.writerow(["id", "name", "sex", "village"])
    for _ in range(rnd.randint(30, 120)):
        kind = rnd.random()
        if kind < 0.08:
            buf.write(eol)
        elif kind < 0.14:
            buf.write(delimiter * rnd.randint(0, 5) + eol)
        elif kind < 0.18:
            buf.write(" " + delimiter + "  " + delimiter + " " + delimiter + eol)
        elif kind < 0.21:
            buf.write("\u3000" + delimiter + eol)
        else:
            width = 4 if kind > 0.26 else rnd.choice([3, 5])
            w.writerow([rnd.choice(values) for _ in range(width)])
    text = buf.getvalue()
    return text.rstrip("\r\n") if seed % 3 == 0 else text


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "gbk", "utf-16"])
@pytest.mark.parametrize(("delimiter", "eol"), [(",", "\r\n"), ("\t", "\n"), (";", "\r")])
def test_rows_kept_as_bytes_are_the_rows_read_as_text(
    tmp_path: Path, encoding: str, delimiter: str, eol: str
) -> None:
    """The sync gets batches whose rows are built only when asked for (from the bytes of each
    record, which it fingerprints): the same rows, positions, problems and cursors as reading
    every row as text, resuming from any batch too."""
    for seed in range(8):
        text = _tricky_csv(seed, delimiter, eol)
        if encoding == "gbk":
            text = text.replace("\u3000", "　")
        drop(tmp_path, f"t{seed}.csv", text.encode(encoding))
        c = connector(tmp_path, f"inbox/t{seed}.csv", delimiter=delimiter)
        plain = connector(tmp_path, f"inbox/t{seed}.csv", delimiter=delimiter)
        plain.raw = False
        batches = list(c.read(batch_size=7))
        expected = list(plain.read(batch_size=7))
        got = [(r.position, r.data, r.problems) for b in batches for r in b.rows]
        assert got == [(r.position, r.data, r.problems) for b in expected for r in b.rows]
        for b in batches:
            assert b.raw is not None and len(b.raw.records) == len(b.rows)
        for b in batches[:-1]:
            rest = [(r.position, r.data) for r in read_all(c, b.cursor, batch_size=5)]
            assert rest == [(r.position, r.data) for r in read_all(plain, b.cursor, batch_size=5)]


def test_a_malformed_record_is_the_same_error_from_both_readers(tmp_path: Path) -> None:
    """A quoted field over the csv module's size limit on line 3: one SourceError naming the file
    and line, whether the rows are kept as bytes or read as text."""
    # The limit is the csv module's, process-wide (the audit export raises it): set it here.
    before = csv.field_size_limit(1000)
    try:
        drop(tmp_path, "m.csv", f'id,name\r\n1,a\r\n2,"{"x" * 1001}"\r\n3,c\r\n'.encode())
        messages = []
        for raw in (True, False):
            c = connector(tmp_path, "inbox/m.csv")
            c.raw = raw
            with pytest.raises(SourceError) as caught:
                read_all(c)
            messages.append(str(caught.value))
    finally:
        csv.field_size_limit(before)
    assert messages[0] == messages[1]
    assert "inbox/m.csv:3" in messages[0] and "malformed CSV" in messages[0]


def test_equal_rows_have_equal_bytes_and_forms(tmp_path: Path) -> None:
    """What a fingerprint of the bytes relies on: the same line in the same form (header,
    encoding, dialect) is the same row; another header or encoding is another form."""
    rows = [["1", "张三"], ["2", "李四"], ["1", "张三"]]
    drop(tmp_path, "a.csv", csv_bytes(["id", "name"], rows, "utf-8"))
    drop(tmp_path, "b.csv", csv_bytes(["id", "name"], rows, "gb18030"))
    drop(tmp_path, "c.csv", csv_bytes(["name", "id"], [r[::-1] for r in rows], "utf-8"))
    [batch] = list(connector(tmp_path, "inbox/*.csv").read(batch_size=100))
    assert batch.raw is not None
    records, forms = batch.raw.records, dict(batch.raw.forms)
    assert sorted(forms) == [0, 3, 6] and len(set(forms.values())) == 3
    assert records[0] == records[2] and records[0] != records[1]
    assert [r.data for r in batch.rows[:3]] == [{"id": i, "name": n} for i, n in rows]
    # The rows behave as the list they used to be.
    listed = list(batch.rows)
    assert batch.rows[::-1] == listed[::-1] and batch.rows[-1] is listed[-1]
    assert batch.rows + [] == listed and len(batch.rows) == 9 and batch.rows == listed


# --- writing -----------------------------------------------------------------------------------


def test_writes_in_the_encoding_the_receiver_asks_for_and_twice_is_once(tmp_path: Path) -> None:
    w = connector(tmp_path, "out/edu.csv", encoding="gbk")
    (tmp_path / "out").mkdir()
    rows = [dict(zip(HEADER, s, strict=True)) for s in GBK_STUDENTS]
    assert w.write(rows, ["身份证件号"]).inserted == 3
    target = tmp_path / "out" / "edu.csv"
    data = target.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert data.decode("gbk").splitlines()[0] == ",".join(HEADER)
    stamp = target.stat().st_mtime_ns
    os.utime(target, ns=(stamp - 10**9, stamp - 10**9))
    assert w.write(rows, ["身份证件号"]).unchanged == 3
    assert target.read_bytes() == data
    assert target.stat().st_mtime_ns == stamp - 10**9  # not even rewritten
    # Reordered input still changes nothing; one update rewrites only that line.
    changed = [rows[2], {**rows[0], "学籍状态": "转出"}, rows[1]]
    result = w.write(changed, ["身份证件号"])
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 2)
    assert target.read_bytes() == data.replace("在读".encode("gbk"), "转出".encode("gbk"), 1)
    assert not [p for p in target.parent.iterdir() if p.name != "edu.csv"]  # no temp files left


def test_new_file_defaults_to_utf8_with_bom_and_existing_file_keeps_its_encoding(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out.csv"
    connector(tmp_path, "out.csv").write([{"id": "1", "姓名": "王"}], ["id"])
    assert target.read_bytes().startswith(b"\xef\xbb\xbf")
    target.write_bytes(csv_bytes(["id", "姓名"], [["1", "王"]], "gbk"))
    connector(tmp_path, "out.csv").write([{"id": "2", "姓名": "李"}], ["id"])
    assert target.read_bytes().decode("gbk") == "id,姓名\r\n1,王\r\n2,李\r\n"


def test_written_file_keeps_title_lines_and_grows_new_columns(tmp_path: Path) -> None:
    target = tmp_path / "r.csv"
    target.write_bytes("花名册\r\nid,姓名\r\n1,王\r\n".encode("gbk"))
    result = connector(tmp_path, "r.csv", encoding="gbk", header_row=2).write(
        [{"id": "2", "姓名": "李", "村": "河西村"}], ["id"]
    )
    assert (result.inserted, result.updated, result.unchanged) == (1, 0, 0)
    assert target.read_bytes().decode("gbk") == "花名册\r\nid,姓名,村\r\n1,王,\r\n2,李,河西村\r\n"


def test_characters_the_receiver_encoding_lacks_name_the_column_not_the_value(
    tmp_path: Path,
) -> None:
    target = tmp_path / "r.csv"
    w = connector(tmp_path, "r.csv", encoding="gbk")
    w.write([{"身份证件号": "110105201003040013", "姓名": "王"}], ["身份证件号"])
    before = target.read_bytes()
    with pytest.raises(SourceError) as info:
        w.write([{"身份证件号": "11010520110611002X", "姓名": "李𠮷"}], ["身份证件号"])
    assert (
        str(info.value)
        == f"{SYSTEM}: r.csv:3: the value of '姓名' has characters that gbk cannot encode"
    )
    assert "11010520110611002X" not in str(info.value)
    assert target.read_bytes() == before  # the failed write left the file as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


def test_writing_to_a_glob_or_without_a_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="writing needs one file"):
        connector(tmp_path).write([{"id": "1"}], ["id"])
    with pytest.raises(ConfigError, match="writing needs a key"):
        connector(tmp_path, "x.csv").write([{"id": "1"}], [])
    with pytest.raises(SourceError, match="row 1 to write has no key field 'id'"):
        connector(tmp_path, "x.csv").write([{"name": "1"}], ["id"])


def test_library_messages_are_scrubbed_of_id_numbers() -> None:
    message = "could not convert string to float: '11010519491231002X' (legacy 110105491231002)"
    assert (
        _files.scrub(message)
        == "could not convert string to float: '110105********002X' (legacy 110105*****1002)"
    )
