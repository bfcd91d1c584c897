"""The five department systems: their plugins, code tables and shipped mappings, exercised on real
files in each department's native layout, read by the real connectors (and the poverty registry's
``person`` table on the real MariaDB)."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from openpyxl import Workbook

from gateway import ids
from gateway.connectors import ConnectorContext, Row
from gateway.mapping import Mapper, builtin_mappings, check_mapping, load_for, plugin_context
from gateway.plugins import connectors, get_plugin_manager, systems

SYSTEMS = (
    "student_status",
    "poverty_registry",
    "disability_federation",
    "civil_affairs",
    "household_registry",
)


@pytest.fixture(scope="module")
def pm() -> Any:
    return get_plugin_manager()


def make_id(birth: str, seq: str, area: str = "420102") -> str:
    first17 = area + birth + seq
    return first17 + ids.check_char(first17)


def read_rows(pm: Any, kind: str, path: Path, **options: Any) -> list[Row]:
    cls = connectors(pm)[kind]
    connector = cls(
        {"path": str(path), **options}, ConnectorContext(system="test", base_dir=str(path.parent))
    )
    try:
        return [r for batch in connector.read(None, batch_size=3) for r in batch.rows]
    finally:
        connector.close()


def mapped(mapper: Mapper, rows: list[Row]) -> Iterator[dict[str, Any]]:
    for r in rows:
        assert r.problems == [], r.position
        record, errors = mapper.map_checked(r.data)
        assert errors == [], (r.position, errors)
        yield record


def write_xlsx(path: Path, titles: list[str], header: list[str], rows: list[list[Any]]) -> None:
    wb = Workbook()
    ws = wb.active
    for title in titles:
        ws.append([title])
    ws.append(header)
    for r in rows:
        ws.append(r)
    for row in ws.iter_rows(min_row=len(titles) + 2):
        for cell in row:
            if isinstance(cell.value, str):
                cell.number_format = "@"  # text, as exports keep ID columns
    wb.save(path)


def write_csv(path: Path, header: list[str], rows: list[list[Any]], encoding: str) -> None:
    with path.open("w", encoding=encoding, newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(["" if v is None else v for v in r])


# --- the plugins --------------------------------------------------------------------------------------


def test_every_system_is_registered_with_existing_default_mappings(pm: Any) -> None:
    found = systems(pm)
    assert set(SYSTEMS) <= set(found)
    expected = {
        "student_status": "students",
        "poverty_registry": "poverty",
        "disability_federation": "disability",
        "civil_affairs": "assistance",
        "household_registry": "residents",
    }
    for name, dataset in expected.items():
        spec = found[name]
        assert spec.title and spec.version
        assert list(spec.datasets) == [dataset]
        mapper = load_for(spec.datasets[dataset], pm)
        assert isinstance(mapper, Mapper)
        assert (mapper.system, mapper.dataset) == (name, dataset)


def test_every_shipped_mapping_passes_check(pm: Any) -> None:
    transforms, tables = plugin_context(pm)
    shipped = builtin_mappings()
    assert {spec for spec, _ in shipped} >= {
        "student_status/students",
        "poverty_registry/poverty",
        "poverty_registry/poverty_export",
        "disability_federation/disability",
        "civil_affairs/assistance",
        "household_registry/residents",
        "student_status/poverty.out",
        "poverty_registry/students.out",
    }
    for spec, path in shipped:
        assert check_mapping(path, transforms=transforms, code_tables=tables) == [], spec


def test_code_tables_cover_the_native_codes(pm: Any) -> None:
    """Every code the native layouts in the team notes use is in its system's tables."""
    found = systems(pm)
    need = {
        "student_status": {
            "sex": {"男": "1", "女": "2"},
            "id_type": {c: c for c in ("1", "6", "7", "8", "9", "A", "Z")},
            "student_status": {
                "在读": "enrolled",
                "休学": "suspended",
                "转出": "transferred_out",
                "疑似辍学": "suspected_dropout",
                "辍学": "dropout",
                "毕业": "graduated",
                "死亡": "deceased",
            },
        },
        "poverty_registry": {
            "sex": {"1": "1", "2": "2", "男": "1", "女": "2"},
            "poverty_type": {
                "脱贫户": "lifted",
                "脱贫不稳定户": "unstable",
                "边缘易致贫户": "marginal",
                "突发严重困难户": "hardship",
            },
            "yes_no": {"是": "true", "否": "false"},
        },
        "disability_federation": {
            "sex": {"男": "1", "女": "2"},
            "disability_category": {
                **{
                    k: str(n)
                    for n, k in enumerate(
                        ["视力", "听力", "言语", "肢体", "智力", "精神", "多重"], 1
                    )
                },
                **{str(n): str(n) for n in range(1, 8)},
            },
            "disability_grade": {
                **{k: str(n) for n, k in enumerate(["一级", "二级", "三级", "四级"], 1)},
                **{str(n): str(n) for n in range(1, 5)},
            },
        },
        "civil_affairs": {
            "sex": {"男": "1", "女": "2"},
            "assistance_type": {
                "低保": "dibao",
                "特困供养": "tekun",
                "孤儿": "orphan",
                "事实无人抚养儿童": "unsupported_child",
                "临时救助": "temporary",
            },
            "assistance_status": {"正常": "true", "停发": "false"},
        },
        "household_registry": {"sex": {"男": "1", "女": "2"}},
    }
    from gateway.schemas import dataset_fields

    for system, tables in need.items():
        for table, codes in tables.items():
            got = found[system].code_tables[table]
            for native, canonical in codes.items():
                assert got.get(native) == canonical, f"{system}.{table}: {native}"
    # every canonical code is reachable from some native code of its system
    reachable = {
        ("students", "status"): set(found["student_status"].code_tables["student_status"].values()),
        ("poverty", "poverty_type"): set(
            found["poverty_registry"].code_tables["poverty_type"].values()
        ),
        ("assistance", "assistance_type"): set(
            found["civil_affairs"].code_tables["assistance_type"].values()
        ),
        ("students", "id_type"): set(found["student_status"].code_tables["id_type"].values()),
    }
    for (dataset, field), values in reachable.items():
        assert values == set(dataset_fields(dataset)[field].codes), (dataset, field)


