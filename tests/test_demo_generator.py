"""The demo generator: real native files (openpyxl XLSX, GBK and UTF-8-BOM CSV) and a ground truth
that matches them.

The central check re-derives every list of the ground truth from the files alone (reading them
back with openpyxl/csv and gateway.ids) and compares; another reads the files through the real
connectors and mappings and checks that exactly the planted rows fail, with the planted reason.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from gateway import ids
from gateway.demo import GroundTruth, generate, school_year_cutoff
from gateway.demo.generate import (
    AID_HEADER,
    CIVIL_HEADER,
    CIVIL_TEMP_HEADER,
    DISABILITY_HEADER,
    HOUSEHOLD_HEADER,
    POVERTY_HEADER,
    STUDENT_HEADER,
    iter_subjects,
)
from gateway.demo.writers import XlsxExport

AS_OF = date(2026, 11, 24)
STUDENTS = f"students/学籍导出_{AS_OF:%Y%m%d}.xlsx"
POVERTY = f"poverty/建档立卡人员_{AS_OF:%Y%m%d}.xlsx"
DISABILITY = "disability/残疾人名单.csv"
CIVIL = "civil_affairs/救助对象.xlsx"
CIVIL_TEMP = "civil_affairs/临时救助.xlsx"
HOUSEHOLD = "household/户籍人口.csv"
AID = "aid/资助发放名单.csv"
ID_COLUMN = {
    STUDENTS: "身份证件号",
    POVERTY: "证件号码",
    DISABILITY: "残疾人证号",
    CIVIL: "身份证号码",
    CIVIL_TEMP: "身份证号码",
    HOUSEHOLD: "公民身份号码",
    AID: "身份证件号",
}
ENCODING = {DISABILITY: "gbk", HOUSEHOLD: "utf-8-sig", AID: "utf-8-sig"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    out = tmp_path_factory.mktemp("demo")
    return out, generate(out, students=1500, seed=7, as_of=AS_OF)


# -- reading the files back -----------------------------------------------------------------


def read_rows(out: Path, rel: str, title_rows: int) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(sheet row or CSV line, {column: value})]) as a reader of the native file sees it."""
    if rel.endswith(".xlsx"):
        wb = openpyxl.load_workbook(out / rel, read_only=True)
        try:
            rows = list(wb.worksheets[0].iter_rows(values_only=True))
        finally:
            wb.close()
        header = [str(c) for c in rows[title_rows]]
        first = title_rows + 2
        data = [
            (first + i, dict(zip(header, r, strict=True)))
            for i, r in enumerate(rows[title_rows + 1 :])
        ]
        return header, data
    text = (out / rel).read_bytes().decode(ENCODING[rel])
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    return header, [(i + 2, dict(zip(header, r, strict=True))) for i, r in enumerate(reader)]


