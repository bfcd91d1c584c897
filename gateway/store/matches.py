"""Stored match runs and their list rows, for the API, deliveries and the monthly trend.

``match_runs``: one row per run of the comparisons (``gateway match``, a job, the API).
``match_rows``: the lists of a run, one wide table with a ``list_name`` column. The lists share
most columns (who, where, which school, which flags); a column a list does not use stays NULL.
No name or ID number is copied here: ``record_dataset`` + ``record_id`` point at the canonical row
whose sealed columns a permitted reveal opens, and ``id_masked`` is the display form.
``match_counts``: per run, list and scope (total / township / school): count, new and resolved
since the previous run. The monthly trend reads these, never the rows.
``aid_granted``: aid actually granted (两免一补, 营养改善计划, 助学金...), filled by a sync job from the
system named in ``[match] aid_dataset``; the aid-gap list compares flagged students against it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base
from .records import AidGranted, BigId  # noqa: F401 - AidGranted re-exported for match.py


class MatchRun(Base):
    __tablename__ = "match_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    as_of: Mapped[dt.date] = mapped_column(Date, index=True)
    period: Mapped[str] = mapped_column(
        String(7), index=True
    )  # "YYYY-MM" of as_of: the month reported
    cutoff: Mapped[dt.date] = mapped_column(Date)  # the school year's age reference date
    youngest: Mapped[int] = mapped_column(SmallInteger)
    oldest: Mapped[int] = mapped_column(SmallInteger)
    aid_dataset: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | ok | failed
    previous_run_id: Mapped[int | None] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(160))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    counts: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # list -> {count, new, resolved}
    error: Mapped[str | None] = mapped_column(Text)


class MatchRow(Base):
    __tablename__ = "match_rows"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(BigInteger)
    list_name: Mapped[str] = mapped_column(String(32))
    subject_key: Mapped[str] = mapped_column(String(100))
    # The canonical row this list row shows (its sealed name / id_number open on a permitted reveal).
    record_dataset: Mapped[str] = mapped_column(String(16))
    record_id: Mapped[int] = mapped_column(BigInteger)
    id_type: Mapped[str | None] = mapped_column(String(1))
    id_masked: Mapped[str | None] = mapped_column(String(24))
    sex: Mapped[str | None] = mapped_column(String(1))
    birth_date: Mapped[dt.date | None] = mapped_column(Date)
    area_code: Mapped[str | None] = mapped_column(String(12))
    village: Mapped[str | None] = mapped_column(String(100))
    # Student side (NULL for a child found only in the registries).
    school_code: Mapped[str | None] = mapped_column(String(32))
    school_name: Mapped[str | None] = mapped_column(String(200))
    grade: Mapped[str | None] = mapped_column(String(32))
    class_name: Mapped[str | None] = mapped_column(String(64))
    student_status: Mapped[str | None] = mapped_column(String(24))
    # Which registries the person was found in (out-of-school lists).
    in_poverty: Mapped[bool | None] = mapped_column(Boolean)
    in_disability: Mapped[bool | None] = mapped_column(Boolean)
    in_assistance: Mapped[bool | None] = mapped_column(Boolean)
    in_residents: Mapped[bool | None] = mapped_column(Boolean)
    # Flags, each group with the source system and the record date it came from.
    poverty_lifted: Mapped[bool | None] = mapped_column(Boolean)
    monitor_type: Mapped[str | None] = mapped_column(String(16))
    poverty_source: Mapped[str | None] = mapped_column(String(64))
    poverty_date: Mapped[dt.datetime | None] = mapped_column(DateTime)
    disability_category: Mapped[int | None] = mapped_column(SmallInteger)
    disability_grade: Mapped[int | None] = mapped_column(SmallInteger)
    disability_source: Mapped[str | None] = mapped_column(String(64))
    disability_date: Mapped[dt.datetime | None] = mapped_column(DateTime)
    dibao: Mapped[bool | None] = mapped_column(Boolean)
    tekun: Mapped[bool | None] = mapped_column(Boolean)
    orphan: Mapped[bool | None] = mapped_column(Boolean)
    unsupported_child: Mapped[bool | None] = mapped_column(Boolean)
    assistance_source: Mapped[str | None] = mapped_column(String(64))
    assistance_date: Mapped[dt.datetime | None] = mapped_column(DateTime)
    reason: Mapped[str | None] = mapped_column(
        String(24)
    )  # home teaching: out_of_school | suspended

    __table_args__ = (
        # By subject: the monthly new/resolved comparison; by township: the API's area filter.
        # No more: every index is maintained for each of the hundreds of thousands of rows a run writes.
        Index("ix_match_rows_run_list_subject", "run_id", "list_name", "subject_key"),
        Index("ix_match_rows_run_list_area", "run_id", "list_name", "area_code"),
    )


class MatchCount(Base):
    __tablename__ = "match_counts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(BigInteger)
    list_name: Mapped[str] = mapped_column(String(32))
    scope: Mapped[str] = mapped_column(String(8))  # total | township | school
    code: Mapped[str] = mapped_column(
        String(32)
    )  # "" for the total and for rows with no area/school
    name: Mapped[str | None] = mapped_column(String(200))  # school name; NULL for townships
    count: Mapped[int] = mapped_column(Integer)  # distinct subjects on the list in this scope
    new: Mapped[int] = mapped_column(Integer)  # on the list now, not in the previous run's list
    resolved: Mapped[int] = mapped_column(Integer)  # on the previous run's list, not on it now

    __table_args__ = (UniqueConstraint("run_id", "list_name", "scope", "code"),)
