"""A builder of canonical rows with a known answer, for the comparison tests.

Rows go straight into the canonical tables the way the sync engine stores them: the subject key is
``Protector.blind_index(ids.index_material(id_type, normalised))`` computed from the number *as the
source system wrote it* (15 digits, lower-case x, spaces...), so the tests prove that differently
written numbers of one person meet; ID number, name and student number are sealed, bound to the
dataset, field and subject key; ``id_masked`` is the display form.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gateway import ids
from gateway.store.matches import AidGranted
from gateway.store.records import Assistance, Disability, Poverty, Resident, Student

SOURCES = {
    "students": "student_status",
    "poverty": "poverty_registry",
    "disability": "disability_federation",
    "assistance": "civil_affairs",
    "residents": "household_registry",
    "aid_granted": "student_aid",
}
TABLES = {
    "students": Student.__table__,
    "poverty": Poverty.__table__,
    "disability": Disability.__table__,
    "assistance": Assistance.__table__,
    "residents": Resident.__table__,
    "aid_granted": AidGranted.__table__,
}
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰涛明超秀霞平刚"


@dataclass
class Person:
    label: str
    id_type: str
    number: str  # normalised: 18 characters for type 1
    name: str
    birth: dt.date | None
    sex: str
    area: str  # 9-digit township code
    village: str
    subject_key: str

    def written(self, form: str) -> str:
        """The number as a source system might have written it."""
        if form == "18":
            return self.number
        if form == "15":
            if self.id_type != "1" or not self.number[6:8] == "19":
                raise ValueError("only a 19xx birth has a legacy 15-digit form")
            return self.number[:6] + self.number[8:17]
        if form == "lower":
            return self.number.lower()
        if form == "spaced":
            return f" {self.number[:6]} {self.number[6:14]} {self.number[14:]}\t"
        raise ValueError(form)


class MatchData:
    """``person(...)`` then ``student(...)``, ``poverty(...)``, ... then ``flush()``."""

    def __init__(self, site: Any, now: dt.datetime | None = None):
        self.site = site
        self.protector = site.protector
        self.now = now or dt.datetime(2025, 3, 1, 8, 0, 0)
        self.people: dict[str, Person] = {}
        self._pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._seq = itertools.count(101)
        self._record = itertools.count(1)

    # -- people -------------------------------------------------------------------------------

    def person(
        self,
        label: str,
        birth: dt.date | None,
        *,
        area: str = "110105001",
        village: str = "一村",
        id_type: str = "1",
        number: str | None = None,
        sex: str = "1",
        check_x: bool = False,
    ) -> Person:
        if label in self.people:
            raise ValueError(f"person {label!r} already exists")
        if id_type == "1" and number is None:
            assert birth is not None
            number = self._resident_id(area[:6], birth, sex, check_x)
        assert number is not None
        result = ids.check(number, id_type)
        assert result.ok, (label, result.code)
        normalised = result.value
        assert normalised is not None
        n = len(self.people)
        name = (
            SURNAMES[n % len(SURNAMES)]
            + GIVEN[(n // len(SURNAMES)) % len(GIVEN)]
            + GIVEN[n % len(GIVEN)]
        )
        person = Person(
            label=label,
            id_type=id_type,
            number=normalised,
            name=name,
            birth=birth,
            sex=sex,
            area=area,
            village=village,
            subject_key=self.protector.blind_index(ids.index_material(id_type, normalised)),
        )
        self.people[label] = person
        return person

    def _resident_id(self, area6: str, birth: dt.date, sex: str, check_x: bool) -> str:
        while True:
            seq = next(self._seq) % 1000
            if (seq % 2 == 1) != (sex == "1"):
                continue
            first17 = f"{area6}{birth:%Y%m%d}{seq:03d}"
            check = ids.check_char(first17)
            if check_x == (check == "X"):
                return first17 + check

    def key(self, label: str) -> str:
        return self.people[label].subject_key

    def keys(self, *labels: str) -> set[str]:
        return {self.key(label) for label in labels}

    # -- rows -----------------------------------------------------------------------------------

    def _row(
        self,
        dataset: str,
        p: Person,
        *,
        form: str = "18",
        removed: bool = False,
        area: str | None = None,
        village: str | None = None,
        with_birth: bool = True,
        source_updated_at: dt.datetime | None = None,
        source: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        written = p.written(form) if p.id_type == "1" else p.number
        result = ids.check(written, p.id_type)
        assert result.ok and result.value is not None, (p.label, form, result.code)
        # Computed from what the source wrote, exactly as the sync engine does.
        subject_key = self.protector.blind_index(ids.index_material(p.id_type, result.value))
        seal = self.protector.seal
        row = {
            "source": source or SOURCES[dataset],
            "record_key": f"{subject_key}|{next(self._record)}",
            "subject_key": subject_key,
            "id_type": p.id_type,
            "id_number": seal(result.value, dataset=dataset, field="id_number", record=subject_key),
            "id_masked": ids.mask(result.value),
            "name": seal(p.name, dataset=dataset, field="name", record=subject_key),
            "sex": p.sex,
            "birth_date": p.birth if with_birth else None,
            "area_code": area or p.area,
            "village": village or p.village,
            "source_updated_at": source_updated_at,
            "content_hash": hashlib.sha256(f"{dataset}{subject_key}{extra}".encode()).hexdigest(),
            "removed": removed,
            "updated_at": self.now,
        }
        row.update(extra)
        self._pending[dataset].append(row)
        return row

    def student(
        self,
        label: str,
        status: str = "enrolled",
        *,
        school: str = "S001",
        school_name: str | None = None,
        grade: str = "3",
        class_name: str = "1班",
        transfer_to: str | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        p = self.people[label]
        row = self._row(
            "students",
            p,
            school_code=school,
            school_name=school_name or f"第{school[-1]}小学",
            grade=grade,
            class_name=class_name,
            status=status,
            transfer_to=transfer_to,
            **kw,
        )
        row["student_no"] = self.protector.seal(
            "G" + p.number, dataset="students", field="student_no", record=row["subject_key"]
        )
        return row

    def poverty(
        self, label: str, poverty_type: str = "lifted", *, household: str = "H1", **kw: Any
    ) -> dict[str, Any]:
        return self._row(
            "poverty",
            self.people[label],
            household_no=household,
            person_no=f"{household}-{len(self._pending['poverty'])}",
            relation="子女",
            poverty_type=poverty_type,
            risk_eliminated=False,
            **kw,
        )

    def disability(
        self,
        label: str,
        category: int,
        grade: int,
        *,
        valid_until: dt.date | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        return self._row(
            "disability",
            self.people[label],
            category=category,
            grade=grade,
            issued_on=dt.date(2020, 1, 1),
            valid_until=valid_until,
            **kw,
        )

    def assistance(
        self,
        label: str,
        kind: str,
        *,
        active: bool = True,
        start: dt.date | None = dt.date(2023, 1, 1),
        end: dt.date | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        return self._row(
            "assistance",
            self.people[label],
            assistance_type=kind,
            household_no="C1",
            start_date=start,
            end_date=end,
            active=active,
            **kw,
        )

    def resident(self, label: str, **kw: Any) -> dict[str, Any]:
        return self._row("residents", self.people[label], **kw)

    def aid(
        self, label: str, program: str = "两免一补", *, granted_on: dt.date | None, **kw: Any
    ) -> dict[str, Any]:
        return self._row(
            "aid_granted", self.people[label], program=program, granted_on=granted_on, **kw
        )

    # -- writing ----------------------------------------------------------------------------------

    def flush(self) -> None:
        """Insert every pending row (one executemany per table)."""
        with self.site.engine.begin() as conn:
            for dataset, rows in self._pending.items():
                table = TABLES[dataset]
                columns = sorted({c for r in rows for c in r})
                conn.execute(sa.insert(table), [{c: r.get(c) for c in columns} for r in rows])
        self._pending.clear()

    def set_removed(self, dataset: str, label: str, removed: bool = True) -> int:
        """Mark a person's rows in a dataset removed (what a snapshot sync does when they vanish)."""
        table = TABLES[dataset]
        with self.site.engine.begin() as conn:
            return conn.execute(
                sa.update(table)
                .where(table.c.subject_key == self.key(label))
                .values(removed=removed)
            ).rowcount

    def set_status(self, label: str, status: str) -> int:
        table = TABLES["students"]
        with self.site.engine.begin() as conn:
            return conn.execute(
                sa.update(table).where(table.c.subject_key == self.key(label)).values(status=status)
            ).rowcount
