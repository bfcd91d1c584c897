"""Match lists, audit, jobs, health, metrics and /openapi.json through a real server on loopback."""

from __future__ import annotations

import datetime as dt
import time

import pytest
import requests
import sqlalchemy as sa

from gateway import audit, ids
from gateway.client import ClientError
from gateway.match import run_match
from gateway.sync import HeldLease
from tests.fixtures.live_server import signed_request


def make_id(area: str = "522636", birth: str = "20120305", seq: str = "123") -> str:
    first17 = area + birth + seq
    return first17 + ids.check_char(first17)


AS_OF = dt.date(2026, 10, 15)
ID_A = make_id(seq="123")  # enrolled
ID_B = make_id(seq="246", birth="20110709")  # in the registry, not at school: out of school
ID_C = make_id(area="110105", seq="358", birth="20130101")  # out of school, another county
ID_D = make_id(seq="360", birth="20140202")  # out of school too

WRITER = {
    "key_id": "fp-2026",
    "rate_limit": 10_000,
    "allow": [
        {
            "dataset": ds,
            "fields": ["name", "area_code", "birth_date", "status", "household_no", "poverty_type"],
            "purposes": ["registry-sync"],
            "write": True,
        }
        for ds in ("poverty", "students")
    ],
}
DEPARTMENTS = {
    "township": {
        "key_id": "town-1",
        "area": "522636",
        "public_key": "keys/township.pub",
        "rate_limit": 10_000,
        "allow": [
            {
                "dataset": "match",
                "fields": ["out_of_school"],
                "purposes": ["dropout-control"],
                "ids": "sealed",
            }
        ],
    },
    "education": {
        "key_id": "edu-2026",
        "rate_limit": 10_000,
        "permissions": ["trigger"],
        "allow": [
            {
                "dataset": "match",
                "fields": ["out_of_school", "flags"],
                "purposes": ["dropout-control"],
                "ids": "subject_key",
            },
            {"dataset": "poverty", "fields": ["poverty_type"], "purposes": ["stats"]},
        ],
    },
    "writer": WRITER,
    "auditor": {"key_id": "aud-1", "role": "auditor", "rate_limit": 10_000},
    "admin": {"key_id": "adm-1", "role": "admin", "rate_limit": 10_000},
}


def person(number: str, area: str, birth: str, **extra) -> dict:
    return {"id_number": number, "name": "某人", "area_code": area, "birth_date": birth, **extra}


@pytest.fixture
def world(api_site, live_server):
    site, depts = api_site(DEPARTMENTS, {"api": {"changes_settle_seconds": 0}})
    url = live_server(site)
    writer = depts["writer"].client(url)
    poverty = [
        person(ID_A, "522636101", "2012-03-05", household_no="H1", poverty_type="lifted"),
        person(ID_B, "522636102", "2011-07-09", household_no="H2", poverty_type="unstable"),
        person(ID_C, "110105001", "2013-01-01", household_no="H3", poverty_type="lifted"),
        person(ID_D, "522636103", "2014-02-02", household_no="H4", poverty_type="lifted"),
    ]
    assert writer.push("poverty", poverty, purpose="registry-sync")["inserted"] == 4
    student = person(ID_A, "522636101", "2012-03-05", status="enrolled")
    assert writer.push("students", [student], purpose="registry-sync")["inserted"] == 1
    return site, url, depts


def test_match_list_for_the_callers_area_with_sealed_ids(world) -> None:
    site, url, depts = world
    township = depts["township"].client(url)
    with pytest.raises(ClientError) as info:
        list(township.match_list("out_of_school", purpose="dropout-control"))
    assert info.value.status == 404 and info.value.problem["type"].endswith("/no-match-run")
    summary = run_match(site, AS_OF, actor="user:test")
    assert summary.counts["out_of_school"].count == 3
    rows = list(township.match_list("out_of_school", purpose="dropout-control"))
    assert sorted(r["id_number"] for r in rows) == sorted([ID_B, ID_D])  # opened by the client
    assert all(r["area_code"].startswith("522636") and "subject_key" not in r for r in rows)
    entry = audit.search(site, action="api.match")[0]
    assert entry["actor"] == "dept:township" and entry["subject_count"] == 2
    assert entry["fields"] == ["out_of_school"]


