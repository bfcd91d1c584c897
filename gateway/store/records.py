"""The canonical datasets as tables: one row per person and source record, latest version only.

Columns of the ``national_id`` and ``personal`` classes hold sealed tokens (``crypto.Protector.seal``),
never plaintext; ``id_masked`` keeps the display form (first 6, last 4). Plain columns are typed so
the comparisons in ``match.py`` run as SQL joins on ``subject_key``.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from .base import Base

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class RecordMixin:
    """Columns every canonical dataset shares (design.md, "every dataset")."""

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))  # system name, e.g. "student_status"
    record_key: Mapped[str] = mapped_column(String(160))  # natural key within the source
    subject_key: Mapped[str] = mapped_column(String(100), index=True)  # "kid:hex" blind index
    id_type: Mapped[str] = mapped_column(String(1), default="1")
    id_number: Mapped[str | None] = mapped_column(Text)  # sealed
    id_masked: Mapped[str | None] = mapped_column(String(24))
    name: Mapped[str | None] = mapped_column(Text)  # sealed
    sex: Mapped[str | None] = mapped_column(String(1))
    birth_date: Mapped[dt.date | None] = mapped_column(Date)
    area_code: Mapped[str | None] = mapped_column(String(12), index=True)
    village: Mapped[str | None] = mapped_column(String(100))
    source_updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    content_hash: Mapped[str] = mapped_column(String(64))
    removed: Mapped[bool] = mapped_column(Boolean, default=False)  # gone from the last snapshot
    first_run_id: Mapped[int | None] = mapped_column(BigInteger)
    last_run_id: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime)
    # Keyed fingerprint (16 bytes) of the native row this version was stored from, under a key
    # derived for this source, mapping and blind_index key (gateway/sync.py): a later row with the
    # same fingerprint is unchanged without being mapped again. NULL once the row is removed.
    fingerprint: Mapped[bytes | None] = mapped_column(LargeBinary(16))

    @declared_attr.directive
    def __table_args__(cls):  # noqa: N805 - SQLAlchemy's declared_attr convention
        from sqlalchemy import Index

        # The sync's look-up by fingerprint reads this index only, never the table rows (it needs
        # last_run_id: which rows this run wrote already), and so does its count of the rows a
        # snapshot may have to mark removed. The natural key is a unique *index* (not a table
        # constraint, revision 0002) so that a first ingest into SQLite can drop it and build it
        # once at its end (gateway/sync.py, bulk load).
        return (
            Index(f"uq_{cls.__tablename__}_source_record_key", "source", "record_key", unique=True),
            Index(
                f"ix_{cls.__tablename__}_fingerprint",
                "source",
                "removed",
                "fingerprint",
                "last_run_id",
            ),
        )


class Student(RecordMixin, Base):
    __tablename__ = "students"
    student_no: Mapped[str | None] = mapped_column(Text)  # sealed: usually "G" + the ID number
    school_code: Mapped[str | None] = mapped_column(String(32), index=True)
    school_name: Mapped[str | None] = mapped_column(String(200))
    grade: Mapped[str | None] = mapped_column(String(32))
    class_name: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(24), index=True)
    transfer_to: Mapped[str | None] = mapped_column(String(200))
    guardian_phone: Mapped[str | None] = mapped_column(Text)  # sealed


class Poverty(RecordMixin, Base):
    __tablename__ = "poverty"
    household_no: Mapped[str | None] = mapped_column(String(64))
    person_no: Mapped[str | None] = mapped_column(String(64))
    relation: Mapped[str | None] = mapped_column(String(32))
    poverty_type: Mapped[str | None] = mapped_column(String(16))
    risk_eliminated: Mapped[bool | None] = mapped_column(Boolean)


class Disability(RecordMixin, Base):
    __tablename__ = "disability"
    cert_no: Mapped[str | None] = mapped_column(Text)  # sealed: the ID number + category + grade
    category: Mapped[int | None] = mapped_column(SmallInteger)
    grade: Mapped[int | None] = mapped_column(SmallInteger)
    issued_on: Mapped[dt.date | None] = mapped_column(Date)
    valid_until: Mapped[dt.date | None] = mapped_column(Date)


class Assistance(RecordMixin, Base):
    __tablename__ = "assistance"
    assistance_type: Mapped[str | None] = mapped_column(String(24))
    household_no: Mapped[str | None] = mapped_column(String(64))
    start_date: Mapped[dt.date | None] = mapped_column(Date)
    end_date: Mapped[dt.date | None] = mapped_column(Date)
    active: Mapped[bool | None] = mapped_column(Boolean)


class Resident(RecordMixin, Base):
    __tablename__ = "residents"
    address: Mapped[str | None] = mapped_column(Text)  # sealed


class AidGranted(RecordMixin, Base):
    """Aid granted to a person, one row per source record (shape of a canonical dataset, so the
    sync engine stores it like the others)."""

    __tablename__ = "aid_granted"

    program: Mapped[str | None] = mapped_column(String(64))  # 两免一补, 营养改善计划, 助学金 ...
    granted_on: Mapped[dt.date | None] = mapped_column(Date)
    amount: Mapped[int | None] = mapped_column(Integer)  # in yuan, when the source gives one


# dataset name -> model, the one place the sync engine and the comparisons look tables up.
DATASET_MODELS: dict[str, type[RecordMixin]] = {
    "students": Student,
    "poverty": Poverty,
    "disability": Disability,
    "assistance": Assistance,
    "residents": Resident,
    "aid_granted": AidGranted,
}
