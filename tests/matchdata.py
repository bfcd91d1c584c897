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
from collections import Counter, defaultdict
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


# ---------------------------------------------------------------------------------------------
# The ground-truth county the match tests share

AS_OF = dt.date(2025, 3, 15)  # school year 2024-25: ages at 2024-08-31
T1, T2, T3 = "110105001", "110105002", "110106003"
D = dt.date


def build_county(b: MatchData) -> None:
    """The ground-truth county. Labels: f_ flags, o_ out of school, s_ suspended, t_ transfers,
    b_ age boundary, n_ non-resident documents, e_ nothing to report."""
    p, st = b.person, b.student
    # -- flags --------------------------------------------------------------------------------
    p("f_lifted", D(2012, 5, 1))
    st("f_lifted", school="S001")
    b.poverty("f_lifted", "lifted", source_updated_at=dt.datetime(2025, 2, 1, 10, 0))
    b.aid("f_lifted", granted_on=D(2024, 10, 1))

    p("f_monitor", D(2013, 6, 1))
    st("f_monitor", school="S002")
    b.poverty("f_monitor", "marginal", household="H2")
    b.poverty("f_monitor", "hardship", household="H3")  # a duplicate in another household

    p("f_id15", D(1995, 3, 4), area=T2)  # an adult learner: only 19xx births had 15-digit IDs
    st("f_id15", school="S003", form="18")
    b.poverty("f_id15", "lifted", form="15")
    b.aid("f_id15", granted_on=D(2024, 9, 10), form="15")

    p("f_lowerx", D(2011, 2, 3), check_x=True)
    st("f_lowerx", school="S001", form="18")
    b.disability("f_lowerx", 2, 3, form="lower")
    b.aid("f_lowerx", granted_on=D(2024, 9, 10))

    p("f_spaced", D(2012, 7, 7))
    st("f_spaced", school="S001", form="spaced")
    b.assistance("f_spaced", "dibao")
    b.aid("f_spaced", granted_on=D(2024, 9, 10))

    p("f_dis2", D(2012, 8, 8))
    st("f_dis2", school="S002")
    b.disability("f_dis2", 4, 3)
    b.disability("f_dis2", 1, 2)  # the most severe valid certificate wins
    b.disability("f_dis2", 6, 1, valid_until=D(2025, 1, 1))  # expired: ignored
    b.aid("f_dis2", granted_on=D(2025, 3, 15))

    p("f_dis_today", D(2012, 9, 9))
    st("f_dis_today", school="S002")
    b.disability("f_dis_today", 3, 4, valid_until=AS_OF)  # valid through as_of
    b.aid("f_dis_today", granted_on=D(2024, 9, 1))

    p("f_dis_expired", D(2012, 10, 10))
    st("f_dis_expired", school="S002")
    b.disability("f_dis_expired", 3, 4, valid_until=D(2025, 3, 14))

    p("f_dibao_ended", D(2012, 11, 11))
    st("f_dibao_ended", school="S001")
    b.assistance("f_dibao_ended", "dibao", end=D(2025, 3, 14))

    p("f_dibao_endtoday", D(2012, 11, 12))
    st("f_dibao_endtoday", school="S001")
    b.assistance("f_dibao_endtoday", "dibao", end=AS_OF)
    b.aid("f_dibao_endtoday", granted_on=D(2024, 9, 1))

    p("f_dibao_stopped", D(2012, 11, 13))
    st("f_dibao_stopped", school="S001")
    b.assistance("f_dibao_stopped", "dibao", active=False)

    p("f_dibao_future", D(2012, 11, 14))
    st("f_dibao_future", school="S001")
    b.assistance("f_dibao_future", "dibao", start=D(2025, 4, 1))

    p("f_temporary", D(2012, 11, 15))
    st("f_temporary", school="S001")
    b.assistance("f_temporary", "temporary")

    p("f_tekun_orphan", D(2010, 1, 2))
    st("f_tekun_orphan", school="S002")
    b.assistance("f_tekun_orphan", "tekun")
    b.assistance("f_tekun_orphan", "orphan")
    b.aid("f_tekun_orphan", granted_on=D(2024, 11, 1))

    p("f_unsupported", D(2010, 1, 3))
    st("f_unsupported", school="S002")
    b.assistance("f_unsupported", "unsupported_child")
    b.aid("f_unsupported", granted_on=D(2024, 6, 1))  # last school year: a gap now

    p("f_aid_other", D(2010, 1, 4))
    st("f_aid_other", school="S003")
    b.poverty("f_aid_other")
    b.aid("f_aid_other", granted_on=D(2024, 10, 1), source="another_system")

    p("f_aid_removed", D(2010, 1, 5))
    st("f_aid_removed", school="S003")
    b.poverty("f_aid_removed")
    b.aid("f_aid_removed", granted_on=D(2024, 10, 1), removed=True)

    p("f_removed_pov", D(2010, 1, 6))
    st("f_removed_pov", school="S003")
    b.poverty("f_removed_pov", removed=True)

    p("f_removed_student", D(2013, 1, 7))
    st("f_removed_student", school="S003", removed=True)
    b.poverty("f_removed_student")
    b.resident("f_removed_student")

    p("f_graduated", D(2009, 1, 1))  # 15 at the cut-off, finished junior middle school
    st("f_graduated", "graduated", school="S003")
    b.poverty("f_graduated")

    p("f_deceased", D(2014, 1, 8))
    st("f_deceased", "deceased", school="S003")
    b.poverty("f_deceased")

    p("f_hk", D(2013, 4, 4), id_type="6", number="H12345678")
    st("f_hk", school="S001")
    b.poverty("f_hk")
    b.aid("f_hk", granted_on=D(2024, 10, 1))

    p("f_transfer_both", D(2011, 5, 5))
    st("f_transfer_both", "transferred_out", school="S001")  # no destination, but found at S002
    st("f_transfer_both", "enrolled", school="S002")
    b.poverty("f_transfer_both")

    # -- out of school, suspended ---------------------------------------------------------------
    p("o_none_multi", D(2015, 5, 5), area=T2, village="二村")
    b.poverty("o_none_multi", area=T3, village="三村")
    b.poverty("o_none_multi", household="H9", area=T3, village="三村")
    b.resident("o_none_multi")  # 户籍 decides where the child is listed
    b.assistance("o_none_multi", "dibao", area=T3)

    p("o_pov_only", D(2016, 1, 1), area=T3, village="三村")
    b.poverty("o_pov_only")

    p("o_dropout", D(2011, 3, 3))
    st("o_dropout", "dropout", school="S001")
    b.resident("o_dropout")

    p("o_suspected", D(2011, 3, 4))
    st("o_suspected", "suspected_dropout", school="S002")
    b.poverty("o_suspected")

    p("o_disabled", D(2014, 6, 6))
    b.disability("o_disabled", 5, 1)
    b.resident("o_disabled")

    p("o_disabled_expired", D(2014, 6, 7))
    b.disability("o_disabled_expired", 5, 1, valid_until=D(2024, 12, 31))
    b.resident("o_disabled_expired")

    p("s_suspended", D(2012, 2, 2))
    st("s_suspended", "suspended", school="S003")
    b.resident("s_suspended")

    p("s_suspended_dis", D(2012, 2, 3))
    st("s_suspended_dis", "suspended", school="S003")
    b.disability("s_suspended_dis", 7, 2)

    p("s_adult_suspended_dis", D(2000, 2, 4))  # 24: not of compulsory age, still home-taught
    st("s_adult_suspended_dis", "suspended", school="S003")
    b.disability("s_adult_suspended_dis", 4, 1)

    p("s_susp_enrolled_elsewhere", D(2012, 2, 5))
    st("s_susp_enrolled_elsewhere", "suspended", school="S001")
    st("s_susp_enrolled_elsewhere", "enrolled", school="S002")
    b.resident("s_susp_enrolled_elsewhere")
    b.disability("s_susp_enrolled_elsewhere", 2, 2)
    b.aid("s_susp_enrolled_elsewhere", granted_on=D(2024, 10, 1))

    # -- transfers --------------------------------------------------------------------------------
    p("t_dest", D(2012, 4, 1))
    st("t_dest", "transferred_out", school="S001", transfer_to="外省某中学")
    b.resident("t_dest")

    p("t_nodest", D(2012, 4, 2))
    st("t_nodest", "transferred_out", school="S001")
    b.resident("t_nodest")

    p("t_blank", D(2012, 4, 3))
    st("t_blank", "transferred_out", school="S002", transfer_to="  ")

    # -- the age boundary: aged 6..15 at 2024-08-31 <=> born 2008-09-01 .. 2018-08-31 ------------
    for label, born in (
        ("b_young_in", D(2018, 8, 31)),
        ("b_young_out", D(2018, 9, 1)),
        ("b_old_in", D(2008, 9, 1)),
        ("b_old_out", D(2008, 8, 31)),
    ):
        p(label, born)
        b.resident(label)

    # -- non-resident documents, removed rows, nothing to report ------------------------------------
    p("n_passport", D(2014, 2, 2), id_type="A", number="E12345678")
    b.resident("n_passport")

    p("n_nobirth", None, id_type="6", number="H7654321")
    b.poverty("n_nobirth", with_birth=False)

    p("r_removed_res", D(2013, 3, 3))
    b.resident("r_removed_res", removed=True)

    p("g_graduated_young", D(2012, 3, 3))
    st("g_graduated_young", "graduated", school="S001")
    b.resident("g_graduated_young")

    for n in range(3):
        p(f"e_enrolled{n}", D(2012, 1, 10 + n))
        st(f"e_enrolled{n}", school="S001")
        b.resident(f"e_enrolled{n}")
    b.flush()