def test_match_list_pages_and_policy(world) -> None:
    site, url, depts = world
    run_match(site, AS_OF, actor="user:test")
    edu = depts["education"].client(url)
    first = edu.call(
        "GET", "/api/v1/match/out_of_school", params={"purpose": "dropout-control", "limit": 2}
    )
    assert len(first["items"]) == 2 and first["next_cursor"]
    assert first["run"]["as_of"] == AS_OF.isoformat()
    second = edu.call(
        "GET",
        "/api/v1/match/out_of_school",
        params={"purpose": "dropout-control", "limit": 2, "cursor": first["next_cursor"]},
    )
    assert len(second["items"]) == 1 and second["next_cursor"] is None
    keys = {r["subject_key"] for r in first["items"] + second["items"]}
    assert keys == {audit.subject_keys_for_id(site, n)[0] for n in (ID_B, ID_C, ID_D)}
    with pytest.raises(ClientError) as info:
        list(edu.match_list("home_teaching", purpose="dropout-control"))
    assert info.value.problem["type"].endswith("/forbidden-field")
    assert "home_teaching" in info.value.problem["detail"]
    with pytest.raises(ClientError) as info:
        list(edu.match_list("no_such_list", purpose="dropout-control"))
    assert info.value.status == 404


def test_audit_search_and_subject_report_for_auditors(world) -> None:
    site, url, depts = world
    edu = depts["education"].client(url)
    edu.lookup("poverty", [{"id_number": ID_B}], purpose="stats")
    auditor = depts["auditor"].client(url)
    page = auditor.call("GET", "/api/v1/audit", params={"action": "api.push", "limit": 1})
    assert len(page["items"]) == 1 and page["next_before_seq"]
    older = auditor.call(
        "GET",
        "/api/v1/audit",
        params={"action": "api.push", "limit": 1, "before_seq": page["next_before_seq"]},
    )
    assert older["items"][0]["seq"] < page["items"][0]["seq"]
    # By ID number: in the body, never in a URL.
    report = auditor.call("POST", "/api/v1/audit/subject", json={"id_number": ID_B})["items"]
    assert [e["action"] for e in report] == ["api.push", "api.lookup"]
    assert report[1]["recipient"] == "dept:education" and report[1]["purpose"] == "stats"
    key = audit.subject_keys_for_id(site, ID_B)[0]
    by_key = auditor.call("GET", "/api/v1/audit/subject", params={"subject_key": [key]})["items"]
    # The same history, plus the first report itself (an access to the person's data).
    assert [e["seq"] for e in by_key[:2]] == [e["seq"] for e in report]
    assert by_key[2]["action"] == "audit.subject" and by_key[2]["actor"] == "dept:auditor"
    # Asking who saw a person is itself on record, with the person's subject key.
    asked = audit.search(site, action="audit.subject")
    assert len(asked) == 2 and asked[0]["actor"] == "dept:auditor"
    with pytest.raises(ClientError) as info:
        auditor.call("POST", "/api/v1/audit/subject", json={"id_number": ID_B[:-1] + "0"})
    assert info.value.status == 422 and ID_B[:-1] not in str(info.value.problem)


def _job_site(api_site, tmp_path):
    """A site with a job reading a SQLite table in the student-status layout."""
    source = tmp_path / "school.db"
    engine = sa.create_engine(f"sqlite:///{source}")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            'CREATE TABLE roster (id INTEGER PRIMARY KEY, "身份证件号" TEXT, "姓名" TEXT, '
            '"学籍状态" TEXT, "出生日期" TEXT)'
        )
        conn.exec_driver_sql(
            f"INSERT INTO roster VALUES (1, '{ID_A}', '王小明', '在读', '20120305'),"
            f" (2, '{ID_B}', '李小红', '疑似辍学', '20110709')"
        )
    engine.dispose()
    extra = {
        "systems": {
            "school": {
                "plugin": "student_status",
                "connector": "sql",
                "url": f"sqlite:///{source}",
                "table": "roster",
                "key": ["id"],
            }
        },
        "jobs": {"roster": {"source": "school", "dataset": "students"}},
    }
    return api_site(DEPARTMENTS, extra)


