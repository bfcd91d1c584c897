"""Write a match run's student flags back to the student-status system (``[match] flags_target``).

``deliver_flags(site, run, actor=...)`` reads the run's ``flags`` list a batch at a time (keyset
pages over ``match_rows`` on ``subject_key``, never the whole list in memory), opens each student's
sealed ID number and student number from the student record the row points at, maps the records
through the outbound mapping (``[match] flags_mapping``, default ``<target plugin>/flags.out``:
``mappings/student_status/flags.out.toml``, dataset ``flags`` in ``gateway.schemas``) and upserts
them with the target connector's ``write(rows, key)`` keyed by the mapping's ``key``. Re-delivering
the same run therefore writes nothing new: every row comes back ``unchanged``.

Choices made here:

* **One row per student.** The flags list has a row per student *record*; a person with several
  records (transferred out of one school, enrolled in another) is sent once, from the record of
  the target system itself if there is one, else the most "in school" one (enrolled, suspended,
  ... as ``gateway.match`` ranks them), else the most recently stored.
* **The ID number in the clear, to its owner only.** The target is the student-status system the
  number comes from, so it is opened (``Protector.open`` bound to ``students``, the field and the
  record's own subject key) for the target's table and nowhere else: logs, audit entries, errors
  and the returned summary carry subject keys and counts only. A token that does not open (a
  missing seal key) skips its row, counted in ``skipped["unopened"]``.
* **Resolved flags are cleared, not deleted.** A student who was on the flags list the target
  last received and is not on it now (every flag ended, the record left the ledger or the roster)
  gets a row with every flag false and the type, category and grade empty. Deleting the row would
  need a delete operation no connector has and would erase what the target's own staff added to it;
  a cleared row also says *when* the flag ended (标注日期). "Last received" is the run of the last
  complete delivery to this target, found in the audit log (``match.deliver_run``, outcome ok):
  after a run delivered with ``--no-deliver`` skipped, or a delivery that failed half-way, the
  clears are still computed against what the target really holds. With no complete delivery on
  record (or its lists pruned), the run's own previous run is the baseline: a clear sent to a
  student the target never heard of is a correct "no flags" row, never a wrong one.
* **Audit.** Every batch written is one entry ``match.deliver`` (outcome ``delivered``, dataset
  ``flags``, the subject keys, the native fields sent, ``recipient`` = the target system), and
  ``on_record_delivered`` is emitted for it; the whole delivery ends with one ``match.deliver_run``
  entry (ok or failed) holding the totals and the baseline, which the next delivery reads.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import case, exists, literal_column, select
from sqlalchemy.exc import SQLAlchemyError

from . import audit
from .connectors import Connector, WriteResult
from .crypto import CryptoError
from .errors import ConfigError, GatewayError, SourceError, StoreError, TransientSourceError
from .match import MatchError, MatchSummary, _status_rank
from .schemas import scrub
from .store.matches import MatchRow, MatchRun
from .store.records import Student

if TYPE_CHECKING:
    from .mapping import OutboundMapper
    from .site import Site

log = logging.getLogger(__name__)

DATASET = "flags"
PURPOSE = "student-aid"  # 精准资助 and 重点监测: what the education bureau uses the flags for
ACTION_BATCH = "match.deliver"
ACTION_RUN = "match.deliver_run"
BATCH_SIZE = 1000  # rows x columns stay far below SQLite's 32766 bound variables per statement
RETRIES = 3

M = MatchRow.__table__
S = Student.__table__
RUNS = MatchRun.__table__
# Where the student is: from the student's record (``record_<name>``) for a cleared flag, else as
# the run listed it (the list calls the status ``student_status``).
_PLACE_FIELDS = (
    "school_code",
    "school_name",
    "grade",
    "class_name",
    "status",
    "area_code",
    "village",
)
_LISTED_AS = {"status": "student_status"}
_FLAG_FIELDS = ("poverty_lifted", "dibao", "tekun", "orphan", "unsupported_child")
_DETAIL_FIELDS = (
    "monitor_type",
    "disability_category",
    "disability_grade",
    "poverty_source",
    "poverty_date",
    "disability_source",
    "disability_date",
    "assistance_source",
    "assistance_date",
)


@dataclass
class DeliveryResult:
    """What a delivery wrote (counts only: no ID number, no name)."""

    run_id: int
    target: str
    mapping: str
    mapping_version: str
    baseline_run_id: int | None  # the run whose flags the target held before: cleared against it
    flagged: int = 0  # students sent with their flags
    cleared: int = 0  # students sent with every flag false (off the list since the baseline)
    batches: int = 0
    written: WriteResult = field(default_factory=WriteResult)  # the connector's counts, summed
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> rows not sent

    @property
    def delivered(self) -> int:
        return self.flagged + self.cleared

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "target": self.target,
            "mapping": self.mapping,
            "mapping_version": self.mapping_version,
            "baseline_run_id": self.baseline_run_id,
            "flagged": self.flagged,
            "cleared": self.cleared,
            "batches": self.batches,
            "inserted": self.written.inserted,
            "updated": self.written.updated,
            "unchanged": self.written.unchanged,
            "skipped": dict(self.skipped),
        }

    def line(self) -> str:
        w = self.written
        text = (
            f"delivered the flags of run {self.run_id} to {self.target}: {self.flagged} students "
            f"flagged, {self.cleared} cleared (inserted {w.inserted}, updated {w.updated}, "
            f"unchanged {w.unchanged})"
        )
        text += (
            f"; cleared against run {self.baseline_run_id}"
            if self.baseline_run_id is not None
            else "; nothing to clear against"
        )
        if self.skipped:
            text += "; not sent: " + ", ".join(
                f"{n} {why}" for why, n in sorted(self.skipped.items())
            )
        return text


# ---------------------------------------------------------------------------------------------
# What to write and where


def flags_mapper(site: Site, target: str) -> OutboundMapper:
    """The outbound mapping of the flags into ``target`` (ConfigError naming the key if unusable)."""
    from .mapping import MappingFileError, OutboundMapper, load_for
    from .sync import outbound_spec

    spec = site.settings.match.flags_mapping or outbound_spec(site, target, DATASET)
    key = "match.flags_mapping" if site.settings.match.flags_mapping else "match.flags_target"
    try:
        mapper = load_for(spec, site.plugins, base_dirs=[site.path("mappings")])
    except MappingFileError as exc:
        raise ConfigError(f"{key}: mapping {spec!r}: " + "; ".join(exc.problems)) from None
    if not isinstance(mapper, OutboundMapper) or mapper.dataset != DATASET:
        raise ConfigError(
            f"{key}: mapping {spec!r} must be an outbound mapping of dataset {DATASET!r} "
            f"(it is {mapper.direction}, dataset {mapper.dataset!r})"
        )
    return mapper


def _target_connector(site: Site, target: str) -> Connector:
    from .plugins import make_connector

    connector = make_connector(site, target)
    if type(connector).write is Connector.write:
        connector.close()
        raise ConfigError(
            f"match.flags_target: system {target!r} uses the {connector.name!r} connector, "
            "which cannot write"
        )
    return connector


def _resolve(site: Site, target: str | None) -> tuple[str, OutboundMapper, Connector]:
    target = target or site.settings.match.flags_target
    if not target:
        raise ConfigError(
            "match.flags_target: not set: name the system the student flags are written to"
        )
    if target not in site.settings.systems:
        raise ConfigError(f"match.flags_target: no system named {target!r} in [systems]")
    mapper = flags_mapper(site, target)
    return target, mapper, _target_connector(site, target)


def check_target(site: Site, target: str | None = None) -> None:
    """ConfigError now, before a run is computed, if the flags cannot be delivered: no target,
    an unusable mapping, a connector that cannot write or is misconfigured."""
    _resolve(site, target)[2].close()


def _student_preference(target: str) -> list[sa.ColumnElement[Any]]:
    """Among one person's student records: the target's own, then the most in school, then the
    most recently stored."""
    return [case((S.c.source == target, 0), else_=1), _status_rank(S), S.c.id.desc()]


_STUDENT_COLUMNS = (
    S.c.subject_key.label("record_subject_key"),
    S.c.id_number.label("id_token"),
    S.c.student_no.label("student_no_token"),
    S.c.id_type.label("record_id_type"),
    S.c.school_code.label("record_school_code"),
    S.c.school_name.label("record_school_name"),
    S.c.grade.label("record_grade"),
    S.c.class_name.label("record_class_name"),
    S.c.status.label("record_status"),
    S.c.area_code.label("record_area_code"),
    S.c.village.label("record_village"),
)


def _pages(
    site: Site,
    keys_query: sa.Select[Any],
    subject: sa.ColumnElement[str],
    rows_query: sa.Select[Any],
    batch_size: int,
) -> Iterator[list[dict[str, Any]]]:
    """Pages of at most ``batch_size`` people, one row each: the next subject keys in order
    (``keys_query``, a walk along the ``(run_id, list_name, subject_key)`` index that stops after
    the page), then every row of that key range (``rows_query``, ordered by subject and
    preference), the first of each subject kept. Sorting a page's rows, never the list's, keeps
    the last page as cheap as the first."""
    after: str | None = None
    while True:
        page_keys = keys_query if after is None else keys_query.where(subject > after)
        with site.engine.connect() as conn:
            found = list(conn.execute(page_keys.limit(batch_size)).scalars())
            if not found:
                return
            page = rows_query.where(subject <= found[-1])
            if after is not None:
                page = page.where(subject > after)
            rows = [dict(r._mapping) for r in conn.execute(page)]
        chosen: list[dict[str, Any]] = []
        for row in rows:
            if not chosen or chosen[-1]["subject_key"] != row["subject_key"]:
                chosen.append(row)
        yield chosen
        after = found[-1]
        if len(found) < batch_size:
            return


def _flag_rows(
    site: Site, run_id: int, target: str, batch_size: int
) -> Iterator[list[dict[str, Any]]]:
    listed = (M.c.run_id == run_id, M.c.list_name == "flags")
    keys = select(M.c.subject_key).where(*listed).order_by(M.c.subject_key)
    rows = (
        select(
            M.c.subject_key,
            M.c.school_code,
            M.c.school_name,
            M.c.grade,
            M.c.class_name,
            M.c.student_status,
            M.c.area_code,
            M.c.village,
            *(M.c[name] for name in _FLAG_FIELDS + _DETAIL_FIELDS),
            *_STUDENT_COLUMNS,
        )
        .select_from(M.join(S, S.c.id == M.c.record_id))
        .where(*listed)
        .order_by(M.c.subject_key, *_student_preference(target))
    )
    return _pages(site, keys, M.c.subject_key, rows, batch_size)


def _cleared_rows(
    site: Site, run_id: int, baseline: int, target: str, batch_size: int
) -> Iterator[list[dict[str, Any]]]:
    """Students on the baseline run's flags list and not on this run's."""
    prev, cur = M.alias("prev"), M.alias("cur")
    gone = (
        prev.c.run_id == baseline,
        prev.c.list_name == "flags",
        ~exists(
            select(literal_column("1")).where(
                cur.c.run_id == run_id,
                cur.c.list_name == "flags",
                cur.c.subject_key == prev.c.subject_key,
            )
        ),
    )
    keys = select(prev.c.subject_key).where(*gone).order_by(prev.c.subject_key)
    rows = (
        select(prev.c.subject_key, *_STUDENT_COLUMNS)
        .select_from(prev.join(S, S.c.id == prev.c.record_id))
        .where(*gone)
        .order_by(prev.c.subject_key, *_student_preference(target))
    )
    return _pages(site, keys, prev.c.subject_key, rows, batch_size)


def _fresh_statistics(site: Site) -> None:
    """PostgreSQL: ANALYZE ``match_rows`` when its statistics predate most of its rows (a run
    just wrote them; autovacuum gets there within minutes). Without them the planner takes the
    run's whole list for one row, filters it instead of walking the subject index, and every
    page costs as much as the list."""
    if site.engine.dialect.name != "postgresql":
        return
    try:
        with site.engine.begin() as conn:
            live, changed, analyzed = conn.exec_driver_sql(
                "SELECT n_live_tup, n_mod_since_analyze, "
                "coalesce(last_analyze, last_autoanalyze) IS NOT NULL "
                "FROM pg_stat_user_tables WHERE relid = 'match_rows'::regclass"
            ).one()
            if not analyzed or changed > live * 0.1:
                conn.exec_driver_sql("ANALYZE match_rows")
    except SQLAlchemyError as exc:  # statistics help the plan; the delivery works without them
        log.warning("match delivery: could not ANALYZE match_rows: %s", exc.__class__.__name__)


def _record(row: dict[str, Any], run: MatchSummary, *, cleared: bool) -> dict[str, Any]:
    """A canonical ``flags`` record (without the opened numbers)."""
    rec: dict[str, Any] = {
        "subject_key": row["record_subject_key"],
        "id_type": row["record_id_type"],
        "as_of": run.as_of,
        "run_id": run.run_id,
        "flagged": not cleared,
    }
    if cleared:  # where the student stands now; every flag off
        rec.update({name: row[f"record_{name}"] for name in _PLACE_FIELDS})
        rec.update(dict.fromkeys(_FLAG_FIELDS, False), **dict.fromkeys(_DETAIL_FIELDS))
    else:  # as the run listed it
        rec.update({name: row[_LISTED_AS.get(name, name)] for name in _PLACE_FIELDS})
        rec.update({name: row[name] for name in _FLAG_FIELDS + _DETAIL_FIELDS})
    return rec


# ---------------------------------------------------------------------------------------------
# The baseline: what the target holds


def last_delivered_run(site: Site, target: str) -> int | None:
    """The run of the last complete delivery of flags to ``target`` (from the audit log)."""
    before: int | None = None
    while True:
        entries = audit.search(
            site, action=ACTION_RUN, outcome="ok", dataset=DATASET, limit=200, before_seq=before
        )
        for entry in entries:
            detail = entry.get("detail") or {}
            if detail.get("target") == target and isinstance(detail.get("run_id"), int):
                return detail["run_id"]
        if len(entries) < 200:
            return None
        before = entries[-1]["seq"]


def _baseline(site: Site, target: str, run: MatchSummary) -> int | None:
    delivered = last_delivered_run(site, target)
    if delivered is not None:
        with site.engine.connect() as conn:
            status = conn.execute(
                select(RUNS.c.status).where(RUNS.c.id == delivered)
            ).scalar_one_or_none()
        if status == "ok":
            return delivered
        log.warning(
            "match delivery to %s: the last delivered run %s has no lists any more (%s); "
            "clearing against run %s instead",
            target,
            delivered,
            status or "deleted",
            run.previous_run_id,
        )
    return run.previous_run_id


# ---------------------------------------------------------------------------------------------
# Delivering


class _Batcher:
    """Opens, maps, writes, audits and announces one batch at a time."""

    def __init__(
        self,
        site: Site,
        run: MatchSummary,
        connector: Connector,
        mapper: OutboundMapper,
        result: DeliveryResult,
        actor: str,
    ):
        self.site, self.run, self.connector, self.mapper = site, run, connector, mapper
        self.result, self.actor = result, actor
        self.protector = site.protector

    def _open(self, token: str | None, column: str, subject_key: str) -> str | None:
        if token is None:
            return None
        return self.protector.open(token, dataset="students", field=column, record=subject_key)

    def send(self, rows: list[dict[str, Any]], *, cleared: bool) -> None:
        native_rows: list[dict[str, Any]] = []
        keys: list[str] = []
        seen: set[tuple[Any, ...]] = set()
        skipped = self.result.skipped
        for row in rows:
            rec = _record(row, self.run, cleared=cleared)
            subject_key = rec["subject_key"]
            try:
                rec["id_number"] = self._open(row["id_token"], "id_number", subject_key)
                rec["student_no"] = self._open(row["student_no_token"], "student_no", subject_key)
            except CryptoError:
                skipped["unopened"] += 1
                log.warning("match delivery: a sealed number of %s did not open", subject_key)
                continue
            native, errors = self.mapper.map_record_checked(rec)
            if errors:  # messages never hold an ID number (gateway.schemas.FieldError)
                skipped["unmapped"] += 1
                log.warning(
                    "match delivery: %s not mapped: %s",
                    subject_key,
                    "; ".join(f"{e.field}: {e.message}" for e in errors),
                )
                continue
            target_key = tuple(native.get(k) for k in self.mapper.key)
            if target_key in seen:  # two people, one target key: one statement cannot hold both
                skipped["duplicate_key"] += 1
                log.warning("match delivery: %s shares its target key; not sent", subject_key)
                continue
            seen.add(target_key)
            native_rows.append(native)
            keys.append(subject_key)
        if not native_rows:
            return
        written = self._write(native_rows)
        total = self.result.written
        total.inserted += written.inserted
        total.updated += written.updated
        total.unchanged += written.unchanged
        self.result.batches += 1
        if cleared:
            self.result.cleared += len(native_rows)
        else:
            self.result.flagged += len(native_rows)
        audit.record(
            self.site,
            actor=self.actor,
            action=ACTION_BATCH,
            outcome="delivered",
            dataset=DATASET,
            purpose=PURPOSE,
            fields=list(self.mapper.fields),
            subject_keys=keys,
            detail={
                "run_id": self.run.run_id,
                "recipient": self.result.target,
                "target": self.result.target,
                "batch": self.result.batches,
                "kind": "cleared" if cleared else "flags",
                "rows": len(native_rows),
                "inserted": written.inserted,
                "updated": written.updated,
                "unchanged": written.unchanged,
                "mapping": self.mapper.name,
                "mapping_version": self.mapper.version,
            },
        )
        from .plugins import emit_record_delivered

        emit_record_delivered(self.site.plugins, self.result.target, DATASET, keys)

    def _write(self, rows: list[dict[str, Any]]) -> WriteResult:
        from .sync import backoff_delay

        attempt = 0
        while True:
            try:
                return self.connector.write(rows, list(self.mapper.key))
            except TransientSourceError as exc:
                attempt += 1
                if attempt > RETRIES:
                    raise
                delay = backoff_delay(attempt)
                log.warning(
                    "match delivery to %s: %s; retry in %.1f s",
                    self.result.target,
                    scrub(str(exc)),
                    delay,
                )
                time.sleep(delay)


def _scrubbed(exc: SourceError) -> SourceError:
    """The same error with anything shaped like an ID number masked: a database's message may
    quote the row it refused (``Duplicate entry '1101...' for key``)."""
    return type(exc)(exc.system, scrub(exc.source), scrub(exc.cause))


def deliver_flags(
    site: Site,
    run: MatchSummary,
    *,
    actor: str,
    target: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> DeliveryResult:
    """Write ``run``'s student flags to ``target`` (default ``[match] flags_target``) and clear
    those resolved since the target's last delivery; see the module docstring."""
    if run.status != "ok":
        raise MatchError(f"match run {run.run_id} is {run.status}: it has no flags to deliver")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    target, mapper, connector = _resolve(site, target)
    try:
        return _deliver(site, run, actor, target, mapper, connector, batch_size)
    finally:
        connector.close()