# --- student_status: XLSX with two title rows, GBK CSV, GB18030 CSV with a BOM ---------------------------

STUDENT_HEADER = [
    "全国学籍号", "姓名", "性别", "出生日期", "身份证件类型", "身份证件号", "学校标识码", "学校名称", "年级",
    "班级", "学籍状态", "转入学校", "户籍地行政区划代码", "户籍地村(社区)", "监护人联系电话",
]  # fmt: skip

KID_A = make_id("20120901", "042")  # female
KID_B = make_id("20110315", "013")  # male
KID_C = make_id("20130101", "022")


def student_rows() -> list[list[Any]]:
    def r(
        no: str,
        name: str,
        sex: str,
        birth: str,
        t: str,
        number: str,
        status: str,
        transfer: str = "",
    ) -> list[Any]:
        return [no, name, sex, birth, t, number, "2142000123", "武昌区第一小学", "五年级", "2班", status, transfer,
                "420106003000", "中南社区", "13800000000"]  # fmt: skip

    return [
        r("G" + KID_A, "王小花", "女", "20120901", "1", KID_A, "在读"),
        r("G" + KID_B, "李小明", "男", "20110315", "1", KID_B, "疑似辍学"),
        r("L420106001", "赵雨", "女", "20130101", "1", KID_C, "转出", "汉阳区实验小学"),
        r("J0000007", "陈家豪", "男", "20120505", "6", "H1234567(8)", "在读"),
        r("J0000008", "Tom Lee", "男", "20120606", "A", "e98765432", "休学"),
    ]


