"""残联 (disability federation): certified disabled persons, usually a CSV in GBK.

The 残疾人证号 is the 18-character ID number + the category digit + the grade digit (GB/T 26341);
the mapping parses it (``disability_cert``) and cross-checks the 残疾类别 and 残疾等级 columns.
"""

from __future__ import annotations

from gateway.hookspecs import hookimpl
from gateway.mapping import builtin_mapping_path
from gateway.systems import SystemSpec

NAME = "disability_federation"
VERSION = "1"

_CATEGORIES = ("视力", "听力", "言语", "肢体", "智力", "精神", "多重")
_GRADES = ("一级", "二级", "三级", "四级")

CODE_TABLES: dict[str, dict[str, str]] = {
    "sex": {"男": "1", "女": "2", "1": "1", "2": "2"},
    "disability_category": {
        **{label: str(n) for n, label in enumerate(_CATEGORIES, 1)},
        **{f"{label}残疾": str(n) for n, label in enumerate(_CATEGORIES, 1)},
        **{str(n): str(n) for n in range(1, 8)},
    },
    "disability_grade": {
        **{label: str(n) for n, label in enumerate(_GRADES, 1)},
        **{str(n): str(n) for n in range(1, 5)},
    },
}


@hookimpl
def register_systems() -> list[SystemSpec]:
    return [
        SystemSpec(
            name=NAME,
            title="残疾人信息 (残联)",
            datasets={"disability": builtin_mapping_path("disability_federation/disability")},
            code_tables=CODE_TABLES,
            version=VERSION,
        )
    ]