def _gb11643_ok(id18: str) -> bool:
    """Independent of gateway.ids: the check character of the standard."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(c) * w for c, w in zip(id18[:17], weights, strict=True))
    return "10X98765432"[total % 11] == id18[17]


def id_result(rel: str, row: dict[str, Any]) -> ids.IdResult:
    raw = row[ID_COLUMN[rel]]
    if rel == DISABILITY:  # 残疾人证号 = ID + category + grade
        raw = str(raw).strip().upper()[:18]
    return ids.check(raw, str(row.get("身份证件类型") or "1"))


def material(rel: str, row: dict[str, Any], result: ids.IdResult) -> str:
    assert result.value
    return ids.index_material(result.id_type, result.value)


@dataclass
class Seen:
    """What the files say about one person (valid rows only)."""

    student: dict[str, Any] | None = None
    datasets: set[str] = field(default_factory=set)
    poverty: dict[str, Any] | None = None
    disability: tuple[int, int] | None = None
    assistance: set[str] = field(default_factory=set)  # active types
    aid: bool = False  # granted in the current school year
    area: str | None = None
    village: str | None = None


CATEGORY = {"视力": 1, "听力": 2, "言语": 3, "肢体": 4, "智力": 5, "精神": 6, "多重": 7}
GRADE = {"一级": 1, "二级": 2, "三级": 3, "四级": 4}
FLAG = {
    "低保": "dibao",
    "特困供养": "tekun",
    "孤儿": "orphan",
    "事实无人抚养儿童": "unsupported_child",
}
POVERTY_TYPE = {
    None: "lifted",
    "脱贫不稳定户": "unstable",
    "边缘易致贫户": "marginal",
    "突发严重困难户": "hardship",
}


def read_world(out: Path, gt: GroundTruth) -> dict[str, Seen]:
    """Every person the valid rows of the files name, with what they say."""
    people: dict[str, Seen] = {}
    invalid = {(r["file"], r["row"]) for r in gt.invalid_rows}
    for rel, dataset in (
        (STUDENTS, "students"),
        (HOUSEHOLD, "residents"),
        (POVERTY, "poverty"),
        (DISABILITY, "disability"),
        (CIVIL, "assistance"),
        (CIVIL_TEMP, "assistance"),
        (AID, "aid"),
    ):
        _, rows = read_rows(out, rel, gt.files[rel].title_rows)
        for number, row in rows:
            result = id_result(rel, row)
            if not result.ok:
                assert (rel, number) in invalid
                continue
            p = people.setdefault(material(rel, row, result), Seen())
            p.datasets.add(dataset)
            village = row.get("户籍地村(社区)") or row.get("村(居)委会") or row.get("行政村")
            village = village or row.get("村(社区)")
            area = row.get("户籍地行政区划代码") or row.get("行政区划代码") or row.get("行政区划")
            area = area or row.get("户籍地行政区划") or row.get("区划代码")
            if dataset != "students" and dataset != "aid":
                p.village = p.village or village or None
                p.area = p.area or str(area)[:9]
            if dataset == "students":
                p.student = row
            elif dataset == "poverty":
                p.poverty = row
            elif dataset == "disability":
                p.disability = (CATEGORY[row["残疾类别"]], GRADE[row["残疾等级"]])
            elif dataset == "assistance":
                if row["状态"] == "正常" and not row["结束日期"] and row["救助类别"] in FLAG:
                    p.assistance.add(FLAG[row["救助类别"]])
            elif dataset == "aid":
                paid = date.fromisoformat(row["发放日期"])
                p.aid = p.aid or gt.cutoff < paid <= gt.as_of
    return people


def flags_of(p: Seen) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    if p.poverty:
        monitoring = p.poverty["监测对象类别"] or None
        flags["poverty_type"] = POVERTY_TYPE[monitoring]
        flags["poverty_household_type"] = p.poverty["户类型"]
        if monitoring:
            flags["monitoring_type"] = monitoring
            flags["risk_eliminated"] = p.poverty["风险是否消除"] == "是"
    if p.disability:
        flags["disability_category"], flags["disability_grade"] = p.disability
    for name in ("dibao", "tekun", "orphan", "unsupported_child"):
        if name in p.assistance:
            flags[name] = True
    return flags


def age_of(subject: str, p: Seen, cutoff: date) -> int:
    if p.student and p.student["身份证件类型"] != "1":
        birth = date.fromisoformat(
            f"{p.student['出生日期'][:4]}-{p.student['出生日期'][4:6]}-{p.student['出生日期'][6:]}"
        )
    else:
        birth = ids.birth_date(subject)
    return ids.age_at(birth, cutoff)


# -- tests ----------------------------------------------------------------------------------


def test_school_year_cutoff() -> None:
    assert school_year_cutoff(date(2026, 11, 24)) == date(2026, 8, 31)
    assert school_year_cutoff(date(2027, 3, 1)) == date(2026, 8, 31)
    assert school_year_cutoff(date(2026, 9, 1)) == date(2026, 8, 31)
    # the cut-off day itself is the last day of the school year that began a year before
    assert school_year_cutoff(date(2026, 8, 31)) == date(2025, 8, 31)


def test_files_have_the_native_layouts(demo: tuple[Path, GroundTruth]) -> None:
    out, gt = demo
    expected = {
        STUDENTS: (STUDENT_HEADER, 2),
        POVERTY: (POVERTY_HEADER, 0),
        DISABILITY: (DISABILITY_HEADER, 0),
        CIVIL: (CIVIL_HEADER, 1),
        CIVIL_TEMP: (CIVIL_TEMP_HEADER, 1),
        HOUSEHOLD: (HOUSEHOLD_HEADER, 0),
        AID: (AID_HEADER, 0),
    }
    assert set(gt.files) == set(expected)
    for rel, (header, titles) in expected.items():
        assert gt.files[rel].title_rows == titles
        got, rows = read_rows(out, rel, titles)
        assert got == list(header), rel
        assert len(rows) == gt.files[rel].rows_written, rel
    # the student export: two title rows, then the header, as the 学籍 system writes it
    wb = openpyxl.load_workbook(out / STUDENTS)
    ws = wb.active
    assert ws["A1"].value.startswith("丹寨县中小学生学籍信息")
    assert ws["A2"].value.startswith("导出单位：")
    assert ws["A3"].value == "全国学籍号" and ws["F3"].value == "身份证件号"
    assert "A1:O1" in {str(r) for r in ws.merged_cells.ranges}
    assert ws.freeze_panes == "A4"
    # the temporary-relief sheet lacks the optional village column (and still has the rest)
    assert "村(社区)" not in CIVIL_TEMP_HEADER and "村(社区)" in CIVIL_HEADER


def test_students_grades_ages_and_schools_agree(demo: tuple[Path, GroundTruth]) -> None:
    from gateway.demo.county import GRADES

    out, gt = demo
    schools = {s["code"]: s for s in gt.schools}
    _, rows = read_rows(out, STUDENTS, 2)
    statuses = Counter()
    for _, row in rows:
        born = date(int(row["出生日期"][:4]), int(row["出生日期"][4:6]), int(row["出生日期"][6:]))
        age = ids.age_at(born, gt.cutoff)
        grade = GRADES.index(row["年级"]) + 1
        school = schools[row["学校标识码"]]
        assert school["name"] == row["学校名称"]
        assert school["level"] == ("小学" if grade <= 6 else "初中")
        assert row["学校名称"].endswith("小学" if grade <= 6 else "中学")
        assert row["班级"].endswith("班")
        status = row["学籍状态"]
        statuses[status] += 1
        if status == "毕业":
            assert grade == 9 and age in (15, 16)
        else:  # on time (grade + 5 at the cut-off) or a year behind
            assert age - grade in (5, 6) or (grade == 9 and age in (15, 16)), (age, grade)
        assert (status == "转出") or not row["转入学校"]
        assert row["身份证件类型"] in ("1", "6", "7", "8", "A")
        if row["身份证件类型"] == "1":
            assert row["全国学籍号"][0] in "GL" and len(row["全国学籍号"]) == 19
        else:
            assert row["全国学籍号"][0] == "J"
        assert len(str(row["监护人联系电话"])) == 11
    assert set(statuses) == {"在读", "休学", "转出", "疑似辍学", "辍学", "毕业", "死亡"}
    assert statuses["在读"] / sum(statuses.values()) > 0.8


def test_csv_encodings_are_real(demo: tuple[Path, GroundTruth]) -> None:
    out, _ = demo
    raw = (out / DISABILITY).read_bytes()
    text = raw.decode("gbk")
    assert "残疾人证号" in text and not raw.startswith(b"\xef\xbb\xbf")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    for rel in (HOUSEHOLD, AID):
        raw = (out / rel).read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf"), rel
        assert raw.decode("utf-8-sig").startswith(ID_COLUMN[rel])
        assert b"\r\n" in raw  # written as the Windows tools write them


def test_every_valid_id_passes_and_every_planted_one_fails_with_its_code(
    demo: tuple[Path, GroundTruth],
) -> None:
    out, gt = demo
    planted = {(r["file"], r["row"]): r for r in gt.invalid_rows}
    seen_invalid = Counter()
    for rel, fc in gt.files.items():
        _, rows = read_rows(out, rel, fc.title_rows)
        for number, row in rows:
            result = id_result(rel, row)
            if (rel, number) in planted:
                spec = planted[(rel, number)]
                assert not result.ok and result.code == spec["code"], (rel, number)
                assert spec["field"] == ID_COLUMN[rel]
                seen_invalid[(rel, result.code)] += 1
                continue
            assert result.ok, (rel, number, result.code)
            if result.id_type != "1":
                continue
            assert result.value and _gb11643_ok(result.value)
            # sex and birth date agree with the number
            if "性别" in row:
                assert {"1": "男", "2": "女"}[ids.sex(result.value)] == row["性别"]
            born = ids.birth_date(result.value)
            if rel == STUDENTS:
                assert row["出生日期"] == f"{born:%Y%m%d}"
            if rel == HOUSEHOLD:
                assert row["出生日期"] == born.isoformat()
                assert 3 <= ids.age_at(born, gt.cutoff) <= 17
            if rel == POVERTY and result.converted:
                assert born.year < 2000 and ids.age_at(born, AS_OF) >= 18  # legacy: adults only
    for rel, fc in gt.files.items():
        assert {c: n for (r, c), n in seen_invalid.items() if r == rel} == fc.invalid
        assert fc.rows_valid == fc.rows_written - sum(fc.invalid.values())
    # every planted kind is there at this size
    kinds = {r["form"] for r in gt.invalid_rows}
    assert kinds == {
        "excel_numeric",
        "excel_sci",
        "bad_check_digit",
        "bad_birth_date",
        "bad_length",
    }
    messy = Counter()
    for fc in gt.files.values():
        messy.update(fc.messy_valid)
    for form in ("fifteen", "full_width", "lower_x", "apostrophe", "spaces", "inner_spaces"):
        assert messy[form] >= 1, form


def test_excel_damage_looks_like_excel(demo: tuple[Path, GroundTruth]) -> None:
    out, gt = demo
    damaged = [r for r in gt.invalid_rows if r["code"] == "excel_damaged"]
    rows = {
        rel: dict(read_rows(out, rel, gt.files[rel].title_rows)[1]) for rel in (STUDENTS, HOUSEHOLD)
    }
    for r in damaged:
        value = rows[r["file"]][r["row"]][ID_COLUMN[r["file"]]]
        if r["file"] == STUDENTS:
            assert isinstance(value, float)  # a numeric XLSX cell
        else:
            assert "E+17" in value and len(value.split("E")[0].replace(".", "")) == 15


def test_duplicates_are_exact_copies(demo: tuple[Path, GroundTruth]) -> None:
    out, gt = demo
    assert gt.duplicate_rows
    tables = {rel: dict(read_rows(out, rel, fc.title_rows)[1]) for rel, fc in gt.files.items()}
    for d in gt.duplicate_rows:
        rows = tables[d["file"]]
        assert rows[d["row"]] == rows[d["copy_of_row"]] and d["row"] > d["copy_of_row"]
    for rel, fc in gt.files.items():
        assert fc.duplicates == sum(1 for d in gt.duplicate_rows if d["file"] == rel)
        assert fc.quarantined() == {
            **fc.invalid,
            **({"duplicate": fc.duplicates} if fc.duplicates else {}),
        }


def test_ground_truth_lists_follow_from_the_files(demo: tuple[Path, GroundTruth]) -> None:
    """Every list re-derived from the files alone, by the rules in generate.py's docstring."""
    out, gt = demo
    world = read_world(out, gt)
    lo, hi = gt.compulsory_ages
    flags: dict[str, dict] = {}
    out_of_school: dict[str, dict] = {}
    suspended, unknown, rosters, gaps, home = set(), set(), {}, set(), {}
    overlaps: Counter[str] = Counter()
    registries_of = ("poverty", "disability", "assistance", "residents")
    for subject, p in world.items():
        f = flags_of(p)
        regs = [d for d in registries_of if d in p.datasets]
        status = p.student["学籍状态"] if p.student else None
        if p.student:
            overlaps["students"] += 1
            for d in regs:
                overlaps[f"students_in_{d}"] += 1
            if "aid" in p.datasets:
                overlaps["students_in_aid_granted"] += 1
            if f and status not in ("毕业", "死亡"):  # left the ledger: no flags
                overlaps["students_flagged"] += 1
                flags[subject] = {"status": status, "aid": p.aid, **f}
                if status == "在读" and not p.aid:
                    gaps.add(subject)
            if status in ("疑似辍学", "辍学", "休学"):
                rosters[subject] = (status, f)
            if status == "休学":
                suspended.add(subject)
            if status == "转出" and not p.student["转入学校"]:
                unknown.add(subject)
        if not regs:
            continue
        age = age_of(subject, p, gt.cutoff)
        if lo <= age <= hi and status in (None, "疑似辍学", "辍学"):
            out_of_school[subject] = {
                "area_code": p.area,
                "village": p.village,
                "registries": regs,
                "age": age,
                "student_status": status,
                "flags": f,
            }
        if "disability_category" in f and (subject in out_of_school or status == "休学"):
            home[subject] = ("out_of_school" if subject in out_of_school else "suspended", f)

    assert {
        k: {x: y for x, y in v.items() if x not in ("school_code", "area_code")}
        for k, v in gt.flags.items()
    } == flags
    assert {
        k: {
            x: v[x]
            for x in ("area_code", "village", "registries", "age", "student_status", "flags")
        }
        for k, v in gt.out_of_school.items()
    } == out_of_school
    assert set(gt.suspended) == suspended
    assert set(gt.transferred_out_unknown) == unknown
    assert {k: (v["status"], v["flags"]) for k, v in gt.rosters.items()} == rosters
    assert set(gt.aid_gaps) == gaps
    assert {
        k: (v["reason"], v["disability_category"], v["disability_grade"])
        for k, v in gt.home_teaching.items()
    } == {
        k: (reason, f["disability_category"], f["disability_grade"])
        for k, (reason, f) in home.items()
    }
    assert gt.overlaps == dict(overlaps)
    # distinct subjects per file
    for rel, fc in gt.files.items():
        _, rows = read_rows(out, rel, fc.title_rows)
        subjects = set()
        for _, row in rows:
            result = id_result(rel, row)
            if result.ok:
                subjects.add(material(rel, row, result))
        assert len(subjects) == fc.distinct_subjects, rel


