"""The comparisons ("四查三比对"), computed inside the store database and stored per run.

Every list is one ``INSERT ... SELECT`` joining the canonical tables on ``subject_key`` (the keyed
blind index of the normalised ID number, so a 15-digit ID in one system and its 18-digit form in
another are the same person). Nothing is loaded row by row into Python: the same SQLAlchemy Core
statements run on SQLite and PostgreSQL. Rows whose ``removed`` flag is set are gone from their
source and are ignored everywhere.

The lists (``LISTS``) and the choices made where the seeds leave room:

``flags``
    One row per student record (not removed, status other than graduated/deceased: those have left
    the ledger) whose person holds at least one flag: 脱贫户/建档立卡 (``poverty_type`` lifted),
    监测对象 (unstable / marginal / hardship; with several, the alphabetically first type), 残疾
    (a certificate not past ``valid_until`` at ``as_of``; with several, the most severe grade), 低保,
    特困, 孤儿, 事实无人抚养 (assistance ``active``, started on or before ``as_of`` and not ended before
    it; 临时救助 is not a flag). Each flag group carries its source system and record date
    (``source_updated_at``, else the store's ``updated_at``; the latest when several rows agree).
    A student with no flag has no row: absence means "no flag".
``out_of_school`` / ``suspended``
    Every person found in the poverty, disability, assistance or residents tables (any non-removed
    row: a child whose 低保 ended still lives here) aged ``compulsory_ages`` at the cut-off date
    of the school year containing ``as_of`` (the last ``school_year_cutoff`` strictly before
    ``as_of``: the school year runs from the day after one cut-off to the next cut-off). The age test
    is ``lower < birth_date <= upper`` with both bounds computed in Python. The person's best student
    record decides, in this order: 在读 enrolled (in school), 休学 suspended (the ``suspended`` list),
    转出 with a destination (in school elsewhere), 毕业 graduated (left the ledger lawfully, e.g. a
    15-year-old who finished junior middle school: not out of school), 死亡 deceased (excluded),
    转出 without a destination (not out of school, but on ``transfer_check``), then 疑似辍学,
    辍学, an unknown status, or no student record at all: ``out_of_school`` (among records of one
    rank, the most recently stored one is shown, with its school). A person with no known
    birth date in any registry cannot be placed in the age range and is not listed. Township and
    village come from the registry row chosen in the order residents (户籍), poverty, disability,
    assistance, then the latest record; ``in_*`` columns say which registries the person is in.
``transfer_check``
    Student records 转出 with no ``transfer_to`` whose person has no better record (enrolled,
    suspended, transferred with destination, graduated, deceased): the destination must be checked.
``home_teaching``
    People on this run's ``out_of_school`` list, and students whose best record is 休学 (any age),
    holding a disability certificate valid at ``as_of``; ``reason`` says which; category and grade
    of the most severe certificate.
``roster_suspected_dropout`` / ``roster_dropout`` / ``roster_suspended``
    Student records with that status, each with the flags of the ``flags`` list (人在籍不在).
``aid_gaps``
    Rows of ``flags`` whose student is enrolled and who have no ``aid_granted`` row from the system
    named in ``[match] aid_dataset`` granted in the current school year (after the cut-off, on or
    before ``as_of``; any programme; a grant with no date counts). Not computed when no aid dataset
    is configured.

Monthly report: ``match_counts`` holds, for every list, distinct subjects in total, per township
(``area_code``) and per school, with ``new`` and ``resolved`` against the previous run: the latest
successful run with an ``as_of`` on or before this one's (so a re-run with no new data changes
nothing, and the monthly run compares with last month's). ``trend`` reads the last run of each month.

Rows meet only under the same blind-index key: after ``gateway keys rotate`` the stored subject keys
must be re-indexed (``gateway keys reindex``) before matching. Per-person flags and the registry
people of compulsory age are computed once per run into indexed temporary tables that the lists
join (derived tables would leave SQLite without an index to join on).
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import and_, case, false, func, literal, literal_column, not_, or_, select, true
from sqlalchemy.exc import SQLAlchemyError

from .errors import GatewayError, StoreError
from .store.matches import AidGranted, MatchCount, MatchRow, MatchRun
from .store.records import Assistance, Disability, Poverty, Resident, Student

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from .site import Site

log = logging.getLogger(__name__)

S = Student.__table__
P = Poverty.__table__
D = Disability.__table__
A = Assistance.__table__
R = Resident.__table__
M = MatchRow.__table__
C = MatchCount.__table__
RUNS = MatchRun.__table__
AID = AidGranted.__table__


@dataclass(frozen=True)
class ListSpec:
    name: str
    title: str  # the Chinese name staff know the list by
    description: str
    per_student: bool  # rows come from student records (counted per school too)


LISTS: dict[str, ListSpec] = {
    spec.name: spec
    for spec in (
        ListSpec(
            "flags", "学生身份标注", "students with a poverty, disability or assistance flag", True
        ),
        ListSpec(
            "out_of_school",
            "疑似失学辍学儿童",
            "school-age children with no enrolled record",
            False,
        ),
        ListSpec(
            "suspended", "休学适龄儿童", "school-age children whose record says suspended", False
        ),
        ListSpec("transfer_check", "转出去向待核实", "transferred out with no destination", True),
        ListSpec(
            "home_teaching",
            "送教上门",
            "out of school or suspended, with a disability certificate",
            False,
        ),
        ListSpec(
            "roster_suspected_dropout", "疑似辍学名册", "students marked suspected dropout", True
        ),
        ListSpec("roster_dropout", "辍学名册", "students marked dropout", True),
        ListSpec("roster_suspended", "休学名册", "students marked suspended", True),
        ListSpec(
            "aid_gaps",
            "应助未助",
            "flagged enrolled students with no aid granted this school year",
            True,
        ),
    )
}

MONITOR_TYPES = ("unstable", "marginal", "hardship")
ASSISTANCE_FLAGS = ("dibao", "tekun", "orphan", "unsupported_child")
REGISTRIES = ("residents", "poverty", "disability", "assistance")  # also the area-choice order
# Statuses whose records have left the ledger: no flags row for them.
_LEFT_LEDGER = ("graduated", "deceased")


class MatchError(GatewayError):
    """A match request that cannot be served: no run yet, an unknown list, a bad filter."""


@dataclass(frozen=True)
class ListCount:
    count: int
    new: int
    resolved: int


@dataclass
class MatchSummary:
    """A stored match run: what ``run_match`` returns and the API shows (no personal data)."""

    run_id: int
    as_of: dt.date
    period: str
    cutoff: dt.date
    youngest: int
    oldest: int
    status: str
    previous_run_id: int | None
    actor: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    aid_dataset: str | None
    counts: dict[str, ListCount] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "as_of": self.as_of.isoformat(),
            "period": self.period,
            "cutoff": self.cutoff.isoformat(),
            "ages": [self.youngest, self.oldest],
            "status": self.status,
            "previous_run_id": self.previous_run_id,
            "actor": self.actor,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "aid_dataset": self.aid_dataset,
            "counts": {
                k: {"count": v.count, "new": v.new, "resolved": v.resolved}
                for k, v in self.counts.items()
            },
            "error": self.error,
        }


# ---------------------------------------------------------------------------------------------
# Dates


def _years_before(day: dt.date, years: int) -> dt.date:
    """The same calendar day ``years`` earlier; 29 February becomes the 28th in a common year."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)


