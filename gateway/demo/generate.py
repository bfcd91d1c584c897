"""A synthetic county's people, their records in every department's system, the mess real exports
contain, and the ground truth of everything planted.

The generator walks the county household by household (plus migrant students and students with
non-resident documents) and writes each person's rows to every file they belong in as it goes, so
memory stays flat however many students are asked for. Right after a household is written, each
member's facts are settled into the ground truth *as the gateway can see them*: a row planted as
invalid (Excel-damaged ID, bad check digit ...) hides that record from the comparisons, exactly as
quarantine will.

The rules the ground truth applies (the match must reach the same lists):

- Age is the age at the school-year cut-off: the last 31 August strictly before ``as_of`` (the
  school year runs from the day after one cut-off to the next; for 2026-11-24 the cut-off is
  2026-08-31, for 2026-08-31 it is 2025-08-31). Compulsory range [6, 15], inclusive.
- Student flags (for students not 毕业 / 死亡, who have left the ledger) come from *visible*
  registry rows: 建档立卡 (poverty_type lifted/unstable/marginal/
  hardship, monitoring type for 监测对象), 残疾 (category, grade), and the *active* civil-affairs
  assistance (状态 正常 and no 结束日期): 低保, 特困, 孤儿, 事实无人抚养. A 停发 row flags nothing.
- Out of school: a person aged 6-15 found in at least one of the datasets poverty, disability,
  assistance, residents (any valid row: a stopped 低保 row still says the child lives here) whose
  visible student record is missing or has status 疑似辍学 / 辍学. Township and village: those of
  the first registry row in the order residents, poverty, disability, assistance (the
  temporary-relief sheet has no village column: a child known only there has village null).
  Not out of school: 在读; 休学 (reported in ``suspended``); 转出 with a destination; 转出 without
  one (reported in ``transferred_out_unknown`` for checking); 毕业; 死亡.
- Home teaching: out-of-school or 休学 persons with a visible disability certificate.
- Rosters: students with status 疑似辍学 / 辍学 / 休学, each with its flags.
- Aid gaps: flagged students with status 在读 who have no visible aid-granted row dated in the
  current school year (after the cut-off, on or before ``as_of``); some of them have a row from
  the previous school year, which does not count.
- Planted duplicates are exact copies of a valid row: the person is counted once.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from ..ids import check_char
from . import county as C
from .writers import CsvExport, Position, XlsxExport

# --------------------------------------------------------------------------------------------
# The files and their layouts (team.md, "Native export layouts")

STUDENT_HEADER = (
    "全国学籍号",
    "姓名",
    "性别",
    "出生日期",
    "身份证件类型",
    "身份证件号",
    "学校标识码",
    "学校名称",
    "年级",
    "班级",
    "学籍状态",
    "转入学校",
    "户籍地行政区划代码",
    "户籍地村(社区)",
    "监护人联系电话",
)
POVERTY_HEADER = (
    "户编号",
    "人编号",
    "姓名",
    "证件号码",
    "性别",
    "与户主关系",
    "户类型",
    "监测对象类别",
    "风险是否消除",
    "行政区划",
    "行政村",
)
DISABILITY_HEADER = (
    "姓名",
    "性别",
    "残疾人证号",
    "残疾类别",
    "残疾等级",
    "发证日期",
    "有效期至",
    "户籍地行政区划",
    "村(社区)",
)
CIVIL_HEADER = (
    "姓名",
    "身份证号码",
    "性别",
    "救助类别",
    "户编号",
    "开始日期",
    "结束日期",
    "状态",
    "区划代码",
    "村(社区)",
)
# The temporary-relief workbook is exported by another desk without the optional village column.
CIVIL_TEMP_HEADER = CIVIL_HEADER[:-1]
HOUSEHOLD_HEADER = (
    "公民身份号码",
    "姓名",
    "性别",
    "出生日期",
    "行政区划代码",
    "村(居)委会",
    "住址",
)
AID_HEADER = ("身份证件号", "姓名", "资助项目", "发放日期")

# file key -> (system, canonical dataset, ID column)
FILE_SYSTEMS: dict[str, tuple[str, str, str]] = {
    "students": ("student_status", "students", "身份证件号"),
    "poverty": ("poverty_registry", "poverty", "证件号码"),
    "disability": ("disability_federation", "disability", "残疾人证号"),
    "civil": ("civil_affairs", "assistance", "身份证号码"),
    "civil_temp": ("civil_affairs", "assistance", "身份证号码"),
    "household": ("household_registry", "residents", "公民身份号码"),
    "aid": ("student_status", "aid_granted", "身份证件号"),
}
REGISTRY_DATASETS = ("poverty", "disability", "assistance", "residents")

SEX_LABEL = {"1": "男", "2": "女"}
DISABILITY_CATEGORIES = {
    1: "视力",
    2: "听力",
    3: "言语",
    4: "肢体",
    5: "智力",
    6: "精神",
    7: "多重",
}
DISABILITY_GRADES = {1: "一级", 2: "二级", 3: "三级", 4: "四级"}
POVERTY_TYPE = {
    None: "lifted",
    "脱贫不稳定户": "unstable",
    "边缘易致贫户": "marginal",
    "突发严重困难户": "hardship",
}
ASSISTANCE_FLAG = {
    "低保": "dibao",
    "特困供养": "tekun",
    "孤儿": "orphan",
    "事实无人抚养儿童": "unsupported_child",
}
ACTIVE_STATUS = "在读"
LEFT_LEDGER = ("毕业", "死亡")  # students who left the ledger carry no flags
ROSTER_STATUSES = ("疑似辍学", "辍学", "休学")
OUT_OF_SCHOOL_STATUSES = (None, "疑似辍学", "辍学")
AID_PROJECTS = ("义务教育家庭经济困难学生生活补助", "残疾儿童少年助学金", "营养改善计划膳食补助")

# Invalid ID forms and the reason code gateway.ids reports for each.
INVALID_KINDS = {
    "excel_numeric": "excel_damaged",  # XLSX numeric cell, 15 significant digits kept
    "excel_sci": "excel_damaged",  # "5.22636201505120E+17" text in a CSV
    "bad_check_digit": "bad_check_digit",
    "bad_birth_date": "bad_birth_date",
    "bad_length": "bad_length",
}
_FULL_WIDTH = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")

# How many of each messy form each file gets: (base, one more per this many expected rows).
MESS_PLAN: dict[str, dict[str, tuple[int, int]]] = {
    "students": {
        "excel_numeric": (2, 2000),
        "bad_check_digit": (1, 5000),
        "bad_birth_date": (1, 10000),
        "full_width": (2, 1000),
        "lower_x": (2, 1500),
        "apostrophe": (2, 1000),
        "spaces": (2, 1000),
        "inner_spaces": (1, 4000),
        "duplicate": (2, 1000),
    },
    "household": {
        "excel_sci": (2, 2000),
        "bad_check_digit": (1, 5000),
        "bad_length": (1, 10000),
        "full_width": (2, 1500),
        "spaces": (2, 1500),
        "lower_x": (1, 3000),
        "duplicate": (3, 1000),
    },
    "poverty": {
        "lower_x": (1, 3000),
        "spaces": (1, 3000),
        "duplicate": (1, 2000),
    },
    "disability": {
        "bad_check_digit": (1, 10000),
        "lower_x": (1, 3000),
        "spaces": (1, 3000),
        "duplicate": (1, 5000),
    },
    "civil": {
        "bad_birth_date": (1, 10000),
        "full_width": (1, 3000),
        "apostrophe": (2, 2000),
        "duplicate": (1, 3000),
    },
    "civil_temp": {"apostrophe": (1, 3000)},
    "aid": {"lower_x": (1, 3000), "apostrophe": (1, 3000), "duplicate": (1, 3000)},
}
# Rows each file is expected to get per student (to spread the planted forms over the file).
EXPECTED_ROWS_PER_STUDENT = {
    "students": 1.0,
    "household": 1.4,
    "poverty": 0.3,
    "disability": 0.04,
    "civil": 0.1,
    "civil_temp": 0.03,
    "aid": 0.15,
}


# --------------------------------------------------------------------------------------------
# Dates and ID numbers

_CHECK = "10X98765432"  # the check characters, to pick a wrong one


def school_year_cutoff(as_of: date, month: int = 8, day: int = 31) -> date:
    """The cut-off of the school year containing ``as_of``: the last ``month-day`` strictly before
    it (a school year runs from the day after one cut-off to the next cut-off, inclusive)."""
    cutoff = date(as_of.year, month, day)
    return cutoff if cutoff < as_of else date(as_of.year - 1, month, day)


def age_at(birth: date, at: date) -> int:
    return at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))


def _years_before(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year - years)
    except ValueError:  # 29 February in a common year
        return d.replace(year=d.year - years, day=28)


def _birth_for_age(rng: random.Random, age: int, cutoff: date) -> date:
    """A birth date giving exactly ``age`` at ``cutoff``."""
    latest = _years_before(cutoff, age)
    earliest = _years_before(cutoff, age + 1) + timedelta(days=1)
    return date.fromordinal(rng.randint(earliest.toordinal(), latest.toordinal()))


class _IdAllocator:
    """Unique 18-digit IDs: per (area, birth date, sex) a counter walks the 3-digit sequence space
    (odd = male, even = female) in a scrambled order; a full slot spills to a neighbouring area."""

    def __init__(self) -> None:
        self._used: dict[tuple[str, int], int] = {}

    def new(self, area: str, birth: date, sex: str) -> str:
        ordinal = birth.toordinal()
        areas = (area, *C.OVERFLOW_AREAS)
        for a in areas:
            key = (a, ordinal * 2 + (sex == "1"))
            k = self._used.get(key, 0)
            if k < 499:
                self._used[key] = k + 1
                slot = (ordinal * 31 + int(a) + k * 37) % 499  # 37 is coprime with 499
                seq = slot * 2 + 1 if sex == "1" else slot * 2 + 2
                first17 = f"{a}{birth:%Y%m%d}{seq:03d}"
                return first17 + check_char(first17)
        raise RuntimeError("ID space exhausted for one birth date")  # not reachable below 10M


def _bad_birth_date(id18: str) -> str:
    """The same person's number with a day that does not exist in the birth month."""
    year, month = id18[6:10], int(id18[10:12])
    fake = f"{year}0230" if month in (1, 2, 3, 5, 7, 8, 10, 12) else f"{year}{month:02d}31"
    first17 = id18[:6] + fake + id18[14:17]
    return first17 + check_char(first17)