def test_student_exports_in_every_layout_give_the_same_rows(pm: Any, tmp_path: Path) -> None:
    mapper = load_for("student_status/students", pm)
    rows = student_rows()
    xlsx = tmp_path / "学籍.xlsx"
    xlsx_rows = [list(r) for r in rows]
    xlsx_rows[0][3] = dt.datetime(2012, 9, 1)  # a real date cell
    xlsx_rows[1][3] = 40617  # an Excel serial number (2011-03-15)
    xlsx_rows[1][12] = 420106003000  # area code typed as a number
    write_xlsx(xlsx, ["武昌区学籍信息导出", "导出时间: 2024-09-10"], STUDENT_HEADER, xlsx_rows)
    gbk = tmp_path / "学籍_gbk.csv"
    write_csv(gbk, STUDENT_HEADER, rows, "gbk")
    bom = tmp_path / "学籍_gb18030.csv"
    bom.write_bytes("\ufeff".encode("gb18030") + gbk.read_bytes().decode("gbk").encode("gb18030"))

    from_xlsx = list(mapped(mapper, read_rows(pm, "xlsx", xlsx)))
    from_gbk = list(mapped(mapper, read_rows(pm, "csv", gbk)))
    from_bom = list(mapped(mapper, read_rows(pm, "csv", bom)))
    assert from_xlsx == from_gbk == from_bom
    a, b, c, hk, passport = from_gbk
    assert (
        a["id_number"] == KID_A
        and a["status"] == "enrolled"
        and a["birth_date"] == dt.date(2012, 9, 1)
    )
    assert a["student_no"] == "G" + KID_A and a["area_code"] == "420106003" and a["sex"] == "2"
    assert b["status"] == "suspected_dropout" and b["birth_date"] == dt.date(2011, 3, 15)
    assert c["status"] == "transferred_out" and c["transfer_to"] == "汉阳区实验小学"
    assert c["student_no"] == "L420106001"  # never derived from the ID
    # documents other than the resident ID are carried with their type
    assert (hk["id_type"], hk["id_number"]) == ("6", "H12345678")
    assert (passport["id_type"], passport["id_number"]) == ("A", "E98765432")
    assert a["guardian_phone"] == "13800000000" and a["school_code"] == "2142000123"


def test_student_export_problems(pm: Any, tmp_path: Path) -> None:
    mapper = load_for("student_status/students", pm)
    header = [h for h in STUDENT_HEADER if h != "学籍状态"]
    rows = [[v for i, v in enumerate(r) if STUDENT_HEADER[i] != "学籍状态"] for r in student_rows()]
    path = tmp_path / "no_status.csv"
    write_csv(path, header, rows, "utf-8")
    got = read_rows(pm, "csv", path)
    assert mapper.missing_columns(got[0].data) == ["学籍状态"]
    record, errors = mapper.map_checked(got[0].data)
    assert [(e.field, e.code) for e in errors] == [("status", "required")]
    bad = [list(r) for r in student_rows()]
    bad[0][5] = KID_A[:-1] + ("0" if KID_A[-1] != "0" else "1")  # wrong check digit
    bad[1][3] = "20110230"  # a date that does not exist
    bad[2][4] = "Z"
    bad[2][5] = ""  # type Z without a number
    bad[3][12] = "4201"  # neither a statistical nor a township code
    path = tmp_path / "bad.csv"
    write_csv(path, STUDENT_HEADER, bad, "gbk")
    results = [mapper.map_checked(r.data)[1] for r in read_rows(pm, "csv", path)]
    assert [[(e.field, e.code) for e in errs] for errs in results] == [
        [("id_number", "bad_check_digit")],
        [("birth_date", "no_such_date")],
        [("id_number", "required")],
        [("area_code", "bad_area_code")],
        [],
    ]
    assert KID_A not in repr(results)


# --- poverty_registry: the MySQL `person` table and the Chinese-header export -------------------------

