"""``gateway mappings check|preview`` as a user runs them."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from openpyxl import Workbook

from gateway import ids
from gateway.commands.mappings import mappings_group
from gateway.mapping import builtin_mappings
from gateway.site import LazySite


def make_id(birth: str, seq: str) -> str:
    first17 = "420106" + birth + seq
    return first17 + ids.check_char(first17)


KIDS = [make_id("20120901", "042"), make_id("20110315", "013"), make_id("20130101", "022")]
NAMES = ["王小花", "李小明", "赵雨"]
PHONE = "13912345678"
HEADER = [
    "全国学籍号", "姓名", "性别", "出生日期", "身份证件类型", "身份证件号", "学校标识码", "学校名称", "年级",
    "班级", "学籍状态", "转入学校", "户籍地行政区划代码", "户籍地村(社区)", "监护人联系电话",
]  # fmt: skip


def rows() -> list[list[str]]:
    sexes, births = ["女", "男", "女"], ["20120901", "20110315", "20130101"]
    return [
        [
            "G" + kid,
            name,
            sex,
            birth,
            "1",
            kid,
            "2142000123",
            "武昌区第一小学",
            "五年级",
            "2班",
            "在读",
            "",
            "420106003000",
            "中南社区",
            PHONE,
        ]  # fmt: skip
        for kid, name, sex, birth in zip(KIDS, NAMES, sexes, births, strict=True)
    ]


def run(tmp_path: Path, *args: str) -> tuple[int, str]:
    runner = CliRunner()
    result = runner.invoke(
        mappings_group, list(args), obj=LazySite(tmp_path / "absent.toml"), catch_exceptions=False
    )
    return result.exit_code, result.output


def assert_nothing_in_clear(output: str) -> None:
    for kid in KIDS:
        assert kid not in output
        assert kid[6:14] + kid[14:] not in output  # not even the part after the area code
    for name in NAMES:
        assert name not in output
    assert PHONE not in output


def test_check_shipped_mappings_is_clean(tmp_path: Path) -> None:
    code, out = run(tmp_path, "check")
    assert code == 0, out
    assert out.count("ok: ") == len(builtin_mappings())
    code, out = run(tmp_path, "check", "student_status/students", "civil_affairs/assistance")
    assert code == 0 and out.count("ok: ") == 2


def test_check_reports_lines_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[mapping]\n"
        'name = "x"\n'
        'system = "student_status"\n'
        'dataset = "students"\n'
        'direction = "inbound"\n'
        'version = "1"\n'
        "\n"
        "[fields.id_number]\n"
        'from = "身份证件号"\n'
        'transforms = ["id_number", "frobnicate"]\n'
        "[fields.name]\n"
        'from = "姓名"\n'
        "[fields.status]\n"
        'from = "学籍状态"\n'
        'transforms = ["code:学籍状态表"]\n',
        encoding="utf-8",
    )
    code, out = run(tmp_path, "check", str(bad))
    assert code == 1
    lines = out.strip().splitlines()
    assert f"{bad}:10: fields.id_number.transforms[1]: unknown transform 'frobnicate'" in lines[0]
    assert f"{bad}:15: fields.status.transforms[0]: unknown code table '学籍状态表'" in lines[1]
    # a good file beside a bad one: both reported
    code, out = run(tmp_path, "check", "student_status/students", str(bad))
    assert code == 1 and "ok: " in out


def test_check_missing_file_exits_2(tmp_path: Path) -> None:
    code, out = run(tmp_path, "check", str(tmp_path / "nope.toml"), "student_status/students")
    assert code == 2
    assert "nope.toml: no such mapping file" in out and "ok: " in out


def test_preview_csv_masks_ids_names_and_phones(tmp_path: Path) -> None:
    sample = tmp_path / "学籍.csv"
    with sample.open("w", encoding="gbk", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows())
    code, out = run(tmp_path, "preview", "student_status/students", str(sample), "--rows", "2")
    assert code == 0, out
    assert_nothing_in_clear(out)
    assert ids.mask(KIDS[0]) in out and ids.mask(KIDS[1]) in out
    assert ids.mask(KIDS[2]) not in out  # only the rows asked for
    assert "王**" in out and "enrolled" in out and "420106003" in out
    assert "2 row(s) shown, 0 with problems" in out


def test_preview_xlsx_with_title_rows_reports_problems_masked(tmp_path: Path) -> None:
    data = rows()
    data[1][5] = KIDS[1][:-1] + ("0" if KIDS[1][-1] != "0" else "1")  # bad check digit
    data[2][3] = "20130102"  # birth date differs from the ID's
    wb = Workbook()
    ws = wb.active
    ws.append(["武昌区学籍信息导出"])
    ws.append(["导出时间: 2024-09-10"])
    ws.append(HEADER)
    for r in data:
        ws.append(r)
    sample = tmp_path / "学籍.xlsx"
    wb.save(sample)
    code, out = run(tmp_path, "preview", "student_status/students", str(sample))
    assert code == 1
    assert_nothing_in_clear(out)
    assert data[1][5] not in out
    assert "id_number: bad_check_digit" in out and "birth_date: birth_date_mismatch" in out
    assert "!Sheet:5" in out  # the row's position in the workbook
    assert "3 row(s) shown, 2 with problems" in out


def test_preview_reports_a_missing_column(tmp_path: Path) -> None:
    sample = tmp_path / "s.csv"
    keep = [i for i, h in enumerate(HEADER) if h != "学籍状态"]
    with sample.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow([HEADER[i] for i in keep])
        w.writerows([[r[i] for i in keep] for r in rows()])
    code, out = run(tmp_path, "preview", "student_status/students", str(sample), "--rows", "1")
    assert code == 1
    assert "missing required column(s): 学籍状态" in out and "status: required" in out
    assert_nothing_in_clear(out)


def test_preview_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    obj = LazySite(tmp_path / "absent.toml")
    result = runner.invoke(
        mappings_group, ["preview", "student_status/poverty.out", str(tmp_path / "x.csv")], obj=obj
    )
    assert result.exit_code != 0 and "outbound" in str(result.exception)
    sample = tmp_path / "s.json"
    sample.write_text("{}", encoding="utf-8")
    result = runner.invoke(
        mappings_group, ["preview", "student_status/students", str(sample)], obj=obj
    )
    assert "cannot preview a .json file" in str(result.exception)


def test_gateway_command_end_to_end(tmp_path: Path) -> None:
    """The installed `gateway` entry point: exit codes and the error line, no traceback."""
    gateway = Path(sys.executable).parent / "gateway"
    if not gateway.exists():
        pytest.skip("the gateway console script is not installed in this environment")
    env = {**os.environ, "GATEWAY_CONFIG": str(tmp_path / "absent.toml")}
    ok = subprocess.run(
        [gateway, "mappings", "check", "household_registry/residents"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert ok.returncode == 0 and "ok: " in ok.stdout
    bad = tmp_path / "broken.toml"
    bad.write_text("[mapping\n", encoding="utf-8")
    res = subprocess.run(
        [gateway, "mappings", "check", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert (
        res.returncode == 1 and f"{bad}:1: (toml):" in res.stdout and "Traceback" not in res.stderr
    )
    res = subprocess.run(
        [gateway, "mappings", "preview", str(bad), str(tmp_path / "s.csv")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert (
        res.returncode == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    )


def test_check_uses_the_site_copies_and_blocked_plugins(tmp_path: Path) -> None:
    from gateway.mapping import builtin_mapping_path
    from tests.fixtures.sites import write_site

    config = write_site(
        tmp_path / "site",
        f"sqlite:///{tmp_path / 'g.db'}",
        {"plugins": {"blocked": ["civil_affairs"]}},
    )
    copy = tmp_path / "site" / "mappings" / "student_status" / "students.toml"
    copy.parent.mkdir(parents=True)
    text = builtin_mapping_path("student_status/students").read_text(encoding="utf-8")
    copy.write_text(text.replace('"code:student_status"', '"code:学籍"'), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(
        mappings_group,
        ["check", "student_status/students", "civil_affairs/assistance"],
        obj=LazySite(config),
    )
    assert result.exit_code == 1
    out = result.output
    line = text.splitlines().index('transforms = ["strip", "code:student_status"]') + 1
    assert f"{copy}:{line}: fields.status.transforms[1]: unknown code table '学籍'" in out
    # the civil-affairs plugin is blocked on this site: its code tables are not there
    assert "assistance.toml" in out and "unknown code table 'assistance_type'" in out