EXPECTED: dict[str, Counter[str]] = {
    "flags": Counter(
        [
            "f_lifted",
            "f_monitor",
            "f_id15",
            "f_lowerx",
            "f_spaced",
            "f_dis2",
            "f_dis_today",
            "f_dibao_endtoday",
            "f_tekun_orphan",
            "f_unsupported",
            "f_aid_other",
            "f_aid_removed",
            "f_hk",
            "f_transfer_both",
            "f_transfer_both",  # one row per student record
            "o_suspected",
            "s_suspended_dis",
            "s_adult_suspended_dis",
            "s_susp_enrolled_elsewhere",
            "s_susp_enrolled_elsewhere",
        ]
    ),
    "out_of_school": Counter(
        [
            "f_removed_student",
            "o_none_multi",
            "o_pov_only",
            "o_dropout",
            "o_suspected",
            "o_disabled",
            "o_disabled_expired",
            "b_young_in",
            "b_old_in",
            "n_passport",
        ]
    ),
    "suspended": Counter(["s_suspended", "s_suspended_dis"]),
    "transfer_check": Counter(["t_nodest", "t_blank"]),
    "home_teaching": Counter(["o_disabled", "s_suspended_dis", "s_adult_suspended_dis"]),
    "roster_suspected_dropout": Counter(["o_suspected"]),
    "roster_dropout": Counter(["o_dropout"]),
    "roster_suspended": Counter(
        ["s_suspended", "s_suspended_dis", "s_adult_suspended_dis", "s_susp_enrolled_elsewhere"]
    ),
    "aid_gaps": Counter(
        ["f_monitor", "f_unsupported", "f_aid_other", "f_aid_removed", "f_transfer_both"]
    ),
}
