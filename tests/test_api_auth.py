"""Every way a request is refused, through a real server on loopback: status, problem type, audit.

Each refusal must come back as application/problem+json with its stable type and leave an
``api.refused`` audit entry naming the reason, never the body and never an ID number.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from gateway import audit, ids
from tests.fixtures.live_server import refusals, signed_request, store_text

PROBLEM = "https://gateway.invalid/problems/"


def make_id(area: str = "522636", birth: str = "20140305", seq: str = "123") -> str:
    first17 = area + birth + seq
    return first17 + ids.check_char(first17)


ID_A = make_id(seq="123")
ID_B = make_id(seq="246")

DEPARTMENTS = {
    "education": {
        "key_id": "edu-2026",
        "public_key": "keys/education.pub",
        "rate_limit": 1000,
        "allow": [
            {
                "dataset": "poverty",
                "fields": ["poverty_type"],
                "purposes": ["dropout-control"],
                "ids": "sealed",
            },
            {
                "dataset": "students",
                "fields": ["status", "name", "sex", "birth_date", "area_code"],
                "purposes": ["enrolment"],
                "ids": "subject_key",
                "write": True,
            },
        ],
    },
    "auditor": {"key_id": "aud-1", "role": "auditor"},
    "throttled": {
        "key_id": "slow-1",
        "rate_limit": 2,
        "allow": [{"dataset": "poverty", "fields": ["poverty_type"], "purposes": ["stats"]}],
    },
}

LOOKUP = "/api/v1/datasets/poverty/lookup"


def lookup_body(*numbers: str, purpose: str = "dropout-control", fields=("poverty_type",)) -> bytes:
    doc = {
        "purpose": purpose,
        "fields": list(fields),
        "subjects": [{"id_number": n} for n in numbers],
    }
    return json.dumps(doc).encode()


@pytest.fixture
def server(api_site, live_server):
    """(site, departments, url) with small limits so the size refusals are cheap to provoke."""
    site, depts = api_site(DEPARTMENTS, {"api": {"max_body_bytes": 200_000, "max_batch": 5000}})
    return site, depts, live_server(site)


def assert_problem(response: requests.Response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    doc = response.json()
    assert doc["type"] == PROBLEM + slug
    assert doc["status"] == status
    return doc


def assert_audited(site, slug: str, actor: str, status: int) -> dict:
    entries = [e for e in refusals(site) if e["detail"]["problem"] == slug]
    assert entries, f"no api.refused entry for {slug}"
    entry = entries[0]
    assert entry["outcome"] == "refused"
    assert entry["actor"] == actor
    assert entry["detail"]["status"] == status
    assert set(entry["detail"]) <= {"method", "path", "status", "problem", "reason"}
    return entry


def test_missing_signature(server) -> None:
    site, depts, url = server
    r = requests.post(
        url + LOOKUP, data=lookup_body(ID_A), headers={"Content-Type": "application/json"}
    )
    assert_problem(r, 401, "missing-signature")
    assert_audited(site, "missing-signature", "unauthenticated:-", 401)
    # One header missing: the key id that was claimed is named as the actor.
    r = signed_request(
        url, depts["education"], "POST", LOOKUP, lookup_body(ID_A), drop=("X-Gateway-Nonce",)
    )
    assert "X-Gateway-Nonce" in assert_problem(r, 401, "missing-signature")["detail"]
    entry = [e for e in refusals(site) if e["actor"] == "unauthenticated:edu-2026"]
    assert entry and entry[0]["detail"]["problem"] == "missing-signature"


@pytest.mark.parametrize(
    "tamper",
    ["wrong secret", "body changed", "query added", "path changed", "method changed"],
)
def test_bad_signature(server, tamper: str) -> None:
    site, depts, url = server
    dept = depts["education"]
    body = lookup_body(ID_A)
    kw: dict = {}
    path, method = LOOKUP, "POST"
    if tamper == "wrong secret":
        kw["secret"] = b"x" * 32
    elif tamper == "body changed":
        kw["sign_body"] = lookup_body(ID_B)
    elif tamper == "query added":
        path, kw["sign_path"] = LOOKUP + "?x=1", LOOKUP
    elif tamper == "path changed":
        kw["sign_path"] = "/api/v1/datasets/students/lookup"
    else:
        r = signed_request(url, dept, "PUT", LOOKUP, body, sign_path=LOOKUP)
        # A PUT signed as PUT reaches routing (405); a POST signed as PUT does not verify.
        assert r.status_code == 405
        from gateway.crypto import get_suite, request_signature

        ts, nonce = str(int(time.time())), "n0nce-method-1"
        sig = request_signature(
            get_suite("aes-gcm+hmac-sha256"), dept.secret, "PUT", LOOKUP, ts, nonce, body
        )
        r = requests.post(
            url + LOOKUP,
            data=body,
            headers={
                "X-Gateway-Key": dept.key_id,
                "X-Gateway-Timestamp": ts,
                "X-Gateway-Nonce": nonce,
                "X-Gateway-Signature": sig,
                "Content-Type": "application/json",
            },
        )
        assert_problem(r, 401, "bad-signature")
        assert_audited(site, "bad-signature", "unauthenticated:edu-2026", 401)
        return
    r = signed_request(url, dept, method, path, body, **kw)
    assert_problem(r, 401, "bad-signature")
    assert_audited(site, "bad-signature", "unauthenticated:edu-2026", 401)


def test_path_and_query_are_signed_exactly_as_sent(server) -> None:
    """A percent-encoded query in a given order verifies; the same query re-ordered does not."""
    site, depts, url = server
    dept = depts["education"]
    path = "/api/v1/datasets/poverty/changes?purpose=dropout-control&limit=5&fields=poverty_type"
    assert signed_request(url, dept, "GET", path).status_code == 200
    reordered = (
        "/api/v1/datasets/poverty/changes?limit=5&purpose=dropout-control&fields=poverty_type"
    )
    r = signed_request(url, dept, "GET", reordered, sign_path=path)
    assert_problem(r, 401, "bad-signature")


@pytest.mark.parametrize("offset", [-302, 302, -10_000])
def test_expired_timestamp(server, offset: int) -> None:
    site, depts, url = server
    r = signed_request(
        url,
        depts["education"],
        "POST",
        LOOKUP,
        lookup_body(ID_A),
        timestamp=int(time.time()) + offset,
    )
    doc = assert_problem(r, 401, "expired-timestamp")
    assert "300 s" in doc["detail"]
    assert_audited(site, "expired-timestamp", "unauthenticated:edu-2026", 401)


def test_timestamp_inside_the_window_is_accepted(server) -> None:
    site, depts, url = server
    r = signed_request(
        url, depts["education"], "POST", LOOKUP, lookup_body(ID_A), timestamp=int(time.time()) - 290
    )
    assert r.status_code == 200, r.text


def test_replayed_nonce_is_refused(server) -> None:
    site, depts, url = server
    kw = {"timestamp": int(time.time()), "nonce": "replay-me-0001"}
    first = signed_request(url, depts["education"], "POST", LOOKUP, lookup_body(ID_A), **kw)
    assert first.status_code == 200, first.text
    again = signed_request(url, depts["education"], "POST", LOOKUP, lookup_body(ID_A), **kw)
    assert_problem(again, 401, "replayed-nonce")
    # The replay was signed correctly: it is refused as the department, for its nonce.
    assert_audited(site, "replayed-nonce", "dept:education", 401)
    # The nonce is one department's: another department may use the same string.
    other = signed_request(
        url, depts["throttled"], "POST", LOOKUP, lookup_body(ID_A, purpose="stats"), **kw
    )
    assert other.status_code == 200, other.text


def test_concurrent_replays_only_one_gets_through(server) -> None:
    site, depts, url = server
    kw = {"timestamp": int(time.time()), "nonce": "concurrent-0001"}
    body = lookup_body(ID_A)
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda _: (
                    signed_request(url, depts["education"], "POST", LOOKUP, body, **kw).status_code
                ),
                range(8),
            )
        )
    assert sorted(codes) == [200] + [401] * 7


def test_unknown_key(server) -> None:
    site, depts, url = server
    from tests.fixtures.live_server import Dept

    stranger = Dept("stranger", "nobody-1", b"s" * 32)
    r = signed_request(url, stranger, "POST", LOOKUP, lookup_body(ID_A))
    assert_problem(r, 401, "unknown-key")
    assert_audited(site, "unknown-key", "unauthenticated:nobody-1", 401)


def test_key_in_keyring_but_not_in_config_is_unknown(server) -> None:
    """A department secret the gateway holds for calling a peer never lets anyone call it."""
    site, depts, url = server
    from gateway.crypto import Keyring
    from tests.fixtures.live_server import Dept

    ring = Keyring.load(site.path("keyring.json"))
    key = ring.new("department", key_id="me-at-peer")
    ring.save()
    site.__dict__.pop("keyring", None)
    r = signed_request(
        url, Dept("x", "me-at-peer", key.material), "POST", LOOKUP, lookup_body(ID_A)
    )
    assert_problem(r, 401, "unknown-key")


def test_forbidden_purpose(server) -> None:
    site, depts, url = server
    r = signed_request(
        url, depts["education"], "POST", LOOKUP, lookup_body(ID_A, purpose="marketing")
    )
    doc = assert_problem(r, 403, "forbidden-purpose")
    assert "marketing" in doc["detail"]
    entry = assert_audited(site, "forbidden-purpose", "dept:education", 403)
    assert entry["purpose"] == "marketing"
    assert entry["dataset"] == "poverty"


def test_forbidden_field(server) -> None:
    site, depts, url = server
    body = lookup_body(ID_A, fields=("poverty_type", "household_no"))
    doc = assert_problem(
        signed_request(url, depts["education"], "POST", LOOKUP, body), 403, "forbidden-field"
    )
    assert "household_no" in doc["detail"] and "poverty_type" not in doc["detail"]
    entry = assert_audited(site, "forbidden-field", "dept:education", 403)
    assert entry["fields"] == ["poverty_type", "household_no"]


def test_forbidden_dataset_and_write(server) -> None:
    site, depts, url = server
    r = signed_request(
        url, depts["education"], "POST", "/api/v1/datasets/disability/lookup", lookup_body(ID_A)
    )
    assert "disability" in assert_problem(r, 403, "forbidden-dataset")["detail"]
    push = json.dumps(
        {"purpose": "dropout-control", "records": [{"id_number": ID_A, "poverty_type": "lifted"}]}
    )
    r = signed_request(
        url, depts["education"], "POST", "/api/v1/datasets/poverty/records", push.encode()
    )
    assert "write to" in assert_problem(r, 403, "forbidden-dataset")["detail"]
    assert len([e for e in refusals(site) if e["detail"]["problem"] == "forbidden-dataset"]) == 2


def test_forbidden_role(server) -> None:
    site, depts, url = server
    r = signed_request(url, depts["auditor"], "POST", LOOKUP, lookup_body(ID_A))
    assert_problem(r, 403, "forbidden-role")
    assert_audited(site, "forbidden-role", "dept:auditor", 403)
    r = signed_request(url, depts["education"], "GET", "/api/v1/audit")
    assert_problem(r, 403, "forbidden-role")
    r = signed_request(url, depts["education"], "GET", "/api/v1/jobs")
    assert_problem(r, 403, "forbidden-role")


def test_oversized_batch(api_site, live_server) -> None:
    """The default limit: 10,000 subjects pass, 10,001 are refused before any is looked at."""
    site, depts = api_site(DEPARTMENTS)
    url = live_server(site)
    numbers = [
        make_id(seq=f"{i % 1000:03d}", birth=f"201{i // 1000 % 10}0101") for i in range(10_001)
    ]
    r = signed_request(url, depts["education"], "POST", LOOKUP, lookup_body(*numbers))
    doc = assert_problem(r, 413, "batch-too-large")
    assert doc["max_batch"] == 10_000
    assert_audited(site, "batch-too-large", "dept:education", 413)
    r = signed_request(url, depts["education"], "POST", LOOKUP, lookup_body(*numbers[:10_000]))
    assert r.status_code == 200
    assert len(r.json()["results"]) == 10_000


def test_body_too_large(server) -> None:
    site, depts, url = server
    body = json.dumps({"purpose": "dropout-control", "subjects": [], "pad": "x" * 200_001}).encode()
    r = signed_request(url, depts["education"], "POST", LOOKUP, body)
    assert_problem(r, 413, "body-too-large")
    assert_audited(site, "body-too-large", "unauthenticated:edu-2026", 413)


@pytest.mark.parametrize(
    "body",
    [b'{"purpose": "dropout-control", "subjects": [', b"\xff\xfe{}", b'{"purpose": NaN}', b"[1, 2"],
)
def test_malformed_json(server, body: bytes) -> None:
    site, depts, url = server
    r = signed_request(url, depts["education"], "POST", LOOKUP, body)
    assert_problem(r, 400, "invalid-json")
    assert_audited(site, "invalid-json", "dept:education", 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type(server, content_type: str | None) -> None:
    site, depts, url = server
    r = signed_request(
        url, depts["education"], "POST", LOOKUP, lookup_body(ID_A), content_type=content_type
    )
    assert_problem(r, 415, "unsupported-media-type")
    assert_audited(site, "unsupported-media-type", "dept:education", 415)


def test_validation_failed_names_the_fields(server) -> None:
    site, depts, url = server
    body = json.dumps({"fields": "poverty_type", "subjects": [], ID_A: 1}).encode()
    doc = assert_problem(
        signed_request(url, depts["education"], "POST", LOOKUP, body), 422, "validation-failed"
    )
    assert set(doc["errors"]) >= {"purpose", "fields"}
    assert ID_A not in r_text(doc)  # the unknown key is named masked
    assert_audited(site, "validation-failed", "dept:education", 422)


def r_text(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False)


def test_rate_limited(server) -> None:
    site, depts, url = server
    body = lookup_body(ID_A, purpose="stats")
    codes = [signed_request(url, depts["throttled"], "POST", LOOKUP, body) for _ in range(6)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited, [r.status_code for r in codes]
    assert_problem(limited[0], 429, "rate-limited")
    assert int(limited[0].headers["Retry-After"]) >= 1
    assert_audited(site, "rate-limited", "dept:throttled", 429)
    # Another department's bucket is its own.
    assert (
        signed_request(url, depts["education"], "POST", LOOKUP, lookup_body(ID_A)).status_code
        == 200
    )


def test_unknown_path_and_method(server) -> None:
    site, depts, url = server
    r = signed_request(url, depts["education"], "GET", "/api/v1/nothing-here")
    assert_problem(r, 404, "not-found")
    r = signed_request(url, depts["education"], "DELETE", LOOKUP)
    assert_problem(r, 405, "method-not-allowed")
    assert "POST" in r.headers["Allow"]
    assert_audited(site, "not-found", "dept:education", 404)
    assert_audited(site, "method-not-allowed", "dept:education", 405)


def test_no_id_number_in_audit_or_answers_of_refusals(server) -> None:
    """IDs sent in refused requests (body, path, headers) never reach the audit log or the store."""
    site, depts, url = server
    dept = depts["education"]
    signed_request(url, dept, "POST", LOOKUP, lookup_body(ID_A, purpose="marketing"))
    signed_request(url, dept, "POST", LOOKUP, lookup_body(ID_A), secret=b"y" * 32)
    signed_request(url, dept, "POST", f"/api/v1/datasets/{ID_B}/lookup", lookup_body(ID_A))
    from tests.fixtures.live_server import Dept

    signed_request(url, Dept("x", ID_B, b"z" * 32), "POST", LOOKUP, lookup_body(ID_A))
    assert len(refusals(site)) == 4
    text = store_text(site)
    for number in (ID_A, ID_B):
        assert number not in text
    assert audit.count(site, outcome="refused") == 4


def test_data_answer_is_audited_before_it_is_sent(server) -> None:
    site, depts, url = server
    client = depts["education"].client(url)
    answer = client.lookup("poverty", [{"id_number": ID_A}], purpose="dropout-control")
    assert answer["results"][0]["found"] is False
    # The entry is committed by the time the answer arrives: read it from the store at once.
    entry = audit.search(site, action="api.lookup")[0]
    assert entry["actor"] == "dept:education" and entry["purpose"] == "dropout-control"
    assert entry["subject_count"] == 1
    keys = audit.subject_keys_for_id(site, ID_A)
    assert audit.subject_report(site, subject_keys=keys)[0]["action"] == "api.lookup"


def test_national_suite_signs_with_hmac_sm3(api_site, live_server) -> None:
    site, depts = api_site(DEPARTMENTS, suite="sm4-gcm+hmac-sm3")
    url = live_server(site)
    body = lookup_body(ID_A)
    sm3 = signed_request(
        url, depts["education"], "POST", LOOKUP, body, suite_name="sm4-gcm+hmac-sm3"
    )
    assert sm3.status_code == 200, sm3.text
    sha = signed_request(url, depts["education"], "POST", LOOKUP, body)
    doc = assert_problem(sha, 401, "bad-signature")
    assert "sm3" in doc["detail"]
    client = depts["education"].client(url, "sm4-gcm+hmac-sm3")
    assert client.lookup("poverty", [{"id_number": ID_B}], purpose="dropout-control")["results"]


# -- across processes sharing one PostgreSQL store ---------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_replay_refused_across_two_server_processes(api_site, serve_process) -> None:
    site, depts = api_site(DEPARTMENTS)
    config = site.path("gateway.toml")
    dept = depts["education"]
    kw = {"timestamp": int(time.time()), "nonce": "cross-process-01"}
    body = lookup_body(ID_A)
    with serve_process(config) as url_a, serve_process(config) as url_b:
        assert url_a != url_b
        first = signed_request(url_a, dept, "POST", LOOKUP, body, **kw)
        assert first.status_code == 200, first.text
        replay = signed_request(url_b, dept, "POST", LOOKUP, body, **kw)
        assert_problem(replay, 401, "replayed-nonce")
        # Simultaneous copies of a fresh request to both processes: exactly one is served.
        kw2 = {"timestamp": int(time.time()), "nonce": "cross-process-02"}
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(
                    lambda i: (
                        signed_request(
                            url_a if i % 2 else url_b, dept, "POST", LOOKUP, body, **kw2
                        ).status_code
                    ),
                    range(8),
                )
            )
        assert sorted(codes) == [200] + [401] * 7
    assert len([e for e in refusals(site) if e["detail"]["problem"] == "replayed-nonce"]) == 8


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_replay_refused_by_every_gunicorn_worker(api_site, serve_process) -> None:
    site, depts = api_site(DEPARTMENTS)
    dept = depts["education"]
    kw = {"timestamp": int(time.time()), "nonce": "gunicorn-replay-1"}
    with serve_process(site.path("gateway.toml"), workers=2) as url:
        assert signed_request(url, dept, "POST", LOOKUP, lookup_body(ID_A), **kw).status_code == 200
        # Each replay may land on either worker: all are refused.
        for _ in range(6):
            assert_problem(
                signed_request(url, dept, "POST", LOOKUP, lookup_body(ID_A), **kw),
                401,
                "replayed-nonce",
            )
        # Every refusal reason also holds under gunicorn.
        r = signed_request(
            url, dept, "POST", LOOKUP, lookup_body(ID_A), timestamp=int(time.time()) - 400
        )
        assert_problem(r, 401, "expired-timestamp")
        r = signed_request(url, dept, "POST", LOOKUP, b"{", content_type="application/json")
        assert_problem(r, 400, "invalid-json")
    assert audit.count(site, action="api.refused") == 8