def school_year_cutoff(as_of: dt.date, month_day: tuple[int, int]) -> dt.date:
    """The age reference date of the school year containing ``as_of``: the last cut-off before it."""
    month, day = month_day

    def on(year: int) -> dt.date:
        try:
            return dt.date(year, month, day)
        except ValueError:  # 02-29 in a common year
            return dt.date(year, month, 28)

    cutoff = on(as_of.year)
    return cutoff if cutoff < as_of else on(as_of.year - 1)


def birth_bounds(cutoff: dt.date, youngest: int, oldest: int) -> tuple[dt.date, dt.date]:
    """(lower, upper): aged youngest..oldest at ``cutoff`` <=> lower < birth_date <= upper."""
    return _years_before(cutoff, oldest + 1), _years_before(cutoff, youngest)


# ---------------------------------------------------------------------------------------------
# SQL building blocks


def _live(t: sa.Table) -> sa.ColumnElement[bool]:
    return t.c.removed == false()


def _record_date(t: sa.Table) -> sa.ColumnElement[Any]:
    return func.coalesce(t.c.source_updated_at, t.c.updated_at)


def _has_destination(t: sa.Table) -> sa.ColumnElement[bool]:
    return func.coalesce(func.trim(t.c.transfer_to), "") != ""


def _status_rank(t: sa.Table) -> sa.ColumnElement[int]:
    """Lower is "more in school"; the order the module docstring gives."""
    return case(
        (t.c.status == "enrolled", 1),
        (t.c.status == "suspended", 2),
        (and_(t.c.status == "transferred_out", _has_destination(t)), 3),
        (t.c.status == "graduated", 4),
        (t.c.status == "deceased", 5),
        (t.c.status == "transferred_out", 6),
        (t.c.status == "suspected_dropout", 7),
        (t.c.status == "dropout", 8),
        else_=9,
    )


_RANK_SUSPENDED, _RANK_TRANSFER_UNKNOWN = 2, 6
_OUT_OF_SCHOOL_RANKS = (7, 8, 9)