def _render_id(kind: str | None, id18: str) -> Any:
    """The ID as a messy export carries it."""
    if kind is None:
        return id18
    if kind == "full_width":
        return id18.translate(_FULL_WIDTH)
    if kind == "lower_x":
        return id18[:-1] + "x"
    if kind == "apostrophe":
        return "'" + id18
    if kind == "spaces":
        return f" {id18}\t"
    if kind == "inner_spaces":
        return f"{id18[:6]} {id18[6:14]} {id18[14:]}"
    if kind == "excel_numeric":
        return float(f"{int(id18):.14e}")  # what Excel keeps: 15 significant digits
    if kind == "excel_sci":
        return f"{int(id18):.14E}"
    if kind == "bad_check_digit":
        wrong = _CHECK[(_CHECK.index(id18[-1]) + 3) % 11]
        return id18[:17] + wrong
    if kind == "bad_birth_date":
        return _bad_birth_date(id18)
    if kind == "bad_length":
        return id18[:17]
    if kind == "fifteen":
        return id18[:6] + id18[8:17]
    raise ValueError(kind)


def _eligible(kind: str, id18: str, victim_ok: bool, legacy15: bool) -> bool:
    if legacy15:  # a legacy number is already the row's mess
        return False
    if kind == "lower_x":
        return id18.endswith("X")
    if kind in ("excel_numeric", "excel_sci"):
        return victim_ok and not id18.endswith("X")
    if kind in INVALID_KINDS:
        return victim_ok
    return True


# --------------------------------------------------------------------------------------------
# The ground truth


@dataclass
class FileCounts:
    """What one native file holds. ``rows_written`` counts data rows (duplicates included, title
    and header rows excluded); ``rows_valid`` = rows_written - sum(invalid)."""

    system: str
    dataset: str
    format: str  # "xlsx" or "csv:<encoding>"
    title_rows: int = 0
    columns: list[str] = field(default_factory=list)
    rows_written: int = 0
    rows_valid: int = 0
    duplicates: int = 0  # exact copies of an earlier valid row
    invalid: dict[str, int] = field(default_factory=dict)  # reason code -> rows
    messy_valid: dict[str, int] = field(default_factory=dict)  # messy-but-valid form -> rows
    distinct_subjects: int = 0  # persons with at least one valid row
    parts: list[str] = field(default_factory=list)  # files, when an export is split

    def quarantined(self) -> dict[str, int]:
        """What a sync run of this file must quarantine, by reason: the invalid rows plus the
        duplicates (the sync engine keeps the first row of a record key, quarantines later ones
        with reason ``duplicate``)."""
        out = dict(self.invalid)
        if self.duplicates:
            out["duplicate"] = self.duplicates
        return dict(sorted(out.items()))


