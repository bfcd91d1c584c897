"""学籍系统 (education bureau): every enrolled student, from the national student-status system's
XLSX export (two title rows above the header) or its CSV.

Codes follow the national student-status system (全国中小学生学籍信息管理系统): 身份证件类型
1/6/7/8/9/A/Z, 学籍状态 in Chinese. Canonical codes are accepted too, so a peer gateway or a
school database that already speaks them maps unchanged.
"""

from __future__ import annotations

from gateway.hookspecs import hookimpl
from gateway.mapping import builtin_mapping_path
from gateway.systems import SystemSpec

NAME = "student_status"
VERSION = "1"

CODE_TABLES: dict[str, dict[str, str]] = {
    "sex": {"男": "1", "女": "2", "男性": "1", "女性": "2", "1": "1", "2": "2"},
    "id_type": {
        "1": "1",
        "6": "6",
        "7": "7",
        "8": "8",
        "9": "9",
        "A": "A",
        "Z": "Z",
        "居民身份证": "1",
        "香港特区护照/身份证明": "6",
        "澳门特区护照/身份证明": "7",
        "台湾居民来往大陆通行证": "8",
        "境外永久居住证": "9",
        "护照": "A",
        "其他": "Z",
    },
    "student_status": {
        "在读": "enrolled",
        "在校": "enrolled",
        "休学": "suspended",
        "转出": "transferred_out",
        "疑似辍学": "suspected_dropout",
        "辍学": "dropout",
        "毕业": "graduated",
        "死亡": "deceased",
        "enrolled": "enrolled",
        "suspended": "suspended",
        "transferred_out": "transferred_out",
        "suspected_dropout": "suspected_dropout",
        "dropout": "dropout",
        "graduated": "graduated",
        "deceased": "deceased",
    },
}


@hookimpl
def register_systems() -> list[SystemSpec]:
    return [
        SystemSpec(
            name=NAME,
            title="学籍系统 (教育局)",
            datasets={"students": builtin_mapping_path("student_status/students")},
            code_tables=CODE_TABLES,
            version=VERSION,
        )
    ]
