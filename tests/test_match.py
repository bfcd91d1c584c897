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
from gateway.errors import StoreError
from gateway.store.matches import MatchRow, MatchRun
from tests.matchdata import AS_OF, EXPECTED, T1, T2, T3, MatchData, build_county

D = dt.date


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
    with pytest.raises(StoreError, match="match run 1 failed: .*aid_granted"):
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


def test_prune_keeps_the_last_run_of_recent_months_and_all_counts(county):
    site, b = county
    feb = match.run_match(site, D(2025, 2, 10))
    march_early = match.run_match(site, D(2025, 3, 1))
    march = match.run_match(site, AS_OF)
    april = match.run_match(site, D(2025, 4, 15))
    before = match.trend(site, "out_of_school")
    stored = sum(
        len(rows(site, name, run.run_id)) for run in (feb, march_early) for name in match.LISTS
    )
    deleted = match.prune_rows(site, keep_months=2)
    kept = {r.run_id: r.status for r in match.list_runs(site)}
    assert kept == {
        feb.run_id: "pruned",
        march_early.run_id: "pruned",
        march.run_id: "ok",
        april.run_id: "ok",
    }
    assert deleted == stored
    assert rows(site, "out_of_school", feb.run_id) == []
    assert labelled(b, rows(site, "out_of_school", march.run_id)) == EXPECTED["out_of_school"]
    assert match.trend(site, "out_of_school") == before  # counts stay for every month
    again = match.run_match(site, D(2025, 4, 20))
    assert again.previous_run_id == april.run_id
    assert match.prune_rows(site, keep_months=2) > 0  # march's rows now go too (april, again stay)
    with pytest.raises(match.MatchError):
        match.prune_rows(site, keep_months=0)