@dataclass
class GroundTruth:
    """Everything the generator planted: the test oracle for the sync engine and the match.

    This object and ``ground_truth.json`` CONTAIN ID NUMBERS IN THE CLEAR: every list is keyed by
    subject material (the normalised 18-character ID for resident IDs, ``"<type>:<number>"`` for
    other documents, i.e. ``gateway.ids.index_material``). It never leaves the demo's test folder;
    the demo command must print ``summary()`` only, never this file or its keys.

    Shape of ``to_json()`` (all dates ISO strings):

    - ``seed``, ``students``, ``as_of``, ``cutoff``, ``compulsory_ages`` [lo, hi], ``county``
      {code, name, townships: [{area_code, name, villages: [...]}]}, ``schools`` [{code, name,
      area_code, level}]
    - ``files``: relpath -> FileCounts (system, dataset, format, title_rows, columns, rows_written,
      rows_valid, duplicates, invalid {code: n}, messy_valid {form: n}, distinct_subjects, parts)
    - ``invalid_rows``: [{file, sheet, row, field, code, form}] (no ID values)
    - ``duplicate_rows``: [{file, sheet, row, copy_of_row}]
    - ``overlaps``: {"students": n, "students_in_<dataset>": n, "students_flagged": n, ...}
    - ``status_counts``: visible students per 学籍状态
    - ``flags``: subject -> {status, school_code, area_code, aid, poverty_type,
      poverty_household_type, monitoring_type, risk_eliminated, disability_category,
      disability_grade, dibao, tekun, orphan, unsupported_child} (absent keys = no flag)
    - ``out_of_school``: subject -> {area_code (9), village, registries [datasets], age,
      birth_date, student_status (null / 疑似辍学 / 辍学), flags {...}}
    - ``suspended``: subject -> {school_code, area_code, village, age, flags}
    - ``transferred_out_unknown``: subject -> {school_code, area_code, age}
    - ``home_teaching``: subject -> {reason ("out_of_school" | "suspended"), area_code, village,
      school_code, disability_category, disability_grade}
    - ``rosters``: subject -> {status, school_code, area_code, age, flags}
    - ``aid_gaps``: subject -> {school_code, area_code, flags}
    - ``same_person``: subject -> {dataset: "15" | "18"} for adults recorded with a legacy 15-digit
      number in one file and the 18-digit number in another
    - ``age_boundaries``: subject -> {birth_date, age, in_range, out_of_school}
    - ``excluded``: reason -> count of registry children aged < 18 not on the out-of-school list
    """

    seed: int
    students: int
    as_of: date
    cutoff: date
    compulsory_ages: tuple[int, int]
    county: dict[str, Any] = field(default_factory=dict)
    schools: list[dict[str, str]] = field(default_factory=list)
    files: dict[str, FileCounts] = field(default_factory=dict)
    invalid_rows: list[dict[str, Any]] = field(default_factory=list)
    duplicate_rows: list[dict[str, Any]] = field(default_factory=list)
    overlaps: dict[str, int] = field(default_factory=dict)
    status_counts: dict[str, int] = field(default_factory=dict)
    flags: dict[str, dict[str, Any]] = field(default_factory=dict)
    out_of_school: dict[str, dict[str, Any]] = field(default_factory=dict)
    suspended: dict[str, dict[str, Any]] = field(default_factory=dict)
    transferred_out_unknown: dict[str, dict[str, Any]] = field(default_factory=dict)
    home_teaching: dict[str, dict[str, Any]] = field(default_factory=dict)
    rosters: dict[str, dict[str, Any]] = field(default_factory=dict)
    aid_gaps: dict[str, dict[str, Any]] = field(default_factory=dict)
    same_person: dict[str, dict[str, str]] = field(default_factory=dict)
    age_boundaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)

    FILENAME = "ground_truth.json"
    LISTS = (
        "flags",
        "out_of_school",
        "suspended",
        "transferred_out_unknown",
        "home_teaching",
        "rosters",
        "aid_gaps",
    )

    # -- serialisation

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "gateway-demo-ground-truth/1",
            "seed": self.seed,
            "students": self.students,
            "as_of": self.as_of.isoformat(),
            "cutoff": self.cutoff.isoformat(),
            "compulsory_ages": list(self.compulsory_ages),
            "county": self.county,
            "schools": self.schools,
            "files": {k: vars(v) for k, v in self.files.items()},
            "invalid_rows": self.invalid_rows,
            "duplicate_rows": self.duplicate_rows,
            "overlaps": self.overlaps,
            "status_counts": self.status_counts,
            "flags": self.flags,
            "out_of_school": self.out_of_school,
            "suspended": self.suspended,
            "transferred_out_unknown": self.transferred_out_unknown,
            "home_teaching": self.home_teaching,
            "rosters": self.rosters,
            "aid_gaps": self.aid_gaps,
            "same_person": self.same_person,
            "age_boundaries": self.age_boundaries,
            "excluded": self.excluded,
        }

    def to_json(self, *, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroundTruth:
        gt = cls(
            seed=data["seed"],
            students=data["students"],
            as_of=date.fromisoformat(data["as_of"]),
            cutoff=date.fromisoformat(data["cutoff"]),
            compulsory_ages=(data["compulsory_ages"][0], data["compulsory_ages"][1]),
        )
        for name in (
            "county",
            "schools",
            "invalid_rows",
            "duplicate_rows",
            "overlaps",
            "status_counts",
            "same_person",
            "age_boundaries",
            "excluded",
            *cls.LISTS,
        ):
            setattr(gt, name, data[name])
        gt.files = {k: FileCounts(**v) for k, v in data["files"].items()}
        return gt

    @classmethod
    def from_json(cls, text: str) -> GroundTruth:
        return cls.from_dict(json.loads(text))

    def save(self, path: Path) -> None:
        with path.open("w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, ensure_ascii=False, indent=1)

    @classmethod
    def load(cls, path: Path) -> GroundTruth:
        with path.open(encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    # -- what may be shown

    def summary(self) -> dict[str, Any]:
        """Counts only (no subject, no ID): safe to print."""
        out_by_township: dict[str, int] = {}
        for item in self.out_of_school.values():
            out_by_township[item["area_code"]] = out_by_township.get(item["area_code"], 0) + 1
        return {
            "files": {
                k: {
                    "rows_written": v.rows_written,
                    "rows_valid": v.rows_valid,
                    "duplicates": v.duplicates,
                    "invalid": dict(v.invalid),
                    "quarantined": v.quarantined(),
                }
                for k, v in self.files.items()
            },
            "lists": {name: len(getattr(self, name)) for name in self.LISTS},
            "out_of_school_by_township": dict(sorted(out_by_township.items())),
            "overlaps": dict(self.overlaps),
        }


# --------------------------------------------------------------------------------------------
# People


@dataclass(slots=True)
class _Student:
    status: str
    school: C.School
    grade: str
    class_name: str
    transfer_to: str = ""


@dataclass(slots=True)
class _Person:
    id18: str | None  # None for non-resident documents
    doc_type: str
    doc_no: str
    name: str
    sex: str
    birth: date
    township: C.Township | None  # None: 户籍 outside the county
    village: C.Village | None
    area12: str  # 户籍 code as the student-status system records it
    relation: str = ""
    legacy15: bool = False
    student: _Student | None = None
    disability: tuple[int, int] | None = None
    in_household_export: bool = False
    tag: str = ""  # forced plant name, for the age-boundary list
    # what the gateway will see, filled while writing
    seen: set[str] = field(default_factory=set)  # datasets with a valid row
    files_seen: set[str] = field(default_factory=set)
    forms: dict[str, str] = field(default_factory=dict)  # dataset -> "15"/"18" for legacy adults
    vis_student: _Student | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    village_seen: str | None = None
    aid: bool = False

    @property
    def material(self) -> str:
        return self.id18 if self.doc_type == "1" and self.id18 else f"{self.doc_type}:{self.doc_no}"


@dataclass(slots=True)
class _Household:
    township: C.Township
    village: C.Village
    surname: str
    kind: str  # "nuclear" | "grandparent"
    subkind: str | None  # orphan | unsupported | tekun | None
    members: list[_Person] = field(default_factory=list)  # children (any age)
    adults: list[_Person] | None = None  # created when a registry needs them
    poverty: tuple[str, str | None, str] | None = None  # (户类型, 监测对象类别, 风险是否消除)
    civil: list[str] = field(default_factory=list)  # assistance types for the whole household
    dibao_ended: bool = False
    temporary: bool = False


# Forced plants: at these household positions the generator shapes the household to plant
# cases the random draws might miss at small sizes.
_FORCED = (
    "orphan",
    "unsupported",
    "tekun",
    "boundary_6_in",
    "boundary_5_out",
    "boundary_15_in",
    "boundary_16_out",
    "leap_day_out",
    "home_teach_out",
    "home_teach_suspended",
    "transfer_unknown",
    "deceased_in_poverty",
    "dropout_over_age",
    "cross_format",
    "cross_format",
    "dibao_ended",
    "temp_relief_child_out",
    "monitoring_hardship",
    "home_teach_out",
    "transfer_unknown",
    "unsupported",
)
_NONRESIDENT_TYPES = ("6", "7", "8", "A")


class _MessPlan:
    """For one file: per messy form, the row indexes at or after which it is planted (on the
    first eligible row)."""

    def __init__(self, rng: random.Random, expected_rows: int, plan: dict[str, tuple[int, int]]):
        horizon = max(1, int(expected_rows * 0.6))
        self.queues: dict[str, deque[int]] = {}
        for kind, (base, per) in plan.items():
            n = base + expected_rows // per
            self.queues[kind] = deque(sorted(rng.randrange(horizon) for _ in range(n)))

    def take(self, index: int, id18: str, victim_ok: bool, legacy15: bool) -> str | None:
        for kind, queue in self.queues.items():
            if kind == "duplicate":
                continue
            if queue and queue[0] <= index and _eligible(kind, id18, victim_ok, legacy15):
                queue.popleft()
                return kind
        return None

    def take_duplicate(self, index: int) -> bool:
        queue = self.queues.get("duplicate")
        if queue and queue[0] <= index:
            queue.popleft()
            return True
        return False


class _Sink:
    """One native file: renders IDs (messy or not), writes rows, plants duplicates, counts."""

    def __init__(
        self, key: str, export: XlsxExport | CsvExport, counts: FileCounts, plan: _MessPlan
    ):
        self.key = key
        self.export = export
        self.counts = counts
        self.plan = plan
        self.dataset = counts.dataset
        self.id_field = FILE_SYSTEMS[key][2]
        self.index = 0
        self._pending: deque[tuple[int, list[Any], Position]] = deque()

    def choose(self, id18: str, *, victim_ok: bool = False, legacy15: bool = False) -> str | None:
        kind = self.plan.take(self.index, id18, victim_ok, legacy15)
        if kind is None and legacy15:
            return "fifteen"
        return kind

    def write(self, values: list[Any], kind: str | None, gt: GroundTruth) -> bool:
        """Write one row whose ID was rendered with ``kind``; True if the row is valid."""
        pos = self.export.append(values)
        self.index += 1
        self.counts.rows_written += 1
        code = INVALID_KINDS.get(kind or "")
        if code:
            self.counts.invalid[code] = self.counts.invalid.get(code, 0) + 1
            gt.invalid_rows.append(
                {
                    "file": pos.file,
                    "sheet": pos.sheet,
                    "row": pos.row,
                    "field": self.id_field,
                    "code": code,
                    "form": kind,
                }
            )
        else:
            self.counts.rows_valid += 1
            if kind:
                self.counts.messy_valid[kind] = self.counts.messy_valid.get(kind, 0) + 1
            elif self.plan.take_duplicate(self.index):
                # the copy lands a few rows later, as when a sheet was pasted twice
                self._pending.append((self.index + 1 + self.index % 7, list(values), pos))
        self._flush(gt, self.index)
        return code is None

    def _flush(self, gt: GroundTruth, upto: int | None) -> None:
        while self._pending and (upto is None or self._pending[0][0] <= upto):
            _, values, original = self._pending.popleft()
            pos = self.export.append(values)
            self.counts.rows_written += 1
            self.counts.rows_valid += 1
            self.counts.duplicates += 1
            gt.duplicate_rows.append(
                {"file": pos.file, "sheet": pos.sheet, "row": pos.row, "copy_of_row": original.row}
            )

    def close(self, gt: GroundTruth) -> None:
        self._flush(gt, None)
        self.export.close()
        self.counts.parts = list(self.export.files)


# --------------------------------------------------------------------------------------------
# The generator


class _CountyGenerator:
    def __init__(self, out_dir: Path, students: int, seed: int, as_of: date):
        if students < 1:
            raise ValueError("students must be at least 1")
        self.out_dir = out_dir
        self.target = students
        self.rng = random.Random(seed)
        self.as_of = as_of
        self.cutoff = school_year_cutoff(as_of)
        self.lo, self.hi = 6, 15
        self.ids = _IdAllocator()
        self.n_students = 0
        self.schools = C.build_schools(students, self.rng)
        self._doc_numbers: set[str] = set()
        self._household_no: dict[str, int] = {}
        self._civil_no = 0
        self._township_weights = [t.weight for t in C.TOWNSHIPS]
        self.gt = GroundTruth(
            seed=seed,
            students=students,
            as_of=as_of,
            cutoff=self.cutoff,
            compulsory_ages=(self.lo, self.hi),
        )
        self.gt.county = {
            "code": C.COUNTY_CODE,
            "name": f"{C.PROVINCE}{C.PREFECTURE}{C.COUNTY_NAME}",
            "townships": [
                {"area_code": t.code, "name": t.name, "villages": [v.name for v in t.villages]}
                for t in C.TOWNSHIPS
            ],
        }
        self.gt.schools = [
            {"code": s.code, "name": s.name, "area_code": s.township.code, "level": s.level}
            for s in self.schools.schools
        ]
        self.sinks = self._open_sinks()

    # -- files

    def _open_sinks(self) -> dict[str, _Sink]:
        stamp = f"{self.as_of:%Y%m%d}"
        created = datetime(self.as_of.year, self.as_of.month, self.as_of.day, 9, 30)
        year = self.cutoff.year
        specs: dict[str, tuple[str, Any]] = {
            "students": (
                f"students/学籍导出_{stamp}.xlsx",
                lambda rel: XlsxExport(
                    self.out_dir,
                    rel,
                    "学生基础信息",
                    STUDENT_HEADER,
                    title_rows=(
                        f"{C.COUNTY_NAME}中小学生学籍信息（{year}-{year + 1}学年）",
                        f"导出单位：{C.EDUCATION_BUREAU}    导出时间：{self.as_of:%Y-%m-%d} 09:30:00",
                    ),
                    creator=C.EDUCATION_BUREAU,
                    created=created,
                ),
            ),
            "poverty": (
                f"poverty/建档立卡人员_{stamp}.xlsx",
                lambda rel: XlsxExport(
                    self.out_dir, rel, "人员信息", POVERTY_HEADER, created=created
                ),
            ),
            "disability": (
                "disability/残疾人名单.csv",
                lambda rel: CsvExport(self.out_dir, rel, DISABILITY_HEADER, encoding="gbk"),
            ),
            "civil": (
                "civil_affairs/救助对象.xlsx",
                lambda rel: XlsxExport(
                    self.out_dir,
                    rel,
                    "救助对象",
                    CIVIL_HEADER,
                    title_rows=(
                        f"{C.COUNTY_NAME}民政局救助对象花名册（截至{self.as_of:%Y年%m月}）",
                    ),
                    created=created,
                ),
            ),
            "civil_temp": (
                "civil_affairs/临时救助.xlsx",
                lambda rel: XlsxExport(
                    self.out_dir,
                    rel,
                    "临时救助",
                    CIVIL_TEMP_HEADER,
                    title_rows=(f"{C.COUNTY_NAME}临时救助对象名册（{year}年）",),
                    created=created,
                ),
            ),
            "household": (
                "household/户籍人口.csv",
                lambda rel: CsvExport(self.out_dir, rel, HOUSEHOLD_HEADER, encoding="utf-8-sig"),
            ),
            "aid": (
                "aid/资助发放名单.csv",
                lambda rel: CsvExport(self.out_dir, rel, AID_HEADER, encoding="utf-8-sig"),
            ),
        }
        sinks: dict[str, _Sink] = {}
        for key, (rel, make) in specs.items():
            system, dataset, _ = FILE_SYSTEMS[key]
            export = make(rel)
            fmt = "xlsx" if isinstance(export, XlsxExport) else f"csv:{export.encoding}"
            counts = FileCounts(
                system=system,
                dataset=dataset,
                format=fmt,
                title_rows=len(getattr(export, "title_rows", ())),
                columns=list(export.header),
            )
            expected = int(self.target * EXPECTED_ROWS_PER_STUDENT[key]) + 1
            plan = _MessPlan(self.rng, expected, MESS_PLAN[key])
            self.gt.files[rel] = counts
            sinks[key] = _Sink(key, export, counts, plan)
        return sinks

    # -- the walk

    def run(self) -> GroundTruth:
        forced = self._forced_positions()
        nonresident = deque(_NONRESIDENT_TYPES)
        step = 0
        while self.n_students < self.target:
            force = forced.get(step)
            r = self.rng.random()
            if force is None and nonresident and (step % 11 == 5 or r < 0.0015):
                self._nonresident_student(nonresident.popleft())
            elif force is None and r < 0.0015:
                self._nonresident_student(self.rng.choice(_NONRESIDENT_TYPES))
            elif force is None and r < 0.035:
                self._migrant_student()
            else:
                self._household(force)
            step += 1
        for sink in self.sinks.values():
            sink.close(self.gt)
        self._finish_counts()
        return self.gt

    def _forced_positions(self) -> dict[int, str]:
        # spread over the first ~third of the walk so small runs still get every plant
        households = max(len(_FORCED) * 2, int(self.target / 1.2))
        span = max(len(_FORCED) + 1, households // 3)
        positions = sorted(self.rng.sample(range(1, span), len(_FORCED)))
        return dict(zip(positions, _FORCED, strict=True))

    # -- persons

    def _pick_township(self) -> C.Township:
        return self.rng.choices(C.TOWNSHIPS, self._township_weights)[0]

    def _birth_area(self) -> str:
        r = self.rng.random()
        for area, share in C.BIRTH_AREAS:
            if r < share:
                return area
            r -= share
        return C.BIRTH_AREAS[0][0]

    def _person(
        self,
        birth: date,
        sex: str,
        family_name: str,
        township: C.Township | None,
        village: C.Village | None,
        area12: str,
        *,
        area: str | None = None,
    ) -> _Person:
        id18 = self.ids.new(area or self._birth_area(), birth, sex)
        name = family_name + C.given_name(self.rng, sex, birth.year)
        return _Person(id18, "1", id18, name, sex, birth, township, village, area12)

    def _sex(self) -> str:
        return "1" if self.rng.random() < 0.52 else "2"

    def _disability(self, severe: bool = False) -> tuple[int, int]:
        rng = self.rng
        category = rng.choices((5, 4, 7, 2, 3, 1, 6), (35, 20, 12, 10, 10, 8, 5))[0]
        grade = rng.choices((1, 2, 3, 4), (40, 35, 15, 10) if severe else (15, 25, 32, 28))[0]
        return category, grade

    def _enrol(self, p: _Person, age: int, status: str, township: C.Township) -> None:
        rng = self.rng
        grade_index = min(8, age - 6)
        if status == ACTIVE_STATUS and age >= 7 and age <= 14 and rng.random() < 0.04:
            grade_index = age - 7  # repeated a year
        if status == "毕业":
            grade_index = 8
        level = "小学" if grade_index < 6 else "初中"
        school = self.schools.pick(rng, township, level)
        transfer_to = ""
        if status == "转出" and p.tag != "transfer_unknown" and rng.random() < 0.82:
            transfer_to = rng.choice(C.TRANSFER_DESTINATIONS)
        p.student = _Student(
            status,
            school,
            C.GRADES[grade_index],
            f"{rng.randint(1, school.classes_per_grade)}班",
            transfer_to,
        )
        self.n_students += 1

    def _status(self, age: int, disabled: bool) -> str:
        """The 学籍状态 of a child who has a student record."""
        r = self.rng.random()
        if age == 15:
            if r < 0.90:
                return "毕业"
            r = (r - 0.90) / 0.10
            return "在读" if r < 0.6 else "辍学" if r < 0.75 else "疑似辍学" if r < 0.9 else "转出"
        if age >= 16:
            return "在读" if r < 0.7 else "辍学"
        suspended = 0.06 if disabled else 0.006
        for status, share in (
            ("休学", suspended),
            ("转出", 0.024),
            ("疑似辍学", 0.007),
            ("辍学", 0.004),
            ("死亡", 0.0004),
        ):
            if r < share:
                return status
            r -= share
        return ACTIVE_STATUS

    # -- the kinds of walk step

    def _migrant_student(self) -> None:
        """A child whose 户籍 is in another county: on the roster, in no local registry."""
        rng = self.rng
        code, _ = rng.choice(C.OTHER_COUNTIES)
        area12 = f"{code}{rng.choice((1, 2, 100, 101, 102, 200)):03d}000"
        age = rng.randint(6, 14)
        p = self._person(
            _birth_for_age(rng, age, self.cutoff),
            self._sex(),
            C.surname(rng),
            None,
            None,
            area12,
            area=code,
        )
        status = ACTIVE_STATUS if rng.random() < 0.96 else "转出"
        school_township = C.TOWNSHIPS[0] if rng.random() < 0.7 else self._pick_township()
        self._enrol(p, age, status, school_township)
        self._write_student(p, victim_ok=True)
        if rng.random() < 0.03:
            self._write_aid(p)
        self._settle(p)

    def _nonresident_student(self, doc_type: str) -> None:
        """A student with a 港澳台 permit or a passport: matched on type + number only."""
        rng = self.rng
        while True:
            if doc_type == "6":
                number = "H" + f"{rng.randrange(10**8):08d}"
            elif doc_type == "7":
                number = "M" + f"{rng.randrange(10**8):08d}"
            elif doc_type == "8":
                number = f"{rng.randrange(10**8):08d}"
            else:
                number = "E" + f"{rng.randrange(10**8):08d}"
            if number not in self._doc_numbers:
                self._doc_numbers.add(number)
                break
        age = rng.randint(6, 14)
        sex = self._sex()
        birth = _birth_for_age(rng, age, self.cutoff)
        p = _Person(
            None,
            doc_type,
            number,
            C.surname(rng) + C.given_name(rng, sex, birth.year),
            sex,
            birth,
            None,
            None,
            "",
        )
        self._enrol(p, age, ACTIVE_STATUS, C.TOWNSHIPS[0])
        self._write_student(p)
        self._settle(p)

    def _household(self, force: str | None) -> None:
        rng = self.rng
        t = self._pick_township()
        v = rng.choice(t.villages)
        kind = "grandparent" if rng.random() < 0.08 else "nuclear"
        subkind: str | None = None
        if kind == "grandparent":
            r = rng.random()
            subkind = "orphan" if r < 0.015 else "unsupported" if r < 0.055 else None
            subkind = subkind or ("tekun" if r < 0.07 else None)
        if force in ("orphan", "unsupported", "tekun"):
            kind, subkind = "grandparent", force
        hh = _Household(t, v, C.surname(rng), kind, subkind)

        # registries the household is in
        poverty_p = 0.30 if kind == "grandparent" else 0.105
        if force in ("cross_format", "deceased_in_poverty", "monitoring_hardship") or (
            rng.random() < poverty_p
        ):
            r = rng.random()
            # about a quarter of registry households are monitored (监测对象)
            if force == "monitoring_hardship" or r >= 0.94:
                hh.poverty = ("监测户", "突发严重困难户", "是" if rng.random() < 0.4 else "否")
            elif r < 0.75:
                hh.poverty = ("脱贫户", None, "")
            elif r < 0.84:
                hh.poverty = ("脱贫户", "脱贫不稳定户", "是" if rng.random() < 0.5 else "否")
            else:
                hh.poverty = ("监测户", "边缘易致贫户", "是" if rng.random() < 0.5 else "否")
        dibao_p = 0.20 if hh.poverty else 0.022
        if force == "cross_format" or rng.random() < dibao_p:
            hh.civil.append("低保")
        if subkind == "orphan":
            hh.civil.append("孤儿")
        elif subkind == "unsupported":
            hh.civil.append("事实无人抚养儿童")
        elif subkind == "tekun":
            hh.civil.append("特困供养")
        if force == "temp_relief_child_out":
            hh.poverty, hh.civil = None, []

        # children: ages spread evenly over 0..19 at the cut-off
        n = rng.choices((1, 2, 3, 4), (30, 42, 20, 8))[0]
        ages = [rng.randint(0, 19) for _ in range(n)]
        planted = self._forced_child(force)
        for i, age in enumerate(ages):
            child = self._child(hh, age, None) if i or planted is None else planted(hh)
            if child is None:
                break  # the roster is full
            hh.members.append(child)
        if not hh.members:
            return

        # a stopped 低保 flags nobody, but the child was still found in the assistance records
        if force != "temp_relief_child_out" and "低保" not in hh.civil:
            hh.dibao_ended = force == "dibao_ended" or rng.random() < 0.01
        # temporary relief goes to households with no other assistance (so a child known only
        # through the temporary-relief sheet, which has no village column, has no village)
        hh.temporary = force == "temp_relief_child_out" or (
            not hh.civil and not hh.dibao_ended and rng.random() < 0.006
        )
        self._write_household(hh, force)

    def _forced_child(self, force: str | None) -> Any:
        cutoff = self.cutoff
        dates = {
            "boundary_6_in": _years_before(cutoff, 6),
            "boundary_5_out": _years_before(cutoff, 6) + timedelta(days=1),
            "boundary_15_in": _years_before(cutoff, 16) + timedelta(days=1),
            "boundary_16_out": _years_before(cutoff, 16),
        }
        if force in dates:
            birth = dates[force]
            return lambda hh: self._child(hh, None, "none", birth=birth, tag=force)
        if force == "leap_day_out":
            year = next(y for y in range(cutoff.year - 14, cutoff.year - 6) if y % 4 == 0)
            return lambda hh: self._child(hh, None, "none", birth=date(year, 2, 29), tag=force)
        if force == "home_teach_out":
            return lambda hh: self._child(hh, self.rng.randint(8, 14), "none", disabled=True)
        if force == "home_teach_suspended":
            return lambda hh: self._child(hh, self.rng.randint(7, 13), "休学", disabled=True)
        if force == "transfer_unknown":
            return lambda hh: self._child(hh, self.rng.randint(8, 14), "转出", tag=force)
        if force == "deceased_in_poverty":
            return lambda hh: self._child(hh, self.rng.randint(7, 14), "死亡")
        if force == "dropout_over_age":
            return lambda hh: self._child(hh, 16, "辍学")
        if force == "temp_relief_child_out":
            return lambda hh: self._child(hh, self.rng.randint(10, 15), "none", tag=force)
        if force in ("orphan", "unsupported", "tekun", "monitoring_hardship"):
            # the rare kinds of household get at least one enrolled child, so the flag shows
            return lambda hh: self._child(hh, self.rng.randint(7, 13), ACTIVE_STATUS)
        return None

    def _child(
        self,
        hh: _Household,
        age: int | None,
        status: str | None,
        *,
        birth: date | None = None,
        disabled: bool | None = None,
        tag: str = "",
    ) -> _Person | None:
        """One child of ``hh``; ``status`` "none" = no student record. None when the roster is full
        and this child would have needed a student record."""
        rng = self.rng
        if birth is None:
            assert age is not None
            birth = _birth_for_age(rng, age, self.cutoff)
        age = age_at(birth, self.cutoff)
        if disabled is None:  # certificates are issued from about age two
            disabled = age >= 2 and rng.random() < 0.015
        if status is None and 6 <= age <= 15:
            out_p = 0.25 if disabled else 0.02
            status = "none" if rng.random() < out_p else self._status(age, disabled)
        elif status is None and age == 16 and rng.random() < 0.03:
            status = self._status(16, disabled)
        if status not in (None, "none") and self.n_students >= self.target:
            return None
        sex = self._sex()
        family = hh.surname if rng.random() < 0.9 else C.surname(rng)
        p = self._person(birth, sex, family, hh.township, hh.village, hh.township.code12)
        p.tag = tag
        if hh.kind == "grandparent":
            p.relation = "之孙子" if sex == "1" else "之孙女"
        else:
            p.relation = "之子" if sex == "1" else "之女"
        if disabled:
            p.disability = self._disability(severe=status == "none")
        p.in_household_export = 3 <= age <= 17
        if status not in (None, "none"):
            self._enrol(p, age, status, hh.township)
            if status == "死亡":
                p.in_household_export = False  # 户口 cancelled
        return p

    def _no_out_of_school_risk(self, p: _Person) -> bool:
        age = age_at(p.birth, self.cutoff)
        status = p.student.status if p.student else None
        return not (self.lo <= age <= self.hi and status in OUT_OF_SCHOOL_STATUSES)

    def _adults(self, hh: _Household) -> list[_Person]:
        if hh.adults is not None:
            return hh.adults
        rng = self.rng
        oldest = min((m.birth for m in hh.members), default=self.cutoff)
        # the head is a parent 20-33 years older than the eldest child, or a grandparent 42-58
        gap = rng.randint(42, 58) if hh.kind == "grandparent" else rng.randint(20, 33)
        head_year = date(oldest.year - gap, 1, 1)
        head_birth = head_year + timedelta(days=rng.randrange(365))
        spouse_birth = head_birth + timedelta(days=rng.randint(-4 * 365, 2 * 365))
        head = self._person(
            head_birth, "1", hh.surname, hh.township, hh.village, hh.township.code12
        )
        head.relation = "户主"
        spouse = self._person(
            spouse_birth, "2", C.surname(rng), hh.township, hh.village, hh.township.code12
        )
        spouse.relation = "配偶"
        adults = [head, spouse]
        if hh.kind == "grandparent" and rng.random() < 0.3:
            adults = [spouse]  # widowed grandmother heads the household
            spouse.relation = "户主"
        for a in adults:
            if a.birth.year < 1999 and rng.random() < 0.08:
                a.legacy15 = True
            if rng.random() < 0.03:
                a.disability = self._disability()
        hh.adults = adults
        return adults

    # -- writing one household

    def _write_household(self, hh: _Household, force: str | None) -> None:
        rng = self.rng
        kids = hh.members
        in_registry = bool(hh.poverty or hh.civil or hh.dibao_ended or hh.temporary)
        # some out-of-school children are missing from the 户籍 export (registration lag) and are
        # found only through another registry
        for c in kids:
            if c.tag == "temp_relief_child_out" or (
                c.in_household_export
                and not self._no_out_of_school_risk(c)
                and (in_registry or c.disability)
                and rng.random() < 0.1
            ):
                c.in_household_export = False
        if force == "cross_format":
            head = self._adults(hh)[0]
            if head.birth.year < 1999:
                head.legacy15 = True
        elif hh.poverty and "低保" in hh.civil:
            for a in self._adults(hh):
                if a.birth.year < 1999 and rng.random() < 0.5:
                    a.legacy15 = True
        if in_registry:
            adults = self._adults(hh)
        elif rng.random() < 0.04:  # a parent with a disability certificate, in no other registry
            adults = self._adults(hh)
            adults[0].disability = adults[0].disability or self._disability()
        else:
            adults = []
        members = adults + kids

        for c in kids:
            if c.student is not None:
                self._write_student(c)
        for c in kids:
            if c.in_household_export:
                self._write_resident(c, hh)
        if hh.poverty:
            self._write_poverty(hh, members)
        for m in members:
            if m.disability:
                self._write_disability(m)
        self._write_civil(hh, members)
        for c in kids:
            if c.vis_student and c.vis_student.status == ACTIVE_STATUS:
                grant_p = 0.93 if c.flags else 0.04
                if rng.random() < grant_p:
                    self._write_aid(c)
                elif c.flags and rng.random() < 0.5:
                    # granted last school year only: still a gap this year
                    self._write_aid(c, this_year=False)
        for m in members:
            self._settle(m)

    def _write_student(self, p: _Person, *, victim_ok: bool = False) -> None:
        sink = self.sinks["students"]
        s = p.student
        assert s is not None
        kind: str | None = None
        if p.doc_type == "1" and p.id18:
            kind = sink.choose(p.id18, victim_ok=victim_ok)
            number: Any = _render_id(kind, p.id18)
            r = self.rng.random()
            student_no = "G" + p.id18 if r > 0.01 else "L" + p.id18[:14] + f"{r * 1e6:04.0f}"
        else:
            number = p.doc_no
            student_no = "J" + f"{self.rng.randrange(10**17):018d}"
        row = [
            student_no,
            p.name,
            SEX_LABEL[p.sex],
            f"{p.birth:%Y%m%d}",
            p.doc_type,
            number,
            s.school.code,
            s.school.name,
            s.grade,
            s.class_name,
            s.status,
            s.transfer_to,
            p.area12,
            p.village.name if p.village else "",
            C.phone(self.rng),
        ]
        if sink.write(row, kind, self.gt):
            p.vis_student = s
            p.seen.add("students")
            p.files_seen.add("students")

    def _write_resident(self, p: _Person, hh: _Household) -> None:
        sink = self.sinks["household"]
        assert p.id18
        kind = sink.choose(p.id18, victim_ok=self._safe_victim(p))
        v = hh.village
        if v.kind == "村":
            address = f"{v.name}{self.rng.randint(1, 12)}组{self.rng.randint(1, 99)}号"
        else:
            address = f"{v.name}{self.rng.choice(('民族路', '东门路', '龙泉大道', '金钟路'))}{self.rng.randint(1, 300)}号"
        row = [
            _render_id(kind, p.id18),
            p.name,
            SEX_LABEL[p.sex],
            p.birth.isoformat(),
            v.code,
            v.name,
            f"{C.PROVINCE}{C.COUNTY_NAME}{hh.township.name}{address}",
        ]
        if sink.write(row, kind, self.gt):
            self._saw(p, "household", "residents", v.name)

    def _safe_victim(self, p: _Person) -> bool:
        """An ID may be planted broken in a registry file only where losing that row changes no
        list: an enrolled student whose student row is valid."""
        return p.vis_student is not None and p.vis_student.status == ACTIVE_STATUS

    def _saw(self, p: _Person, file_key: str, dataset: str, village: str | None) -> None:
        p.seen.add(dataset)
        p.files_seen.add(file_key)
        if village and p.village_seen is None:
            p.village_seen = village

    def _write_poverty(self, hh: _Household, members: list[_Person]) -> None:
        sink = self.sinks["poverty"]
        assert hh.poverty
        hlx, jcdxlb, fxxc = hh.poverty
        v = hh.village
        seq = self._household_no.get(v.code, 0) + 1
        self._household_no[v.code] = seq
        household_no = f"{v.code}{seq:04d}"
        for i, m in enumerate(members, start=1):
            assert m.id18
            kind = sink.choose(m.id18, legacy15=m.legacy15)
            row = [
                household_no,
                f"{household_no}{i:02d}",
                m.name,
                _render_id(kind, m.id18),
                SEX_LABEL[m.sex],
                m.relation,
                hlx,
                jcdxlb or "",
                fxxc,
                v.code,
                v.name,
            ]
            if sink.write(row, kind, self.gt):
                self._saw(m, "poverty", "poverty", v.name)
                if m.legacy15:
                    m.forms["poverty"] = "15"
                m.flags.update(
                    poverty_type=POVERTY_TYPE[jcdxlb],
                    poverty_household_type=hlx,
                )
                if jcdxlb:
                    m.flags["monitoring_type"] = jcdxlb
                    m.flags["risk_eliminated"] = fxxc == "是"

    def _write_disability(self, p: _Person) -> None:
        sink = self.sinks["disability"]
        assert p.id18 and p.disability and p.township and p.village
        rng = self.rng
        category, grade = p.disability
        adult = age_at(p.birth, self.as_of) >= 18
        kind = sink.choose(p.id18, victim_ok=adult)
        cert_id = _render_id(kind, p.id18)
        if kind == "spaces":
            cert_id = p.id18
        cert = f"{cert_id}{category}{grade}"
        if kind == "spaces":
            cert = f" {cert} "
        earliest = max(
            p.birth + timedelta(days=365), self.as_of - timedelta(days=(9 if adult else 4) * 365)
        )
        issued = date.fromordinal(rng.randint(earliest.toordinal(), self.as_of.toordinal() - 30))
        valid_until = _years_before(issued, -(10 if adult else 5)) - timedelta(days=1)
        row = [
            p.name,
            SEX_LABEL[p.sex],
            cert,
            DISABILITY_CATEGORIES[category],
            DISABILITY_GRADES[grade],
            issued.isoformat(),
            valid_until.isoformat(),
            p.township.code12,
            p.village.name,
        ]
        if sink.write(row, kind, self.gt):
            self._saw(p, "disability", "disability", p.village.name)
            if p.legacy15:
                p.forms["disability"] = "18"
            p.flags["disability_category"] = category
            p.flags["disability_grade"] = grade

    def _write_civil(self, hh: _Household, members: list[_Person]) -> None:
        rng = self.rng
        v = hh.village
        rows: list[
            tuple[str, _Person, str, str, str, str]
        ] = []  # file, person, type, start, end, state
        for assistance in hh.civil:
            start = date(rng.randint(2016, self.as_of.year - 1), rng.randint(1, 12), 1)
            for m in members:
                child = age_at(m.birth, self.as_of) < 18
                if assistance in ("孤儿", "事实无人抚养儿童") and not child:
                    continue
                if assistance == "特困供养" and not child and rng.random() < 0.5:
                    continue
                rows.append(("civil", m, assistance, _ymd(start), "", "正常"))
        if hh.dibao_ended:
            start = date(rng.randint(2016, 2022), rng.randint(1, 12), 1)
            end = date(rng.randint(2023, self.as_of.year - 1), rng.randint(1, 12), 28)
            for m in members:
                rows.append(("civil", m, "低保", _ymd(start), _ymd(end), "停发"))
        if hh.temporary:
            start = self.as_of - timedelta(days=rng.randint(20, 300))
            for m in members:
                rows.append(("civil_temp", m, "临时救助", _ymd(start), "", "正常"))
        if not rows:
            return
        self._civil_no += 1
        household_no = f"MZ{C.COUNTY_CODE}{self._civil_no:07d}"
        for key, m, assistance, start_s, end_s, state in rows:
            sink = self.sinks[key]
            assert m.id18
            kind = sink.choose(m.id18, victim_ok=age_at(m.birth, self.as_of) >= 18)
            row = [
                m.name,
                _render_id(kind, m.id18),
                SEX_LABEL[m.sex],
                assistance,
                household_no,
                start_s,
                end_s,
                state,
                v.code,
            ]
            if key == "civil":
                row.append(v.name)
            if sink.write(row, kind, self.gt):
                self._saw(m, key, "assistance", v.name if key == "civil" else None)
                if m.legacy15:
                    m.forms["assistance"] = "18"
                flag = ASSISTANCE_FLAG.get(assistance)
                if flag and state == "正常" and not end_s:
                    m.flags[flag] = True

    def _write_aid(self, p: _Person, *, this_year: bool = True) -> None:
        """Aid rows dated in the current school year (after the cut-off, on or before as_of), or
        in the spring term before the cut-off (``this_year=False``)."""
        sink = self.sinks["aid"]
        assert p.id18
        rng = self.rng
        first = self.cutoff + timedelta(days=1)
        if this_year and first > self.as_of:  # as_of is the cut-off's next day at the earliest
            this_year = False
        if this_year:
            window = (max(first, self.as_of - timedelta(days=60)), self.as_of)
        else:
            window = (self.cutoff - timedelta(days=200), self.cutoff - timedelta(days=60))
        projects = [AID_PROJECTS[0]]
        if "disability_category" in p.flags:
            projects.append(AID_PROJECTS[1])
        if rng.random() < 0.3:
            projects.append(AID_PROJECTS[2])
        for project in projects:
            kind = sink.choose(p.id18)
            paid = date.fromordinal(rng.randint(window[0].toordinal(), window[1].toordinal()))
            row = [_render_id(kind, p.id18), p.name, project, paid.isoformat()]
            if sink.write(row, kind, self.gt):
                p.aid = p.aid or this_year
                p.files_seen.add("aid")
                p.seen.add("aid_granted")

    # -- settling a person into the ground truth

    def _settle(self, p: _Person) -> None:
        gt = self.gt
        if not p.files_seen:
            return
        material = p.material
        for key in p.files_seen:
            counts = self.sinks[key].counts
            counts.distinct_subjects += 1
        age = age_at(p.birth, self.cutoff)
        registries = [d for d in REGISTRY_DATASETS if d in p.seen]
        flags = {k: p.flags[k] for k in _FLAG_ORDER if k in p.flags}
        area = p.township.code if p.township else (p.area12[:9] or None)
        village = p.village_seen
        vs = p.vis_student
        if p.legacy15 and "poverty" in p.forms and len(p.forms) > 1:
            gt.same_person[material] = dict(sorted(p.forms.items()))
        if vs is not None:
            o = gt.overlaps
            o["students"] = o.get("students", 0) + 1
            for d in (*registries, "aid_granted"):
                if d in p.seen:
                    o[f"students_in_{d}"] = o.get(f"students_in_{d}", 0) + 1
            gt.status_counts[vs.status] = gt.status_counts.get(vs.status, 0) + 1
            student_area = p.area12[:9] or None
            if flags and vs.status not in LEFT_LEDGER:
                o["students_flagged"] = o.get("students_flagged", 0) + 1
                gt.flags[material] = {
                    "status": vs.status,
                    "school_code": vs.school.code,
                    "area_code": student_area,
                    "aid": p.aid,
                    **flags,
                }
                if vs.status == ACTIVE_STATUS and not p.aid:
                    gt.aid_gaps[material] = {
                        "school_code": vs.school.code,
                        "area_code": student_area,
                        "flags": flags,
                    }
            if vs.status in ROSTER_STATUSES:
                gt.rosters[material] = {
                    "status": vs.status,
                    "school_code": vs.school.code,
                    "area_code": student_area,
                    "age": age,
                    "flags": flags,
                }
            if vs.status == "休学":
                gt.suspended[material] = {
                    "school_code": vs.school.code,
                    "area_code": student_area,
                    "village": p.village.name if p.village else None,
                    "age": age,
                    "flags": flags,
                }
            if vs.status == "转出" and not vs.transfer_to:
                gt.transferred_out_unknown[material] = {
                    "school_code": vs.school.code,
                    "area_code": student_area,
                    "age": age,
                }
        status = vs.status if vs else None
        out = False
        if registries and age < 18:
            if self.lo <= age <= self.hi and status in OUT_OF_SCHOOL_STATUSES:
                out = True
                gt.out_of_school[material] = {
                    "area_code": area,
                    "village": village,
                    "registries": registries,
                    "age": age,
                    "birth_date": p.birth.isoformat(),
                    "student_status": status,
                    "flags": flags,
                }
            else:
                reason = _exclusion_reason(age, self.lo, self.hi, vs)
                gt.excluded[reason] = gt.excluded.get(reason, 0) + 1
        if "disability_category" in flags and (out or status == "休学"):
            gt.home_teaching[material] = {
                "reason": "out_of_school" if out else "suspended",
                "area_code": area,
                "village": village if out else (p.village.name if p.village else None),
                "school_code": vs.school.code if vs else None,
                "disability_category": flags["disability_category"],
                "disability_grade": flags["disability_grade"],
            }
        if p.tag.startswith(("boundary", "leap_day")):
            gt.age_boundaries[material] = {
                "birth_date": p.birth.isoformat(),
                "age": age,
                "in_range": self.lo <= age <= self.hi,
                "out_of_school": out,
            }

    def _finish_counts(self) -> None:
        for counts in self.gt.files.values():
            counts.invalid = dict(sorted(counts.invalid.items()))
            counts.messy_valid = dict(sorted(counts.messy_valid.items()))
        self.gt.overlaps = dict(sorted(self.gt.overlaps.items()))
        self.gt.status_counts = dict(sorted(self.gt.status_counts.items()))
        self.gt.excluded = dict(sorted(self.gt.excluded.items()))


_FLAG_ORDER = (
    "poverty_type",
    "poverty_household_type",
    "monitoring_type",
    "risk_eliminated",
    "disability_category",
    "disability_grade",
    "dibao",
    "tekun",
    "orphan",
    "unsupported_child",
)


def _exclusion_reason(age: int, lo: int, hi: int, vs: _Student | None) -> str:
    if age < lo:
        return "under_age"
    if age > hi:
        return "over_age"
    assert vs is not None
    return {
        "在读": "enrolled",
        "休学": "suspended",
        "转出": "transferred_out" if vs.transfer_to else "transferred_out_unknown",
        "毕业": "graduated",
        "死亡": "deceased",
    }[vs.status]


def _ymd(d: date) -> str:
    """The civil-affairs date style: 2021/3/1."""
    return f"{d.year}/{d.month}/{d.day}"


def generate(
    out_dir: Path, *, students: int = 2000, seed: int = 1, as_of: date = date(2026, 11, 24)
) -> GroundTruth:
    """Write a synthetic county's native export files into ``out_dir`` and return what was planted.

    Files (relative to ``out_dir``; layouts as in team.md "Native export layouts"):
    ``students/学籍导出_<YYYYMMDD>.xlsx`` (2 title rows; split into ``_2``, ``_3`` ... past Excel's
    row limit), ``poverty/建档立卡人员_<YYYYMMDD>.xlsx``, ``disability/残疾人名单.csv`` (GBK),
    ``civil_affairs/救助对象.xlsx`` (1 title row), ``civil_affairs/临时救助.xlsx`` (1 title row, no
    村(社区) column), ``household/户籍人口.csv`` (UTF-8 with BOM), ``aid/资助发放名单.csv`` (UTF-8
    with BOM), and ``ground_truth.json`` (contains ID numbers: test oracle only).

    ``students`` is the number of persons on the student roster (all statuses); the same seed
    gives the same content.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gt = _CountyGenerator(out_dir, students, seed, as_of).run()
    gt.save(out_dir / GroundTruth.FILENAME)
    return gt


def iter_subjects(gt: GroundTruth, names: Iterable[str] = GroundTruth.LISTS) -> Iterator[str]:
    """Every subject material named in the given lists (for tests that search outputs for IDs)."""
    for name in names:
        yield from getattr(gt, name)