def _flag(value: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """An aggregated 0/1 (or NULL from an outer join) as a real boolean on both dialects."""
    return func.coalesce(value, 0) == 1


def _const(value: str) -> sa.ColumnElement[str]:
    return literal(value, sa.String)


@dataclass(frozen=True)
class _Params:
    run_id: int
    as_of: dt.date
    cutoff: dt.date
    lower: dt.date
    upper: dt.date
    aid_dataset: str | None
    previous_run_id: int | None


# Per-person flags, computed once per run into an indexed temporary table: the flags list, the
# rosters and the home-teaching list join it by subject_key. (Joining the aggregates as derived
# tables leaves SQLite without an index on them and turns the join quadratic.)
_WORK = sa.MetaData()
FLAGS_WORK = sa.Table(
    "match_work_flags",
    _WORK,
    sa.Column(
        "subject_key", sa.String(100), nullable=False
    ),  # unique: indexed by _index_and_analyze
    sa.Column("has_poverty", sa.Integer),
    sa.Column("lifted", sa.Integer),
    sa.Column("monitor_type", sa.String(16)),
    sa.Column("poverty_source", sa.String(64)),
    sa.Column("poverty_date", sa.DateTime),
    sa.Column("has_disability", sa.Integer),
    sa.Column("disability_category", sa.SmallInteger),
    sa.Column("disability_grade", sa.SmallInteger),
    sa.Column("disability_source", sa.String(64)),
    sa.Column("disability_date", sa.DateTime),
    sa.Column("has_assistance", sa.Integer),
    *(sa.Column(kind, sa.Integer) for kind in ASSISTANCE_FLAGS),
    sa.Column("assistance_source", sa.String(64)),
    sa.Column("assistance_date", sa.DateTime),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
_WORK_GROUPS = {
    "poverty": ("has_poverty", "lifted", "monitor_type", "poverty_source", "poverty_date"),
    "disability": (
        "has_disability",
        "disability_category",
        "disability_grade",
        "disability_source",
        "disability_date",
    ),
    "assistance": ("has_assistance", *ASSISTANCE_FLAGS, "assistance_source", "assistance_date"),
}


def _poverty_part() -> sa.Select[Any]:
    wanted = P.c.poverty_type.in_(("lifted", *MONITOR_TYPES))
    return (
        select(
            P.c.subject_key,
            literal_column("1").label("has_poverty"),
            func.max(case((P.c.poverty_type == "lifted", 1), else_=0)).label("lifted"),
            func.min(case((P.c.poverty_type.in_(MONITOR_TYPES), P.c.poverty_type))).label(
                "monitor_type"
            ),
            func.min(P.c.source).label("poverty_source"),
            func.max(_record_date(P)).label("poverty_date"),
        )
        .where(_live(P), wanted)
        .group_by(P.c.subject_key)
    )


def _disability_part(p: _Params) -> sa.Select[Any]:
    """Per person, the most severe certificate valid at ``as_of``."""
    valid = or_(D.c.valid_until.is_(None), D.c.valid_until >= p.as_of)
    ranked = (
        select(
            D.c.subject_key,
            D.c.category,
            D.c.grade,
            D.c.source,
            _record_date(D).label("record_date"),
            func.row_number()
            .over(
                partition_by=D.c.subject_key,
                order_by=(
                    case((D.c.grade.is_(None), 1), else_=0),
                    D.c.grade,
                    D.c.category,
                    _record_date(D).desc(),
                    D.c.id,
                ),
            )
            .label("rn"),
        )
        .where(_live(D), valid)
        .subquery("dis_ranked")
    )
    return select(
        ranked.c.subject_key,
        literal_column("1").label("has_disability"),
        ranked.c.category.label("disability_category"),
        ranked.c.grade.label("disability_grade"),
        ranked.c.source.label("disability_source"),
        ranked.c.record_date.label("disability_date"),
    ).where(ranked.c.rn == 1)


def _assistance_part(p: _Params) -> sa.Select[Any]:
    active = and_(
        _live(A),
        A.c.active == true(),
        A.c.assistance_type.in_(ASSISTANCE_FLAGS),
        or_(A.c.start_date.is_(None), A.c.start_date <= p.as_of),
        or_(A.c.end_date.is_(None), A.c.end_date >= p.as_of),
    )
    return (
        select(
            A.c.subject_key,
            literal_column("1").label("has_assistance"),
            *(
                func.max(case((A.c.assistance_type == kind, 1), else_=0)).label(kind)
                for kind in ASSISTANCE_FLAGS
            ),
            func.min(A.c.source).label("assistance_source"),
            func.max(_record_date(A)).label("assistance_date"),
        )
        .where(active)
        .group_by(A.c.subject_key)
    )


def _prepare(conn: Connection, p: _Params) -> int:
    """Fill the per-person flags work table: one row per person with any flag."""
    FLAGS_WORK.create(conn)
    parts = {
        "poverty": _poverty_part(),
        "disability": _disability_part(p),
        "assistance": _assistance_part(p),
    }
    columns = [c.name for c in FLAGS_WORK.columns if c.name != "subject_key"]
    selects = []
    for group, part in parts.items():
        sub = part.subquery(f"{group}_part")
        mine = set(_WORK_GROUPS[group])
        # Every part gives every column (NULL where it is another group's) so they can be stacked.
        selects.append(
            select(
                sub.c.subject_key,
                *(
                    (sub.c[c] if c in mine else sa.cast(sa.null(), FLAGS_WORK.c[c].type)).label(c)
                    for c in columns
                ),
            )
        )
    stacked = sa.union_all(*selects).subquery("stacked")
    # Each column is non-NULL in one group's row only: max() picks it.
    merged = select(
        stacked.c.subject_key, *(func.max(stacked.c[c]).label(c) for c in columns)
    ).group_by(stacked.c.subject_key)
    rows = conn.execute(
        sa.insert(FLAGS_WORK).from_select(["subject_key", *columns], merged)
    ).rowcount
    _index_and_analyze(conn, FLAGS_WORK)
    return rows


def _index_and_analyze(conn: Connection, table: sa.Table) -> None:
    """Index a filled work table on subject_key (built once, sorted, cheaper than maintaining it
    per inserted row) and give it statistics: without them SQLite scans the million students and
    probes the work table instead of the other way round (6x slower), and PostgreSQL guesses."""
    conn.exec_driver_sql(f"CREATE UNIQUE INDEX ix_{table.name} ON {table.name} (subject_key)")
    schema = "temp." if conn.dialect.name == "sqlite" else ""
    conn.exec_driver_sql(f"ANALYZE {schema}{table.name}")


def _cleanup(conn: Connection) -> None:
    for table in (FLAGS_WORK, PEOPLE_WORK):
        table.drop(conn)


def _work_flag_columns(w: sa.Table) -> list[sa.ColumnElement[Any]]:
    """The flag columns of match_rows, from the work table."""
    return [
        _flag(w.c.lifted).label("poverty_lifted"),
        w.c.monitor_type,
        w.c.poverty_source,
        w.c.poverty_date,
        w.c.disability_category,
        w.c.disability_grade,
        w.c.disability_source,
        w.c.disability_date,
        *(_flag(w.c[kind]).label(kind) for kind in ASSISTANCE_FLAGS),
        w.c.assistance_source,
        w.c.assistance_date,
    ]


_ROW_COLUMNS = [c.name for c in M.columns if c.name != "id"]


def _insert(conn: Connection, stmt: sa.Select[Any]) -> int:
    """INSERT the SELECT's columns (named like match_rows' columns) into match_rows."""
    names = [c.name for c in stmt.selected_columns]
    unknown = set(names) - set(_ROW_COLUMNS)
    if unknown:  # a programming error, caught by the tests
        raise AssertionError(f"not match_rows columns: {sorted(unknown)}")
    result = conn.execute(sa.insert(M).from_select(names, stmt))
    return result.rowcount


# Who and where: the columns a list row copies from the row it is derived from.
_STUDENT_AND_PLACE = (
    "subject_key",
    "record_dataset",
    "record_id",
    "id_type",
    "id_masked",
    "sex",
    "birth_date",
    "area_code",
    "village",
    "school_code",
    "school_name",
    "grade",
    "class_name",
    "student_status",
)


def _student_columns(s: sa.Table | sa.Subquery | sa.Alias) -> list[sa.ColumnElement[Any]]:
    return [
        s.c.subject_key,
        _const("students").label("record_dataset"),
        s.c.id.label("record_id"),
        s.c.id_type,
        s.c.id_masked,
        s.c.sex,
        s.c.birth_date,
        s.c.area_code,
        s.c.village,
        s.c.school_code,
        s.c.school_name,
        s.c.grade,
        s.c.class_name,
        s.c.status.label("student_status"),
    ]


def _header(p: _Params, list_name: str) -> list[sa.ColumnElement[Any]]:
    return [literal(p.run_id, sa.BigInteger).label("run_id"), _const(list_name).label("list_name")]


# ---------------------------------------------------------------------------------------------
# The lists


def _flags(conn: Connection, p: _Params) -> int:
    w = FLAGS_WORK
    stmt = (
        select(*_header(p, "flags"), *_student_columns(S), *_work_flag_columns(w))
        .select_from(w.join(S, S.c.subject_key == w.c.subject_key))
        .where(_live(S), or_(S.c.status.is_(None), S.c.status.not_in(_LEFT_LEDGER)))
    )
    return _insert(conn, stmt)


def _registry_union(p: _Params) -> sa.Subquery:
    """Registry rows that may place a person in the age range (birth date in range, or unknown)."""

    def part(t: sa.Table, prio: int) -> sa.Select[Any]:
        rng = or_(
            t.c.birth_date.is_(None), and_(t.c.birth_date > p.lower, t.c.birth_date <= p.upper)
        )
        return select(
            t.c.subject_key,
            literal_column(str(prio)).label("prio"),
            t.c.id,
            t.c.id_type,
            t.c.id_masked,
            t.c.sex,
            t.c.birth_date,
            t.c.area_code,
            t.c.village,
            _record_date(t).label("record_date"),
        ).where(_live(t), rng)

    tables = {"residents": R, "poverty": P, "disability": D, "assistance": A}
    return sa.union_all(*(part(tables[name], i) for i, name in enumerate(REGISTRIES))).subquery(
        "reg"
    )


# A person's best student record, as one number: MIN(rank * _RANK_BASE - id) orders by rank, then
# by the most recently stored record, and needs no per-person sort (an ORDER BY ... LIMIT 1
# subquery would); rank = (best + _RANK_BASE) // _RANK_BASE and id = rank * _RANK_BASE - best
# recover both (ids stay below 10^15, so everything fits in a BIGINT).
_RANK_BASE = 10**15
_BASE = literal_column(str(_RANK_BASE), sa.BigInteger)  # inlined: PostgreSQL types it BIGINT

PEOPLE_WORK = sa.Table(
    "match_work_people",
    _WORK,
    sa.Column(
        "subject_key", sa.String(100), nullable=False
    ),  # unique: indexed by _index_and_analyze
    sa.Column("prio", sa.Integer),
    sa.Column("record_id", sa.BigInteger),
    sa.Column("id_type", sa.String(1)),
    sa.Column("id_masked", sa.String(24)),
    sa.Column("sex", sa.String(1)),
    sa.Column("birth_date", sa.Date),
    sa.Column("area_code", sa.String(12)),
    sa.Column("village", sa.String(100)),
    *(sa.Column(f"in_{name}", sa.Integer) for name in REGISTRIES),
    sa.Column("best", sa.BigInteger),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)


def _people(conn: Connection, p: _Params) -> int:
    """One row per registry person of compulsory age: where they live (the registry row chosen in
    REGISTRIES order, then the latest), which registries hold them, and their best student record."""
    u = _registry_union(p)
    # Partition on an expression, not the bare column: SQLite otherwise walks the four subject_key
    # indexes with a random table read per row to get partition order, 3x slower than sorting.
    part = u.c.subject_key.concat("")
    windowed = select(
        u,
        func.row_number()
        .over(
            partition_by=part,
            order_by=(
                case((u.c.birth_date.is_(None), 1), else_=0),
                u.c.prio,
                u.c.record_date.desc(),
                u.c.id.desc(),
            ),
        )
        .label("rn"),
        *(
            func.max(case((u.c.prio == i, 1), else_=0)).over(partition_by=part).label(f"in_{name}")
            for i, name in enumerate(REGISTRIES)
        ),
    ).subquery("w")
    s2 = S.alias("s2")
    best = (
        select(func.min(_status_rank(s2) * _BASE - s2.c.id))
        .where(s2.c.subject_key == windowed.c.subject_key, _live(s2))
        .scalar_subquery()
    )
    columns = [c.name for c in PEOPLE_WORK.columns]
    stmt = select(
        windowed.c.subject_key,
        windowed.c.prio,
        windowed.c.id.label("record_id"),
        *(
            windowed.c[name]
            for name in ("id_type", "id_masked", "sex", "birth_date", "area_code", "village")
        ),
        *(windowed.c[f"in_{name}"] for name in REGISTRIES),
        best.label("best"),
    ).where(windowed.c.rn == 1, windowed.c.birth_date.is_not(None))
    PEOPLE_WORK.create(conn)
    rows = conn.execute(sa.insert(PEOPLE_WORK).from_select(columns, stmt)).rowcount
    _index_and_analyze(conn, PEOPLE_WORK)
    return rows


def _out_of_school(conn: Connection, p: _Params) -> int:
    """out_of_school and suspended in one pass over the registry people."""
    w = PEOPLE_WORK
    rank = (w.c.best + _BASE) // _BASE
    best_id = rank * _BASE - w.c.best
    dataset = case(*((w.c.prio == i, name) for i, name in enumerate(REGISTRIES)))
    stmt = (
        select(
            literal(p.run_id, sa.BigInteger).label("run_id"),
            case((rank == _RANK_SUSPENDED, "suspended"), else_="out_of_school").label("list_name"),
            w.c.subject_key,
            dataset.label("record_dataset"),
            w.c.record_id,
            *(
                w.c[name]
                for name in ("id_type", "id_masked", "sex", "birth_date", "area_code", "village")
            ),
            S.c.school_code,
            S.c.school_name,
            S.c.grade,
            S.c.class_name,
            S.c.status.label("student_status"),
            *(_flag(w.c[f"in_{name}"]).label(f"in_{name}") for name in REGISTRIES),
        )
        .select_from(w.outerjoin(S, S.c.id == best_id))
        .where(or_(w.c.best.is_(None), rank == _RANK_SUSPENDED, rank.in_(_OUT_OF_SCHOOL_RANKS)))
    )
    return _insert(conn, stmt)


def _transfer_check(conn: Connection, p: _Params) -> int:
    s2 = S.alias("s2")
    better = (
        select(literal_column("1"))
        .where(
            s2.c.subject_key == S.c.subject_key,
            _live(s2),
            _status_rank(s2) < _RANK_TRANSFER_UNKNOWN,
        )
        .exists()
    )
    stmt = select(*_header(p, "transfer_check"), *_student_columns(S)).where(
        _live(S), S.c.status == "transferred_out", not_(_has_destination(S)), not_(better)
    )
    return _insert(conn, stmt)


def _rosters(conn: Connection, p: _Params) -> int:
    w = FLAGS_WORK
    total = 0
    for status in ("suspected_dropout", "dropout", "suspended"):
        stmt = (
            select(*_header(p, f"roster_{status}"), *_student_columns(S), *_work_flag_columns(w))
            .select_from(S.outerjoin(w, w.c.subject_key == S.c.subject_key))
            .where(_live(S), S.c.status == status)
        )
        total += _insert(conn, stmt)
    return total


def _disability_columns(w: sa.Table) -> list[sa.ColumnElement[Any]]:
    return [
        w.c.disability_category,
        w.c.disability_grade,
        w.c.disability_source,
        w.c.disability_date,
    ]


def _home_teaching(conn: Connection, p: _Params) -> int:
    w = FLAGS_WORK
    oos = M.alias("o")
    same = [oos.c[name] for name in _ROW_COLUMNS if name in _STUDENT_AND_PLACE]
    from_oos = (
        select(
            *_header(p, "home_teaching"),
            *same,
            *_disability_columns(w),
            _const("out_of_school").label("reason"),
        )
        .select_from(oos.join(w, w.c.subject_key == oos.c.subject_key))
        .where(
            oos.c.run_id == p.run_id, oos.c.list_name == "out_of_school", w.c.has_disability == 1
        )
    )
    s2 = S.alias("s2")
    first_suspended = (
        select(func.min(s2.c.id))
        .where(s2.c.subject_key == S.c.subject_key, _live(s2), s2.c.status == "suspended")
        .scalar_subquery()
    )
    enrolled = (
        select(literal_column("1"))
        .where(s2.c.subject_key == S.c.subject_key, _live(s2), s2.c.status == "enrolled")
        .exists()
    )
    from_suspended = (
        select(
            *_header(p, "home_teaching"),
            *_student_columns(S),
            *_disability_columns(w),
            _const("suspended").label("reason"),
        )
        .select_from(w.join(S, S.c.subject_key == w.c.subject_key))
        .where(
            w.c.has_disability == 1,
            _live(S),
            S.c.status == "suspended",
            S.c.id == first_suspended,
            not_(enrolled),
        )
    )
    return _insert(conn, from_oos) + _insert(conn, from_suspended)


def _aid_gaps(conn: Connection, p: _Params) -> int:
    if not p.aid_dataset:
        return 0
    f = M.alias("f")
    granted = (
        select(literal_column("1"))
        .where(
            AID.c.subject_key == f.c.subject_key,
            _live(AID),
            AID.c.source == p.aid_dataset,
            or_(
                AID.c.granted_on.is_(None),
                and_(AID.c.granted_on > p.cutoff, AID.c.granted_on <= p.as_of),
            ),
        )
        .exists()
    )
    copied = [f.c[name] for name in _ROW_COLUMNS if name not in ("run_id", "list_name")]
    stmt = select(*_header(p, "aid_gaps"), *copied).where(
        f.c.run_id == p.run_id,
        f.c.list_name == "flags",
        f.c.student_status == "enrolled",
        not_(granted),
    )
    return _insert(conn, stmt)


CHANGES_WORK = sa.Table(
    "match_work_changes",
    _WORK,
    sa.Column("change", sa.String(8), primary_key=True),  # new | resolved
    sa.Column("list_name", sa.String(32), primary_key=True),
    sa.Column("subject_key", sa.String(100), primary_key=True),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)


def _changes(conn: Connection, p: _Params) -> None:
    """(list, subject) pairs new since the previous run, and those resolved: compared once here,
    then joined per scope (usually few)."""
    CHANGES_WORK.create(conn)
    if p.previous_run_id is None:
        return
    cur, prev = M.alias("cur"), M.alias("prev")
    for change, this, other, this_run, other_run in (
        ("new", cur, prev, p.run_id, p.previous_run_id),
        ("resolved", prev, cur, p.previous_run_id, p.run_id),
    ):
        there = (
            select(literal_column("1"))
            .where(
                other.c.run_id == other_run,
                other.c.list_name == this.c.list_name,
                other.c.subject_key == this.c.subject_key,
            )
            .exists()
        )
        stmt = (
            select(_const(change).label("change"), this.c.list_name, this.c.subject_key)
            .where(this.c.run_id == this_run, not_(there))
            .distinct()
        )
        conn.execute(
            sa.insert(CHANGES_WORK).from_select(["change", "list_name", "subject_key"], stmt)
        )


def _counts(conn: Connection, p: _Params) -> None:
    """match_counts for every list and scope: distinct subjects, new and resolved vs the previous run."""
    _changes(conn, p)
    ch = CHANGES_WORK
    first = p.previous_run_id is None  # everything is new

    def scoped(scope: str) -> None:
        def code(t: sa.Alias) -> sa.ColumnElement[str]:
            # Inlined, not bound: PostgreSQL matches GROUP BY expressions textually.
            if scope == "total":
                return literal_column("''", sa.String)
            if scope == "township":
                return func.coalesce(t.c.area_code, literal_column("''", sa.String))
            return t.c.school_code

        def name(t: sa.Alias) -> sa.ColumnElement[Any]:
            return func.max(t.c.school_name) if scope == "school" else sa.null()

        def keys(t: sa.Alias) -> list[sa.ColumnElement[Any]]:
            return [t.c.list_name] if scope == "total" else [t.c.list_name, code(t)]

        def where(t: sa.Alias, run: int | None) -> list[sa.ColumnElement[bool]]:
            conds = [t.c.run_id == run]
            if scope == "school":
                conds.append(t.c.school_code.is_not(None))
            return conds

        def changed(t: sa.Alias, change: str) -> sa.Join:
            return ch.join(
                t,
                and_(
                    ch.c.change == change,
                    t.c.list_name == ch.c.list_name,
                    t.c.subject_key == ch.c.subject_key,
                ),
            )

        zero = literal_column("0")
        parts = []
        for t, run, change, columns in (
            (M.alias("cur"), p.run_id, None, ("c", "n") if first else ("c",)),
            (M.alias("cur"), p.run_id, "new", ("n",)),
            (M.alias("prev"), p.previous_run_id, "resolved", ("r",)),
        ):
            if change is not None and first:
                continue
            counted = func.count(sa.distinct(t.c.subject_key))
            query = select(
                t.c.list_name,
                code(t).label("code"),
                name(t).label("name"),
                *((counted if col in columns else zero).label(col) for col in ("c", "n", "r")),
            ).where(*where(t, run))
            if change is not None:
                query = query.select_from(changed(t, change))
            parts.append(query.group_by(*keys(t)))
        u = sa.union_all(*parts).subquery("u")
        stmt = select(
            literal(p.run_id, sa.BigInteger).label("run_id"),
            u.c.list_name,
            _const(scope).label("scope"),
            u.c.code,
            func.max(u.c.name).label("name"),
            func.sum(u.c.c).label("count"),
            func.sum(u.c.n).label("new"),
            func.sum(u.c.r).label("resolved"),
        ).group_by(u.c.list_name, u.c.code)
        names = [c.name for c in stmt.selected_columns]
        conn.execute(sa.insert(C).from_select(names, stmt))

    for scope in ("total", "township", "school"):
        scoped(scope)
    CHANGES_WORK.drop(conn)


# ---------------------------------------------------------------------------------------------
# Running


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)  # the store keeps naive UTC


def default_actor() -> str:
    """The audit actor of a command-line run: ``user:<login name>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "unknown"
    return f"user:{user or 'unknown'}"


_WORK_MEM = 128 * 1024**2


def _tune(conn: Connection) -> None:
    """PostgreSQL: let this transaction's sorts and hashes of the registries stay in memory (the
    default 4 MB spills them to disk); never lowers a larger setting, ends with the transaction."""
    if conn.dialect.name == "postgresql":
        have = conn.exec_driver_sql(
            "SELECT pg_size_bytes(current_setting('work_mem'))"
        ).scalar_one()
        if have < _WORK_MEM:
            conn.exec_driver_sql(f"SET LOCAL work_mem = '{_WORK_MEM // 1024**2}MB'")


def _previous_run(conn: Connection, as_of: dt.date, exclude: int) -> int | None:
    row = conn.execute(
        select(RUNS.c.id)
        .where(RUNS.c.status == "ok", RUNS.c.as_of <= as_of, RUNS.c.id != exclude)
        .order_by(RUNS.c.as_of.desc(), RUNS.c.id.desc())
        .limit(1)
    ).first()
    return row[0] if row else None


_STEPS = (
    _prepare,
    _flags,
    _people,
    _out_of_school,
    _transfer_check,
    _rosters,
    _home_teaching,
    _aid_gaps,
)


def run_match(
    site: Site, as_of: dt.date | None = None, *, actor: str | None = None
) -> MatchSummary:
    """Compute and store every list for ``as_of`` (default today); audited with its counts.

    The lists, counts and the run's status are committed together: a failed run leaves no rows and
    is recorded as failed with its error.
    """
    settings = site.settings
    as_of = as_of or dt.date.today()
    actor = actor or default_actor()
    youngest, oldest = settings.gateway.compulsory_ages
    cutoff = school_year_cutoff(as_of, settings.cutoff_month_day)
    lower, upper = birth_bounds(cutoff, youngest, oldest)
    started = _now()
    with site.engine.begin() as conn:
        run_id = conn.execute(
            sa.insert(RUNS).values(
                as_of=as_of,
                period=as_of.strftime("%Y-%m"),
                cutoff=cutoff,
                youngest=youngest,
                oldest=oldest,
                aid_dataset=settings.match.aid_dataset,
                status="running",
                actor=actor,
                started_at=started,
            )
        ).inserted_primary_key[0]
    try:
        with site.engine.begin() as conn:
            _tune(conn)
            previous = _previous_run(conn, as_of, run_id)
            params = _Params(
                run_id, as_of, cutoff, lower, upper, settings.match.aid_dataset, previous
            )
            for step in _STEPS:
                began = time.perf_counter()
                rows = step(conn, params)  # rowcount: -1 where the driver does not tell
                log.info(
                    "match run %s: %s: %d rows in %.2f s",
                    run_id,
                    step.__name__[1:],
                    rows,
                    time.perf_counter() - began,
                )
            _cleanup(conn)
            began = time.perf_counter()
            _counts(conn, params)
            log.info("match run %s: counts in %.2f s", run_id, time.perf_counter() - began)
            totals = _read_totals(conn, run_id)
            conn.execute(
                sa.update(RUNS)
                .where(RUNS.c.id == run_id)
                .values(
                    status="ok",
                    previous_run_id=previous,
                    finished_at=_now(),
                    counts={k: vars(v) for k, v in totals.items()},
                )
            )
            began = time.perf_counter()
        log.info("match run %s: committed in %.2f s", run_id, time.perf_counter() - began)
    except Exception as exc:
        # The statements carry no personal data (it all stays in SQL): the driver's first line
        # is safe to keep and show.
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        error = f"{exc.__class__.__name__}: {reason[0] if reason else ''}"[:2000]
        with site.engine.begin() as conn:
            conn.execute(
                sa.update(RUNS)
                .where(RUNS.c.id == run_id)
                .values(status="failed", finished_at=_now(), error=error)
            )
        summary = get_run(site, run_id)
        _audit_run(site, summary, outcome="failed")
        _notify(site, summary)
        if isinstance(exc, SQLAlchemyError):
            raise StoreError(f"match run {run_id} failed: {error}") from exc
        raise
    began = time.perf_counter()
    summary = get_run(site, run_id)
    _audit_run(site, summary, outcome="ok")
    _notify(site, summary)
    log.info("match run %s: audited in %.2f s", run_id, time.perf_counter() - began)
    return summary


def _read_totals(conn: Connection, run_id: int) -> dict[str, ListCount]:
    rows = conn.execute(
        select(C.c.list_name, C.c.count, C.c.new, C.c.resolved).where(
            C.c.run_id == run_id, C.c.scope == "total"
        )
    ).all()
    found = {r.list_name: ListCount(int(r.count), int(r.new), int(r.resolved)) for r in rows}
    return {name: found.get(name, ListCount(0, 0, 0)) for name in LISTS}


def _audit_run(site: Site, summary: MatchSummary, *, outcome: str) -> None:
    """The run's audit entry: counts only; the rows leave the store (and are audited) on export."""
    detail = {
        "run_id": summary.run_id,
        "as_of": summary.as_of.isoformat(),
        "previous_run_id": summary.previous_run_id,
        "counts": {k: vars(v) for k, v in summary.counts.items()},
    }
    if summary.error:
        detail["error"] = summary.error
    audit_event(
        site,
        actor=summary.actor,
        action="match.run",
        outcome=outcome,
        purpose="dropout-control",
        detail=detail,
    )


