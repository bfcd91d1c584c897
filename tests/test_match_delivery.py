"""The student flags written back to the student-status system: a real table on MariaDB and on
SQLite with Chinese column names, an XLSX file; re-delivery writes nothing, resolved flags are
cleared, the ID number is in the clear in the target's own table only, every batch is audited."""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from openpyxl import load_workbook

from gateway import audit, match, match_delivery
from gateway.cli import cli
from gateway.commands.match import match_command
from gateway.connectors import Connector, WriteResult
from gateway.errors import ConfigError, SourceError
from gateway.hookspecs import hookimpl
from gateway.store import Base
from tests.matchdata import AS_OF, EXPECTED, MatchData, build_county

cli.add_command(match_command)  # main() does this for the console script

TABLE = "学生标注"
NO = "否"
YES = "是"
FLAG_COLUMNS = ("建档立卡", "低保", "特困", "孤儿", "事实无人抚养")
WRITTEN = (
    "身份证件号",
    "身份证件类型",
    "全国学籍号",
    "学校标识码",
    "建档立卡",
    "监测对象类型",
    "残疾类别",
    "残疾等级",
    "低保",
    "特困",
    "孤儿",
    "事实无人抚养",
    "标注日期",
)
# label -> (school, the columns that differ from "no flag")
FLAGGED: dict[str, tuple[str, dict[str, str]]] = {
    "f_lifted": ("S001", {"建档立卡": YES}),
    "f_monitor": ("S002", {"监测对象类型": "突发严重困难户"}),
    "f_id15": ("S003", {"建档立卡": YES}),
    "f_lowerx": ("S001", {"残疾类别": "听力", "残疾等级": "三级"}),
    "f_spaced": ("S001", {"低保": YES}),
    "f_dis2": ("S002", {"残疾类别": "视力", "残疾等级": "二级"}),
    "f_dis_today": ("S002", {"残疾类别": "言语", "残疾等级": "四级"}),
    "f_dibao_endtoday": ("S001", {"低保": YES}),
    "f_tekun_orphan": ("S002", {"特困": YES, "孤儿": YES}),
    "f_unsupported": ("S002", {"事实无人抚养": YES}),
    "f_aid_other": ("S003", {"建档立卡": YES}),
    "f_aid_removed": ("S003", {"建档立卡": YES}),
    "f_hk": ("S001", {"建档立卡": YES}),
    "f_transfer_both": ("S002", {"建档立卡": YES}),  # the enrolled record, not the transfer
    "o_suspected": ("S002", {"建档立卡": YES}),
    "s_suspended_dis": ("S003", {"残疾类别": "多重", "残疾等级": "二级"}),
    "s_adult_suspended_dis": ("S003", {"残疾类别": "肢体", "残疾等级": "一级"}),
    "s_susp_enrolled_elsewhere": ("S002", {"残疾类别": "听力", "残疾等级": "二级"}),
}
assert set(FLAGGED) == set(EXPECTED["flags"])


def target_table(metadata: sa.MetaData, *, student_no_type: Any = None) -> sa.Table:
    """The student-status system's flag table: its own layout, plus a column its staff keep."""
    return sa.Table(
        TABLE,
        metadata,
        sa.Column("身份证件号", sa.String(40), primary_key=True),
        sa.Column("身份证件类型", sa.String(2)),
        sa.Column("全国学籍号", student_no_type or sa.String(40)),
        sa.Column("学校标识码", sa.String(32)),
        *(sa.Column(c, sa.String(2)) for c in FLAG_COLUMNS),
        sa.Column("监测对象类型", sa.String(16)),
        sa.Column("残疾类别", sa.String(8)),
        sa.Column("残疾等级", sa.String(8)),
        sa.Column("标注日期", sa.String(10)),
        sa.Column("备注", sa.String(200)),  # not the gateway's: kept through every write
        mysql_charset="utf8mb4",
    )


def create_target(url: str, **kw: Any) -> sa.Engine:
    engine = sa.create_engine(url)
    target_table(sa.MetaData(), **kw).create(engine)
    return engine


