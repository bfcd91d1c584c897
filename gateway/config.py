"""gateway.toml -> validated settings. Every error names the key path and exits 2.

The key names are the contract with sites (design.md, "Configuration"); add keys freely, rename none
without a migration note in the README.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from croniter import croniter
from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates,
    validates_schema,
)

from .errors import ConfigError

SUITES = ("aes-gcm+hmac-sha256", "sm4-gcm+hmac-sm3")
CONNECTOR_NAMES_BUILTIN = ("sql", "csv", "xlsx", "http")
DATASETS = ("students", "poverty", "disability", "assistance", "residents", "aid_granted")
ID_RETURN = ("masked", "subject_key", "sealed")
ROLES = ("department", "auditor", "admin")
_NAME = validate.Regexp(
    r"^[A-Za-z][A-Za-z0-9_-]*$", error="must start with a letter and use A-Z a-z 0-9 _ -"
)


def _cutoff(value: str) -> str:
    try:
        dt.date(2000, *map(int, value.split("-")))  # 2000 is a leap year: 02-29 is allowed
    except (ValueError, TypeError):
        raise ValidationError("must be MM-DD, a real day of the year") from None
    return value


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class GatewaySchema(_Strict):
    store = fields.String(load_default="sqlite:///gateway.db")
    suite = fields.String(load_default=SUITES[0], validate=validate.OneOf(SUITES))
    keyring = fields.String(load_default="keyring.json")
    school_year_cutoff = fields.String(load_default="08-31", validate=_cutoff)
    compulsory_ages = fields.List(fields.Integer(strict=True), load_default=lambda: [6, 15])
    log_level = fields.String(
        load_default="INFO", validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR"])
    )
    # A county id: printed on reports, used as the audit actor prefix of this gateway.
    site_name = fields.String(load_default="county")
    # Review pages' session cookie: Secure when the request came over HTTPS ("auto"), or always/never.
    secure_cookies = fields.String(
        load_default="auto", validate=validate.OneOf(["auto", "always", "never"])
    )

    @validates("compulsory_ages")
    def _ages(self, value: list[int], **_: Any) -> None:
        if len(value) != 2 or not 3 <= value[0] <= value[1] <= 20:
            raise ValidationError("must be [youngest, oldest] with 3 <= youngest <= oldest <= 20")


class SystemSchema(Schema):
    """A connected department system. Connector options beyond these are checked by the connector."""

    class Meta:
        unknown = EXCLUDE  # connector-specific options are kept in `options` below

    plugin = fields.String(required=True)
    connector = fields.String(required=True)
    mapping = fields.String(load_default=None, allow_none=True)
    dataset = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(DATASETS))


class JobSchema(_Strict):
    source = fields.String(required=True)
    dataset = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(DATASETS))
    mapping = fields.String(load_default=None, allow_none=True)
    mode = fields.String(
        load_default="snapshot", validate=validate.OneOf(["snapshot", "incremental"])
    )
    schedule = fields.String(load_default=None, allow_none=True)
    targets = fields.List(fields.String(), load_default=list)
    batch_size = fields.Integer(
        strict=True, load_default=5000, validate=validate.Range(1, 1_000_000)
    )
    retries = fields.Integer(strict=True, load_default=3, validate=validate.Range(0, 20))

    @validates("schedule")
    def _cron(self, value: str | None, **_: Any) -> None:
        if value is not None and not croniter.is_valid(value):
            raise ValidationError("not a cron expression")


class AllowSchema(_Strict):
    dataset = fields.String(required=True, validate=validate.OneOf(DATASETS + ("match",)))
    fields_ = fields.List(fields.String(), data_key="fields", load_default=list)
    purposes = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    ids = fields.String(load_default="masked", validate=validate.OneOf(ID_RETURN))
    areas = fields.List(fields.String(), load_default=list)  # area-code prefixes; empty: all
    write = fields.Boolean(load_default=False)  # may push records into this dataset


class DepartmentSchema(_Strict):
    key_id = fields.String(required=True)
    role = fields.String(load_default="department", validate=validate.OneOf(ROLES))
    public_key = fields.String(load_default=None, allow_none=True)  # X25519, for sealed IDs
    area = fields.String(load_default=None, allow_none=True)  # the caller's area-code prefix
    allow = fields.List(fields.Nested(AllowSchema), load_default=list)
    permissions = fields.List(
        fields.String(validate=validate.OneOf(["reveal", "trigger"])), load_default=list
    )
    rate_limit = fields.Integer(
        strict=True, load_default=50, validate=validate.Range(1, 1_000_000)
    )  # req/s


class PluginsSchema(_Strict):
    blocked = fields.List(fields.String(), load_default=list)


class AuditSchema(_Strict):
    checkpoint_every = fields.Integer(strict=True, load_default=1000, validate=validate.Range(1))
    checkpoint_minutes = fields.Integer(strict=True, load_default=60, validate=validate.Range(1))
    retention_days = fields.Integer(strict=True, load_default=183, validate=validate.Range(183))
    checkpoint_export = fields.String(load_default=None, allow_none=True)


class ApiSchema(_Strict):
    window_seconds = fields.Integer(strict=True, load_default=300, validate=validate.Range(1, 3600))
    max_body_bytes = fields.Integer(
        strict=True, load_default=8 * 1024 * 1024, validate=validate.Range(1024)
    )
    max_batch = fields.Integer(strict=True, load_default=10_000, validate=validate.Range(1))
    # The change feed serves rows older than this, so a batch still committing is never skipped.
    changes_settle_seconds = fields.Integer(
        strict=True, load_default=10, validate=validate.Range(0, 3600)
    )


class UserSchema(_Strict):
    """A person who signs in to the review pages; password_hash from werkzeug.security."""

    password_hash = fields.String(required=True)
    role = fields.String(load_default="auditor", validate=validate.OneOf(ROLES))
    permissions = fields.List(fields.String(), load_default=list)


class MatchSchema(_Strict):
    aid_dataset = fields.String(load_default=None, allow_none=True)  # system holding aid granted
    township_outbox = fields.String(load_default=None, allow_none=True)  # folder for township files
    permissions = fields.List(fields.String(), load_default=list)  # "reveal" for CLI --reveal
    # system (a table or a file it can write) receiving the student flags after each run
    flags_target = fields.String(load_default=None, allow_none=True)
    # outbound mapping of those flags; default "<target plugin>/flags.out"
    flags_mapping = fields.String(load_default=None, allow_none=True)


class SettingsSchema(_Strict):
    gateway = fields.Nested(GatewaySchema, load_default=lambda: GatewaySchema().load({}))
    systems = fields.Dict(
        keys=fields.String(validate=_NAME), values=fields.Raw(), load_default=dict
    )
    jobs = fields.Dict(
        keys=fields.String(validate=_NAME), values=fields.Nested(JobSchema), load_default=dict
    )
    departments = fields.Dict(
        keys=fields.String(validate=_NAME),
        values=fields.Nested(DepartmentSchema),
        load_default=dict,
    )
    users = fields.Dict(
        keys=fields.String(validate=_NAME), values=fields.Nested(UserSchema), load_default=dict
    )
    plugins = fields.Nested(PluginsSchema, load_default=lambda: PluginsSchema().load({}))
    audit = fields.Nested(AuditSchema, load_default=lambda: AuditSchema().load({}))
    api = fields.Nested(ApiSchema, load_default=lambda: ApiSchema().load({}))
    match = fields.Nested(MatchSchema, load_default=lambda: MatchSchema().load({}))

    @validates_schema
    def _cross(self, data: dict[str, Any], **_: Any) -> None:
        errors: dict[str, Any] = {}
        systems = data.get("systems", {})
        for name, raw in systems.items():
            if not isinstance(raw, dict):
                errors.setdefault("systems", {})[name] = ["must be a table"]
                continue
            try:
                SystemSchema().load(raw)
            except ValidationError as exc:
                errors.setdefault("systems", {})[name] = exc.messages
        for name, job in data.get("jobs", {}).items():
            if job["source"] not in systems:
                errors.setdefault("jobs", {}).setdefault(name, {})["source"] = [
                    f"no system named {job['source']!r} in [systems]"
                ]
            for target in job["targets"]:
                if target not in systems:
                    errors.setdefault("jobs", {}).setdefault(name, {})["targets"] = [
                        f"no system named {target!r} in [systems]"
                    ]
        match = data.get("match", {})
        flags_target = match.get("flags_target")
        if flags_target is not None and flags_target not in systems:
            errors.setdefault("match", {})["flags_target"] = [
                f"no system named {flags_target!r} in [systems]"
            ]
        if match.get("flags_mapping") is not None and flags_target is None:
            errors.setdefault("match", {})["flags_mapping"] = [
                "needs flags_target (the system the flags are written to)"
            ]
        if errors:
            raise ValidationError(errors)

    @post_load
    def _build(self, data: dict[str, Any], **_: Any) -> Settings:
        systems = {}
        for name, raw in data["systems"].items():
            known = SystemSchema().load(raw)
            options = {k: v for k, v in raw.items() if k not in known}
            systems[name] = SystemSettings(name=name, options=options, **known)
        return Settings(
            gateway=GatewaySettings(**data["gateway"]),
            systems=systems,
            jobs={n: JobSettings(name=n, **j) for n, j in data["jobs"].items()},
            departments={
                n: DepartmentSettings(
                    name=n,
                    allow=[AllowRule(fields=a.pop("fields_"), **a) for a in d.pop("allow")],
                    **d,
                )
                for n, d in data["departments"].items()
            },
            users={n: UserSettings(name=n, **u) for n, u in data["users"].items()},
            blocked_plugins=list(data["plugins"]["blocked"]),
            audit=AuditSettings(**data["audit"]),
            api=ApiSettings(**data["api"]),
            match=MatchSettings(**data["match"]),
        )


@dataclass
class GatewaySettings:
    store: str
    suite: str
    keyring: str
    school_year_cutoff: str
    compulsory_ages: list[int]
    log_level: str
    site_name: str
    secure_cookies: str = "auto"


@dataclass
class SystemSettings:
    name: str
    plugin: str
    connector: str
    mapping: str | None
    dataset: str | None
    options: dict[str, Any]  # everything else in the table, for the connector


@dataclass
class JobSettings:
    name: str
    source: str
    dataset: str | None
    mapping: str | None
    mode: str
    schedule: str | None
    targets: list[str]
    batch_size: int
    retries: int


@dataclass
class AllowRule:
    dataset: str
    fields: list[str]
    purposes: list[str]
    ids: str
    areas: list[str]
    write: bool


@dataclass
class DepartmentSettings:
    name: str
    key_id: str
    role: str
    public_key: str | None
    area: str | None
    allow: list[AllowRule]
    permissions: list[str]
    rate_limit: int


@dataclass
class UserSettings:
    name: str
    password_hash: str
    role: str
    permissions: list[str]


@dataclass
class AuditSettings:
    checkpoint_every: int
    checkpoint_minutes: int
    retention_days: int
    checkpoint_export: str | None


@dataclass
class ApiSettings:
    window_seconds: int
    max_body_bytes: int
    max_batch: int
    changes_settle_seconds: int = 10


@dataclass
class MatchSettings:
    aid_dataset: str | None
    township_outbox: str | None
    permissions: list[str]
    flags_target: str | None = None
    flags_mapping: str | None = None


@dataclass
class Settings:
    gateway: GatewaySettings
    systems: dict[str, SystemSettings] = field(default_factory=dict)
    jobs: dict[str, JobSettings] = field(default_factory=dict)
    departments: dict[str, DepartmentSettings] = field(default_factory=dict)
    users: dict[str, UserSettings] = field(default_factory=dict)
    blocked_plugins: list[str] = field(default_factory=list)
    audit: AuditSettings = field(default_factory=lambda: AuditSettings(1000, 60, 183, None))
    api: ApiSettings = field(default_factory=lambda: ApiSettings(300, 8 * 1024 * 1024, 10_000))
    match: MatchSettings = field(default_factory=lambda: MatchSettings(None, None, []))

    @property
    def cutoff_month_day(self) -> tuple[int, int]:
        month, day = self.gateway.school_year_cutoff.split("-")
        return int(month), int(day)


def _flatten(messages: Any, prefix: str = "") -> list[str]:
    """marshmallow's nested error dict -> ["jobs.students.schedule: not a cron expression", ...]."""
    out: list[str] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key == "_schema":
                out += _flatten(value, prefix)
                continue
            key = "fields" if key == "fields_" else key
            # marshmallow reports Dict values as {"key": {"value": {...}}}: drop that level.
            if isinstance(value, dict) and set(value) <= {"key", "value"}:
                value = {
                    k2: v2
                    for part in value.values()
                    for k2, v2 in (part.items() if isinstance(part, dict) else [("", part)])
                }
            out += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(messages, list):
        if all(isinstance(m, str) for m in messages):
            text = "; ".join(m.replace("Unknown field.", "unknown key") for m in messages)
            out.append(f"{prefix}: {text}" if prefix else text)
        else:
            for m in messages:
                out += _flatten(m, prefix)
    else:
        out.append(f"{prefix}: {messages}")
    return [re.sub(r"\.\.", ".", line) for line in out]


def parse(data: dict[str, Any], source: str = "gateway.toml") -> Settings:
    """Validate an already-parsed TOML document."""
    try:
        return SettingsSchema().load(data)
    except ValidationError as exc:
        lines = _flatten(exc.messages)
        raise ConfigError(f"{source}: " + f"\n{source}: ".join(lines)) from None


def load(path: str | Path) -> Settings:
    """Read and validate a config file; every problem becomes one ConfigError naming key paths."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file (run `gateway init DIR` to create one)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, str(path))
