"""Mapping files, the compiled mapper, every built-in transform and the canonical validation."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway import ids
from gateway.mapping import (
    FieldError,
    KeyLocator,
    Mapper,
    MappingFileError,
    MappingNotFound,
    OutboundMapper,
    OutboundRecordError,
    TransformError,
    builtin_mapping_path,
    check_mapping,
    find_mapping_file,
    load_mapping,
)
from gateway.schemas import describe_datasets, safe_text, validate_record
from gateway.transforms import BUILTIN_TRANSFORMS as T

TABLES = {
    "t.sex": {"男": "1", "女": "2", "1": "1", "2": "2"},
    "t.id_type": {c: c for c in "16789AZ"},
    "t.status": {"在读": "enrolled", "辍学": "dropout"},
    "t.category": {"视力": "1", "肢体": "4", **{str(n): str(n) for n in range(1, 8)}},
    "t.grade": {"一级": "1", "二级": "2", **{str(n): str(n) for n in range(1, 5)}},
    "t.yes_no": {"是": "true", "否": "false"},
}


def make_id(area: str = "110105", birth: str = "20100305", seq: str = "123") -> str:
    first17 = area + birth + seq
    return first17 + ids.check_char(first17)


ID18 = make_id(birth="19850612", seq="031")  # male (odd sequence)
ID15 = ID18[:6] + ID18[8:17]  # the same person's legacy 15-digit number
CHILD = make_id(birth="20120901", seq="042")  # female


def write(tmp_path: Path, text: str, name: str = "m.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def load(path: Path, **kwargs: Any) -> Any:
    return load_mapping(
        path,
        transforms=kwargs.pop("transforms", T),
        code_tables=kwargs.pop("tables", TABLES),
        **kwargs,
    )


HEADER = """
[mapping]
name = "t/students"
system = "t"
dataset = "students"
direction = "inbound"
version = "3"
"""

STUDENTS = (
    HEADER
    + """
[fields.id_type]
from = "身份证件类型"
transforms = ["strip", "fullwidth", "upper", "code:id_type"]

[fields.id_number]
from = ["身份证件号", "身份证号"]
transforms = ["strip", "id_number"]
sensitivity = "national_id"

[fields.name]
from = "姓名"
transforms = ["strip"]
sensitivity = "personal"

[fields.sex]
from = "性别"
transforms = ["strip", "code:sex"]

[fields.birth_date]
from = "出生日期"
transforms = ["strip", "date"]

[fields.status]
from = "学籍状态"
transforms = ["strip", "code:status"]

[fields.area_code]
from = "户籍地行政区划代码"
transforms = ["text", "strip", "area"]

[fields.village]
from = ["村", "社区"]
transforms = ["strip"]
default = "未知"

