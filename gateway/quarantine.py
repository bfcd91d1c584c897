"""Quarantined rows: list them, show one (ID numbers masked), replay them through the current
mapping (``gateway quarantine list|show|replay``).

The native row is stored sealed (dataset "quarantine", field "row", record = the row's uid): it may
hold an ID number in the clear. Showing a row opens it and masks every value that looks like an ID
number or comes from a column the mapping reads a ``national_id`` field from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from . import ids
from .errors import ConfigError, GatewayError
from .store.jobs import QuarantineRow

if TYPE_CHECKING:
    from .site import Site
    from .sync import RunSummary

# 15 to 18 characters that could be an ID number (digits, a final X), or Excel's float of one.
_ID_LIKE = re.compile(r"(?<![0-9A-Za-z])\d{14,17}[\dXx](?![0-9A-Za-z])|\d\.\d+[Ee]\+?1[4-7]")
# Column names that hold document numbers in the departments' exports.
_ID_COLUMN = re.compile(
    r"身份证|证件号|公民身份|残疾人证|学籍号|sfz|zjhm|idno|id_number|id_card|cert", re.I
)


class QuarantineNotFound(GatewayError):
    pass


@dataclass
class ShownRow:
    id: int
    job: str
    run_id: int
    source: str
    dataset: str
    position: str
    stage: str
    field: str | None
    reason: str
    message: str
    status: str
    attempts: int
    row: dict[str, Any]  # the native row, ID numbers masked


def mask_value(value: Any, *, id_column: bool = False) -> Any:
    """``value`` with anything that looks like an ID number masked (first 6, last 4); the whole
    value masked when it comes from an ID column."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if id_column and text.strip():
        return ids.mask(text.strip())
    masked = _ID_LIKE.sub(lambda m: ids.mask(m.group(0)), text)
    return value if masked == text else masked


def national_id_columns(site: Site, job: str) -> set[str]:
    """Native columns feeding ``national_id`` fields of the job's mapping, when the mapper says."""
    try:
        from .sync import resolve_job

        mapper = resolve_job(site, job, with_targets=False).mapper
    except (GatewayError, KeyError):
        return set()
    sources = getattr(mapper, "sources", None) or {}
    return {
        col
        for canonical, cls in getattr(mapper, "sensitivity", {}).items()
        if cls == "national_id"
        for col in sources.get(canonical, ())
    }


def list_rows(
    site: Site,
    *,
    job: str | None = None,
    reason: str | None = None,
    status: str | None = "open",
    limit: int = 1000,
) -> list[QuarantineRow]:
    stmt = select(QuarantineRow).order_by(QuarantineRow.id).limit(limit)
    if job:
        stmt = stmt.where(QuarantineRow.job == job)
    if reason:
        stmt = stmt.where(QuarantineRow.reason == reason)
    if status:
        stmt = stmt.where(QuarantineRow.status == status)
    with site.begin() as session:
        return list(session.execute(stmt).scalars())


def show_row(site: Site, row_id: int) -> ShownRow:
    with site.begin() as session:
        q = session.get(QuarantineRow, row_id)
    if q is None:
        raise QuarantineNotFound(f"no quarantined row {row_id}")
    raw = json.loads(
        site.protector.open(q.row_sealed, dataset="quarantine", field="row", record=q.uid)
    )
    id_columns = national_id_columns(site, q.job)
    row = {
        k: mask_value(v, id_column=k in id_columns or bool(_ID_COLUMN.search(k)))
        for k, v in raw.items()
    }
    return ShownRow(
        id=q.id,
        job=q.job,
        run_id=q.run_id,
        source=q.source,
        dataset=q.dataset,
        position=q.position,
        stage=q.stage,
        field=q.field,
        reason=q.reason,
        message=q.message,
        status=q.status,
        attempts=q.attempts,
        row=row,
    )


def replay(site: Site, *, job: str | None = None, row_ids: Sequence[int] = ()) -> list[RunSummary]:
    """Re-run open quarantined rows (of ``job``, or the given ids) through the current mapping.
    One replay run per job; rows that pass are stored and marked resolved, the others keep their
    quarantine row with the new reason."""
    from .sync import HeldLease, JobRunner, resolve_job

    stmt = select(QuarantineRow).where(QuarantineRow.status == "open").order_by(QuarantineRow.id)
    if job:
        stmt = stmt.where(QuarantineRow.job == job)
    if row_ids:
        stmt = stmt.where(QuarantineRow.id.in_(list(row_ids)))
    with site.begin() as session:
        rows = list(session.execute(stmt).scalars())
    if row_ids:
        missing = sorted(set(row_ids) - {r.id for r in rows})
        if missing:
            raise QuarantineNotFound(f"not open in quarantine: {', '.join(map(str, missing))}")
    by_job: dict[str, list[QuarantineRow]] = {}
    for r in rows:
        by_job.setdefault(r.job, []).append(r)
    summaries = []
    for name, job_rows in sorted(by_job.items()):
        if name not in site.settings.jobs:
            raise ConfigError(f"jobs.{name}: the job of quarantined rows is no longer configured")
        resolved = resolve_job(site, name)
        try:
            with HeldLease(site, name) as lease:
                summaries.append(JobRunner(site, resolved, lease=lease).replay(job_rows))
        finally:
            for t in resolved.targets:
                t.connector.close()
    return summaries