def audit_event(site: Site, **entry: Any) -> int:
    """The one place the comparisons write to the audit log (gateway.audit.record)."""
    from . import audit

    return audit.record(site, **entry)


def _notify(site: Site, summary: MatchSummary) -> None:
    counts = {k: v.count for k, v in summary.counts.items()}
    site.plugins.hook.on_run_finished(
        run={
            "job": "match",
            "kind": "match",
            "status": summary.status,
            "counts": counts,
            "mapping_version": None,
            "started_at": summary.started_at,
            "finished_at": summary.finished_at,
            "error": summary.error,
        }
    )


# ---------------------------------------------------------------------------------------------
# Reading stored results (the CLI, the API and delivery jobs)


def _summary(row: sa.Row[Any]) -> MatchSummary:
    counts = {k: ListCount(**v) for k, v in (row.counts or {}).items()}
    return MatchSummary(
        run_id=row.id,
        as_of=row.as_of,
        period=row.period,
        cutoff=row.cutoff,
        youngest=row.youngest,
        oldest=row.oldest,
        status=row.status,
        previous_run_id=row.previous_run_id,
        actor=row.actor,
        started_at=row.started_at,
        finished_at=row.finished_at,
        aid_dataset=row.aid_dataset,
        counts=counts,
        error=row.error,
    )