ADULT = make_id("19700405", "011")  # male head of household
ADULT15 = ADULT[:6] + ADULT[8:17]  # the same person's legacy 15-digit number
CHILD = make_id("20140620", "024")  # female
TEEN = make_id("20090808", "035")

POVERTY = [
    # hbh, rbh, xm, zjhm, xb, yhzgx, hlx, jcdxlb, fxxc, xzqh, xzc
    ["H001", "P001", "张建国", ADULT15, "1", "户主", "脱贫户", "", "是", "420106003000", "青山村"],
    [
        "H001",
        "P002",
        "张小丽",
        CHILD,
        "2",
        "之女",
        "脱贫户",
        "脱贫不稳定户",
        "否",
        "420106003000",
        "青山村",
    ],
    [
        "H002",
        "P003",
        "刘强",
        TEEN,
        "1",
        "之子",
        "监测户",
        "突发严重困难户",
        "否",
        "420106004000",
        "绿水村",
    ],
]


@pytest.mark.mariadb
def test_poverty_table_and_export_give_the_same_rows(
    pm: Any, tmp_path: Path, mysql_url: str
) -> None:
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE person (id INT PRIMARY KEY AUTO_INCREMENT, hbh VARCHAR(20), rbh VARCHAR(20), "
            "xm VARCHAR(50), zjhm VARCHAR(20), xb CHAR(1), yhzgx VARCHAR(10), hlx VARCHAR(10), "
            "jcdxlb VARCHAR(20), fxxc VARCHAR(2), xzqh VARCHAR(12), xzc VARCHAR(50), gxsj DATETIME) "
            "DEFAULT CHARSET=utf8mb4"
        )
        for i, r in enumerate(POVERTY):
            conn.execute(
                sa.text(
                    "INSERT INTO person (hbh, rbh, xm, zjhm, xb, yhzgx, hlx, jcdxlb, fxxc, xzqh, xzc, gxsj) VALUES "
                    "(:hbh, :rbh, :xm, :zjhm, :xb, :yhzgx, :hlx, :jcdxlb, :fxxc, :xzqh, :xzc, :gxsj)"
                ),
                dict(
                    zip(
                        [
                            "hbh",
                            "rbh",
                            "xm",
                            "zjhm",
                            "xb",
                            "yhzgx",
                            "hlx",
                            "jcdxlb",
                            "fxxc",
                            "xzqh",
                            "xzc",
                        ],
                        r,
                        strict=True,
                    ),
                    jcdxlb=r[7] or None,
                    gxsj=dt.datetime(2024, 9, 1, 8, i),
                ),
            )
    engine.dispose()
    cls = connectors(pm)["sql"]
    connector = cls(
        {"url": mysql_url, "table": "person", "cursor": ["gxsj", "id"]},
        ConnectorContext(system="poverty_registry"),
    )
    try:
        db_rows = [r for b in connector.read(None) for r in b.rows]
    finally:
        connector.close()
    from_db = list(mapped(load_for("poverty_registry/poverty", pm), db_rows))

    header = [
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
    ]
    xlsx = tmp_path / "监测对象.xlsx"
    write_xlsx(xlsx, ["防返贫监测信息系统导出"], header, POVERTY)
    from_export = list(
        mapped(load_for("poverty_registry/poverty_export", pm), read_rows(pm, "xlsx", xlsx))
    )

    assert [r.pop("source_updated_at") for r in from_db] == [
        dt.datetime(2024, 9, 1, 8, i) for i in range(3)
    ]
    for r in from_export:
        assert r.pop("source_updated_at") is None
    assert from_db == from_export
    head, girl, teen = from_db
    assert head["id_number"] == ADULT and head["converted"] is True  # 15 digits became 18
    assert head["poverty_type"] == "lifted" and head["risk_eliminated"] is True
    assert girl["poverty_type"] == "unstable" and girl["risk_eliminated"] is False
    assert girl["birth_date"] == dt.date(2014, 6, 20)  # from the ID: the registry has no birth date
    assert (
        teen["poverty_type"] == "hardship"
        and teen["area_code"] == "420106004"
        and teen["village"] == "绿水村"
    )
    assert head["household_no"] == girl["household_no"] == "H001" and girl["relation"] == "之女"


