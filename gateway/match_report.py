"""A stored match run as files: an XLSX workbook (one sheet per list and a summary) or JSON.

Names and ID numbers are sealed in the store. Every export opens the name to show its masked form
(first character + ``*``); ID numbers appear as ``id_masked`` (first 6, last 4). With ``reveal``,
permitted only when ``[match] permissions`` contains ``"reveal"``, the full name and ID number are
opened (``Protector.open`` bound to the record's dataset, field and subject key) and the export is
audited as a disclosure (``match.reveal``). Every export is audited with the subject keys it put
in the file; a refused reveal is audited too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import sqlalchemy as sa
from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from . import ids, match, schemas
from .crypto import CryptoError
from .errors import EXIT_USAGE, GatewayError
from .store.records import DATASET_MODELS

if TYPE_CHECKING:
    from .site import Site

log = logging.getLogger(__name__)

FORMATS = ("xlsx", "json")
PURPOSE = "dropout-control"
_BATCH = 1000

REASONS = {"out_of_school": "失学辍学", "suspended": "休学"}
REGISTRY_LABELS = {
    "residents": "户籍",
    "poverty": "防返贫监测",
    "disability": "残联",
    "assistance": "民政",
}

# Output column -> header (Chinese label, then the JSON key).
HEADERS: dict[str, str] = {
    "name": "姓名",
    "id_masked": "证件号码(脱敏)",
    "id_number": "证件号码",
    "id_type": "证件类型",
    "sex": "性别",
    "birth_date": "出生日期",
    "age": "截止日年龄",
    "area_code": "户籍乡镇(街道)代码",
    "village": "村(社区)",
    "registries": "来源台账",
    "school_code": "学校标识码",
    "school_name": "学校名称",
    "grade": "年级",
    "class_name": "班级",
    "student_status": "学籍状态",
    "reason": "送教原因",
    "poverty_lifted": "脱贫户(建档立卡)",
    "monitor_type": "监测对象类别",
    "poverty_source": "防返贫来源系统",
    "poverty_date": "防返贫记录日期",
    "disability_category": "残疾类别",
    "disability_grade": "残疾等级",
    "disability_source": "残疾来源系统",
    "disability_date": "残疾记录日期",
    "dibao": "低保",
    "tekun": "特困",
    "orphan": "孤儿",
    "unsupported_child": "事实无人抚养儿童",
    "assistance_source": "救助来源系统",
    "assistance_date": "救助记录日期",
    "subject_key": "主体索引",
}
_PERSON = ["name", "id_masked", "id_type", "sex", "birth_date"]
_PLACE = ["area_code", "village"]
_SCHOOL = ["school_code", "school_name", "grade", "class_name", "student_status"]
_FLAGS = ["poverty_lifted", "monitor_type", "poverty_source", "poverty_date", "disability_category",
          "disability_grade", "disability_source", "disability_date", "dibao", "tekun", "orphan",
          "unsupported_child", "assistance_source", "assistance_date"]  # fmt: skip
_FLAGS_SHORT = ["poverty_lifted", "monitor_type", "disability_category", "disability_grade", "dibao", "tekun",
                "orphan", "unsupported_child"]  # fmt: skip
_DISABILITY = ["disability_category", "disability_grade", "disability_source", "disability_date"]
_ROSTER = _PERSON + _PLACE + _SCHOOL + _FLAGS_SHORT
COLUMNS: dict[str, list[str]] = {
    "flags": _PERSON + _PLACE + _SCHOOL + _FLAGS,
    "out_of_school": _PERSON
    + ["age"]
    + _PLACE
    + ["registries", "student_status", "school_code", "school_name"],
    "suspended": _PERSON + ["age"] + _PLACE + ["registries"] + _SCHOOL,
    "transfer_check": _PERSON + _PLACE + _SCHOOL,
    "home_teaching": _PERSON + ["age"] + _PLACE + ["reason"] + _DISABILITY + _SCHOOL,
    "roster_suspected_dropout": _ROSTER,
    "roster_dropout": _ROSTER,
    "roster_suspended": _ROSTER,
    "aid_gaps": _ROSTER,
}
assert set(COLUMNS) == set(match.LISTS)


class RevealNotPermitted(GatewayError):
    """``--reveal`` without the ``reveal`` permission in ``[match] permissions``."""

    exit_code = EXIT_USAGE


@dataclass
class ExportResult:
    path: str  # "-" for a stream
    format: str
    run_id: int
    revealed: bool
    rows: dict[str, int] = field(default_factory=dict)
    subject_count: int = 0
    unopened: int = 0  # sealed names/IDs that did not open (shown empty)


def mask_name(name: str | None) -> str | None:
    """First character + ``*``: enough for a township to recognise a child it already knows."""
    if not name:
        return name
    return name[0] + "*"


def check_reveal(site: Site, actor: str) -> None:
    """Refuse (audited) a reveal the site's config does not permit."""
    if "reveal" in site.settings.match.permissions:
        return
    match.audit_event(
        site,
        actor=actor,
        action="match.reveal",
        outcome="refused",
        purpose=PURPOSE,
        fields=["id_number", "name"],
        detail={"reason": "reveal permission not in [match] permissions"},
    )
    raise RevealNotPermitted(
        'match: --reveal needs the "reveal" permission: add permissions = ["reveal"] under [match] in the config'
    )