def get_run(site: Site, run_id: int | None = None) -> MatchSummary:
    """A run by id, or the latest successful run; MatchError if there is none."""
    query = select(RUNS)
    if run_id is None:
        query = (
            query.where(RUNS.c.status == "ok")
            .order_by(RUNS.c.as_of.desc(), RUNS.c.id.desc())
            .limit(1)
        )
    else:
        query = query.where(RUNS.c.id == run_id)
    with site.engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        raise MatchError(
            "no match run yet: run `gateway match`" if run_id is None else f"no match run {run_id}"
        )
    return _summary(row)


def list_runs(site: Site, limit: int = 24) -> list[MatchSummary]:
    """The latest runs, newest first (failed ones included)."""
    with site.engine.connect() as conn:
        rows = conn.execute(select(RUNS).order_by(RUNS.c.id.desc()).limit(limit)).all()
    return [_summary(r) for r in rows]


def _check_list(list_name: str) -> None:
    if list_name not in LISTS:
        raise MatchError(f"unknown list {list_name!r}; lists: {', '.join(LISTS)}")


def _check_area(area_prefix: str | None) -> None:
    if area_prefix is not None and not (
        area_prefix.isascii() and area_prefix.isdigit() and len(area_prefix) <= 12
    ):
        raise MatchError(f"area prefix must be up to 12 digits, not {area_prefix!r}")


