"""Departments, their credentials and what each may see: default deny, purpose-bound.

A department may read a dataset's fields only for a purpose a rule of its ``allow`` list names;
anything else is refused, naming exactly what was refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .config import AllowRule, DepartmentSettings, Settings


@dataclass(frozen=True)
class Refusal(Exception):
    """A request the policy does not allow. ``slug`` is the API's problem type."""

    slug: str
    detail: str

    def __str__(self) -> str:
        return self.detail


def department_by_key(settings: Settings, key_id: str) -> DepartmentSettings | None:
    for department in settings.departments.values():
        if department.key_id == key_id:
            return department
    return None


def require_role(department: DepartmentSettings, roles: Iterable[str]) -> None:
    roles = tuple(roles)
    if department.role not in roles:
        raise Refusal(
            "forbidden-role",
            f"role {department.role!r} may not do this (needs {' or '.join(roles)})",
        )


def authorize(
    department: DepartmentSettings,
    *,
    dataset: str,
    purpose: str | None,
    fields: Sequence[str] = (),
    write: bool = False,
) -> AllowRule:
    """The rule allowing this request, or a Refusal naming the dataset, purpose or fields refused."""
    rules = [
        rule for rule in department.allow if rule.dataset == dataset and (rule.write or not write)
    ]
    if not rules:
        verb = "write to" if write else "read"
        raise Refusal(
            "forbidden-dataset",
            f"department {department.name!r} may not {verb} dataset {dataset!r}",
        )
    if not purpose:
        raise Refusal("forbidden-purpose", "a purpose is required")
    for_purpose = [rule for rule in rules if purpose in rule.purposes]
    if not for_purpose:
        raise Refusal(
            "forbidden-purpose",
            f"purpose {purpose!r} is not allowed for dataset {dataset!r} (allowed: {', '.join(sorted({p for r in rules for p in r.purposes}))})",
        )
    for rule in for_purpose:
        refused = [f for f in fields if f not in rule.fields]
        if not refused:
            return rule
    allowed = sorted({f for rule in for_purpose for f in rule.fields})
    refused = sorted(f for f in fields if f not in allowed)
    raise Refusal(
        "forbidden-field",
        f"field(s) {', '.join(refused)} of dataset {dataset!r} not allowed for purpose {purpose!r}",
    )


def area_allowed(
    department: DepartmentSettings, rule: AllowRule | None, area_code: str | None
) -> bool:
    """Whether a record of ``area_code`` is inside the department's jurisdiction for this rule."""
    prefixes = (rule.areas if rule and rule.areas else []) or (
        [department.area] if department.area else []
    )
    if not prefixes:
        return True
    return bool(area_code) and any(area_code.startswith(p) for p in prefixes)
