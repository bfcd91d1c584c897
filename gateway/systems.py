"""What a department system plugin declares: its datasets, code tables and default mappings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SystemSpec:
    name: str  # canonical system name, e.g. "student_status"
    title: str  # the department's own name, e.g. "学籍系统 (教育局)"
    # canonical dataset -> default mapping file (inbound, native -> canonical)
    datasets: dict[str, Path] = field(default_factory=dict)
    # code table name -> {native code: canonical code}; referenced from mappings as code:<name>
    code_tables: dict[str, dict[str, str]] = field(default_factory=dict)
    version: str = "0"