def test_ground_truth_is_realistic_and_self_consistent(demo: tuple[Path, GroundTruth]) -> None:
    out, gt = demo
    lo, hi = gt.compulsory_ages
    assert (lo, hi) == (6, 15) and gt.cutoff == date(2026, 8, 31)
    students = gt.overlaps["students"]
    assert students + sum(gt.files[STUDENTS].invalid.values()) == 1500
    # registry overlaps in realistic proportions
    assert 0.08 < gt.overlaps["students_in_poverty"] / students < 0.17
    assert 0.005 < gt.overlaps["students_in_disability"] / students < 0.03
    dibao = sum(1 for f in gt.flags.values() if f.get("dibao"))
    monitoring = sum(1 for f in gt.flags.values() if f.get("monitoring_type"))
    assert 0.02 < dibao / students < 0.07
    assert 0.01 < monitoring / students < 0.06
    for name in ("tekun", "orphan", "unsupported_child"):
        assert any(f.get(name) for f in gt.flags.values()), name
    assert gt.overlaps["students_in_residents"] / students > 0.85
    # out of school: in range, some with a student record that is not active, from several registries
    assert 0.01 < len(gt.out_of_school) / students < 0.08
    for item in gt.out_of_school.values():
        assert lo <= item["age"] <= hi
        assert item["student_status"] in (None, "疑似辍学", "辍学")
        assert len(item["area_code"]) == 9 and item["area_code"].startswith("522636")
    assert {r for v in gt.out_of_school.values() for r in v["registries"]} == {
        "poverty",
        "disability",
        "assistance",
        "residents",
    }
    assert any(v["village"] is None for v in gt.out_of_school.values())  # only in 临时救助
    # statuses that are not out of school, and people who must not be listed
    for reason in (
        "graduated",
        "over_age",
        "under_age",
        "enrolled",
        "transferred_out",
        "suspended",
    ):
        assert gt.excluded.get(reason, 0) > 0, reason
    assert gt.status_counts["毕业"] > 0 and gt.status_counts["转出"] > 0
    assert set(gt.suspended) <= set(gt.rosters)
    assert all(gt.rosters[s]["status"] == "休学" for s in gt.suspended)
    assert gt.transferred_out_unknown and not set(gt.transferred_out_unknown) & set(
        gt.out_of_school
    )
    for s, item in gt.home_teaching.items():
        assert s in (gt.out_of_school if item["reason"] == "out_of_school" else gt.suspended)
        assert 1 <= item["disability_category"] <= 7 and 1 <= item["disability_grade"] <= 4
    assert {v["reason"] for v in gt.home_teaching.values()} == {"out_of_school", "suspended"}
    for s in gt.aid_gaps:
        assert gt.flags[s]["status"] == "在读" and gt.flags[s]["aid"] is False
    # the age boundaries around the cut-off
    ages = sorted(
        (v["birth_date"], v["in_range"], v["out_of_school"]) for v in gt.age_boundaries.values()
    )
    assert ("2020-08-31", True, True) in ages and ("2020-09-01", False, False) in ages
    assert ("2010-09-01", True, True) in ages and ("2010-08-31", False, False) in ages
    assert any(b.endswith("-02-29") for b, _, _ in ages)
    # non-resident documents on the roster, keyed by type + number
    kinds = {s.split(":")[0] for s in _student_subjects(out, gt) if ":" in s}
    assert kinds >= {"6", "7", "8", "A"}
    # 15-digit in the poverty registry, 18 elsewhere: the same person
    assert gt.same_person
    _, poverty = read_rows(out, POVERTY, 0)
    legacy = {
        ids.check(r["证件号码"]).value for _, r in poverty if len(str(r["证件号码"]).strip()) == 15
    }
    for s, forms in gt.same_person.items():
        assert forms["poverty"] == "15" and s in legacy
        assert set(forms.values()) == {"15", "18"}
    # aid granted last school year does not close this year's gap
    _, aid = read_rows(out, AID, 0)
    old = {ids.check(r["身份证件号"]).value for _, r in aid if r["发放日期"] <= "2026-08-31"}
    assert old & set(gt.aid_gaps)
    # a stopped benefit (停发) flags nobody
    _, civil = read_rows(out, CIVIL, 1)
    stopped = {ids.check(r["身份证号码"]).value for _, r in civil if r["状态"] == "停发"}
    active = {
        ids.check(r["身份证号码"]).value
        for _, r in civil
        if r["状态"] == "正常" and r["救助类别"] == "低保"
    }
    assert stopped
    assert not any(gt.flags.get(s, {}).get("dibao") for s in stopped - active)


