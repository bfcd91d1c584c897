"""gateway.toml validation: every error names its key path; the example documents every key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from marshmallow import Schema

from gateway import config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def problems(doc: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config.parse(doc)
    return str(info.value)


SYSTEM = {"plugin": "student_status", "connector": "csv", "path": "in/*.csv"}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"gateway": {"stroe": "x"}}, "gateway.stroe: unknown key"),
        ({"gateway": {"suite": "des"}}, "gateway.suite: Must be one of"),
        (
            {"gateway": {"compulsory_ages": [6]}},
            "gateway.compulsory_ages: must be [youngest, oldest]",
        ),
        ({"gateway": {"compulsory_ages": "6-15"}}, "gateway.compulsory_ages: Not a valid list"),
        ({"gateway": {"school_year_cutoff": "02-30"}}, "gateway.school_year_cutoff: must be MM-DD"),
        (
            {
                "systems": {"s": SYSTEM},
                "jobs": {"students": {"source": "s", "schedule": "every day"}},
            },
            "jobs.students.schedule: not a cron expression",
        ),
        (
            {"systems": {"s": SYSTEM}, "jobs": {"j": {"source": "nope"}}},
            "jobs.j.source: no system named 'nope'",
        ),
        (
            {"systems": {"s": SYSTEM}, "jobs": {"j": {"source": "s", "targets": ["t"]}}},
            "jobs.j.targets: no system named 't'",
        ),
        (
            {"systems": {"s": SYSTEM}, "jobs": {"j": {"source": "s", "batch_size": "many"}}},
            "jobs.j.batch_size: Not a valid integer",
        ),
        ({"systems": {"s": {"connector": "csv"}}}, "systems.s.plugin: Missing data"),
        ({"systems": {"s": "csv"}}, "systems.s: must be a table"),
        (
            {
                "departments": {
                    "edu": {
                        "key_id": "k",
                        "allow": [{"dataset": "poverty", "purposes": ["x"], "ids": "plain"}],
                    }
                }
            },
            "departments.edu.allow.0.ids: Must be one of",
        ),
        (
            {"audit": {"retention_days": 30}},
            "audit.retention_days: Must be greater than or equal to 183",
        ),
        ({"jobs": {"bad name!": {"source": "s"}}}, "jobs: bad name!"),
    ],
)
def test_errors_name_the_key_path(doc: dict, expected: str) -> None:
    assert expected.split(":")[0] in problems(doc)
    assert expected.split(": ", 1)[-1].split("'")[0] in problems(doc)


def test_all_problems_reported_at_once() -> None:
    text = problems({"gateway": {"suite": "x", "colour": 1}, "api": {"max_batch": 0}})
    assert "gateway.suite" in text and "gateway.colour" in text and "api.max_batch" in text


def test_defaults_and_connector_options() -> None:
    settings = config.parse(
        {"systems": {"s": {**SYSTEM, "encoding": "gbk"}}, "jobs": {"j": {"source": "s"}}}
    )
    assert settings.gateway.suite == "aes-gcm+hmac-sha256"
    assert settings.gateway.compulsory_ages == [6, 15]
    assert settings.cutoff_month_day == (8, 31)
    assert settings.systems["s"].options == {"path": "in/*.csv", "encoding": "gbk"}
    assert settings.jobs["j"].mode == "snapshot" and settings.jobs["j"].batch_size == 5000


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\nstore=", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)


def test_example_config_is_valid_and_documents_every_key() -> None:
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    config.parse(tomllib.loads(text), "config.example.toml")

    def keys(schema: type[Schema]) -> set[str]:
        return {f.data_key or name for name, f in schema().fields.items()}

    documented = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.M)) | set(
        re.findall(r"[{,]\s*([a-z_]+)\s*=", text)
    )
    for schema in (
        config.GatewaySchema,
        config.SystemSchema,
        config.JobSchema,
        config.DepartmentSchema,
        config.AllowSchema,
        config.UserSchema,
        config.PluginsSchema,
        config.AuditSchema,
        config.ApiSchema,
        config.MatchSchema,
    ):
        missing = keys(schema) - documented
        assert not missing, (
            f"{schema.__name__}: keys not documented in config.example.toml: {missing}"
        )