# ---------------------------------------------------------------------------------------------
# Rows as they leave the store


class _Identities:
    """Opens the sealed name (and, revealing, the ID number) of list rows, a batch at a time."""

    def __init__(self, site: Site, reveal: bool):
        self.site, self.reveal = site, reveal
        self.protector = site.protector
        self.unopened = 0

    def _open(self, token: str | None, dataset: str, column: str, subject_key: str) -> str | None:
        if token is None:
            return None
        try:
            return self.protector.open(token, dataset=dataset, field=column, record=subject_key)
        except CryptoError:
            self.unopened += 1
            log.warning("a sealed %s.%s did not open; shown empty", dataset, column)
            return None

    def fetch(
        self, batch: list[dict[str, Any]]
    ) -> dict[tuple[str, int], tuple[str | None, str | None]]:
        wanted: dict[str, list[int]] = defaultdict(list)
        for row in batch:
            wanted[row["record_dataset"]].append(row["record_id"])
        found: dict[tuple[str, int], tuple[str | None, str | None]] = {}
        with self.site.engine.connect() as conn:
            for dataset, record_ids in wanted.items():
                t = DATASET_MODELS[dataset].__table__
                query = sa.select(t.c.id, t.c.subject_key, t.c.name, t.c.id_number).where(
                    t.c.id.in_(record_ids)
                )
                for r in conn.execute(query):
                    # Sealed under the record's own subject key (current even after a re-index).
                    name = self._open(r.name, dataset, "name", r.subject_key)
                    number = (
                        self._open(r.id_number, dataset, "id_number", r.subject_key)
                        if self.reveal
                        else None
                    )
                    found[(dataset, r.id)] = (name, number)
        return found


def _registries(row: dict[str, Any]) -> list[str]:
    return [name for name in match.REGISTRIES if row.get(f"in_{name}")]


def output_rows(
    site: Site,
    list_name: str,
    run: match.MatchSummary,
    *,
    reveal: bool = False,
    area_prefix: str | None = None,
    identities: _Identities | None = None,
) -> Iterator[dict[str, Any]]:
    """The rows of a stored list as they may leave the store: the list's columns only, name masked
    and ID masked unless ``reveal`` (the caller checks the permission and audits)."""
    ident = identities or _Identities(site, reveal)
    columns = columns_for(list_name, reveal)
    batch: list[dict[str, Any]] = []

    def flush() -> Iterator[dict[str, Any]]:
        opened = ident.fetch(batch)
        for row in batch:
            name, number = opened.get((row["record_dataset"], row["record_id"]), (None, None))
            out = dict(row)
            out["name"] = name if reveal else mask_name(name)
            out["id_number"] = number
            out["age"] = (
                ids.age_at(row["birth_date"], run.cutoff) if row.get("birth_date") else None
            )
            out["registries"] = _registries(row)
            yield {c: out.get(c) for c in columns}
        batch.clear()

    for row in match.iter_rows(site, list_name, run_id=run.run_id, area_prefix=area_prefix):
        batch.append(row)
        if len(batch) >= _BATCH:
            yield from flush()
    if batch:
        yield from flush()


def columns_for(list_name: str, reveal: bool) -> list[str]:
    columns = list(COLUMNS[list_name])
    if reveal:
        columns.insert(columns.index("id_masked") + 1, "id_number")
    return columns + ["subject_key"]


# ---------------------------------------------------------------------------------------------
# Cell values for people (XLSX) and for machines (JSON)


# Columns whose codes the report shows as their labels.
_CODE_LABELS: dict[str, dict[Any, str]] = {
    "sex": schemas.SEX,
    "id_type": schemas.ID_TYPES,
    "student_status": schemas.STUDENT_STATUS,
    "disability_category": schemas.DISABILITY_CATEGORY,
    "disability_grade": schemas.DISABILITY_GRADE,
    "monitor_type": schemas.POVERTY_TYPE,
    "reason": REASONS,
}


