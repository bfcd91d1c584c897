"""防返贫监测系统 (rural-revitalisation bureau): 建档立卡 households and persons.

Two native layouts ship: the MySQL table ``person`` with pinyin column names (the default mapping,
``poverty_registry/poverty``) and the XLSX export with Chinese headers
(``poverty_registry/poverty_export``). A person's canonical ``poverty_type`` is the 监测对象类别
when there is one, else the 户类型 (脱贫户).
"""

from __future__ import annotations

from gateway.hookspecs import hookimpl
from gateway.mapping import builtin_mapping_path
from gateway.systems import SystemSpec

NAME = "poverty_registry"
VERSION = "1"

CODE_TABLES: dict[str, dict[str, str]] = {
    "sex": {"男": "1", "女": "2", "1": "1", "2": "2"},
    # 监测对象类别 first: a 脱贫不稳定户 is also a 脱贫户, and the finer category is what counts.
    "poverty_type": {
        "脱贫户": "lifted",
        "脱贫不稳定户": "unstable",
        "边缘易致贫户": "marginal",
        "突发严重困难户": "hardship",
        "lifted": "lifted",
        "unstable": "unstable",
        "marginal": "marginal",
        "hardship": "hardship",
    },
    "yes_no": {"是": "true", "否": "false", "1": "true", "0": "false", "Y": "true", "N": "false"},
}


@hookimpl
def register_systems() -> list[SystemSpec]:
    return [
        SystemSpec(
            name=NAME,
            title="防返贫监测系统 (乡村振兴局)",
            datasets={"poverty": builtin_mapping_path("poverty_registry/poverty")},
            code_tables=CODE_TABLES,
            version=VERSION,
        )
    ]
