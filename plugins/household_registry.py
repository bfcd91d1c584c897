"""公安户籍 (public security): registered residents, a CSV in UTF-8 with a BOM; the base for
"every child aged 6-15 who lives here"."""

from __future__ import annotations

from gateway.hookspecs import hookimpl
from gateway.mapping import builtin_mapping_path
from gateway.systems import SystemSpec

NAME = "household_registry"
VERSION = "1"

CODE_TABLES: dict[str, dict[str, str]] = {
    "sex": {"男": "1", "女": "2", "男性": "1", "女性": "2", "1": "1", "2": "2"},
}


@hookimpl
def register_systems() -> list[SystemSpec]:
    return [
        SystemSpec(
            name=NAME,
            title="户籍人口 (公安局)",
            datasets={"residents": builtin_mapping_path("household_registry/residents")},
            code_tables=CODE_TABLES,
            version=VERSION,
        )
    ]