def test_jobs_status_and_trigger(api_site, live_server, tmp_path) -> None:
    site, depts = _job_site(api_site, tmp_path)
    url = live_server(site)
    admin = depts["admin"].client(url)
    jobs = admin.call("GET", "/api/v1/jobs")["items"]
    assert [j["name"] for j in jobs] == ["roster"] and jobs[0]["runs"] == []
    answer = admin.call("POST", "/api/v1/jobs/roster/run")
    assert answer == {"job": "roster", "status": "started"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = admin.call("GET", "/api/v1/jobs/roster")["runs"]
        if runs and runs[0]["status"] != "running":
            break
        time.sleep(0.2)
    assert runs[0]["status"] == "succeeded" and runs[0]["inserted"] == 2, runs
    triggered = audit.search(site, action="api.job_trigger")[0]
    assert triggered["actor"] == "dept:admin" and triggered["detail"] == {"job": "roster"}
    # The trigger permission is enough; a plain department is refused.
    edu = depts["education"].client(url)
    with HeldLease(site, "roster"):  # another process runs it
        with pytest.raises(ClientError) as info:
            edu.call("POST", "/api/v1/jobs/roster/run")
        assert info.value.status == 409 and info.value.problem["type"].endswith("/job-busy")
    with pytest.raises(ClientError) as info:
        depts["township"].client(url).call("POST", "/api/v1/jobs/roster/run")
    assert info.value.problem["type"].endswith("/forbidden-role")
    with pytest.raises(ClientError) as info:
        admin.call("GET", "/api/v1/jobs/nope")
    assert info.value.status == 404


def test_health_metrics_and_readiness(world) -> None:
    site, url, depts = world
    assert requests.get(url + "/healthz").json() == {"status": "ok"}
    ready = requests.get(url + "/readyz")
    # The test store was made with create_all, not migrations: ready says so.
    assert ready.status_code == 503 and ready.json()["checks"]["migrations"] == "pending"
    assert ready.json()["checks"]["store"] == "ok" and ready.json()["checks"]["keyring"] == "ok"
    signed_request(url, depts["education"], "GET", "/api/v1/nothing")
    text = requests.get(url + "/metrics").text
    assert 'gateway_records{dataset="poverty"} 4.0' in text
    assert "gateway_audit_chain_length " in text
    assert "gateway_quarantine_rows 0.0" in text
    assert "gateway_rows_synced_total 5.0" in text
    assert 'gateway_http_requests_total{endpoint="/api/v1/datasets/<dataset>/records"' in text
    assert 'status="404"' in text
    assert "gateway_http_request_seconds_bucket" in text
    chain = audit.head(site)["seq"]
    assert f"gateway_audit_chain_length {chain}.0" in requests.get(url + "/metrics").text


def test_openapi_document(world) -> None:
    site, url, depts = world
    doc = requests.get(url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.0")
    paths = doc["paths"]
    for path in (
        "/api/v1/datasets/{dataset}/lookup",
        "/api/v1/datasets/{dataset}/changes",
        "/api/v1/datasets/{dataset}/records",
        "/api/v1/match/{list_name}",
        "/api/v1/audit",
        "/api/v1/audit/subject",
        "/api/v1/jobs",
        "/api/v1/jobs/{name}",
        "/api/v1/jobs/{name}/run",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    schemes = doc["components"]["securitySchemes"]
    assert {s["name"] for s in schemes.values()} == {
        "X-Gateway-Key",
        "X-Gateway-Timestamp",
        "X-Gateway-Nonce",
        "X-Gateway-Signature",
    }
    lookup = paths["/api/v1/datasets/{dataset}/lookup"]["post"]
    assert lookup["security"] and "401" in lookup["responses"] and "413" in lookup["responses"]
    assert "application/problem+json" in lookup["responses"]["401"]["content"]
    problem = doc["components"]["schemas"]["Problem"]
    assert problem["properties"]["type"]["enum"][0].startswith("https://gateway.invalid/problems/")
    request_schema = doc["components"]["schemas"]["LookupRequest"]
    assert request_schema["required"] == ["purpose", "subjects"]
    assert "security" not in paths["/healthz"]["get"]
