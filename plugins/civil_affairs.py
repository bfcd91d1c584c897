"""民政 (civil-affairs bureau): assistance recipients, usually an XLSX with one title row.

One person may receive several kinds of assistance: the record key is the person plus the
assistance type. 状态 正常 means the assistance is being paid (``active``), 停发 that it stopped.
"""

from __future__ import annotations

from gateway.hookspecs import hookimpl
from gateway.mapping import builtin_mapping_path
from gateway.systems import SystemSpec

NAME = "civil_affairs"
VERSION = "1"

CODE_TABLES: dict[str, dict[str, str]] = {
    "sex": {"男": "1", "女": "2", "1": "1", "2": "2"},
    "assistance_type": {
        "低保": "dibao",
        "最低生活保障": "dibao",
        "特困供养": "tekun",
        "特困": "tekun",
        "特困人员": "tekun",
        "孤儿": "orphan",
        "事实无人抚养儿童": "unsupported_child",
        "临时救助": "temporary",
        "dibao": "dibao",
        "tekun": "tekun",
        "orphan": "orphan",
        "unsupported_child": "unsupported_child",
        "temporary": "temporary",
    },
    "assistance_status": {"正常": "true", "停发": "false", "终止": "false"},
}


@hookimpl
def register_systems() -> list[SystemSpec]:
    return [
        SystemSpec(
            name=NAME,
            title="社会救助 (民政局)",
            datasets={"assistance": builtin_mapping_path("civil_affairs/assistance")},
            code_tables=CODE_TABLES,
            version=VERSION,
        )
    ]
