"""The purpose-bound policy: default deny, and refusals that name what was refused."""

from __future__ import annotations

import pytest

from gateway import config, policy


def settings():
    return config.parse(
        {
            "departments": {
                "education": {
                    "key_id": "edu-2026",
                    "area": "522636",
                    "allow": [
                        {
                            "dataset": "poverty",
                            "fields": ["poverty_type"],
                            "purposes": ["dropout-control"],
                            "ids": "sealed",
                        },
                        {
                            "dataset": "poverty",
                            "fields": ["poverty_type", "household_no"],
                            "purposes": ["student-aid"],
                        },
                        {
                            "dataset": "assistance",
                            "fields": ["assistance_type"],
                            "purposes": ["student-aid"],
                            "write": True,
                        },
                    ],
                },
                "audit": {"key_id": "aud-1", "role": "auditor"},
            }
        }
    )


def test_department_found_by_key_id() -> None:
    s = settings()
    assert policy.department_by_key(s, "edu-2026").name == "education"
    assert policy.department_by_key(s, "nope") is None


def test_allowed_request_returns_its_rule() -> None:
    dept = settings().departments["education"]
    rule = policy.authorize(
        dept, dataset="poverty", purpose="dropout-control", fields=["poverty_type"]
    )
    assert rule.ids == "sealed"
    # The second rule allows more fields for another purpose: the matching rule is returned.
    rule = policy.authorize(dept, dataset="poverty", purpose="student-aid", fields=["household_no"])
    assert rule.ids == "masked"


@pytest.mark.parametrize(
    ("kwargs", "slug", "named"),
    [
        (dict(dataset="disability", purpose="dropout-control"), "forbidden-dataset", "disability"),
        (dict(dataset="poverty", purpose="marketing"), "forbidden-purpose", "marketing"),
        (dict(dataset="poverty", purpose=None), "forbidden-purpose", "purpose is required"),
        (
            dict(dataset="poverty", purpose="dropout-control", fields=["household_no"]),
            "forbidden-field",
            "household_no",
        ),
        (
            dict(dataset="poverty", purpose="student-aid", write=True),
            "forbidden-dataset",
            "write to",
        ),
    ],
)
def test_refusals_name_what_was_refused(kwargs: dict, slug: str, named: str) -> None:
    dept = settings().departments["education"]
    with pytest.raises(policy.Refusal) as info:
        policy.authorize(dept, **kwargs)
    assert info.value.slug == slug and named in info.value.detail


def test_write_needs_a_write_rule() -> None:
    dept = settings().departments["education"]
    assert policy.authorize(dept, dataset="assistance", purpose="student-aid", write=True).write


def test_roles_and_areas() -> None:
    s = settings()
    with pytest.raises(policy.Refusal, match="needs auditor"):
        policy.require_role(s.departments["education"], ["auditor"])
    policy.require_role(s.departments["audit"], ["auditor", "admin"])
    dept = s.departments["education"]
    assert policy.area_allowed(dept, None, "522636101")
    assert not policy.area_allowed(dept, None, "522630100")
    assert not policy.area_allowed(dept, None, None)
    assert policy.area_allowed(s.departments["audit"], None, None)  # no area: whole site