[fields.grade]
from = "年级"
transforms = ["text"]
"""
)


@pytest.fixture
def students(tmp_path: Path) -> Mapper:
    mapper = load(write(tmp_path, STUDENTS))
    assert isinstance(mapper, Mapper)
    return mapper


def row(**over: Any) -> dict[str, Any]:
    base = {
        "身份证件类型": "1",
        "身份证件号": CHILD,
        "姓名": " 王小花 ",
        "性别": "女",
        "出生日期": "20120901",
        "学籍状态": "在读",
        "户籍地行政区划代码": "110105003000",
        "村": "",
        "社区": "朝阳社区",
        "年级": 3,
    }
    base.update(over)
    return base


# --- the compiled mapper ----------------------------------------------------------------------------


def test_map_row_gives_canonical_values(students: Mapper) -> None:
    rec, errors = students.map_row(row())
    assert errors == []
    assert rec["id_number"] == CHILD and rec["id_type"] == "1" and rec["converted"] is False
    assert rec["name"] == "王小花"
    assert rec["sex"] == "2"
    assert rec["birth_date"] == dt.date(2012, 9, 1)
    assert rec["status"] == "enrolled"
    assert rec["area_code"] == "110105003"
    assert rec["village"] == "朝阳社区"  # the first non-empty alternative
    assert rec["grade"] == "3"  # an Excel number, as the canonical text type
    # every canonical field is there (None when not mapped), subject_key is the protect step's
    assert rec["school_name"] is None and "subject_key" not in rec
    assert students.version.startswith("3+") and len(students.version) == 2 + 8
    assert (
        students.sensitivity["id_number"] == "national_id"
        and students.sensitivity["name"] == "personal"
    )
    assert students.record_key_fields == ["subject_key"]


def test_15_and_18_digit_ids_map_to_the_same_number(students: Mapper) -> None:
    old, _ = students.map_row(row(身份证件号=ID15, 出生日期="19850612", 性别="男"))
    new, _ = students.map_row(row(身份证件号=ID18, 出生日期="19850612", 性别="男"))
    assert old["id_number"] == new["id_number"] == ID18
    assert old["converted"] is True and new["converted"] is False


def test_full_width_digits_and_lower_case_x(students: Mapper) -> None:
    with_x = make_id(birth="20111111", seq="002")
    while not with_x.endswith("X"):  # find a number whose check character is X
        with_x = make_id(birth="20111111", seq=f"{int(with_x[14:17]) + 2:03d}")
    wide = with_x[:-1].translate(str.maketrans("0123456789", "０１２３４５６７８９")) + "ｘ"
    rec, errors = students.map_row(
        row(身份证件号=f"\u3000{wide} ", 身份证件类型="１", 出生日期="20111111")
    )
    assert errors == [] and rec["id_number"] == with_x and rec["id_type"] == "1"


def test_invalid_id_is_a_field_error_with_the_ids_code_and_no_number(students: Mapper) -> None:
    bad = CHILD[:-1] + ("0" if CHILD[-1] != "0" else "1")
    rec, errors = students.map_row(row(身份证件号=bad))
    assert [(e.field, e.code) for e in errors] == [("id_number", "bad_check_digit")]
    assert rec["id_number"] is None
    assert bad not in repr(errors) and bad[:14] not in repr(errors)
    _, errors = students.map_row(row(身份证件号=1.10105201209e17))
    assert errors[0].code == "excel_damaged"


def test_non_resident_documents_keep_their_type(students: Mapper) -> None:
    rec, errors = students.map_row(row(身份证件类型="a", 身份证件号=" e1234567 "))
    assert errors == []
    assert rec["id_type"] == "A" and rec["id_number"] == "E1234567"


def test_document_type_is_mapped_first_whatever_the_file_order(tmp_path: Path) -> None:
    text = (
        STUDENTS.replace(
            '[fields.id_type]\nfrom = "身份证件类型"\ntransforms = ["strip", "fullwidth", "upper", "code:id_type"]\n',
            "",
        )
        + '\n[fields.id_type]\nfrom = "身份证件类型"\ntransforms = ["code:id_type"]\n'
    )
    mapper = load(write(tmp_path, text))
    rec, errors = mapper.map_row(row(身份证件类型="6", 身份证件号="H12345678"))
    assert errors == [] and rec["id_type"] == "6"


def test_missing_required_value_and_missing_columns(students: Mapper) -> None:
    native = row()
    del native["学籍状态"]
    native["姓名"] = "   "
    rec, errors = students.map_row(native)
    assert {(e.field, e.code) for e in errors} == {("name", "required"), ("status", "required")}
    message = next(e.message for e in errors if e.field == "status")
    assert "学籍状态" in message
    assert students.missing_columns(["身份证号", "姓名"]) == ["学籍状态"]
    assert students.missing_columns(["姓名", "学籍状态"]) == ["身份证件号 | 身份证号"]
    assert students.required_columns == ["姓名", "学籍状态"]


def test_default_applies_to_an_empty_value(students: Mapper) -> None:
    rec, _ = students.map_row(row(村="", 社区=None))
    assert rec["village"] == "未知"


def test_map_checked_adds_schema_errors_once(students: Mapper) -> None:
    rec, errors = students.map_checked(row(出生日期="2012-09-02", 性别="男"))
    assert {(e.field, e.code) for e in errors} == {
        ("birth_date", "birth_date_mismatch"),
        ("sex", "sex_mismatch"),
    }
    _, errors = students.map_checked(row(学籍状态="休学"))
    assert [(e.field, e.code) for e in errors] == [
        ("status", "unknown_code")
    ]  # not also "required"


def test_mapping_without_id_type_field_uses_the_header_type(tmp_path: Path) -> None:
    mapper = load(
        write(
            tmp_path,
            HEADER.replace('version = "3"', 'version = "1"\nid_type = "A"')
            + '[fields.id_number]\nfrom = "no"\ntransforms = ["id_number"]\n'
            + '[fields.name]\nfrom = "n"\n[fields.status]\nfrom = "s"\ntransforms=["code:status"]\n',
        )
    )
    rec, errors = mapper.map_row({"no": "p-1234567", "n": "x", "s": "在读"})
    assert errors == [] and rec["id_type"] == "A" and rec["id_number"] == "P1234567"


def test_derived_field_is_skipped_when_its_source_failed(tmp_path: Path) -> None:
    mapper = load(
        write(
            tmp_path,
            HEADER
            + '[fields.id_number]\nfrom = "no"\ntransforms = ["id_number"]\n'
            + '[fields.birth_date]\nfrom_field = "id_number"\ntransforms = ["id_birth_date"]\nrequired = true\n'
            + '[fields.sex]\nfrom_field = "id_number"\ntransforms = ["id_sex"]\n'
            + '[fields.name]\nfrom = "n"\n[fields.status]\nfrom = "s"\ntransforms=["code:status"]\n',
        )
    )
    rec, errors = mapper.map_row({"no": CHILD, "n": "x", "s": "在读"})
    assert errors == [] and rec["birth_date"] == dt.date(2012, 9, 1) and rec["sex"] == "2"
    rec, errors = mapper.map_row({"no": "123", "n": "x", "s": "在读"})
    assert [(e.field, e.code) for e in errors] == [("id_number", "bad_length")]


def test_plugin_transform_plain_function_with_record(tmp_path: Path) -> None:
    seen: list[str] = []

    def school_prefix(value: Any, prefix: str = "", *, record: dict[str, Any]) -> str:
        seen.append(record["status"])
        return prefix + str(value)

    def explode(value: Any) -> Any:
        raise RuntimeError(f"boom on {value}")

    transforms = {**T, "school_prefix": school_prefix, "explode": explode, "shout": str.upper}
    mapper = load(
        write(
            tmp_path,
            STUDENTS
            + '[fields.school_code]\nfrom = "校"\ntransforms = ["school_prefix:S-"]\n'
            + '[fields.class_name]\nfrom = "班"\ntransforms = ["explode"]\n'
            + '[fields.transfer_to]\nfrom = "转入"\ntransforms = ["shout"]\n',
        ),
        transforms=transforms,
    )
    rec, errors = mapper.map_row(row(校="42", 班=CHILD, 转入="abc"))
    assert rec["school_code"] == "S-42" and seen == ["enrolled"] and rec["transfer_to"] == "ABC"
    assert [(e.field, e.code) for e in errors] == [("class_name", "transform_failed")]
    assert CHILD not in errors[0].message and ids.mask(CHILD) in errors[0].message


# --- every built-in transform ------------------------------------------------------------------------


def fn(name: str, **params: Any) -> Any:
    return T[name].compile(**params)


def test_strip_fullwidth_upper_text_int() -> None:
    assert fn("strip")("\ufeff 张三\u3000\t") == "张三"
    assert fn("strip")(" \u3000 ") is None
    assert fn("strip")(42) == 42
    assert fn("fullwidth")("１２３ＡＢｃ") == "123ABc"
    assert fn("fullwidth")("abc") == "abc"
    assert fn("upper")("x") == "X"
    assert fn("text")(3.0) == "3" and fn("text")(7) == "7" and fn("text")(2.5) == "2.5"
    assert fn("int")("12") == 12 and fn("int")(4.0) == 4
    with pytest.raises(TransformError) as err:
        fn("int")("1a")
    assert err.value.code == "bad_int"
    # the plain call (the register_transforms contract) works as well
    assert T["strip"](" a ") == "a"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("20120901", dt.date(2012, 9, 1)),
        (20120901, dt.date(2012, 9, 1)),  # a YYYYMMDD column Excel made a number
        ("2012-09-01", dt.date(2012, 9, 1)),
        ("2012/9/1", dt.date(2012, 9, 1)),
        ("2012.9.1", dt.date(2012, 9, 1)),
        ("2012年9月1日", dt.date(2012, 9, 1)),
        ("2012-09-01 00:00:00", dt.date(2012, 9, 1)),
        (41153, dt.date(2012, 9, 1)),  # Excel serial number
        (41153.75, dt.date(2012, 9, 1)),
        ("41153", dt.date(2012, 9, 1)),  # a serial written out as text
        (59, dt.date(1900, 2, 28)),  # before Excel's phantom 1900-02-29
        (61, dt.date(1900, 3, 1)),
        (dt.datetime(2012, 9, 1, 8, 30), dt.date(2012, 9, 1)),
        (dt.date(2012, 9, 1), dt.date(2012, 9, 1)),
    ],
)
def test_date_formats(raw: Any, expected: dt.date) -> None:
    assert fn("date")(raw) == expected


@pytest.mark.parametrize(
    "raw, code",
    [
        ("2023-02-30", "no_such_date"),
        ("20230230", "no_such_date"),
        ("九月一日", "bad_date"),
        (60, "no_such_date"),
        (True, "bad_date"),
    ],
)
def test_bad_dates(raw: Any, code: str) -> None:
    with pytest.raises(TransformError) as err:
        fn("date")(raw)
    assert err.value.code == code


def test_date_formats_can_be_restricted() -> None:
    only = fn("date", formats="YYYYMMDD")
    assert only("20120901") == dt.date(2012, 9, 1)
    with pytest.raises(TransformError):
        only("2012-09-01")
    with pytest.raises(TransformError):
        fn("date", formats=["YYYY-MM-DD"])(41153)
    with pytest.raises(ValueError, match="unknown date format"):
        fn("date", formats=["DD/MM/YYYY"])


def test_datetime_and_date_format() -> None:
    f = fn("datetime")
    assert f("2024-03-01 12:30:05") == dt.datetime(2024, 3, 1, 12, 30, 5)
    assert f("2024/3/1 8:05") == dt.datetime(2024, 3, 1, 8, 5)
    assert f(dt.date(2024, 3, 1)) == dt.datetime(2024, 3, 1)
    assert f(45352.5) == dt.datetime(2024, 3, 1, 12, 0)
    with pytest.raises(TransformError) as err:
        f("soon")
    assert err.value.code == "bad_datetime"
    assert fn("date_format", format="%Y%m%d")(dt.date(2024, 3, 1)) == "20240301"


def test_code_label_map() -> None:
    from gateway.mapping import CodeTable

    table = CodeTable("t.sex", TABLES["t.sex"])
    assert fn("code", table=table)("男") == "1" and fn("code", table=table)(2) == "2"
    with pytest.raises(TransformError) as err:
        fn("code", table=table)("未知")
    assert err.value.code == "unknown_code" and "t.sex" in err.value.message
    assert fn("label", table=table)("2") == "女"  # the first native label listed
    assert fn("map", values={"a": "x"})("a") == "x"
    assert fn("map", values={"a": "x"}, default="?")("b") == "?"
    with pytest.raises(TransformError):
        fn("map", values={"a": "x"})("b")


def test_regex_const_concat() -> None:
    assert fn("regex", pattern=r"(\d+)班")("三年级2班") == "2"
    assert fn("regex", pattern=r"(?P<g>\d+)年", group="g")("2012年") == "2012"
    assert fn("regex", pattern=r"\d+", missing="null")("无") is None
    assert fn("regex", pattern=r"\d+", missing="keep")("无") == "无"
    with pytest.raises(TransformError) as err:
        fn("regex", pattern=r"\d+")("无")
    assert err.value.code == "no_match"
    with pytest.raises(ValueError, match="bad regular expression"):
        fn("regex", pattern="([")
    with pytest.raises(ValueError, match="group 2"):
        fn("regex", pattern="(a)", group=2)
    assert fn("const", value="1")(None) == "1"
    assert fn("concat", sep="-")(["朝阳", None, "", " 一村 ", 3]) == "朝阳-一村-3"
    assert fn("concat")([None, ""]) is None


def test_area() -> None:
    assert fn("area")("110105003000") == "110105003"
    assert fn("area")(110105003000) == "110105003"
    assert fn("area")("110105003") == "110105003"
    assert fn("area")("110105") == "110105"
    for bad in ("11010500300", "1101050030AB", "１１０１０５００３０００"):
        with pytest.raises(TransformError) as err:
            fn("area")(bad)
        assert err.value.code == "bad_area_code"


def test_id_number_birth_sex_mask() -> None:
    rec: dict[str, Any] = {"id_type": "1"}
    assert fn("id_number")(ID15, {}, rec) == ID18 and rec["converted"] is True
    assert fn("id_birth_date")(CHILD, {}, {"id_type": "1"}) == dt.date(2012, 9, 1)
    assert fn("id_birth_date")("E1234567", {}, {"id_type": "A"}) is None
    assert fn("id_sex")(ID18, {}, {"id_type": "1"}) == "1"
    assert fn("id_sex")(CHILD, {}, {}) == "2"
    assert fn("mask")(CHILD) == CHILD[:6] + "********" + CHILD[-4:]
    with pytest.raises(TransformError) as err:
        fn("id_number")("11010520120901", {}, {"id_type": "1"})
    assert err.value.code == "bad_length"


def test_disability_cert() -> None:
    cert = CHILD + "42"
    native = {"类别": "肢体", "等级": "二级"}
    from gateway.mapping import CodeTable

    cat = CodeTable("t.category", TABLES["t.category"])
    grade = CodeTable("t.grade", TABLES["t.grade"])
    assert fn("disability_cert")(cert, native, {}) == cert
    assert fn("disability_cert")(cert.lower(), native, {}) == cert
    assert fn("disability_cert", part="id")(cert, native, {}) == CHILD
    assert fn("disability_cert", part="category", check="类别", table=cat)(cert, native, {}) == 4
    assert fn("disability_cert", part="grade", check="等级", table=grade)(cert, native, {}) == 2
    # a legacy 15-digit ID inside the certificate is converted
    assert fn("disability_cert")(ID15 + "11", {}, {}) == ID18 + "11"
    cases = [
        (
            fn("disability_cert", part="category", check="类别", table=cat),
            cert,
            {"类别": "视力"},
            "cert_category_mismatch",
        ),
        (
            fn("disability_cert", part="grade", check="等级", table=grade),
            cert,
            {"等级": "一级"},
            "cert_grade_mismatch",
        ),
        (
            fn("disability_cert", part="category", check="类别", table=cat),
            cert,
            {"类别": "其他"},
            "unknown_code",
        ),
        (fn("disability_cert"), CHILD + "8", {}, "bad_cert_length"),
        (fn("disability_cert"), CHILD + "82", {}, "bad_cert_category"),
        (fn("disability_cert"), CHILD + "45", {}, "bad_cert_grade"),
        (
            fn("disability_cert"),
            CHILD[:-1] + ("1" if CHILD[-1] == "0" else "0") + "42",
            {},
            "bad_check_digit",
        ),
        (fn("disability_cert"), 1.1010520120901e19, {}, "excel_damaged"),
    ]
    for f, value, nat, code in cases:
        with pytest.raises(TransformError) as err:
            f(value, nat, {})
        assert err.value.code == code
        assert CHILD not in err.value.message
    # an empty cross-check column is no contradiction
    assert (
        fn("disability_cert", part="category", check="类别", table=cat)(cert, {"类别": ""}, {}) == 4
    )
    with pytest.raises(ValueError, match="check and table go together"):
        fn("disability_cert", part="category", check="类别")


# --- checking mapping files --------------------------------------------------------------------------

BROKEN = """\
# line 1: a mapping with one mistake of each kind
[mapping]
name = "t/broken"
system = "t"
dataset = "students"
direction = "inbound"
version = 2
record_key = ["subject_key", "nickname"]