def _deliver(
    site: Site,
    run: MatchSummary,
    actor: str,
    target: str,
    mapper: OutboundMapper,
    connector: Connector,
    batch_size: int,
) -> DeliveryResult:
    began = time.perf_counter()
    baseline = _baseline(site, target, run)
    _fresh_statistics(site)
    result = DeliveryResult(run.run_id, target, mapper.name, mapper.version, baseline)
    batcher = _Batcher(site, run, connector, mapper, result, actor)
    try:
        for rows in _flag_rows(site, run.run_id, target, batch_size):
            batcher.send(rows, cleared=False)
        # Re-delivering the baseline itself: its clears went out with it, none are new.
        if baseline is not None and baseline != run.run_id:
            for rows in _cleared_rows(site, run.run_id, baseline, target, batch_size):
                batcher.send(rows, cleared=True)
    except (GatewayError, SQLAlchemyError) as exc:
        if isinstance(exc, SourceError):
            exc = _scrubbed(exc)
        _audit_run(site, result, actor, outcome="failed", error=str(exc))
        if isinstance(exc, SQLAlchemyError):
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise StoreError(
                f"match delivery of run {run.run_id} to {target} failed: "
                f"{scrub(first[0] if first else exc.__class__.__name__)}"
            ) from None
        raise exc from None
    _audit_run(site, result, actor, outcome="ok")
    log.info("%s in %.2f s", result.line(), time.perf_counter() - began)
    return result


def _audit_run(
    site: Site, result: DeliveryResult, actor: str, *, outcome: str, error: str | None = None
) -> None:
    detail = {**result.as_dict(), "recipient": result.target}
    if error:
        detail["error"] = scrub(error)[:500]
    try:
        audit.record(
            site,
            actor=actor,
            action=ACTION_RUN,
            outcome=outcome,
            dataset=DATASET,
            purpose=PURPOSE,
            detail=detail,
        )
    except GatewayError as exc:
        if outcome == "ok":
            raise
        # The delivery's own failure is what the caller must see; this one is logged.
        log.error("match delivery: could not audit the failure: %s", exc)