def _student_subjects(out: Path, gt: GroundTruth) -> set[str]:
    _, rows = read_rows(out, STUDENTS, 2)
    subjects = set()
    for _, row in rows:
        result = id_result(STUDENTS, row)
        if result.ok:
            subjects.add(material(STUDENTS, row, result))
    return subjects


def test_same_seed_same_content_other_seed_other_content(
    demo: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    out, gt = demo
    again = generate(tmp_path / "again", students=1500, seed=7, as_of=AS_OF)
    assert again.to_json() == gt.to_json()
    for rel, fc in gt.files.items():
        assert read_rows(tmp_path / "again", rel, fc.title_rows) == read_rows(
            out, rel, fc.title_rows
        )
    other = generate(tmp_path / "other", students=1500, seed=8, as_of=AS_OF)
    assert set(other.out_of_school) != set(gt.out_of_school)


def test_json_round_trip_and_file(demo: tuple[Path, GroundTruth]) -> None:
    out, gt = demo
    on_disk = json.loads((out / GroundTruth.FILENAME).read_text(encoding="utf-8"))
    assert on_disk == json.loads(gt.to_json())
    back = GroundTruth.from_json(gt.to_json())
    assert back == gt
    assert GroundTruth.load(out / GroundTruth.FILENAME) == gt
    assert "IN THE CLEAR" in (GroundTruth.__doc__ or "")


def test_summary_carries_no_id(demo: tuple[Path, GroundTruth]) -> None:
    _, gt = demo
    text = json.dumps(gt.summary(), ensure_ascii=False)
    subjects = set(iter_subjects(gt)) | set(gt.same_person) | set(gt.age_boundaries)
    assert len(subjects) > 100
    for s in subjects:
        assert s not in text and s.split(":")[-1] not in text
    assert gt.summary()["lists"]["out_of_school"] == len(gt.out_of_school)


def test_files_go_through_the_real_connectors_and_mappings(demo: tuple[Path, GroundTruth]) -> None:
    """What the sync engine will see: exactly the planted rows fail, each with its planted code."""
    from gateway.connectors import ConnectorContext
    from gateway.mapping import load_mapping, plugin_context
    from gateway.plugins import connectors, get_plugin_manager

    out, gt = demo
    pm = get_plugin_manager()
    transforms, tables = plugin_context(pm)
    specs = {
        STUDENTS: "student_status/students",
        POVERTY: "poverty_registry/poverty_export",
        DISABILITY: "disability_federation/disability",
        CIVIL: "civil_affairs/assistance",
        CIVIL_TEMP: "civil_affairs/assistance",
        HOUSEHOLD: "household_registry/residents",
    }
    planted = {(r["file"], r["row"]): r["code"] for r in gt.invalid_rows}
    for rel, spec in specs.items():
        mapper = load_mapping(spec, transforms=transforms, code_tables=tables)
        kind = rel.rsplit(".", 1)[1]
        connector = connectors(pm)[kind](
            {"path": rel}, ConnectorContext(system=mapper.system, base_dir=str(out))
        )
        failed: dict[int, set[str]] = {}
        count = 0
        converted = 0
        try:
            for batch in connector.read(None, batch_size=500):
                for row in batch.rows:
                    count += 1
                    record, errors = mapper.map_checked(row.data)
                    codes = {c for _, c, _ in row.problems} | {e.code for e in errors}
                    converted += bool(record.get("converted"))
                    if codes:
                        failed[int(row.position.rsplit(":", 1)[1])] = codes
        finally:
            connector.close()
        assert count == gt.files[rel].rows_written, rel
        assert set(failed) == {row for f, row in planted if f == rel}, rel
        for row, codes in failed.items():
            assert planted[(rel, row)] in codes, (rel, row, codes)
        if rel == POVERTY:
            assert converted == gt.files[rel].messy_valid["fifteen"]


def test_xlsx_export_splits_past_the_row_limit(tmp_path: Path) -> None:
    export = XlsxExport(
        tmp_path, "x/导出.xlsx", "Sheet", ["a", "b"], title_rows=["标题"], max_rows=5
    )
    positions = [export.append([i, str(i)]) for i in range(7)]
    export.close()
    # 5 sheet rows = title + header + 3 data rows per file
    assert export.files == ["x/导出.xlsx", "x/导出_2.xlsx", "x/导出_3.xlsx"]
    assert positions[0] == ("x/导出.xlsx", "Sheet", 3)
    assert positions[2] == ("x/导出.xlsx", "Sheet", 5)
    assert positions[3] == ("x/导出_2.xlsx", "Sheet", 3)
    assert positions[6] == ("x/导出_3.xlsx", "Sheet", 3)
    wb = openpyxl.load_workbook(tmp_path / "x/导出_2.xlsx", read_only=True)
    rows = list(wb.active.iter_rows(values_only=True))
    wb.close()
    assert rows[0][0] == "标题" and rows[1:] == [("a", "b"), (3, "3"), (4, "4"), (5, "5")]


def test_small_rosters_and_bad_sizes(tmp_path: Path) -> None:
    gt = generate(tmp_path / "small", students=60, seed=3, as_of=AS_OF)
    written = gt.files[STUDENTS].rows_written - gt.files[STUDENTS].duplicates
    assert written == 60
    with pytest.raises(ValueError):
        generate(tmp_path / "none", students=0)


def test_school_directory_scales_with_unique_names_and_codes() -> None:
    import random

    from gateway.demo.county import TOWNSHIPS, build_schools

    for students in (60, 2000, 1_000_000):
        directory = build_schools(students, random.Random(1))
        codes = [s.code for s in directory.schools]
        names = [s.name for s in directory.schools]
        assert len(set(codes)) == len(codes) and len(set(names)) == len(names)
        assert all(len(c) == 10 and c.isdigit() for c in codes)
        for t in TOWNSHIPS:  # every township has both levels
            assert (
                directory.by_township[(t.code, "小学")] and directory.by_township[(t.code, "初中")]
            )
    assert len(directory.schools) > 1000
    assert "丹寨县龙泉镇第一百小学" in names


def test_sync_and_match_on_the_demo_reproduce_the_ground_truth(
    demo: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    """The generator's promise to the demo: each sync job reads and quarantines what the ground
    truth says, and the match lists exactly its subjects (SQLite store)."""
    from sqlalchemy import select

    match = pytest.importorskip("gateway.match")
    from gateway.site import Site
    from gateway.store import Base
    from gateway.store.matches import MatchRow
    from gateway.sync import run_job
    from tests.fixtures.sites import write_site

    out, gt = demo
    systems = {
        "student_status": ("xlsx", "students/*.xlsx", "student_status/students", "students"),
        "poverty_registry": (
            "xlsx",
            "poverty/*.xlsx",
            "poverty_registry/poverty_export",
            "poverty",
        ),
        "disability_federation": (
            "csv",
            DISABILITY,
            "disability_federation/disability",
            "disability",
        ),
        "civil_affairs": ("xlsx", "civil_affairs/*.xlsx", "civil_affairs/assistance", "assistance"),
        "household_registry": ("csv", HOUSEHOLD, "household_registry/residents", "residents"),
    }
    config = {
        "systems": {
            name: {"plugin": name, "connector": c, "path": str(out / p), "mapping": m}
            for name, (c, p, m, _) in systems.items()
        },
        "jobs": {
            name: {"source": name, "dataset": d, "retries": 0} for name, (*_, d) in systems.items()
        },
    }
    site = Site.from_config(write_site(tmp_path / "site", f"sqlite:///{tmp_path}/gw.db", config))
    Base.metadata.create_all(site.engine)
    try:
        for name in systems:
            summary = run_job(site, name)
            files = [
                fc for fc in gt.files.values() if fc.system == name and fc.dataset != "aid_granted"
            ]
            assert summary.read == sum(fc.rows_written for fc in files), name
            assert summary.quarantined == sum(sum(fc.quarantined().values()) for fc in files), name
        result = match.run_match(site, AS_OF, actor="user:demo-test")
        with site.engine.connect() as conn:
            rows = conn.execute(
                select(MatchRow.list_name, MatchRow.subject_key).where(
                    MatchRow.run_id == result.run_id
                )
            ).all()
        got: dict[str, set[str]] = {}
        for list_name, key in rows:
            got.setdefault(list_name, set()).add(key)
        blind = site.protector.blind_index
        want = {
            "flags": gt.flags,
            "out_of_school": gt.out_of_school,
            "suspended": gt.suspended,
            "transfer_check": gt.transferred_out_unknown,
            "home_teaching": gt.home_teaching,
            "roster_suspected_dropout": {
                s for s, v in gt.rosters.items() if v["status"] == "疑似辍学"
            },
            "roster_dropout": {s for s, v in gt.rosters.items() if v["status"] == "辍学"},
            "roster_suspended": {s for s, v in gt.rosters.items() if v["status"] == "休学"},
        }
        for list_name, subjects in want.items():
            assert got.get(list_name, set()) == {blind(s) for s in subjects}, list_name
    finally:
        site.engine.dispose()
