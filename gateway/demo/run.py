"""``gateway demo``: a synthetic county, every sync job, the match, and a short summary.

Runs on the embedded default (SQLite) in a working folder it creates; nothing outside that folder
is touched. The summary prints counts only: no ID number, no name, no secret.
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..match import LISTS as MATCH_LISTS
from . import county
from .generate import GroundTruth, generate

MARKER = ".gateway-demo"  # only a folder holding this marker is ever wiped by a new demo

# system -> (title, connector, inbox glob, dataset, mapping); the files the generator writes.
SYSTEMS: dict[str, tuple[str, str, str, str, str]] = {
    "student_status": (
        "学籍系统 student status",
        "xlsx",
        "inbox/students/*.xlsx",
        "students",
        "student_status/students",
    ),
    "poverty_registry": (
        "防返贫监测 poverty registry",
        "xlsx",
        "inbox/poverty/*.xlsx",
        "poverty",
        "poverty_registry/poverty_export",
    ),
    "disability_federation": (
        "残联 disability federation",
        "csv",
        "inbox/disability/*.csv",
        "disability",
        "disability_federation/disability",
    ),
    "civil_affairs": (
        "民政 civil affairs",
        "xlsx",
        "inbox/civil_affairs/*.xlsx",
        "assistance",
        "civil_affairs/assistance",
    ),
    "household_registry": (
        "公安户籍 household registry",
        "csv",
        "inbox/household/*.csv",
        "residents",
        "household_registry/residents",
    ),
    "student_aid": (
        "资助中心 aid granted",
        "csv",
        "inbox/aid/*.csv",
        "aid_granted",
        "student_status/aid_granted",
    ),
}
JOBS = {
    "students": "student_status",
    "poverty": "poverty_registry",
    "disability": "disability_federation",
    "assistance": "civil_affairs",
    "residents": "household_registry",
    "aid": "student_aid",
}
DEMO_DEPARTMENT = ("education", "edu-demo")
DEMO_AUDITOR = "auditor"


@dataclass
class DemoResult:
    folder: Path
    config: Path
    truth: GroundTruth
    runs: dict[str, Any] = field(default_factory=dict)  # job -> sync RunSummary
    quarantine_reasons: Counter[str] = field(default_factory=Counter)
    match: Any = None  # match.MatchSummary
    report: Path | None = None
    verify: Any = None  # audit_verify.VerifyReport
    auditor_password: str | None = None


def _config(seed: int) -> dict[str, Any]:
    systems = {
        name: {
            "plugin": "student_status" if name == "student_aid" else name,
            "connector": kind,
            "path": path,
            "dataset": dataset,
            "mapping": mapping,
        }
        for name, (_title, kind, path, dataset, mapping) in SYSTEMS.items()
    }
    jobs = {
        job: {"source": system, "mode": "snapshot", "schedule": f"{10 * i} 2 * * *"}
        for i, (job, system) in enumerate(JOBS.items())
    }
    name, key_id = DEMO_DEPARTMENT
    return {
        "gateway": {
            "store": "sqlite:///gateway.db",
            "keyring": "keyring.json",
            "site_name": f"{county.COUNTY_NAME} (demo, seed {seed})",
        },
        "systems": systems,
        "jobs": jobs,
        "departments": {
            name: {
                "key_id": key_id,
                "area": county.COUNTY_CODE,
                "allow": [
                    {
                        "dataset": ds,
                        "fields": fields,
                        "purposes": ["dropout-control", "student-aid"],
                        "ids": "masked",
                    }
                    for ds, fields in (
                        ("poverty", ["poverty_type", "risk_eliminated", "area_code", "village"]),
                        ("disability", ["category", "grade", "valid_until"]),
                        ("assistance", ["assistance_type", "active", "start_date", "end_date"]),
                        ("match", list(MATCH_LISTS)),
                    )
                ],
            },
        },
        "match": {"aid_dataset": "student_aid", "township_outbox": "outbox/townships"},
    }


def prepare_folder(folder: Path) -> None:
    """A fresh folder: a previous demo's folder (it has the marker) is replaced, anything else refused."""
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).exists():
            raise ConfigError(
                f"{folder}: exists and is not a demo folder; choose another with --dir"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(
        "created by `gateway demo`; deleted by the next demo run\n", encoding="utf-8"
    )


def build_site(folder: Path, seed: int, *, with_auditor: bool) -> tuple[Path, str | None]:
    """Config, keyring (with the demo department's request secret) and the store's schema."""
    import tomli_w
    from werkzeug.security import generate_password_hash

    from ..crypto import Keyring, write_secret_file
    from ..site import Site
    from ..store import migrate

    doc = _config(seed)
    password = None
    if with_auditor:
        password = secrets.token_urlsafe(12)
        doc["users"] = {
            DEMO_AUDITOR: {"password_hash": generate_password_hash(password), "role": "auditor"}
        }
    config = folder / "gateway.toml"
    config.write_text(tomli_w.dumps(doc), encoding="utf-8")
    ring = Keyring.create(folder / "keyring.json")
    _name, key_id = DEMO_DEPARTMENT
    ring.new("department", key_id=key_id)
    ring.save()
    # The department's own copy of its secret, handed over as a 0600 file (never printed).
    write_secret_file(
        folder / "education.secret.json", key_id, ring.department_secret(key_id), ring.suite
    )
    site = Site.from_config(config)
    migrate.upgrade(site.engine)
    site.engine.dispose()
    return config, password


def run_demo(
    folder: Path,
    *,
    students: int = 2000,
    seed: int = 1,
    as_of: dt.date = dt.date(2026, 11, 24),
    with_auditor: bool = False,
    progress: Any = None,
    say: Any = print,
) -> DemoResult:
    from .. import audit_verify, match, match_report, sync
    from ..site import Site
    from ..store.jobs import QuarantineRow

    prepare_folder(folder)
    say(f"generating {students:,} students of {county.COUNTY_NAME} (seed {seed}) ...")
    truth = generate(folder / "inbox", students=students, seed=seed, as_of=as_of)
    truth.save(folder / "inbox" / "ground_truth.json")
    config, password = build_site(folder, seed, with_auditor=with_auditor)
    site = Site.from_config(config)
    result = DemoResult(folder=folder, config=config, truth=truth, auditor_password=password)
    actor = "job:demo"
    for job in JOBS:
        result.runs[job] = sync.run_job(site, job, progress=progress() if progress else None)
    with site.engine.connect() as conn:
        from sqlalchemy import func, select

        rows = conn.execute(
            select(QuarantineRow.reason, func.count()).group_by(QuarantineRow.reason)
        )
        result.quarantine_reasons = Counter({reason: count for reason, count in rows})
    result.match = match.run_match(site, as_of, actor=actor)
    reports = folder / "reports"
    reports.mkdir(exist_ok=True)
    result.report = reports / f"match-{as_of.isoformat()}.xlsx"
    match_report.export(site, result.match, result.report, fmt="xlsx", actor=actor)
    match_report.write_township_files(
        site, result.match, folder / "outbox" / "townships", actor=actor
    )
    from .. import audit

    audit.checkpoint(site)
    result.verify = audit_verify.verify_store(site)
    site.engine.dispose()
    return result


def _pad(text: str, width: int) -> str:
    """Left-justify by display width: a Chinese character takes two terminal columns."""
    shown = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(0, width - shown)


def summary_lines(result: DemoResult) -> list[str]:
    """The printed summary: counts only."""
    lines = [
        f"Demo county: {county.COUNTY_NAME} ({county.COUNTY_CODE}), working folder {result.folder}",
        "",
    ]
    lines.append("Rows per system (read = stored new + updated + unchanged + quarantined):")
    for job, run in result.runs.items():
        title = SYSTEMS[JOBS[job]][0]
        lines.append(
            f"  {_pad(title, 32)} read {run.read:>7,}  stored {run.inserted + run.updated:>7,}"
            f"  unchanged {run.unchanged:>6,}  quarantined {run.quarantined:>5,}"
        )
    lines.append("")
    reasons = ", ".join(
        f"{reason} {count}" for reason, count in result.quarantine_reasons.most_common()
    )
    lines.append(f"Quarantined rows by reason: {reasons or 'none'}   (gateway quarantine list)")
    lines.append("")
    lines.append(
        f"Lists of match run {result.match.run_id} (as of {result.match.as_of}, ages "
        f"{result.match.youngest}-{result.match.oldest} at {result.match.cutoff}):"
    )
    for name, count in result.match.counts.items():
        lines.append(f"  {name:<26} {count.count:>6,}")
    lines.append("")
    lines.append(f"Report (IDs masked): {result.report}")
    verify = result.verify
    state = "verifies" if verify.ok else f"BROKEN: {verify.problems[0]}"
    lines.append(
        f"Audit chain: {state} ({verify.entries} entries, {verify.checkpoints} signed checkpoint(s))"
    )
    lines.append("")
    lines.append(f"Try: gateway --config {result.config} match --out my-report.xlsx")
    return lines
