"""Lookup, change feed and push through a real server: what each policy lets a department see.

The poverty registry pushes its records (validated and quarantined like a sync run); the education
bureau looks people up and follows the change feed under rules returning IDs masked, as subject
keys or sealed to its own X25519 key.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from gateway import audit, ids
from gateway.client import ClientError
from gateway.crypto import CryptoError, Opener, x25519_keypair
from gateway.store.records import Poverty, Student
from tests.fixtures.live_server import signed_request, store_text


def make_id(area: str = "522636", birth: str = "20120305", seq: str = "123") -> str:
    first17 = area + birth + seq
    return first17 + ids.check_char(first17)


ID_A = make_id(seq="123")  # male (odd sequence)
ID_B = make_id(seq="246", birth="20110709")
ID_C = make_id(area="110105", seq="358")  # another county
ID_15 = "522636850305125"  # a pre-1999 number: its 18-digit form is stored
ID_15_AS_18 = make_id(birth="19850305", seq="125")

POVERTY = [
    {
        "id_number": ID_A,
        "name": "王小明",
        "sex": "1",
        "birth_date": "2012-03-05",
        "area_code": "522636101",
        "household_no": "H001",
        "poverty_type": "unstable",
    },
    {
        "id_number": ID_B,
        "name": "李小红",
        "birth_date": "2011-07-09",
        "area_code": "522636102",
        "household_no": "H002",
        "poverty_type": "lifted",
    },
    {
        "id_number": ID_C,
        "name": "张三",
        "area_code": "110105001",
        "household_no": "H003",
        "poverty_type": "marginal",
    },
]
WRITE_FIELDS = ["name", "sex", "birth_date", "area_code", "household_no", "poverty_type"]


def departments(area: str | None = None) -> dict:
    edu_rules = [
        {"dataset": "poverty", "fields": ["poverty_type"], "purposes": ["stats"], "ids": "masked"},
        {
            "dataset": "poverty",
            "fields": ["poverty_type", "household_no", "area_code"],
            "purposes": ["student-aid"],
            "ids": "subject_key",
        },
        {
            "dataset": "poverty",
            "fields": ["poverty_type", "name"],
            "purposes": ["dropout-control"],
            "ids": "sealed",
        },
        {"dataset": "students", "fields": ["status", "student_no", "name"], "purposes": ["check"]},
    ]
    education = {
        "key_id": "edu-2026",
        "public_key": "keys/education.pub",
        "rate_limit": 10_000,
        "allow": edu_rules,
    }
    if area:
        education["area"] = area
    return {
        "education": education,
        "registry": {
            "key_id": "fp-2026",
            "rate_limit": 10_000,
            "allow": [
                {
                    "dataset": "poverty",
                    "fields": WRITE_FIELDS,
                    "purposes": ["registry-sync"],
                    "write": True,
                    "areas": ["5226", "1101"],
                },
                {
                    "dataset": "students",
                    "fields": ["name", "status", "student_no", "area_code"],
                    "purposes": ["registry-sync"],
                    "write": True,
                },
            ],
        },
    }


@pytest.fixture
def world(api_site, live_server):
    """(site, url, education client, registry client) with the poverty records pushed."""
    site, depts = api_site(departments(), {"api": {"changes_settle_seconds": 0}})
    url = live_server(site)
    registry = depts["registry"].client(url)
    answer = registry.push("poverty", POVERTY, purpose="registry-sync")
    assert answer["inserted"] == 3 and answer["quarantined"] == 0, answer
    return site, url, depts["education"].client(url), registry, depts


def test_lookup_masked(world) -> None:
    site, url, edu, _, _ = world
    answer = edu.lookup(
        "poverty", [{"id_number": ID_A}, {"id_number": make_id(seq="999")}], purpose="stats"
    )
    assert answer["ids"] == "masked" and answer["fields"] == ["poverty_type"]
    first, second = answer["results"]
    assert first["found"] and not second["found"]
    (record,) = first["records"]
    assert record["id_masked"] == ID_A[:6] + "********" + ID_A[-4:]
    assert record["poverty_type"] == "unstable"
    assert set(record) == {"record_id", "id_type", "id_masked", "poverty_type"}


def test_lookup_normalises_ids_and_reports_bad_ones(world) -> None:
    site, url, edu, registry, _ = world
    adult = {
        "id_number": ID_15_AS_18,
        "name": "王大",
        "area_code": "522636101",
        "household_no": "H001",
        "poverty_type": "unstable",
    }
    registry.push("poverty", [adult], purpose="registry-sync")
    legacy = edu.lookup("poverty", [{"id_number": ID_15}], purpose="stats")["results"][0]
    assert legacy["found"] and legacy["records"][0]["id_masked"].endswith(ID_15_AS_18[-4:])
    subjects = [
        {"id_number": " " + ID_A.lower() + " "},
        {"id_number": ID_B[:17] + ("0" if ID_B[-1] != "0" else "1")},  # wrong check digit
        {"subject_key": "not-a-key"},
        {"id_number": ID_A, "subject_key": "x"},
        "just text",
    ]
    results = edu.lookup("poverty", subjects, purpose="stats")["results"]
    assert results[0]["found"]
    assert results[1]["error"].startswith("bad_check_digit")
    assert results[2]["error"].startswith("unknown_subject_key")
    assert results[3]["error"].startswith("one_of")
    assert results[4]["error"].startswith("not_an_object")
    assert all(ID_B not in r.get("error", "") for r in results)


def test_lookup_by_subject_key_needs_no_id_number(world) -> None:
    site, url, edu, _, _ = world
    answer = edu.lookup("poverty", [{"id_number": ID_B}], purpose="student-aid")
    record = answer["results"][0]["records"][0]
    key = record["subject_key"]
    assert key == audit.subject_keys_for_id(site, ID_B)[0]
    assert record["household_no"] == "H002" and "id_masked" not in record
    again = edu.lookup("poverty", [{"subject_key": key}], purpose="student-aid")
    assert again["results"][0]["records"][0]["household_no"] == "H002"
    # A well-formed key under a key id this gateway does not have is not looked up.
    forged = "bi-00000000-0000:" + "0" * 64
    assert edu.lookup("poverty", [{"subject_key": forged}], purpose="student-aid")["results"][0][
        "error"
    ].startswith("unknown_subject_key")


def test_lookup_sealed_opens_only_with_the_department_key(world) -> None:
    site, url, edu, _, depts = world
    answer = edu.lookup("poverty", [{"id_number": ID_A}], purpose="dropout-control")
    record = answer["results"][0]["records"][0]
    assert record["id_number"] == ID_A and record["name"] == "王小明"
    # Without the private key the values stay sealed; another key does not open them.
    from gateway.client import GatewayClient

    sealed_client = GatewayClient(url, edu.key_id, depts["education"].secret, edu.suite)
    raw = sealed_client.lookup("poverty", [{"id_number": ID_A}], purpose="dropout-control")
    sealed = raw["results"][0]["records"][0]
    assert set(sealed["id_number"]) == {"sealed"} and sealed["id_number"]["sealed"].startswith(
        "x25519:"
    )
    assert ID_A not in json.dumps(raw) and "王小明" not in json.dumps(raw, ensure_ascii=False)
    private = depts["education"].private_key
    assert Opener(private).open(sealed["id_number"]["sealed"], aad=b"poverty/id_number") == ID_A
    with pytest.raises(CryptoError):  # bound to its field: it does not open as the name
        Opener(private).open(sealed["id_number"]["sealed"], aad=b"poverty/name")
    with pytest.raises(CryptoError):
        Opener(x25519_keypair()[0]).open(sealed["id_number"]["sealed"], aad=b"poverty/id_number")


def test_national_id_class_fields_are_masked_unless_sealed(world) -> None:
    site, url, edu, registry, _ = world
    student = {"id_number": ID_A, "name": "王小明", "status": "enrolled", "student_no": "G" + ID_A}
    assert registry.push("students", [student], purpose="registry-sync")["inserted"] == 1
    record = edu.lookup("students", [{"id_number": ID_A}], purpose="check")["results"][0][
        "records"
    ][0]
    assert record["student_no"] == ids.mask("G" + ID_A)
    assert record["name"] == "王小明"  # a personal field the rule lists, ids masked: as text
    assert record["status"] == "enrolled"


def test_lookup_finds_records_stored_under_an_old_blind_index_key(world) -> None:
    site, url, edu, _, _ = world
    ring = site.keyring
    ring.rotate("blind_index")
    ring.save()
    # The server process shares this Site object: it now holds two blind-index keys.
    results = edu.lookup("poverty", [{"id_number": ID_A}], purpose="stats")["results"]
    assert results[0]["found"]


def test_area_restriction_hides_other_counties(api_site, live_server) -> None:
    site, depts = api_site(departments(area="522636"), {"api": {"changes_settle_seconds": 0}})
    url = live_server(site)
    depts["registry"].client(url).push("poverty", POVERTY, purpose="registry-sync")
    edu = depts["education"].client(url)
    results = edu.lookup("poverty", [{"id_number": ID_A}, {"id_number": ID_C}], purpose="stats")[
        "results"
    ]
    assert [r["found"] for r in results] == [True, False]
    items = list(edu.changes("poverty", purpose="stats"))
    assert len(items) == 2


def test_change_feed_pages_and_cursor(world) -> None:
    site, url, edu, registry, _ = world
    page = edu.changes_page("poverty", purpose="student-aid", limit=2)
    assert len(page["items"]) == 2 and page["next_cursor"] == page["cursor"]
    rest = edu.changes_page("poverty", purpose="student-aid", cursor=page["cursor"], limit=2)
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    seen = [i["record"]["household_no"] for i in page["items"] + rest["items"]]
    assert sorted(seen) == ["H001", "H002", "H003"]
    # Nothing new: the same cursor comes back, no items.
    idle = edu.changes_page("poverty", purpose="student-aid", cursor=rest["cursor"])
    assert idle["items"] == [] and idle["cursor"] == rest["cursor"]
    # An update moves the record to the end of the feed.
    changed = dict(POVERTY[0], poverty_type="hardship")
    assert registry.push("poverty", [changed], purpose="registry-sync")["updated"] == 1
    after = edu.changes_page("poverty", purpose="student-aid", cursor=rest["cursor"])
    assert [i["record"]["poverty_type"] for i in after["items"]] == ["hardship"]
    assert after["items"][0]["change"] == "upsert"
    # A removal comes as a removal event with the identity only.
    t = Poverty.__table__
    with site.begin() as s:
        s.execute(
            sa.update(t)
            .where(t.c.household_no == "H002")
            .values(removed=True, updated_at=dt.datetime.now(dt.UTC).replace(tzinfo=None))
        )
    gone = edu.changes_page("poverty", purpose="student-aid", cursor=after["cursor"])["items"]
    assert [i["change"] for i in gone] == ["removed"]
    assert set(gone[0]["record"]) == {"record_id", "id_type", "subject_key"}
    entries = audit.search(site, action="api.changes")
    assert entries[0]["subject_count"] == 1 and entries[0]["purpose"] == "student-aid"


def test_change_feed_settles_and_refuses_foreign_cursors(api_site, live_server) -> None:
    site, depts = api_site(departments(), {"api": {"changes_settle_seconds": 3600}})
    url = live_server(site)
    depts["registry"].client(url).push("poverty", POVERTY, purpose="registry-sync")
    edu = depts["education"].client(url)
    assert edu.changes_page("poverty", purpose="stats")["items"] == []  # not settled yet
    r = signed_request(
        url,
        depts["education"],
        "GET",
        "/api/v1/datasets/poverty/changes?purpose=stats&cursor=bm90LWEtY3Vyc29y",
    )
    assert r.status_code == 400 and r.json()["type"].endswith("/invalid-cursor")


def test_push_quarantines_bad_records_and_stores_the_rest(world) -> None:
    site, url, edu, registry, _ = world
    records = [
        {
            "id_number": make_id(seq="468"),
            "name": "赵六",
            "household_no": "H9",
            "poverty_type": "lifted",
        },
        {
            "id_number": "52263620120305",
            "name": "x",
            "household_no": "H9",
            "poverty_type": "lifted",
        },
        {
            "id_number": make_id(seq="470"),
            "name": "y",
            "household_no": "H9",
            "poverty_type": "rich",
        },
        {
            "id_number": make_id(seq="472"),
            "name": "z",
            "household_no": "H9",
            "poverty_type": "lifted",
            "colour": "red",
        },
        {
            "id_number": make_id(seq="474"),
            "name": "w",
            "household_no": "H9",
            "poverty_type": "lifted",
            "birth_date": "2012-02-30",
        },
    ]
    for record in records:
        record["area_code"] = "522636101"
    answer = registry.push("poverty", records, purpose="registry-sync")
    assert answer["read"] == 5 and answer["inserted"] == 1 and answer["quarantined"] == 4
    problems = {p["index"]: p for p in answer["problems"]}
    assert problems[1]["field"] == "id_number" and problems[1]["code"] == "bad_length"
    assert problems[2]["field"] == "poverty_type" and problems[2]["code"] == "bad_code"
    assert problems[3]["code"] == "unknown_field"
    assert problems[4]["field"] == "birth_date"
    assert "52263620120305" not in json.dumps(answer)
    # The same push again changes nothing.
    again = registry.push("poverty", records[:1], purpose="registry-sync")
    assert again["unchanged"] == 1 and again["inserted"] == 0
    push_entries = audit.search(site, action="api.push")
    assert push_entries[0]["actor"] == "dept:registry"
    assert push_entries[0]["subject_count"] == 1
    batches = audit.search(site, action="sync.batch")
    assert batches[0]["actor"] == "dept:registry"
    with site.engine.connect() as conn:
        sources = set(conn.execute(sa.select(Poverty.__table__.c.source)).scalars())
    assert sources == {"api:registry"}


def test_push_refusals(world) -> None:
    site, url, edu, registry, _ = world
    with pytest.raises(ClientError) as info:
        registry.push(
            "poverty",
            [dict(POVERTY[0], area_code="440305001")],
            purpose="registry-sync",
        )
    assert info.value.status == 403 and info.value.problem["type"].endswith("/forbidden-area")
    assert "records[0]" in info.value.problem["detail"]
    with pytest.raises(ClientError) as info:
        edu.push("poverty", POVERTY[:1], purpose="stats")
    assert info.value.problem["type"].endswith("/forbidden-dataset")
    with pytest.raises(ClientError) as info:
        registry.push("poverty", [dict(POVERTY[0], village="x")], purpose="registry-sync")
    assert info.value.problem["type"].endswith("/forbidden-field")
    assert "village" in info.value.problem["detail"]


def test_no_id_number_in_the_clear_anywhere_in_the_store(world) -> None:
    site, url, edu, registry, _ = world
    edu.lookup("poverty", [{"id_number": n} for n in (ID_A, ID_B, ID_C)], purpose="dropout-control")
    list(edu.changes("poverty", purpose="dropout-control"))
    text = store_text(site)
    for number in (ID_A, ID_B, ID_C):
        assert number not in text
    assert "王小明" not in text


def test_identity_fields_are_not_requestable(world) -> None:
    site, url, edu, _, _ = world
    with pytest.raises(ClientError) as info:
        edu.lookup("poverty", [{"id_number": ID_A}], purpose="stats", fields=["id_number"])
    assert info.value.status == 422
    with pytest.raises(ClientError) as info:
        edu.lookup("poverty", [{"id_number": ID_A}], purpose="stats", fields=["shoe_size"])
    assert info.value.status == 422 and "shoe_size" in info.value.problem["detail"]


def test_student_records_pushed_are_seen_by_match_tables(world) -> None:
    """Pushed records are ordinary canonical rows: the comparisons join them like any other."""
    site, url, edu, registry, _ = world
    registry.push(
        "students",
        [{"id_number": ID_A, "name": "王小明", "status": "enrolled", "area_code": "522636101"}],
        purpose="registry-sync",
    )
    with site.engine.connect() as conn:
        t, p = Student.__table__, Poverty.__table__
        joined = conn.execute(
            sa.select(sa.func.count()).select_from(t.join(p, t.c.subject_key == p.c.subject_key))
        ).scalar_one()
    assert joined == 1


@pytest.mark.parametrize(
    "doc",
    [
        {"purpose": "dropout-control", "subjects": [{"id_number": "x"}]},
        {"purpose": "dropout-control", "fields": ["poverty_type"], "subjects": []},
        {"purpose": "p\n", "subjects": []},  # the schema's regex allows one trailing newline
        {"purpose": "", "subjects": []},
        {"purpose": "x" * 101, "subjects": []},
        {"purpose": "a\x00b", "subjects": []},
        {"purpose": 5, "subjects": []},
        {"purpose": "p", "fields": None, "subjects": []},
        {"purpose": "p", "fields": [""], "subjects": []},
        {"purpose": "p", "fields": ["f" * 65], "subjects": []},
        {"purpose": "p", "fields": "poverty_type", "subjects": []},
        {"purpose": "p", "subjects": [None]},
        {"purpose": "p", "subjects": {"id_number": "x"}},
        {"purpose": "p"},
        {"purpose": "p", "subjects": [], "extra": 1},
    ],
)
def test_plain_lookup_bodies_load_as_the_schema_loads_them(doc) -> None:
    """The lookup checks plainly valid bodies by hand: same result as the schema, and anything
    else still gets the schema's 422 with its messages."""
    from gateway.web.body import load
    from gateway.web.datasets import _lookup_request
    from gateway.web.problems import Problem
    from gateway.web.schemas import LookupRequestSchema

    def outcome(fn):
        try:
            return fn(doc)
        except Problem as problem:
            return (problem.slug, problem.detail, problem.extra)

    assert outcome(_lookup_request) == outcome(lambda d: load(LookupRequestSchema(), d))