def test_monitored_household_without_category_is_an_error(pm: Any) -> None:
    mapper = load_for("poverty_registry/poverty", pm)
    native = dict(
        zip(
            ["hbh", "rbh", "xm", "zjhm", "xb", "yhzgx", "hlx", "jcdxlb", "fxxc", "xzqh", "xzc"],
            POVERTY[2],
            strict=True,
        )
    )
    native["jcdxlb"] = None
    _, errors = mapper.map_checked(native)
    assert [(e.field, e.code) for e in errors] == [("poverty_type", "unknown_code")]
    assert "监测户" in errors[0].message


# --- disability_federation: CSV in GBK ------------------------------------------------------------------

DISABILITY_HEADER = [
    "姓名",
    "性别",
    "残疾人证号",
    "残疾类别",
    "残疾等级",
    "发证日期",
    "有效期至",
    "户籍地行政区划",
    "村(社区)",
]


def test_disability_csv_in_gbk(pm: Any, tmp_path: Path) -> None:
    mapper = load_for("disability_federation/disability", pm)
    rows = [
        [
            "张小丽",
            "女",
            CHILD + "52",
            "智力",
            "二级",
            "2020-03-01",
            "2030-03-01",
            "420106003000",
            "青山村",
        ],
        [
            "刘强",
            "男",
            TEEN.lower() + "41",
            "肢体",
            "一级",
            "2019-01-15",
            "2029-01-15",
            "420106004000",
            "绿水村",
        ],
        [
            "张建国",
            "男",
            ADULT15 + "13",
            "视力",
            "三级",
            "2018-07-01",
            "2028-07-01",
            "420106003000",
            "青山村",
        ],
        [
            "错配",
            "男",
            TEEN + "41",
            "视力",
            "一级",
            "2019-01-15",
            "2029-01-15",
            "420106004000",
            "绿水村",
        ],
        ["无类", "男", TEEN + "94", "", "", "2019-01-15", "2029-01-15", "420106004000", "绿水村"],
    ]
    path = tmp_path / "残疾人.csv"
    write_csv(path, DISABILITY_HEADER, rows, "gbk")
    results = [mapper.map_checked(r.data) for r in read_rows(pm, "csv", path)]
    (girl, e1), (teen, e2), (adult, e3), (_, e4), (_, e5) = results
    assert e1 == e2 == e3 == []
    assert (girl["id_number"], girl["category"], girl["grade"]) == (CHILD, 5, 2)
    assert girl["cert_no"] == CHILD + "52" and girl["birth_date"] == dt.date(2014, 6, 20)
    assert (teen["id_number"], teen["category"], teen["grade"]) == (TEEN, 4, 1)
    assert (
        adult["id_number"] == ADULT
        and adult["cert_no"] == ADULT + "13"
        and adult["converted"] is True
    )
    assert girl["valid_until"] == dt.date(2030, 3, 1) and girl["area_code"] == "420106003"
    assert [(e.field, e.code) for e in e4] == [("category", "cert_category_mismatch")]
    assert [(e.field, e.code) for e in e5] == [("cert_no", "bad_cert_category")]
    assert TEEN not in repr(e4 + e5)


# --- civil_affairs: XLSX with one title row ----------------------------------------------------------