def read_target(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    table = sa.Table(TABLE, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return {r["身份证件号"]: dict(r) for r in conn.execute(sa.select(table)).mappings()}


# Flagged a month later only: 低保 from 2025-04-01.
LATER_FLAGGED = {"f_dibao_future": ("S001", {"低保": YES})}


def expected_row(b: MatchData, label: str, *, as_of: dt.date = AS_OF) -> dict[str, Any]:
    person = b.people[label]
    school, flags = {**FLAGGED, **LATER_FLAGGED}[label]
    row: dict[str, Any] = {
        "身份证件号": person.number,
        "身份证件类型": person.id_type,
        "全国学籍号": "G" + person.number,
        "学校标识码": school,
        **dict.fromkeys(FLAG_COLUMNS, NO),
        "监测对象类型": None,
        "残疾类别": None,
        "残疾等级": None,
        "标注日期": as_of.isoformat(),
        "备注": None,
    }
    row.update(flags)
    return row


def cleared_row(b: MatchData, label: str, school: str, as_of: dt.date) -> dict[str, Any]:
    row = expected_row(b, label, as_of=as_of)
    row.update(dict.fromkeys(FLAG_COLUMNS, NO), 监测对象类型=None, 残疾类别=None, 残疾等级=None)
    row["学校标识码"] = school
    return row


def sql_system(url: str) -> dict[str, Any]:
    return {"plugin": "student_status", "connector": "sql", "url": url, "table": TABLE}


def sqlite_target(folder: Path, name: str = "xueji") -> str:
    return f"sqlite:///{folder / f'{name}.db'}"


@pytest.fixture
def county(make_site, tmp_path):
    """A county whose flags go to ``student_flags``: the student-status system's table on SQLite
    (or the URL given)."""

    def factory(url: str | None = None, **match_settings: Any) -> tuple[Any, MatchData, sa.Engine]:
        url = url or sqlite_target(tmp_path)
        engine = create_target(url)
        site = make_site(
            {
                "systems": {"student_flags": sql_system(url)},
                "match": {"flags_target": "student_flags", **match_settings},
            }
        )
        b = MatchData(site)
        build_county(b)
        return site, b, engine

    return factory


only_sqlite_store = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)


def all_flagged(b: MatchData) -> dict[str, dict[str, Any]]:
    return {b.people[label].number: expected_row(b, label) for label in FLAGGED}


# ---------------------------------------------------------------------------------------------
# Delivering into a table


def test_flags_written_to_a_table_with_chinese_columns(county):
    site, b, engine = county()
    run = match.run_match(site, AS_OF, actor="user:tester")
    result = match_delivery.deliver_flags(site, run, actor="user:tester")

    assert read_target(engine) == all_flagged(b)
    assert (result.flagged, result.cleared, result.skipped) == (18, 0, {})
    assert result.written == WriteResult(inserted=18, updated=0, unchanged=0)
    assert result.baseline_run_id is None and result.mapping == "student_status/flags.out"

    again = match_delivery.deliver_flags(site, run, actor="user:tester")
    assert again.written == WriteResult(inserted=0, updated=0, unchanged=18)
    assert again.baseline_run_id == run.run_id  # the target holds this run already
    assert read_target(engine) == all_flagged(b)
    engine.dispose()


@only_sqlite_store
def test_any_batch_size_sends_each_student_once(make_site, tmp_path):
    sizes = (1, 2, 3, 7)
    urls = {f"flags{n}": sqlite_target(tmp_path, f"batch{n}") for n in sizes}
    engines = {name: create_target(url) for name, url in urls.items()}
    site = make_site({"systems": {name: sql_system(url) for name, url in urls.items()}})
    b = MatchData(site)
    build_county(b)
    run = match.run_match(site, AS_OF)
    delivered: list[tuple[str, str, tuple[str, ...]]] = []

    class Observer:
        @hookimpl
        def on_record_delivered(self, target, dataset, subject_keys):
            delivered.append((target, dataset, tuple(subject_keys)))

    site.plugins.register(Observer(), name="observer")
    for n in sizes:
        target = f"flags{n}"
        delivered.clear()
        result = match_delivery.deliver_flags(
            site, run, actor="job:flags", target=target, batch_size=n
        )
        assert read_target(engines[target]) == all_flagged(b), n
        # Pages hold student records (20), not people (18): a page may shrink by a duplicate.
        assert -(-18 // n) <= result.batches <= -(-20 // n), n
        keys = [k for _t, _d, batch in delivered for k in batch]
        assert sorted(keys) == sorted(b.keys(*FLAGGED)), n  # each person once
        assert {(t, d) for t, d, _ in delivered} == {(target, "flags")}
        entries = audit.search(site, action="match.deliver", limit=1000)
        mine = [e for e in entries if e["detail"]["target"] == target]
        assert len(mine) == result.batches and sum(e["subject_count"] for e in mine) == 18
        assert sorted(e["detail"]["batch"] for e in mine) == list(range(1, result.batches + 1))
    for engine in engines.values():
        engine.dispose()


@only_sqlite_store
def test_resolved_flag_is_cleared_against_what_the_target_holds(county):
    site, b, engine = county()
    first = match.run_match(site, AS_OF)
    match_delivery.deliver_flags(site, first, actor="job:flags")
    with engine.begin() as conn:  # the education bureau's own note stays through the clear
        conn.execute(
            sa.text(f'UPDATE "{TABLE}" SET "备注" = :note WHERE "身份证件号" = :id'),
            {"note": "已核实", "id": b.people["f_lifted"].number},
        )

    # f_lifted's poverty record leaves the registry and o_suspected the ledger; a month later a
    # run is made but not delivered, then the next run (same data) is: its previous run no longer
    # lists them, the target still does. A month on, two flags ended by date and one began.
    assert b.set_removed("poverty", "f_lifted") == 1
    b.set_status("o_suspected", "graduated")
    later = AS_OF + dt.timedelta(days=31)
    skipped = match.run_match(site, later)
    third = match.run_match(site, later)
    assert third.previous_run_id == skipped.run_id
    assert match_delivery.last_delivered_run(site, "student_flags") == first.run_id

    result = match_delivery.deliver_flags(site, third, actor="job:flags")
    assert result.baseline_run_id == first.run_id
    gone = {  # label -> school
        "f_lifted": "S001",
        "o_suspected": "S002",
        "f_dibao_endtoday": "S001",  # 低保 ended on the first run's day
        "f_dis_today": "S002",  # certificate valid through the first run's day
    }
    staying = (set(FLAGGED) - set(gone)) | set(LATER_FLAGGED)
    assert (result.flagged, result.cleared) == (len(staying), len(gone)) == (15, 4)
    # Everyone the target held is rewritten (new 标注日期); f_dibao_future is new.
    assert result.written == WriteResult(inserted=1, updated=18, unchanged=0)
    held = read_target(engine)
    assert set(held) == {b.people[label].number for label in staying | set(gone)}
    for label, school in gone.items():
        row = cleared_row(b, label, school, later)
        if label == "f_lifted":
            row["备注"] = "已核实"
        assert held[b.people[label].number] == row, label
    for label in staying:
        assert held[b.people[label].number] == expected_row(b, label, as_of=later), label

    entries = [
        e for e in audit.search(site, action="match.deliver") if e["detail"]["kind"] == "cleared"
    ]
    assert len(entries) == 1 and entries[0]["detail"]["run_id"] == third.run_id
    assert set(audit.get_entry(site, entries[0]["seq"])["subject_keys"]) == b.keys(*gone)

    again = match_delivery.deliver_flags(site, third, actor="job:flags")
    assert again.baseline_run_id == third.run_id
    assert (again.cleared, again.written) == (0, WriteResult(0, 0, 15))
    assert read_target(engine) == held
    engine.dispose()


@only_sqlite_store
def test_mariadb_table(county, mysql_url):
    site, b, engine = county(mysql_url)
    run = match.run_match(site, AS_OF)
    result = match_delivery.deliver_flags(site, run, actor="job:flags")
    assert result.written == WriteResult(18, 0, 0)
    assert read_target(engine) == all_flagged(b)
    assert match_delivery.deliver_flags(site, run, actor="job:flags").written == WriteResult(
        0, 0, 18
    )

    b.set_removed("disability", "f_dis2")
    later = match.run_match(site, AS_OF)  # same day: only f_dis2 changes
    result = match_delivery.deliver_flags(site, later, actor="job:flags")
    assert (result.cleared, result.written) == (1, WriteResult(0, 1, 17))
    held = read_target(engine)
    assert held[b.people["f_dis2"].number] == cleared_row(b, "f_dis2", "S002", AS_OF)
    engine.dispose()


@only_sqlite_store
def test_a_refused_write_is_audited_and_its_error_masks_the_id(county, mysql_url, caplog):
    site, b, engine = county(mysql_url)
    # A target whose 全国学籍号 column is a number: MariaDB refuses "G..." and quotes the value
    # (the student number holds the ID number) in its message.
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE `{TABLE}`")
    engine.dispose()
    engine = create_target(mysql_url, student_no_type=sa.BigInteger)
    # The Hong Kong pupil's student number ("G" + a permit number) holds no ID number: in key
    # order it would be refused first in about one run in ten, leaving nothing to mask.
    assert b.set_removed("students", "f_hk") == 1
    caplog.set_level(logging.DEBUG)
    run = match.run_match(site, AS_OF)
    with pytest.raises(SourceError) as info:
        match_delivery.deliver_flags(site, run, actor="job:flags", batch_size=100)
    message = str(info.value)
    assert re.search(r"Incorrect integer value: 'G\d{6}\*{8}\d{3}[\dX]'", message), message
    failed = audit.search(site, action="match.deliver_run")
    assert [e["outcome"] for e in failed] == ["failed"]
    assert "Incorrect integer value" in failed[0]["detail"]["error"]
    assert match_delivery.last_delivered_run(site, "student_flags") is None
    assert audit.search(site, action="match.deliver") == []  # nothing was written
    outside = message + str(failed) + caplog.text + store_text(site)
    for number in numbers_of(b):
        assert number not in outside
    engine.dispose()


# ---------------------------------------------------------------------------------------------
# Delivering into a file


@only_sqlite_store
def test_xlsx_file_gets_a_formatted_sheet(make_site, tmp_path):
    site = make_site(
        {
            "systems": {
                "flags_file": {
                    "plugin": "student_status",
                    "connector": "xlsx",
                    "path": "outbox/学生标注.xlsx",
                    "sheet": "学生标注",
                }
            },
            "match": {"flags_target": "flags_file"},
        }
    )
    b = MatchData(site)
    build_county(b)
    run = match.run_match(site, AS_OF)
    path = site.base_dir / "outbox" / "学生标注.xlsx"
    path.parent.mkdir()  # the connector writes files, it does not invent folders
    result = match_delivery.deliver_flags(site, run, actor="job:flags")
    assert result.written == WriteResult(18, 0, 0)

    wb = load_workbook(path)
    assert wb.sheetnames == ["学生标注"]
    ws = wb["学生标注"]
    header = [c.value for c in ws[1]]
    assert header == list(WRITTEN)
    assert all(c.font.bold for c in ws[1])
    assert ws.freeze_panes == "A2"
    id_col = header.index("身份证件号") + 1
    for row in range(2, ws.max_row + 1):
        cell = ws.cell(row, id_col)
        assert isinstance(cell.value, str) and cell.number_format == "@"  # never a float
    assert ws.column_dimensions["A"].width >= 18
    rows = {
        r[0]: dict(zip(header, r, strict=True)) for r in ws.iter_rows(min_row=2, values_only=True)
    }
    expected = {
        number: {k: v for k, v in row.items() if k != "备注"}
        for number, row in all_flagged(b).items()
    }
    assert rows == expected

    before = path.read_bytes()
    again = match_delivery.deliver_flags(site, run, actor="job:flags")
    assert again.written == WriteResult(0, 0, 18)
    assert path.read_bytes() == before  # nothing to change: the file is not rewritten


@only_sqlite_store
def test_csv_file_in_gbk(make_site):
    site = make_site(
        {
            "systems": {
                "flags_csv": {
                    "plugin": "student_status",
                    "connector": "csv",
                    "path": "学生标注.csv",
                    "encoding": "gbk",
                }
            },
            "match": {"flags_target": "flags_csv"},
        }
    )
    b = MatchData(site)
    build_county(b)
    run = match.run_match(site, AS_OF)
    assert match_delivery.deliver_flags(site, run, actor="job:flags").written == WriteResult(
        18, 0, 0
    )
    path = site.base_dir / "学生标注.csv"
    raw = path.read_bytes()
    lines = raw.decode("gbk").splitlines()
    assert lines[0].split(",") == list(WRITTEN)
    got = {line.split(",")[0]: line.split(",") for line in lines[1:]}
    want = {
        number: ["" if row[c] is None else row[c] for c in WRITTEN]
        for number, row in all_flagged(b).items()
    }
    assert got == want
    again = match_delivery.deliver_flags(site, run, actor="job:flags")
    assert again.written == WriteResult(0, 0, 18) and path.read_bytes() == raw


# ---------------------------------------------------------------------------------------------
# No ID in the clear outside the target; the command line


def run_cli(site: Any, *args: str) -> Result:
    config = site.base_dir / "gateway.toml"
    return CliRunner().invoke(
        cli, ["--config", str(config), "match", *args], catch_exceptions=False
    )


def store_text(site: Any) -> str:
    """Every value of every table of the store, as text."""
    parts = []
    with site.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                parts.append(repr(tuple(row)))
    return "\n".join(parts)


def numbers_of(b: MatchData) -> list[str]:
    return [p.number for p in b.people.values()] + [p.number.lower() for p in b.people.values()]


def test_ids_in_the_clear_only_in_the_target_table(county, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    site, b, engine = county()
    first = run_cli(site, "--as-of", AS_OF.isoformat())
    assert first.exit_code == 0, first.output
    assert "delivered the flags of run 1 to student_flags: 18 students flagged" in first.output
    b.set_removed("assistance", "f_spaced")
    second = run_cli(site, "--as-of", "2025-04-15", "--out", str(tmp_path / "lists.xlsx"))
    assert second.exit_code == 0, second.output
    # f_spaced lost 低保; f_dibao_endtoday and f_dis_today ended on the first run's day.
    assert "16 students flagged, 3 cleared" in second.output
    assert "cleared against run 1" in second.output

    held = read_target(engine)
    sent = {*FLAGGED, *LATER_FLAGGED}
    assert set(held) == {b.people[label].number for label in sent}  # the owner's own table
    outside = "\n".join(
        [
            store_text(site),
            first.output,
            second.output,
            caplog.text,
            *(str(e) for e in audit.search(site, limit=1000)),
        ]
    )
    for number in numbers_of(b):
        assert number not in outside
    entries = audit.search(site, action="match.deliver", limit=1000)
    assert {e["detail"]["recipient"] for e in entries} == {"student_flags"}
    assert {e["dataset"] for e in entries} == {"flags"}
    assert {e["outcome"] for e in entries} == {"delivered"}
    assert entries[-1]["fields"] == list(WRITTEN)
    keys = set()
    for e in entries:
        keys |= set(audit.get_entry(site, e["seq"])["subject_keys"])
    assert keys == b.keys(*sent)
    runs = audit.search(site, action="match.deliver_run")
    assert [(e["outcome"], e["detail"]["run_id"]) for e in runs] == [("ok", 2), ("ok", 1)]
    engine.dispose()


@only_sqlite_store
def test_command_line_options(county):
    site, b, engine = county()
    skipped = run_cli(site, "--as-of", AS_OF.isoformat(), "--no-deliver")
    assert skipped.exit_code == 0 and "delivered" not in skipped.output
    assert read_target(engine) == {}

    stored = run_cli(site, "--run", "1")  # a stored run is not delivered unless asked
    assert stored.exit_code == 0 and read_target(engine) == {}
    asked = run_cli(site, "--run", "1", "--deliver")
    assert asked.exit_code == 0, asked.output
    assert "delivered the flags of run 1" in asked.output
    assert read_target(engine) == all_flagged(b)
    assert match.list_runs(site)[0].run_id == 1  # --run computed nothing new
    engine.dispose()


@only_sqlite_store
def test_a_number_that_does_not_open_is_not_sent_and_exits_1(county):
    site, b, engine = county()
    students = Base.metadata.tables["students"]
    moved = b.key("f_dis2")
    with site.engine.begin() as conn:  # f_dis2's token sealed for someone else: it cannot open
        token = site.protector.seal(
            b.people["f_dis2"].number, dataset="students", field="id_number", record=b.key("f_hk")
        )
        conn.execute(
            sa.update(students).where(students.c.subject_key == moved).values(id_number=token)
        )
    result = run_cli(site, "--as-of", AS_OF.isoformat())
    assert result.exit_code == 1, result.output
    assert "17 students flagged" in result.output and "not sent: 1 unopened" in result.output
    held = read_target(engine)
    assert set(held) == {b.people[label].number for label in FLAGGED if label != "f_dis2"}
    done = audit.search(site, action="match.deliver_run")[0]
    assert done["outcome"] == "ok" and done["detail"]["skipped"] == {"unopened": 1}
    engine.dispose()


@only_sqlite_store
def test_deliver_without_a_target_is_a_usage_error(make_site):
    site = make_site()
    result = run_cli(site, "--as-of", AS_OF.isoformat(), "--deliver")
    assert result.exit_code == 2 and "flags_target" in result.output
    assert match.list_runs(site) == []


@only_sqlite_store
def test_a_broken_target_fails_before_the_run(county):
    site, b, engine = county(flags_mapping="student_status/poverty.out")
    result = run_cli(site, "--as-of", AS_OF.isoformat())
    assert result.exit_code == 2
    assert "match.flags_mapping: mapping 'student_status/poverty.out' must be an outbound" in (
        result.output
    )
    assert match.list_runs(site) == []  # nothing computed
    engine.dispose()


# ---------------------------------------------------------------------------------------------
# Configuration


def test_config_keys_are_checked() -> None:
    from gateway import config

    system = {"plugin": "student_status", "connector": "sql", "url": "sqlite://", "table": "t"}
    with pytest.raises(ConfigError, match=r"match\.flags_target: no system named 'nowhere'"):
        config.parse({"match": {"flags_target": "nowhere"}})
    with pytest.raises(ConfigError, match=r"match\.flags_mapping: needs flags_target"):
        config.parse({"match": {"flags_mapping": "student_status/flags.out"}})
    settings = config.parse(
        {
            "systems": {"xueji": system},
            "match": {"flags_target": "xueji", "flags_mapping": "student_status/flags.out"},
        }
    )
    assert (settings.match.flags_target, settings.match.flags_mapping) == (
        "xueji",
        "student_status/flags.out",
    )
    assert config.parse({}).match.flags_target is None


class ReadOnly(Connector):
    name = "readonly"
    options = ("path",)


@only_sqlite_store
def test_a_target_that_cannot_write_is_refused(make_site):
    site = make_site(
        {
            "systems": {"ro": {"plugin": "student_status", "connector": "readonly", "path": "x"}},
            "match": {"flags_target": "ro"},
        }
    )

    class Plugin:
        @hookimpl
        def register_connectors(self) -> list[type[Connector]]:
            return [ReadOnly]

    site.plugins.register(Plugin(), name="readonly")
    with pytest.raises(
        ConfigError, match=r"match\.flags_target: .*'readonly' connector.*cannot write"
    ):
        match_delivery.check_target(site)


@only_sqlite_store
def test_a_run_that_failed_is_not_delivered(county):
    site, b, engine = county()
    run = match.run_match(site, AS_OF)
    broken = match.MatchSummary(**{**vars(run), "status": "failed"})
    with pytest.raises(match.MatchError, match="failed: it has no flags"):
        match_delivery.deliver_flags(site, broken, actor="job:flags")
    assert read_target(engine) == {}
    engine.dispose()