OUTPUT_COLUMNS = [c for c in _ROW_COLUMNS if c not in ("run_id", "list_name")]


def iter_rows(
    site: Site,
    list_name: str,
    *,
    run_id: int | None = None,
    area_prefix: str | None = None,
    school_code: str | None = None,
    after_id: int | None = None,
    limit: int | None = None,
    batch: int = 5000,
) -> Iterator[dict[str, Any]]:
    """A stored list's rows (masked: no name, no ID number), ordered by township, village, id.

    With ``after_id``/``limit`` the order is by row id instead, for keyset pagination (the API):
    pass the last row's ``row_id`` to get the next page.
    """
    _check_list(list_name)
    _check_area(area_prefix)
    run = get_run(site, run_id)
    query = select(M.c.id.label("row_id"), *(M.c[c] for c in OUTPUT_COLUMNS)).where(
        M.c.run_id == run.run_id, M.c.list_name == list_name
    )
    if area_prefix:
        query = query.where(M.c.area_code.like(f"{area_prefix}%"))
    if school_code is not None:
        query = query.where(M.c.school_code == school_code)
    if after_id is not None or limit is not None:
        if after_id is not None:
            query = query.where(M.c.id > after_id)
        query = query.order_by(M.c.id)
        if limit is not None:
            query = query.limit(limit)
    else:
        query = query.order_by(M.c.area_code, M.c.village, M.c.school_code, M.c.id)
    with site.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(query)
        for row in result:
            yield dict(row._mapping)