def test_civil_affairs_xlsx(pm: Any, tmp_path: Path) -> None:
    mapper = load_for("civil_affairs/assistance", pm)
    header = [
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
    ]
    rows = [
        ["张小丽", CHILD, "女", "低保", "M001", "2023/3/1", None, "正常", "420106003000", "青山村"],
        [
            "张小丽",
            CHILD,
            "女",
            "事实无人抚养儿童",
            "M001",
            dt.datetime(2023, 5, 1),
            "2024/1/31",
            "停发",
            "420106003000",
            "青山村",
        ],
        ["刘强", TEEN, "男", "特困供养", "M002", 44927, None, "正常", "420106004000", "绿水村"],
        [
            "刘强",
            TEEN,
            "男",
            "临时救助",
            "M002",
            "2024/2/30",
            None,
            "正常",
            "420106004000",
            "绿水村",
        ],
    ]
    path = tmp_path / "救助.xlsx"
    write_xlsx(path, ["社会救助对象花名册"], header, rows)
    results = [mapper.map_checked(r.data) for r in read_rows(pm, "xlsx", path)]
    (dibao, e1), (unsupported, e2), (tekun, e3), (_, e4) = results
    assert e1 == e2 == e3 == []
    assert (
        dibao["assistance_type"] == "dibao"
        and dibao["active"] is True
        and dibao["end_date"] is None
    )
    assert dibao["start_date"] == dt.date(2023, 3, 1)
    assert unsupported["assistance_type"] == "unsupported_child" and unsupported["active"] is False
    assert unsupported["end_date"] == dt.date(2024, 1, 31) and unsupported["start_date"] == dt.date(
        2023, 5, 1
    )
    assert tekun["start_date"] == dt.date(2023, 1, 1)  # Excel serial 44927
    assert [(e.field, e.code) for e in e4] == [("start_date", "no_such_date")]
    # one person, two kinds of assistance: two records
    assert mapper.record_key_fields == ["subject_key", "assistance_type"]
    assert mapper.record_key(dibao) != mapper.record_key(unsupported)


# --- household_registry: CSV in UTF-8 with a BOM ------------------------------------------------------


def test_household_registry_csv_with_bom(pm: Any, tmp_path: Path) -> None:
    mapper = load_for("household_registry/residents", pm)
    header = ["公民身份号码", "姓名", "性别", "出生日期", "行政区划代码", "村(居)委会", "住址"]
    rows = [
        [CHILD, "张小丽", "女", "2014-06-20", "420106003000", "青山村委会", "青山村3组12号"],
        [ADULT15, "张建国", "男", "1970-04-05", "420106003000", "青山村委会", "青山村3组12号"],
    ]
    path = tmp_path / "户籍.csv"
    write_csv(path, header, rows, "utf-8-sig")
    girl, head = mapped(mapper, read_rows(pm, "csv", path))
    assert (
        girl["id_number"] == CHILD
        and girl["address"] == "青山村3组12号"
        and girl["village"] == "青山村委会"
    )
    assert head["id_number"] == ADULT and head["birth_date"] == dt.date(1970, 4, 5)
    assert mapper.sensitivity["address"] == "personal"


# --- student_status: the student-aid centre's list of aid paid ------------------------------------------


def test_aid_granted_list(pm: Any, tmp_path: Path) -> None:
    mapper = load_for("student_status/aid_granted", pm)
    header = ["身份证件号", "姓名", "资助项目", "发放日期"]
    rows = [
        [KID_A, "王小花", "义务教育家庭经济困难学生生活补助", "2024-10-15"],
        [KID_A, "王小花", "营养改善计划膳食补助", "2024-10-15"],
        [KID_B.lower(), "李小明", "残疾儿童少年助学金", "2024-11-02"],
    ]
    path = tmp_path / "资助发放名单.csv"
    write_csv(path, header, rows, "utf-8-sig")
    first, second, third = mapped(mapper, read_rows(pm, "csv", path))
    assert (first["id_number"], first["program"], first["granted_on"]) == (
        KID_A,
        rows[0][2],
        dt.date(2024, 10, 15),
    )
    assert (
        third["id_number"] == KID_B
        and third["birth_date"] == dt.date(2011, 3, 15)
        and third["amount"] is None
    )
    # two programmes paid to one child on one day are two records
    assert mapper.record_key_fields == ["subject_key", "program", "granted_on"]
    assert mapper.record_key(first) != mapper.record_key(second)
