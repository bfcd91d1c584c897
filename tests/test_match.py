"""The comparisons against a county with a known answer, on SQLite and on the real PostgreSQL.

Every list is asserted exactly (nothing missing, nothing extra) from people built to sit on each
rule's edge: 15- vs 18-digit IDs, lower-case x and spaced numbers, non-resident documents,
duplicates across and within registries, removed rows, transfers with and without destination,
graduates, the age boundary days, expired certificates and ended assistance.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from gateway import audit, ids, match
from gateway.store.matches import MatchRow, MatchRun
from tests.matchdata import MatchData

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


@pytest.fixture
def county(make_site):
    site = make_site({"match": {"aid_dataset": "student_aid"}})
    b = MatchData(site)
    build_county(b)
    return site, b


def rows(site: Any, list_name: str, run_id: int | None = None) -> list[dict[str, Any]]:
    return list(match.iter_rows(site, list_name, run_id=run_id))


def labelled(b: MatchData, found: list[dict[str, Any]]) -> Counter[str]:
    by_key = {p.subject_key: label for label, p in b.people.items()}
    return Counter(by_key.get(r["subject_key"], r["subject_key"]) for r in found)


def one(b: MatchData, found: list[dict[str, Any]], label: str, **where: Any) -> dict[str, Any]:
    hits = [
        r
        for r in found
        if r["subject_key"] == b.key(label) and all(r[k] == v for k, v in where.items())
    ]
    assert len(hits) == 1, (label, where, len(hits))
    return hits[0]


def test_every_list_exactly(county):
    site, b = county
    summary = match.run_match(site, AS_OF, actor="user:tester")
    assert summary.status == "ok"
    assert summary.cutoff == D(2024, 8, 31)
    for list_name, expected in EXPECTED.items():
        got = labelled(b, rows(site, list_name))
        assert got == expected, f"{list_name}: missing {expected - got}, extra {got - expected}"
        assert summary.counts[list_name].count == len(set(expected)), list_name
        assert summary.counts[list_name].new == len(set(expected))
        assert summary.counts[list_name].resolved == 0


def test_flag_details(county):
    site, b = county
    match.run_match(site, AS_OF)
    flags = rows(site, "flags")
    lifted = one(b, flags, "f_lifted")
    assert lifted["poverty_lifted"] is True and lifted["monitor_type"] is None
    assert lifted["poverty_source"] == "poverty_registry"
    assert lifted["poverty_date"] == dt.datetime(2025, 2, 1, 10, 0)  # the source's own date
    assert lifted["disability_category"] is None and lifted["dibao"] is False
    assert lifted["school_code"] == "S001" and lifted["student_status"] == "enrolled"
    assert lifted["record_dataset"] == "students"

    monitor = one(b, flags, "f_monitor")
    assert monitor["poverty_lifted"] is False and monitor["monitor_type"] == "hardship"

    dis = one(b, flags, "f_dis2")
    assert (dis["disability_category"], dis["disability_grade"]) == (1, 2)
    assert dis["disability_source"] == "disability_federation"
    assert dis["disability_date"] == b.now  # no source date: the store's updated_at

    assert one(b, flags, "f_lowerx")["disability_grade"] == 3  # lower-case x met the upper-case one
    assert one(b, flags, "f_id15")["poverty_lifted"] is True  # the 15-digit number met the 18
    assert one(b, flags, "f_spaced")["dibao"] is True
    assert one(b, flags, "f_hk")["id_type"] == "6"

    both = one(b, flags, "f_tekun_orphan")
    assert (both["tekun"], both["orphan"], both["dibao"], both["unsupported_child"]) == (
        True,
        True,
        False,
        False,
    )
    assert both["assistance_source"] == "civil_affairs"

    statuses = {r["student_status"] for r in flags if r["subject_key"] == b.key("f_transfer_both")}
    assert statuses == {"transferred_out", "enrolled"}
    gap = [r for r in rows(site, "aid_gaps") if r["subject_key"] == b.key("f_transfer_both")]
    assert [(r["school_code"], r["student_status"]) for r in gap] == [("S002", "enrolled")]


def test_fifteen_and_eighteen_digit_forms_share_a_subject_key(county):
    site, b = county
    person = b.people["f_id15"]
    fifteen = person.written("15")
    assert len(fifteen) == 15 and ids.check(fifteen).value == person.number
    keys = set()
    for table in ("students", "poverty", "aid_granted"):
        t = sa.table(table, sa.column("subject_key"), sa.column("id_masked"))
        with site.engine.connect() as conn:
            found = conn.execute(
                sa.select(t.c.subject_key).where(t.c.subject_key == person.subject_key)
            ).all()
        assert len(found) == 1, table
        keys.add(found[0][0])
    assert keys == {person.subject_key}


def test_out_of_school_details(county):
    site, b = county
    match.run_match(site, AS_OF)
    oos = rows(site, "out_of_school")
    multi = one(b, oos, "o_none_multi")
    assert (multi["area_code"], multi["village"]) == (T2, "二村")  # 户籍 (residents) first
    assert multi["record_dataset"] == "residents"
    assert (
        multi["in_residents"],
        multi["in_poverty"],
        multi["in_assistance"],
        multi["in_disability"],
    ) == (
        True,
        True,
        True,
        False,
    )
    assert multi["student_status"] is None and multi["school_code"] is None

    pov = one(b, oos, "o_pov_only")
    assert (pov["area_code"], pov["village"], pov["record_dataset"]) == (T3, "三村", "poverty")
    assert (pov["in_poverty"], pov["in_residents"]) == (True, False)

    dropout = one(b, oos, "o_dropout")
    assert (dropout["student_status"], dropout["school_code"]) == ("dropout", "S001")
    assert one(b, oos, "o_suspected")["student_status"] == "suspected_dropout"
    assert one(b, oos, "o_disabled_expired")["in_disability"] is True  # present, even if expired
    assert one(b, oos, "n_passport")["id_type"] == "A"
    assert one(b, oos, "n_passport")["id_masked"] == "*********"

    # The boundary days, cross-checked with ids.age_at at the cut-off.
    cutoff = D(2024, 8, 31)
    for label in ("b_young_in", "b_young_out", "b_old_in", "b_old_out"):
        age = ids.age_at(b.people[label].birth, cutoff)
        listed = label in labelled(b, oos)
        assert listed == (6 <= age <= 15), (label, age)

    suspended = one(b, rows(site, "suspended"), "s_suspended")
    assert (suspended["school_code"], suspended["student_status"]) == ("S003", "suspended")


def test_home_teaching_and_rosters(county):
    site, b = county
    match.run_match(site, AS_OF)
    home = rows(site, "home_teaching")
    d = one(b, home, "o_disabled")
    assert (d["reason"], d["disability_category"], d["disability_grade"]) == ("out_of_school", 5, 1)
    s = one(b, home, "s_suspended_dis")
    assert (s["reason"], s["disability_category"], s["disability_grade"], s["school_code"]) == (
        "suspended",
        7,
        2,
        "S003",
    )
    assert one(b, home, "s_adult_suspended_dis")["reason"] == "suspended"

    roster = rows(site, "roster_suspected_dropout")
    marked = one(b, roster, "o_suspected")
    assert marked["poverty_lifted"] is True and marked["disability_category"] is None
    unmarked = one(b, rows(site, "roster_dropout"), "o_dropout")
    assert unmarked["poverty_lifted"] is False and unmarked["dibao"] is False
    susp = one(b, rows(site, "roster_suspended"), "s_susp_enrolled_elsewhere")
    assert (susp["school_code"], susp["disability_category"]) == ("S001", 2)


def test_counts_per_township_and_school(county):
    site, b = county
    run = match.run_match(site, AS_OF)
    township = {
        r["code"]: (r["count"], r["new"], r["resolved"])
        for r in match.counts(site, run.run_id, scope="township", list_name="out_of_school")
    }
    assert township == {T1: (8, 8, 0), T2: (1, 1, 0), T3: (1, 1, 0)}
    school = {
        r["code"]: (r["name"], r["count"])
        for r in match.counts(site, scope="school", list_name="flags")
    }
    expected = Counter()
    for r in rows(site, "flags"):
        expected[r["school_code"]] += 1
    assert {code: count for code, (_, count) in school.items()} == dict(expected)
    assert school["S001"][0] == "第1小学"
    total = match.counts(site, scope="total", list_name="flags")
    assert total == [
        {
            "list_name": "flags",
            "scope": "total",
            "code": "",
            "name": None,
            "count": len(set(EXPECTED["flags"])),
            "new": len(set(EXPECTED["flags"])),
            "resolved": 0,
        }
    ]


def _content(site: Any, run_id: int) -> dict[str, list[tuple]]:
    out = {}
    for name in match.LISTS:
        out[name] = sorted(
            tuple(str(v) for k, v in r.items() if k != "row_id")
            for r in match.iter_rows(site, name, run_id=run_id)
        )
    return out


def test_rerun_with_no_new_data_changes_nothing(county):
    site, b = county
    first = match.run_match(site, AS_OF)
    second = match.run_match(site, AS_OF)
    assert second.previous_run_id == first.run_id
    assert _content(site, first.run_id) == _content(site, second.run_id)
    assert {k: v.count for k, v in first.counts.items()} == {
        k: v.count for k, v in second.counts.items()
    }
    for scope in ("total", "township", "school"):
        for r in match.counts(site, second.run_id, scope=scope):
            assert (r["new"], r["resolved"]) == (0, 0), r


def test_next_month_new_and_resolved(county):
    site, b = county
    match.run_match(site, AS_OF)
    march = match.run_match(site, AS_OF)  # the month's last run is the one the trend shows
    b.person("new_child", D(2014, 9, 9), area=T2)
    b.resident("new_child")
    b.flush()
    assert b.set_removed("poverty", "o_pov_only") == 1  # gone from the registry: no longer listed
    april = match.run_match(site, D(2025, 4, 15))
    assert april.previous_run_id == march.run_id
    oos = april.counts["out_of_school"]
    assert (oos.count, oos.new, oos.resolved) == (10, 1, 1)
    township = {
        r["code"]: (r["count"], r["new"], r["resolved"])
        for r in match.counts(site, scope="township", list_name="out_of_school")
    }
    assert township[T2] == (2, 1, 0)
    assert township[T3] == (0, 0, 1)  # resolved where it was listed
    assert township[T1] == (8, 0, 0)
    # as_of moved: a 低保 ended and a certificate expired on 03-15, a 低保 started on 04-01.
    flags = april.counts["flags"]
    assert (flags.new, flags.resolved) == (1, 2)
    now, before = labelled(b, rows(site, "flags")), labelled(b, rows(site, "flags", march.run_id))
    assert now - before == Counter(["f_dibao_future"])
    assert before - now == Counter(["f_dibao_endtoday", "f_dis_today"])
    assert april.counts["aid_gaps"].new == 1  # f_dibao_future has no aid yet
    trend = match.trend(site, "out_of_school")
    assert [(t["period"], t["run_id"], t["count"], t["new"], t["resolved"]) for t in trend] == [
        ("2025-03", march.run_id, 10, 0, 0),
        ("2025-04", april.run_id, 10, 1, 1),
    ]
    t2 = match.trend(site, "out_of_school", scope="township", code=T2)
    assert [t["count"] for t in t2] == [1, 2]


def test_run_is_audited_with_counts(county):
    site, b = county
    summary = match.run_match(site, AS_OF, actor="user:tester")
    entries = audit.search(site, action="match.run")
    assert len(entries) == 1
    entry = entries[0]
    assert entry["actor"] == "user:tester" and entry["outcome"] == "ok"
    assert entry["detail"]["run_id"] == summary.run_id
    assert entry["detail"]["counts"]["out_of_school"]["count"] == 10


def test_failed_run_leaves_no_rows_and_is_recorded(county):
    site, b = county
    with site.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE aid_granted")  # the aid step (after the others) fails
    with pytest.raises(sa.exc.SQLAlchemyError):
        match.run_match(site, AS_OF)
    with site.engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(MatchRow.__table__)).scalar() == 0
        )
        status, error = conn.execute(sa.select(MatchRun.status, MatchRun.error)).one()
    assert status == "failed" and "aid_granted" in error
    assert audit.search(site, action="match.run")[0]["outcome"] == "failed"
    with pytest.raises(match.MatchError, match="no match run yet"):
        match.get_run(site)


def test_no_aid_dataset_no_aid_gaps(make_site):
    site = make_site()
    b = MatchData(site)
    b.person("x", D(2012, 1, 1))
    b.student("x")
    b.poverty("x")
    b.flush()
    summary = match.run_match(site, AS_OF)
    assert summary.counts["flags"].count == 1 and summary.counts["aid_gaps"].count == 0


def test_stored_rows_hold_no_id_number_or_name(county):
    site, b = county
    run = match.run_match(site, AS_OF)
    with site.engine.connect() as conn:
        stored = conn.execute(
            sa.select(MatchRow.__table__).where(MatchRow.run_id == run.run_id)
        ).all()
    text = repr(stored)
    for person in b.people.values():
        assert person.number not in text
        assert person.name not in text
        if person.id_type == "1" and person.birth and person.birth.year < 2000:
            assert person.written("15") not in text


def test_list_reading_filters_and_pages(county):
    site, b = county
    match.run_match(site, AS_OF)
    in_t2 = list(match.iter_rows(site, "out_of_school", area_prefix="110105002"))
    assert labelled(b, in_t2) == Counter(["o_none_multi"])
    assert labelled(b, list(match.iter_rows(site, "flags", school_code="S003"))) == Counter(
        ["f_id15", "f_aid_other", "f_aid_removed", "s_suspended_dis", "s_adult_suspended_dis"]
    )
    page1 = match.latest_list(site, "flags", limit=7)
    page2 = match.latest_list(site, "flags", limit=7, after_id=page1.next_after)
    page3 = match.latest_list(site, "flags", limit=7, after_id=page2.next_after)
    assert page3.next_after is None
    seen = [r["row_id"] for r in page1.rows + page2.rows + page3.rows]
    assert len(seen) == len(set(seen)) == sum(EXPECTED["flags"].values())
    with pytest.raises(match.MatchError, match="unknown list"):
        match.latest_list(site, "nope")
    with pytest.raises(match.MatchError, match="area prefix"):
        list(match.iter_rows(site, "flags", area_prefix="11%"))


@pytest.mark.parametrize(
    ("as_of", "cutoff"),
    [
        (D(2025, 3, 15), D(2024, 8, 31)),
        (D(2025, 8, 31), D(2024, 8, 31)),  # the last day of the school year
        (D(2025, 9, 1), D(2025, 8, 31)),
        (D(2025, 12, 31), D(2025, 8, 31)),
    ],
)
def test_school_year_cutoff(as_of, cutoff):
    assert match.school_year_cutoff(as_of, (8, 31)) == cutoff


def test_birth_bounds_match_age_at():
    cutoff = D(2024, 8, 31)
    lower, upper = match.birth_bounds(cutoff, 6, 15)
    assert (lower, upper) == (D(2008, 8, 31), D(2018, 8, 31))
    day = D(2007, 1, 1)
    while day < D(2020, 1, 1):
        assert (lower < day <= upper) == (6 <= ids.age_at(day, cutoff) <= 15), day
        day += dt.timedelta(days=1)
    # A 29 February cut-off in a common year, and a 29 February birthday.
    assert match.school_year_cutoff(D(2025, 3, 1), (2, 29)) == D(2025, 2, 28)
    lo, up = match.birth_bounds(D(2024, 2, 29), 6, 15)
    assert (lo, up) == (D(2008, 2, 29), D(2018, 2, 28))
    assert not (lo < D(2008, 2, 29) <= up)  # 16 on 2024-02-29
    assert ids.age_at(D(2008, 2, 29), D(2024, 2, 29)) == 16