@dataclass
class ListPage:
    run: MatchSummary
    rows: list[dict[str, Any]]
    next_after: int | None  # pass as after_id for the next page; None when this is the last


def latest_list(
    site: Site,
    list_name: str,
    area_prefix: str | None = None,
    *,
    school_code: str | None = None,
    run_id: int | None = None,
    after_id: int | None = None,
    limit: int = 1000,
) -> ListPage:
    """One page of a list from the latest successful run (or ``run_id``), for the API."""
    run = get_run(site, run_id)
    rows = list(
        iter_rows(
            site,
            list_name,
            run_id=run.run_id,
            area_prefix=area_prefix,
            school_code=school_code,
            after_id=after_id or 0,
            limit=limit + 1,
        )
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return ListPage(run, rows, rows[-1]["row_id"] if more else None)


def counts(
    site: Site, run_id: int | None = None, *, scope: str = "township", list_name: str | None = None
) -> list[dict[str, Any]]:
    """Per-scope counts of a run: [{list_name, scope, code, name, count, new, resolved}]."""
    if scope not in ("total", "township", "school"):
        raise MatchError(f"scope must be total, township or school, not {scope!r}")
    if list_name is not None:
        _check_list(list_name)
    run = get_run(site, run_id)
    query = select(
        C.c.list_name, C.c.scope, C.c.code, C.c.name, C.c.count, C.c.new, C.c.resolved
    ).where(C.c.run_id == run.run_id, C.c.scope == scope)
    if list_name:
        query = query.where(C.c.list_name == list_name)
    order = {name: i for i, name in enumerate(LISTS)}
    with site.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    return sorted(rows, key=lambda r: (order.get(r["list_name"], 99), r["code"]))


def trend(
    site: Site, list_name: str, *, scope: str = "total", code: str = "", months: int = 12
) -> list[dict[str, Any]]:
    """The monthly trend of one list: for each of the last ``months`` periods with a successful run,
    the last run's count, new and resolved in that scope (oldest first)."""
    _check_list(list_name)
    last = (
        select(RUNS.c.period, func.max(RUNS.c.id).label("run_id"))
        .where(RUNS.c.status.in_(_COUNTED))
        .group_by(RUNS.c.period)
        .subquery("last")
    )
    query = (
        select(last.c.period, last.c.run_id, RUNS.c.as_of, C.c.count, C.c.new, C.c.resolved)
        .select_from(
            last.join(RUNS, RUNS.c.id == last.c.run_id).outerjoin(
                C,
                and_(
                    C.c.run_id == last.c.run_id,
                    C.c.list_name == list_name,
                    C.c.scope == scope,
                    C.c.code == code,
                ),
            )
        )
        .order_by(last.c.period.desc())
        .limit(months)
    )
    with site.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "period": r.period,
            "run_id": r.run_id,
            "as_of": r.as_of,
            "count": r.count or 0,
            "new": r.new or 0,
            "resolved": r.resolved or 0,
        }
        for r in reversed(rows)
    ]