def _label(column: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        return "是" if value else None
    labels = _CODE_LABELS.get(column)
    if labels is not None:
        return labels.get(value, value)
    if column == "registries":
        return "、".join(REGISTRY_LABELS.get(v, v) for v in value) or None
    if isinstance(value, str):
        # control characters from a source: XML forbids them
        return ILLEGAL_CHARACTERS_RE.sub("", value)
    return value


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


# ---------------------------------------------------------------------------------------------
# Writers


def _summary_rows(
    site: Site, run: match.MatchSummary, reveal: bool, area: str | None
) -> list[list[Any]]:
    counts = run.counts
    if area is not None:  # a township's file shows its own figures only
        counts = {
            r["list_name"]: match.ListCount(r["count"], r["new"], r["resolved"])
            for r in match.counts(site, run.run_id, scope="township")
            if r["code"] == area
        }
    out: list[list[Any]] = [
        ["县区 site", site.settings.gateway.site_name],
        ["比对批次 run", run.run_id],
        ["截止日期 as of", run.as_of],
        ["年龄计算日 age cut-off", run.cutoff],
        ["适龄范围 ages", f"{run.youngest}-{run.oldest}"],
        ["上次比对 previous run", run.previous_run_id],
        ["证件号码 IDs", "明文 (授权披露)" if reveal else "脱敏 masked"],
        ["乡镇 township", area or "全部 all"],
        [],
        ["名单 list", "名称", "人数 count", "新增 new", "销号 resolved"],
    ]
    for name, spec in match.LISTS.items():
        c = counts.get(name, match.ListCount(0, 0, 0))
        out.append([name, spec.title, c.count, c.new, c.resolved])
    return out


def _count_rows(site: Site, run: match.MatchSummary, scope: str) -> list[list[Any]]:
    titles = {name: spec.title for name, spec in match.LISTS.items()}
    rows: list[list[Any]] = [
        ["名单 list", "名称", "代码 code", "学校 school", "人数 count", "新增 new", "销号 resolved"]
    ]
    for r in match.counts(site, run.run_id, scope=scope):
        rows.append(
            [
                r["list_name"],
                titles[r["list_name"]],
                r["code"],
                r["name"],
                r["count"],
                r["new"],
                r["resolved"],
            ]
        )
    return rows


def write_xlsx(
    site: Site,
    run: match.MatchSummary,
    target: Path | IO[bytes],
    *,
    reveal: bool = False,
    lists: Iterable[str] | None = None,
    area_prefix: str | None = None,
    on_subject: Callable[[str], None] = lambda _k: None,
) -> ExportResult:
    """Summary, per-township and per-school counts, then one sheet per list (write-only mode:
    memory stays flat whatever the list sizes)."""
    names = list(lists or match.LISTS)
    wb = Workbook(write_only=True)
    summary = wb.create_sheet("汇总")
    for row in _summary_rows(site, run, reveal, area_prefix):
        summary.append(row)
    if area_prefix is None:
        for scope, title in (("township", "分乡镇"), ("school", "分学校")):
            sheet = wb.create_sheet(title)
            for row in _count_rows(site, run, scope):
                sheet.append(row)
    ident = _Identities(site, reveal)
    result = ExportResult(
        str(target) if isinstance(target, Path) else "-", "xlsx", run.run_id, reveal
    )
    for name in names:
        sheet = wb.create_sheet(match.LISTS[name].title)
        columns = columns_for(name, reveal)
        sheet.append([f"{HEADERS[c]} {c}" for c in columns])
        n = 0
        for row in output_rows(
            site, name, run, reveal=reveal, area_prefix=area_prefix, identities=ident
        ):
            sheet.append([_label(c, row[c]) for c in columns])
            on_subject(row["subject_key"])
            n += 1
        result.rows[name] = n
    result.unopened = ident.unopened
    wb.save(target)
    return result


def write_json(
    site: Site,
    run: match.MatchSummary,
    stream: IO[str],
    *,
    reveal: bool = False,
    lists: Iterable[str] | None = None,
    area_prefix: str | None = None,
    on_subject: Callable[[str], None] = lambda _k: None,
) -> ExportResult:
    """The same content as the workbook, codes instead of labels, written row by row."""
    names = list(lists or match.LISTS)
    ident = _Identities(site, reveal)
    result = ExportResult(getattr(stream, "name", "-"), "json", run.run_id, reveal)
    head = {
        "site": site.settings.gateway.site_name,
        "run": run.as_dict(),
        "ids": "revealed" if reveal else "masked",
        "lists_meta": {
            n: {"title": match.LISTS[n].title, "columns": columns_for(n, reveal)} for n in names
        },
    }
    if area_prefix is None:
        head["counts"] = {
            scope: match.counts(site, run.run_id, scope=scope) for scope in ("township", "school")
        }
    dump = json.dumps
    stream.write(dump(head, ensure_ascii=False, default=_json_value)[:-1])
    stream.write(', "lists": {')
    for i, name in enumerate(names):
        stream.write(("" if i == 0 else ", ") + dump(name) + ": [")
        n = 0
        for row in output_rows(
            site, name, run, reveal=reveal, area_prefix=area_prefix, identities=ident
        ):
            stream.write(
                ("\n" if n == 0 else ",\n")
                + dump({k: _json_value(v) for k, v in row.items()}, ensure_ascii=False)
            )
            on_subject(row["subject_key"])
            n += 1
        stream.write("]")
        result.rows[name] = n
    stream.write("}}\n")
    result.unopened = ident.unopened
    return result


def export(
    site: Site,
    run: match.MatchSummary,
    target: Path | IO[str],
    *,
    fmt: str,
    actor: str,
    reveal: bool = False,
    recipient: str | None = None,
    lists: Iterable[str] | None = None,
    area_prefix: str | None = None,
) -> ExportResult:
    """Write a run's lists to ``target`` (a path, or a text stream for JSON) and audit what left.

    The caller checks a reveal with ``check_reveal`` first (so a refused one ends before any work).
    """
    if fmt not in FORMATS:
        raise GatewayError(f"match: format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if reveal and "reveal" not in site.settings.match.permissions:
        check_reveal(site, actor)  # audits the refusal and raises
    seen: set[str] = set()
    try:
        if fmt == "xlsx":
            if not isinstance(target, Path):
                raise GatewayError("match: an XLSX workbook needs --out FILE.xlsx")
            result = write_xlsx(
                site,
                run,
                target,
                reveal=reveal,
                lists=lists,
                area_prefix=area_prefix,
                on_subject=seen.add,
            )
        elif isinstance(target, Path):
            with target.open("w", encoding="utf-8") as stream:
                result = write_json(
                    site,
                    run,
                    stream,
                    reveal=reveal,
                    lists=lists,
                    area_prefix=area_prefix,
                    on_subject=seen.add,
                )
            result.path = str(target)
        else:
            result = write_json(
                site,
                run,
                target,
                reveal=reveal,
                lists=lists,
                area_prefix=area_prefix,
                on_subject=seen.add,
            )
    except OSError as exc:
        raise GatewayError(f"match: cannot write {target}: {exc.strerror or exc}") from None
    result.subject_count = len(seen)
    detail: dict[str, Any] = {
        "run_id": run.run_id,
        "format": fmt,
        "file": Path(result.path).name if result.path != "-" else "-",
        "rows": result.rows,
    }
    if recipient:
        detail["recipient"] = recipient
    if area_prefix:
        detail["area_prefix"] = area_prefix
    if result.unopened:
        detail["unopened"] = result.unopened
    match.audit_event(
        site,
        actor=actor,
        action="match.reveal" if reveal else "match.export",
        outcome="delivered",
        purpose=PURPOSE,
        dataset="match",
        fields=["name", "id_number"] if reveal else ["name_masked", "id_masked"],
        subject_keys=sorted(seen),
        detail=detail,
    )
    return result


TOWNSHIP_LISTS = ("out_of_school", "suspended", "home_teaching", "transfer_check")


def write_township_files(
    site: Site, run: match.MatchSummary, folder: Path, *, actor: str
) -> list[Path]:
    """One masked workbook per township with its children to act on (劝返, 送教上门), in
    ``folder/<period>/<area code>.xlsx``; each file is audited as a delivery to that township."""
    codes = sorted(
        {
            r["code"]
            for name in TOWNSHIP_LISTS
            for r in match.counts(site, run.run_id, scope="township", list_name=name)
            if r["count"] and r["code"]
        }
    )
    target_dir = folder / run.period
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GatewayError(
            f"match.township_outbox: cannot create {target_dir}: {exc.strerror or exc}"
        ) from None
    written = []
    for code in codes:
        path = target_dir / f"{code}.xlsx"
        export(
            site,
            run,
            path,
            fmt="xlsx",
            actor=actor,
            recipient=f"township:{code}",
            lists=TOWNSHIP_LISTS,
            area_prefix=code,
        )
        written.append(path)
    return written