[fields.id_number]
from = "身份证件号"
transforms = [
  "strip",
  "no_such_transform",
  { name = "regex", pattern = "([0-9" },
]
sensitivity = "plain"

[fields.nickname]
from = "昵称"

[fields.status]
from = "学籍状态"
transforms = ["code:no_such_table"]
required = "yes"

[fields.sex]
from = "性别"
colour = "blue"

[fields.birth_date]
from_field = "later"
transforms = [{ name = "date", formats = ["DD.MM"] }]
"""


def test_check_reports_every_problem_with_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)
    problems = check_mapping(path, transforms=T, code_tables=TABLES)
    got = {(int(p.split(":")[1]), p.split(": ")[1]) for p in problems}
    for p in problems:
        assert p.startswith(f"{path}:")
    expected = {
        (7, "mapping.version"),  # wrong type
        (8, "mapping.record_key[1]"),  # not a mapped field
        (5, "mapping.dataset"),  # the required canonical field name is not mapped
        (14, "fields.id_number.transforms[1]"),  # unknown transform
        (15, "fields.id_number.transforms[2]"),  # bad regex
        (17, "fields.id_number.sensitivity"),  # lowers the class
        (19, "fields.nickname"),  # unknown canonical field
        (24, "fields.status.transforms[0]"),  # unknown code table
        (25, "fields.status.required"),  # wrong type
        (29, "fields.sex.colour"),  # unknown key
        (32, "fields.birth_date.from_field"),  # not mapped above
        (33, "fields.birth_date.transforms[0]"),  # bad parameter
    }
    assert got == expected, "\n".join(problems)
    text = "\n".join(problems)
    assert "no_such_transform" in text and "no_such_table" in text and "unterminated" in text
    with pytest.raises(MappingFileError) as err:
        load(path)
    assert err.value.problems == problems


def test_toml_syntax_error_has_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + '\n[fields.name]\nfrom = "姓名\n')
    problems = check_mapping(path, transforms=T, code_tables=TABLES)
    assert len(problems) == 1 and problems[0].startswith(f"{path}:9: (toml):")


def test_outbound_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [mapping]
        name = "t/out"
        system = "t"
        dataset = "students"
        direction = "outbound"
        version = "1"
        key = ["证件号码", "学号"]
        record_key = ["subject_key"]

        [fields."证件号码"]
        from = "id_number"
        sensitivity = "plain"

        [fields."状态"]
        from = "mood"
        """,
    )
    problems = check_mapping(path, transforms=T, code_tables=TABLES)
    keys = {p.split(": ")[1] for p in problems}
    assert keys == {
        "mapping.key[1]",
        "mapping.record_key",
        "fields.证件号码.sensitivity",
        "fields.状态.from",
    }