# Runs whose counts stand: "pruned" runs had their list rows deleted by prune_rows, counts kept.
_COUNTED = ("ok", "pruned")


def prune_rows(site: Site, *, keep_months: int = 13) -> int:
    """Delete the list rows of runs nobody needs any more; returns the rows deleted.

    Kept: the last successful run of each of the newest ``keep_months`` months (the lists behind
    the trend, and the baseline of the next comparison). Every run keeps its counts, so the trend
    stays complete; a pruned run is marked ``pruned`` and is never a comparison baseline again.
    """
    if keep_months < 1:
        raise MatchError("keep_months must be at least 1")
    with site.engine.begin() as conn:
        newest = conn.execute(
            select(func.max(RUNS.c.id))
            .where(RUNS.c.status == "ok")
            .group_by(RUNS.c.period)
            .order_by(RUNS.c.period.desc())
            .limit(keep_months)
        ).scalars()
        keep = set(newest)
        doomed = [
            r
            for r in conn.execute(select(RUNS.c.id).where(RUNS.c.status == "ok")).scalars()
            if r not in keep
        ]
        deleted = 0
        for run_id in doomed:
            deleted += conn.execute(sa.delete(M).where(M.c.run_id == run_id)).rowcount
            conn.execute(sa.update(RUNS).where(RUNS.c.id == run_id).values(status="pruned"))
    log.info("match: pruned the lists of %d runs (%d rows)", len(doomed), deleted)
    return deleted
