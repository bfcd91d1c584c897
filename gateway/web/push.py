"""Records pushed by a department, run through the sync engine like any other source.

A push is a run of a job named ``api:<department>:<dataset>`` whose source is
``api:<department>`` and whose connector yields the pushed records as one batch: every record is
mapped (here: canonical JSON -> canonical values), validated, keyed, protected, diffed and stored,
or quarantined with its position ``records[i]``, field and reason, exactly as a file or database
row would be. The run holds the job's lease, so two pushes of one department into one dataset
never interleave (the second waits a little, then gets 503 ``busy`` with Retry-After).

Pushes upsert; they never remove. Records are stored under the source ``api:<department>``, so a
department's pushes never overwrite what another source said about the same person.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from .. import ids
from ..config import JobSettings
from ..connectors import Batch, Connector, ConnectorContext, Row
from ..protect import KeyProblem, RecordProtector
from ..schemas import COMPUTED_FIELDS, FieldError, dataset_fields, safe_text
from ..store.jobs import QuarantineRow
from ..store.records import DATASET_MODELS
from ..sync import HeldLease, JobRunner, ResolvedJob, RunSummary
from .problems import Problem

if TYPE_CHECKING:
    from ..site import Site

# The natural key of a record within one source, per dataset (as the shipped inbound mappings).
RECORD_KEYS: dict[str, tuple[str, ...]] = {
    "students": ("subject_key",),
    "poverty": ("subject_key",),
    "disability": ("subject_key",),
    "assistance": ("subject_key", "assistance_type"),
    "residents": ("subject_key",),
    "aid_granted": ("subject_key", "program", "granted_on"),
}


def record_key_fields(dataset: str) -> list[str]:
    return list(RECORD_KEYS.get(dataset, ("subject_key",)))


LEASE_WAIT_S = 10.0
_POSITION = re.compile(r"^records\[(\d+)\]$")


class CanonicalMapper:
    """Canonical JSON -> canonical record: the API's "native" form is the canonical one.

    Types are strict (a number where a code is expected is an error, not a guess); dates are
    ``YYYY-MM-DD``, times ISO 8601; the ID number is normalised and checked with gateway.ids.
    """

    direction = "inbound"
    version = "1"

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.name = f"api/{dataset}"
        self.system = "api"
        self.infos = dataset_fields(dataset)
        self.sensitivity = {name: info.sensitivity for name, info in self.infos.items()}
        self.record_key_fields = record_key_fields(dataset)
        self._template = {name: None for name in self.infos if name not in COMPUTED_FIELDS}

    def map_row(self, native: Mapping[str, Any]) -> tuple[dict[str, Any], list[FieldError]]:
        rec = dict(self._template)
        errors: list[FieldError] = []
        for key in native:
            if key not in rec:
                errors.append(
                    FieldError(
                        scrub_key(key),
                        "unknown_field",
                        f"{safe_text(key)} is not a field of dataset {self.dataset}",
                    )
                )
        id_type = native.get("id_type") or "1"
        if not isinstance(id_type, str):
            errors.append(FieldError("id_type", "bad_type", 'id_type must be text such as "1"'))
            id_type = "1"
        rec["id_type"] = id_type
        for name in rec:
            if name in ("id_type", "id_number") or name not in native:
                continue
            value = native[name]
            if value is None or value == "":
                continue
            try:
                rec[name] = self._convert(name, value)
            except ValueError as exc:
                errors.append(FieldError(name, "bad_value", str(exc)))
        raw_id = native.get("id_number")
        if raw_id not in (None, ""):
            if not isinstance(raw_id, str):
                errors.append(FieldError("id_number", "bad_type", "id_number must be text"))
            else:
                result = ids.check(raw_id, id_type)
                if result.ok:
                    rec["id_number"] = result.value
                    rec["converted"] = result.converted
                else:
                    errors.append(
                        FieldError(
                            "id_number",
                            result.code or "invalid_id",
                            result.message or "invalid ID number",
                        )
                    )
        return rec, errors

    def _convert(self, name: str, value: Any) -> Any:
        info = self.infos[name]
        label = f"{info.label} ({name})"
        kind = info.type
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"{label} must be text")
            if "\x00" in value:  # no database keeps it in text, and no real value has one
                raise ValueError(f"{label} contains a NUL character")
            return value.strip() or None
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{label} must be a whole number")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{label} must be true or false")
            return value
        if not isinstance(value, str):
            raise ValueError(f"{label} must be an ISO 8601 text")
        try:
            if kind == "date":
                return dt.date.fromisoformat(value)
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{label}: {safe_text(value)} is not an ISO 8601 {kind}") from None
        if moment.tzinfo is not None:  # the store keeps naive UTC
            moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
        return moment


def scrub_key(key: Any) -> str:
    text = safe_text(key, 60).strip("'\"")
    return text[:100]


class PushedRecords(Connector):
    """The pushed records as one batch, positions ``records[i]``."""

    name = "api"

    def __init__(self, records: Sequence[Mapping[str, Any]], system: str):
        super().__init__({}, ConnectorContext(system=system))
        self.records = records

    def read(self, cursor: Any = None, batch_size: int = 5000) -> Iterator[Batch]:
        rows = [
            Row(f"records[{i}]", dict(r))
            if isinstance(r, Mapping)
            else Row(
                f"records[{i}]", {}, [("record", "not_an_object", "a record must be an object")]
            )
            for i, r in enumerate(self.records)
        ]
        yield Batch(rows, cursor=None)


@dataclass
class PushResult:
    summary: RunSummary
    problems: list[dict[str, Any]]
    subject_keys: list[str]


def job_name(department: str, dataset: str) -> str:
    return f"api:{department}:{dataset}"[:64]


def _lease(site: Site, name: str) -> HeldLease:
    lease = HeldLease(site, name)
    deadline = time.monotonic() + LEASE_WAIT_S
    while not lease.acquire():
        if time.monotonic() > deadline:
            raise Problem(
                "busy",
                "another push of this department into this dataset is running",
                headers={"Retry-After": "2"},
            )
        time.sleep(0.1)
    return lease


def run_push(
    site: Site, department: str, dataset: str, records: Sequence[Mapping[str, Any]]
) -> PushResult:
    """Store the records through the sync engine; returns the run, the problems by index and the
    subject keys of the records that were stored (inserted, updated or unchanged)."""
    mapper = CanonicalMapper(dataset)
    source = f"api:{department}"[:64]
    name = job_name(department, dataset)
    table = DATASET_MODELS[dataset].__table__
    protector = RecordProtector(
        site.protector,
        dataset,
        [c.name for c in table.columns],
        mapper.sensitivity,
        mapper.record_key_fields,
    )
    settings = JobSettings(
        name=name,
        source=source,
        dataset=dataset,
        mapping=None,
        mode="incremental",
        schedule=None,
        targets=[],
        batch_size=max(1, len(records)),
        retries=0,
    )
    job = ResolvedJob(settings, source, dataset, mapper, protector, table, [])
    lease = _lease(site, name)
    try:
        summary = JobRunner(site, job, lease=lease, actor=f"dept:{department}").run(
            PushedRecords(records, source)
        )
    finally:
        lease.release()
    problems: list[dict[str, Any]] = []
    quarantined: set[int] = set()
    with site.begin() as session:
        for position, field, reason, message in session.execute(
            select(
                QuarantineRow.position,
                QuarantineRow.field,
                QuarantineRow.reason,
                QuarantineRow.message,
            )
            .where(QuarantineRow.run_id == summary.run_id)
            .order_by(QuarantineRow.id)
        ):
            m = _POSITION.match(position)
            index = int(m.group(1)) if m else -1
            quarantined.add(index)
            problems.append({"index": index, "field": field, "code": reason, "message": message})
    keys: list[str] = []
    for i, raw in enumerate(records):
        if i in quarantined or not isinstance(raw, Mapping):
            continue
        record, errors = mapper.map_row(raw)
        if not errors:
            try:
                keys.append(protector.subject_key(record))
            except KeyProblem:
                continue
    return PushResult(summary, problems, keys)