def test_locator_follows_toml_structure() -> None:
    text = textwrap.dedent(
        """\
        title = "a [b] # c"  # comment [x]
        [t]
        arr = [
          "x",   # one
          { name = "y", s = '''
        multi ] line
        ''' },
          [1, 2],
        ]
        [t."引号 key"]
        a.b = 1
        [[list]]
        k = 1
        [[list]]
        k = 2
        """
    )
    loc = KeyLocator(text)
    assert loc.find(("title",)) == 1
    assert loc.find(("t", "arr")) == 3
    assert loc.find(("t", "arr", 0)) == 4
    assert loc.find(("t", "arr", 1, "name")) == 5
    assert loc.find(("t", "arr", 2)) == 8
    assert loc.find(("t", "引号 key")) == 10
    assert loc.find(("t", "引号 key", "a", "b")) == 11
    assert loc.find(("list", 1, "k")) == 15
    assert loc.find(("t", "missing", "deeper")) == 2  # falls back to the closest parent
    assert loc.find(("nowhere",)) == 1


def test_version_changes_with_the_content(tmp_path: Path) -> None:
    path = write(tmp_path, STUDENTS)
    first = load(path).version
    path.write_text(path.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    second = load(path).version
    assert first != second and first.split("+")[0] == second.split("+")[0] == "3"


def test_find_mapping_file_prefers_the_site_copy(tmp_path: Path) -> None:
    shipped = builtin_mapping_path("student_status/students")
    assert shipped.is_file()
    assert find_mapping_file("student_status/students") == shipped
    site = tmp_path / "mappings" / "student_status"
    site.mkdir(parents=True)
    (site / "students.toml").write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
    mine = site / "students.toml"
    assert find_mapping_file("student_status/students", [tmp_path / "mappings"]) == mine
    # the system plugin's default is the shipped file's path: the site copy still wins
    assert find_mapping_file(shipped, [tmp_path / "mappings"]) == mine
    with pytest.raises(MappingNotFound) as err:
        find_mapping_file("student_status/nothing", [tmp_path / "mappings"])
    assert "student_status/nothing" in str(err.value)


# --- outbound -------------------------------------------------------------------------------------


def test_outbound_mapping(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [mapping]
        name = "t/poverty.out"
        system = "t"
        dataset = "poverty"
        direction = "outbound"
        version = "1"
        key = ["证件号码"]

        [fields."证件号码"]
        from = "id_number"
        required = true

        [fields."类别"]
        from = "poverty_type"
        transforms = [{ name = "map", values = { lifted = "脱贫户", unstable = "脱贫不稳定户" } }]

        [fields."风险已消除"]
        from = "risk_eliminated"
        transforms = ["label:yes_no"]

        [fields."地址"]
        from = ["area_code", "village"]
        transforms = ["concat: "]

        [fields."操作"]
        from = "change"
        default = "变更"
        """,
    )
    mapper = load(path)
    assert isinstance(mapper, OutboundMapper) and mapper.key == ["证件号码"]
    assert mapper.sensitivity["证件号码"] == "national_id" and mapper.sensitivity["类别"] == "plain"
    record = {
        "id_number": CHILD,
        "poverty_type": "unstable",
        "risk_eliminated": False,
        "area_code": "110105003",
        "village": "一村",
    }
    assert mapper.map_record(record) == {
        "证件号码": CHILD,
        "类别": "脱贫不稳定户",
        "风险已消除": "否",
        "地址": "110105003 一村",
        "操作": "变更",
    }
    with pytest.raises(OutboundRecordError) as err:
        mapper.map_record({**record, "id_number": None})
    assert err.value.errors[0] == FieldError(
        "证件号码", "required", "证件号码 is missing: id_number is empty"
    )


# --- canonical validation -------------------------------------------------------------------------


def student(**over: Any) -> dict[str, Any]:
    base = {
        "id_type": "1",
        "id_number": CHILD,
        "name": "王小花",
        "sex": "2",
        "birth_date": dt.date(2012, 9, 1),
        "status": "enrolled",
    }
    base.update(over)
    return base


def codes(errors: list[FieldError]) -> set[tuple[str, str]]:
    return {(e.field, e.code) for e in errors}


def test_validate_record() -> None:
    assert validate_record("students", student()) == []
    assert codes(validate_record("students", student(name=None, status="studying"))) == {
        ("name", "required"),
        ("status", "bad_code"),
    }
    assert codes(validate_record("students", student(birth_date=dt.date(2012, 9, 2), sex="1"))) == {
        ("birth_date", "birth_date_mismatch"),
        ("sex", "sex_mismatch"),
    }
    assert codes(validate_record("students", student(area_code="1101"))) == {
        ("area_code", "bad_format")
    }
    assert codes(validate_record("students", student(school_name="校" * 201))) == {
        ("school_name", "too_long")
    }
    assert codes(validate_record("students", student(id_type="Z", id_number=None))) == {
        ("id_number", "no_document_number")
    }
    assert validate_record("students", student(id_type="A", id_number="E1234567", sex="1")) == []
    assert codes(validate_record("students", student(birth_date=dt.datetime(2012, 9, 1)))) == {
        ("birth_date", "bad_type")
    }
    assert validate_record("students", student(status="x"), skip={"status"}) == []
    base = {"id_number": CHILD, "name": "x", "cert_no": CHILD + "42", "category": 4, "grade": 2}
    assert validate_record("disability", base) == []
    assert codes(validate_record("disability", {**base, "category": True})) == {
        ("category", "bad_type")
    }
    assert codes(validate_record("disability", {**base, "category": 9})) == {
        ("category", "bad_code")
    }
    assert codes(validate_record("disability", {**base, "grade": 3})) == {
        ("grade", "cert_grade_mismatch")
    }
    aid = {"id_number": CHILD, "name": "x", "assistance_type": "dibao"}
    assert codes(
        validate_record(
            "assistance",
            {**aid, "start_date": dt.date(2024, 5, 1), "end_date": dt.date(2024, 4, 1)},
        )
    ) == {("end_date", "end_before_start")}


def test_messages_never_hold_an_id() -> None:
    errors = validate_record("students", student(status=CHILD, school_code=CHILD + CHILD))
    assert errors and CHILD not in repr(errors)
    # cut to 40 characters after masking: no tail of the number survives the cut
    assert CHILD[:10] not in safe_text("x" * 30 + CHILD)
    assert CHILD not in safe_text(f"id {CHILD} here") and ids.mask(CHILD) in safe_text(
        f"id {CHILD} here"
    )


def test_dataset_descriptions_carry_labels_and_classes() -> None:
    described = describe_datasets()
    assert set(described) == {
        "students",
        "poverty",
        "disability",
        "assistance",
        "residents",
        "aid_granted",
    }
    status = next(f for f in described["students"] if f["field"] == "status")
    assert status["codes"]["suspected_dropout"] == "疑似辍学" and status["label"] == "学籍状态"
    cert = next(f for f in described["disability"] if f["field"] == "cert_no")
    assert cert["sensitivity"] == "national_id"
    category = next(f for f in described["disability"] if f["field"] == "category")
    assert category["codes"] == {
        "1": "视力",
        "2": "听力",
        "3": "言语",
        "4": "肢体",
        "5": "智力",
        "6": "精神",
        "7": "多重",
    }
    assert (
        next(f for f in described["residents"] if f["field"] == "address")["sensitivity"]
        == "personal"
    )


def test_schema_fields_fit_the_store_columns() -> None:
    """Every canonical field has a column in the store table, and text fits the column's length."""
    from gateway.schemas import DATASETS, dataset_fields
    from gateway.store.matches import AidGranted
    from gateway.store.records import DATASET_MODELS

    models = {**DATASET_MODELS, "aid_granted": AidGranted}
    assert set(models) == set(DATASETS)
    for dataset, model in models.items():
        columns = model.__table__.columns
        for info in dataset_fields(dataset).values():
            assert info.name in columns, f"{dataset}.{info.name}"
            length = getattr(columns[info.name].type, "length", None)
            if info.sensitivity == "plain" and length is not None and info.max_length is not None:
                assert info.max_length <= length, f"{dataset}.{info.name}"


def test_strip_knows_every_whitespace_character() -> None:
    import sys

    from gateway.transforms import STRIPPED

    whitespace = {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert whitespace <= set(STRIPPED)
    assert fn("strip")("".join(sorted(whitespace)) + "x\ufeff\u200b") == "x"


def test_odd_field_names_cannot_break_the_generated_code(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [mapping]
        name = "t/odd.out"
        system = "t"
        dataset = "students"
        direction = "outbound"
        version = "1"
        key = ["a'b\\"c\\nd"]

        [fields."a'b\\"c\\nd"]
        from = "name"

        [fields."x)) ; import os #"]
        from = "status"
        default = "none"
        """,
    )
    mapper = load(path)
    assert mapper.map_record({"name": "n", "status": None}) == {
        "a'b\"c\nd": "n",
        "x)) ; import os #": "none",
    }
    assert "import os" not in mapper.source.replace("'x)) ; import os #'", "")
