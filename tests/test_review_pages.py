"""The audit review pages through Flask's test client, on SQLite and the real PostgreSQL: sign-in
(audited, CSRF, lock-out, cookie flags, keyring-derived session key), the log's filters and paging,
an entry's detail, the per-person report, the chain's verification, run history; no ID number in
the clear in any page, and every view of personal data audited.

``seed_audit_log`` and ``make_review_app`` are shared with the browser test."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from gateway import audit, ids
from gateway.match import run_match
from gateway.site import Site
from gateway.sync import run_job
from tests import syncdata

PASSWORDS = {
    "auditor1": "审计-correct-horse-1",
    "admin1": "admin-battery-2",
    "clerk": "clerk-staple-3",
}
USERS_CONFIG = {
    "users": {
        "auditor1": {
            "password_hash": generate_password_hash(PASSWORDS["auditor1"]),
            "role": "auditor",
        },
        "admin1": {"password_hash": generate_password_hash(PASSWORDS["admin1"]), "role": "admin"},
        "clerk": {
            "password_hash": generate_password_hash(PASSWORDS["clerk"]),
            "role": "department",
        },
    },
    "departments": {
        "education": {
            "key_id": "edu-2026",
            "allow": [
                {"dataset": "poverty", "fields": ["poverty_type"], "purposes": ["dropout-control"]}
            ],
        },
        "civil_affairs": {
            "key_id": "ca-2026",
            "allow": [{"dataset": "students", "fields": ["status"], "purposes": ["student-aid"]}],
        },
        "disability_federation": {
            "key_id": "dpf-2026",
            "allow": [{"dataset": "students", "fields": ["status"], "purposes": ["home-teaching"]}],
        },
    },
}
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
ANY_ID_RE = re.compile(r"(?<![0-9A-Fa-f])(?:\d{17}[Xx]|\d{15,})(?![0-9A-Fa-f])")


def _id18(first17: str) -> str:
    return first17 + ids.check_char(first17)


# Known persons: three children, one adult known by a legacy 15-digit number, one never exchanged.
CHILD_A = _id18("52263620120315001")
CHILD_B = _id18("52263620130708002")
CHILD_C = _id18("52263620100101003")
ADULT_D15 = "522636850101004"  # 15 digits: the same person as ADULT_D18
ADULT_D18 = ids.check(ADULT_D15).value or ""
NOBODY = _id18("52263620110606005")
KNOWN_IDS = (CHILD_A, CHILD_B, CHILD_C, ADULT_D15, ADULT_D18, NOBODY)
FILLERS = 60
BASE_TIME = dt.datetime(2026, 3, 2, 8, 0, 0)


@dataclass
class Seed:
    """What ``seed_audit_log`` wrote: subject keys by ID and the seqs of the notable entries."""

    keys: dict[str, str] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)
    total: int = 0


@contextmanager
def _clock(start: dt.datetime) -> Iterator[None]:
    """The audit log's clock moved to ``start``, one minute later for each entry."""
    ticks = iter(start + dt.timedelta(minutes=i) for i in range(100_000))
    original = audit._utcnow
    audit._utcnow = lambda: next(ticks)
    try:
        yield
    finally:
        audit._utcnow = original


def subject_key(site: Site, id_number: str) -> str:
    value = ids.check(id_number).value
    assert value is not None
    return site.protector.blind_index(ids.index_material("1", value))


def seed_audit_log(site: Site) -> Seed:
    """Entries of several departments, purposes and datasets, written through ``audit.record``."""
    seed = Seed(keys={i: subject_key(site, i) for i in (CHILD_A, CHILD_B, CHILD_C, ADULT_D18)})
    a, b, c, d = (seed.keys[i] for i in (CHILD_A, CHILD_B, CHILD_C, ADULT_D18))
    with _clock(BASE_TIME):
        seed.seqs["sync"] = audit.record(
            site,
            actor="job:students",
            action="sync.run",
            dataset="students",
            fields=["status", "school_code"],
            subject_keys=[a, b, c],
            detail={"recipient": "dept:education", "run": 7, "mapping_version": "3+ab12cd34"},
        )
        seed.seqs["edu_lookup"] = audit.record(
            site,
            actor="dept:education",
            action="api.lookup",
            outcome="delivered",
            dataset="poverty",
            purpose="dropout-control",
            fields=["poverty_type"],
            subject_keys=[a, b],
        )
        seed.seqs["ca_lookup"] = audit.record(
            site,
            actor="dept:civil_affairs",
            action="api.lookup",
            outcome="delivered",
            dataset="students",
            purpose="student-aid",
            fields=["status", "school_name"],
            subject_keys=[a, d],
        )
        seed.seqs["dpf_refused"] = audit.record(
            site,
            actor="dept:disability_federation",
            action="api.lookup",
            outcome="refused",
            dataset="students",
            purpose="home-teaching",
            fields=["guardian_phone"],
            detail={"reason": "field guardian_phone not allowed"},
        )
        seed.seqs["edu_changes"] = audit.record(
            site,
            actor="dept:education",
            action="api.changes",
            outcome="delivered",
            dataset="assistance",
            purpose="student-aid",
            fields=["assistance_type", "active"],
            subject_keys=[c],
        )
    # Filler entries a day later, for paging.
    with _clock(BASE_TIME + dt.timedelta(days=1)):
        for i in range(FILLERS):
            audit.record(
                site,
                actor="job:residents",
                action="sync.batch",
                dataset="residents",
                detail={"batch": i + 1, "read": 100},
            )
    audit.checkpoint(site)
    seed.total = 5 + FILLERS
    return seed


def make_review_app(site: Site) -> Flask:
    """The real app with the review pages registered (until create_app does it itself)."""
    from gateway.web import create_app, review

    app = create_app(site)
    if "review" not in app.blueprints:
        review.init_app(app)
    return app


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def sign_in(client: FlaskClient, name: str = "auditor1", password: str | None = None):
    page = client.get("/review/signin")
    return client.post(
        "/review/signin",
        data={
            "name": name,
            "password": PASSWORDS.get(name, "x") if password is None else password,
            "csrf_token": csrf_of(page.get_data(as_text=True)),
        },
    )


def entries(site: Site, **filters: Any) -> list[dict[str, Any]]:
    return audit.search(site, limit=1000, **filters)


def assert_no_plain_ids(html: str) -> None:
    for number in KNOWN_IDS:
        assert number not in html
        assert number[:-1] not in html  # not even the first 17 digits
    # Any other run of 15+ digits too; the genesis prev_hash (64 zeros) is the one digit-only hash.
    rest = html.replace(audit.GENESIS, "")
    assert ANY_ID_RE.search(rest) is None, ANY_ID_RE.search(rest)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def review_site(make_site) -> Site:
    return make_site(USERS_CONFIG)


@pytest.fixture
def seed(review_site: Site) -> Seed:
    return seed_audit_log(review_site)


@pytest.fixture
def app(review_site: Site) -> Flask:
    app = make_review_app(review_site)
    app.testing = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auditor(client: FlaskClient, seed: Seed) -> FlaskClient:
    response = sign_in(client)
    assert response.status_code == 302
    return client


# ------------------------------------------------------------------------------------------ sign-in


@pytest.mark.parametrize(
    "path",
    [
        "/review/",
        "/review/log",
        "/review/entry/1",
        "/review/verify",
        "/review/person",
        "/review/runs",
    ],
)
def test_every_page_needs_a_signin(client: FlaskClient, seed: Seed, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/review/signin")
    assert "Audit log" not in response.get_data(as_text=True)


def test_signin_redirects_back_and_never_off_site(client: FlaskClient, seed: Seed) -> None:
    wanted = "/review/log?actor=dept:civil_affairs&dataset=students"
    response = client.get(wanted)
    assert response.status_code == 302
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    next_value = re.search(r'name="next" value="([^"]*)"', page)
    assert next_value and next_value.group(1).replace("&amp;", "&") == wanted
    ok = client.post(
        "/review/signin",
        data={
            "name": "auditor1",
            "password": PASSWORDS["auditor1"],
            "csrf_token": csrf_of(page),
            "next": wanted,
        },
    )
    assert ok.headers["Location"] == wanted
    assert _seqs(client.get(ok.headers["Location"]).get_data(as_text=True)) == [
        seed.seqs["ca_lookup"]
    ]
    for evil in (
        "https://evil.example/",
        "//evil.example/review/",
        "/review/\\evil.example",
        "/api/v1/jobs",
        "/review/log\r\nSet-Cookie: x=1",
    ):
        client.post(
            "/review/signout",
            data={"csrf_token": csrf_of(client.get("/review/log").get_data(as_text=True))},
        )
        page = client.get("/review/signin").get_data(as_text=True)
        response = client.post(
            "/review/signin",
            data={
                "name": "auditor1",
                "password": PASSWORDS["auditor1"],
                "csrf_token": csrf_of(page),
                "next": evil,
            },
        )
        assert response.headers["Location"] == "/review/log"


def test_signin_success_and_failure_are_audited(
    client: FlaskClient, review_site: Site, seed: Seed
) -> None:
    bad = sign_in(client, "auditor1", "wrong password")
    assert bad.status_code == 401
    assert "Wrong user name or password" in bad.get_data(as_text=True)
    # A typed user name is never echoed or logged: here it is an ID number typed by mistake.
    unknown = sign_in(client, CHILD_A, "whatever")
    assert unknown.status_code == 401
    assert CHILD_A not in unknown.get_data(as_text=True)
    clerk = sign_in(client, "clerk")
    assert clerk.status_code == 401
    assert "may not use the review pages" in clerk.get_data(as_text=True)
    assert client.get("/review/log").status_code == 302  # still not signed in

    good = sign_in(client, "admin1")
    assert good.status_code == 302 and good.headers["Location"] == "/review/log"
    page = client.get("/review/log")
    assert page.status_code == 200 and "admin1" in page.get_data(as_text=True)

    refused = entries(review_site, action="review.signin", outcome="refused", ascending=True)
    assert [(e["actor"], e["detail"]["reason"]) for e in refused] == [
        ("user:auditor1", "wrong password"),
        ("user:unknown", "unknown user"),
        ("user:clerk", "role department"),
    ]
    assert all(e["detail"]["remote_addr"] == "127.0.0.1" for e in refused)
    ok = entries(review_site, action="review.signin", outcome="ok")
    assert [(e["actor"], e["detail"]["role"]) for e in ok] == [("user:admin1", "admin")]
    assert CHILD_A not in repr(entries(review_site))


def test_too_many_failures_lock_the_user_out(
    client: FlaskClient, review_site: Site, seed: Seed
) -> None:
    from gateway.web import review

    for _ in range(review.SIGNIN_MAX_FAILURES):
        assert sign_in(client, "auditor1", "guess").status_code == 401
    locked = sign_in(client, "auditor1")  # the right password, refused while locked
    assert locked.status_code == 401
    assert "Too many failed sign-ins" in locked.get_data(as_text=True)
    reasons = [
        e["detail"]["reason"] for e in entries(review_site, action="review.signin", ascending=True)
    ]
    assert reasons == ["wrong password"] * review.SIGNIN_MAX_FAILURES + ["too many failures"]
    # Another user is not affected.
    assert sign_in(client, "admin1").status_code == 302


def test_session_cookie_flags(make_site, seed: Seed, client: FlaskClient) -> None:
    response = sign_in(client)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("gateway_review=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/review" in cookie
    assert "Secure" not in cookie  # "auto" over plain http
    assert "Expires=" in cookie  # a permanent session with a lifetime, not forever

    https = make_review_app(make_site(USERS_CONFIG, name="https")).test_client()
    page = https.get("/review/signin", base_url="https://gateway.example")
    assert "Secure" in page.headers["Set-Cookie"]

    always = make_site({**USERS_CONFIG, "gateway": {"secure_cookies": "always"}}, name="always")
    page = make_review_app(always).test_client().get("/review/signin")
    assert "Secure" in page.headers["Set-Cookie"]


def test_session_key_comes_from_the_keyring(review_site: Site, seed: Seed, make_site) -> None:
    from gateway.web import review

    first = make_review_app(review_site)
    client = first.test_client()
    assert sign_in(client).status_code == 302
    cookie = client.get_cookie("gateway_review", path="/review")
    assert cookie is not None
    secret = first.config["SECRET_KEY"]
    assert isinstance(secret, bytes) and len(secret) >= 32
    assert secret == review.session_secrets(review_site)[0]

    # A restart, or another gunicorn worker: a new app from the same config accepts the session.
    again = make_review_app(Site.from_config(review_site.base_dir / "gateway.toml"))
    assert again.config["SECRET_KEY"] == secret
    other = again.test_client()
    other.set_cookie("gateway_review", cookie.value, path="/review")
    assert other.get("/review/log").status_code == 200

    # Another site (another keyring) derives another key and refuses the cookie.
    stranger = make_review_app(make_site(USERS_CONFIG, name="stranger"))
    assert stranger.config["SECRET_KEY"] != secret
    foreign = stranger.test_client()
    foreign.set_cookie("gateway_review", cookie.value, path="/review")
    assert foreign.get("/review/log").status_code == 302

    # After the seal key is rotated the new key signs, and sessions signed before still work.
    review_site.keyring.rotate("seal")
    review_site.keyring.save(review_site.path("keyring.json"))
    rotated = make_review_app(Site.from_config(review_site.base_dir / "gateway.toml"))
    assert rotated.config["SECRET_KEY"] != secret
    assert secret in rotated.config["SECRET_KEY_FALLBACKS"]
    after = rotated.test_client()
    after.set_cookie("gateway_review", cookie.value, path="/review")
    assert after.get("/review/log").status_code == 200


def test_changing_the_password_ends_sessions(review_site: Site, seed: Seed, make_site) -> None:
    client = make_review_app(review_site).test_client()
    sign_in(client)
    cookie = client.get_cookie("gateway_review", path="/review")
    assert cookie is not None
    review_site.settings.users["auditor1"].password_hash = generate_password_hash("a new password")
    assert client.get("/review/log").status_code == 302


def test_csrf_token_is_required(auditor: FlaskClient, review_site: Site, seed: Seed) -> None:
    before = audit.count(review_site)
    for token in ("", "forged-token"):
        response = auditor.post(
            "/review/person", data={"id_number": CHILD_A, "id_type": "1", "csrf_token": token}
        )
        assert response.status_code == 400
        assert "The form has expired" in response.get_data(as_text=True)
        assert CHILD_A not in response.get_data(as_text=True)
        assert auditor.post("/review/verify", data={"csrf_token": token}).status_code == 400
        assert auditor.post("/review/signout", data={"csrf_token": token}).status_code == 400
    assert audit.count(review_site) == before  # nothing looked up, nothing audited
    assert auditor.get("/review/log").status_code == 200  # still signed in

    fresh = auditor.application.test_client()
    assert (
        fresh.post(
            "/review/signin", data={"name": "auditor1", "password": PASSWORDS["auditor1"]}
        ).status_code
        == 400
    )


def test_signout(auditor: FlaskClient, review_site: Site) -> None:
    token = csrf_of(auditor.get("/review/log").get_data(as_text=True))
    response = auditor.post("/review/signout", data={"csrf_token": token})
    assert response.status_code == 302
    assert auditor.get("/review/log").status_code == 302
    assert [e["actor"] for e in entries(review_site, action="review.signout")] == ["user:auditor1"]


def test_security_headers(auditor: FlaskClient) -> None:
    page = auditor.get("/review/log")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Frame-Options"] == "DENY"
    css = auditor.get("/review/static/review.css")
    assert css.status_code == 200 and css.mimetype == "text/css"
    assert b"font-family" in css.data


# ------------------------------------------------------------------------------------------ the log


def _seqs(html: str) -> list[int]:
    return [int(s) for s in re.findall(r'class="entry-row" data-seq="(\d+)"', html)]


def test_log_lists_newest_first_with_bilingual_labels(auditor: FlaskClient, seed: Seed) -> None:
    html = auditor.get("/review/log").get_data(as_text=True)
    for label in (
        "审计日志",
        "Audit log",
        "按人查询",
        "Per-person report",
        "链校验",
        "运行记录",
        "操作者",
        "用途",
    ):
        assert label in html
    shown = _seqs(html)
    assert len(shown) == 50
    assert shown == sorted(shown, reverse=True)
    assert shown[0] == audit.head(auditor.application.extensions["gateway.site"])["seq"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("department=education", ["edu_changes", "edu_lookup"]),
        ("actor=dept:civil_affairs", ["ca_lookup"]),
        ("actor=dept:*&dataset=students", ["dpf_refused", "ca_lookup"]),
        ("purpose=student-aid", ["edu_changes", "ca_lookup"]),
        ("dataset=poverty", ["edu_lookup"]),
        ("action=api.*&outcome=delivered", ["edu_changes", "ca_lookup", "edu_lookup"]),
        ("outcome=refused&action=api.lookup", ["dpf_refused"]),
        ("since=2026-03-02%2008:01&until=2026-03-02%2008:03", ["ca_lookup", "edu_lookup"]),
        ("until=2026-03-02&dataset=students", ["dpf_refused", "ca_lookup", "sync"]),
    ],
)
def test_log_filters(auditor: FlaskClient, seed: Seed, query: str, expected: list[str]) -> None:
    response = auditor.get(f"/review/log?{query}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert _seqs(html) == [seed.seqs[name] for name in expected]
    assert f"{len(expected)} matching entries" in html


def test_log_filter_problems_are_precise(auditor: FlaskClient, seed: Seed) -> None:
    response = auditor.get("/review/log?since=2026-02-30&outcome=maybe")
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "since: &#39;2026-02-30&#39; is not a real date" in html
    assert "outcome: must be one of ok, delivered, refused, failed" in html
    response = auditor.get(f"/review/log?actor={CHILD_B}")
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "actor: looks like an ID number" in html
    assert_no_plain_ids(html)
    response = auditor.get("/review/log?since=2026-03-05&until=2026-03-01")
    assert "since: must be before until" in response.get_data(as_text=True)


def test_log_paging_walks_every_entry_once(
    auditor: FlaskClient, review_site: Site, seed: Seed
) -> None:
    total = audit.count(review_site)
    seen: list[int] = []
    url: str | None = "/review/log?per=25"
    pages = []
    while url:
        html = auditor.get(url).get_data(as_text=True)
        pages.append(html)
        seen += _seqs(html)
        match = re.search(r'href="([^"]+)" id="page-older"', html)
        url = match.group(1).replace("&amp;", "&") if match else None
    assert seen == list(range(total, 0, -1))
    assert len(pages) == -(-total // 25)
    assert 'id="page-newer"' not in pages[0]
    # Back from the last page: "newer" gives the previous page again.
    newer = re.search(r'href="([^"]+)" id="page-newer"', pages[-1])
    assert newer
    back = auditor.get(newer.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert _seqs(back) == _seqs(pages[-2])
    # Filters survive paging.
    html = auditor.get("/review/log?dataset=residents&per=10").get_data(as_text=True)
    older = re.search(r'href="([^"]+)" id="page-older"', html)
    assert older and "dataset=residents" in older.group(1)
    page2 = auditor.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert len(_seqs(page2)) == 10
    assert f"{FILLERS} matching entries" in page2


# ------------------------------------------------------------------------------------------ entry


def test_entry_detail_shows_every_field_and_is_audited(
    auditor: FlaskClient, review_site: Site, seed: Seed
) -> None:
    seq = seed.seqs["ca_lookup"]
    stored = audit.get_entry(review_site, seq)
    assert stored is not None
    response = auditor.get(f"/review/entry/{seq}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    for text in (
        "dept:civil_affairs",
        "api.lookup",
        "student-aid",
        "school_name",
        stored["prev_hash"],
        stored["hash"],
        "sha256",
    ):
        assert text in html
    assert re.search(r'id="entry-subject-count">2<', html)
    for key in (seed.keys[CHILD_A], seed.keys[ADULT_D18]):
        key_id, _, digest = key.partition(":")
        assert f"{key_id}:{digest[:12]}…" in html
        assert digest not in html  # shortened, never whole
    assert_no_plain_ids(html)

    views = entries(review_site, action="review.view")
    assert len(views) == 1
    assert views[0]["actor"] == "user:auditor1"
    assert views[0]["detail"] == {"page": "entry", "entry": seq}
    assert set(audit.get_entry(review_site, views[0]["seq"])["subject_keys"]) == {
        seed.keys[CHILD_A],
        seed.keys[ADULT_D18],
    }

    # The recipient named in detail is shown as who received the data.
    html = auditor.get(f"/review/entry/{seed.seqs['sync']}").get_data(as_text=True)
    assert re.search(r'id="entry-recipient">dept:education<', html)
    assert "3+ab12cd34" in html


def test_missing_entry_is_a_page_not_a_problem_document(auditor: FlaskClient) -> None:
    response = auditor.get("/review/entry/99999")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "no audit entry 99999" in response.get_data(as_text=True)


# ------------------------------------------------------------------------------------------ person


def _lookup(client: FlaskClient, number: str, id_type: str = "1"):
    token = csrf_of(client.get("/review/person").get_data(as_text=True))
    return client.post(
        "/review/person", data={"id_number": number, "id_type": id_type, "csrf_token": token}
    )


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr class="person-row[^"]*">(.*?)</tr>', html, re.S)


def test_person_report_lists_every_exchange_masked(
    auditor: FlaskClient, review_site: Site, seed: Seed
) -> None:
    response = _lookup(auditor, CHILD_A)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert_no_plain_ids(html)
    assert re.search(r'id="person-masked">522636\*{8}\d{3}[\dX]<', html)
    assert ids.mask(CHILD_A) in html
    rows = _rows(html)
    assert len(rows) == 3
    assert "dept:education" in rows[0] and "via job:students" in rows[0] and "sync.run" in rows[0]
    assert (
        "dept:education" in rows[1] and "dropout-control" in rows[1] and "poverty_type" in rows[1]
    )
    assert "dept:civil_affairs" in rows[2] and "student-aid" in rows[2] and "school_name" in rows[2]
    assert "3 exchanges" in html
    assert "refused" not in "".join(rows)  # the refused lookup touched nobody

    views = entries(review_site, action="review.view")
    assert len(views) == 1 and views[0]["detail"] == {"page": "person", "entries": 3}
    assert audit.get_entry(review_site, views[0]["seq"])["subject_keys"] == [seed.keys[CHILD_A]]

    # The next report on the same person shows that look-up too.
    again = _rows(_lookup(auditor, CHILD_A).get_data(as_text=True))
    assert len(again) == 4 and "user:auditor1" in again[3] and "review.view" in again[3]


def test_person_report_by_legacy_number_and_for_nobody(auditor: FlaskClient, seed: Seed) -> None:
    html = _lookup(auditor, ADULT_D15).get_data(as_text=True)
    assert_no_plain_ids(html)
    assert ids.mask(ADULT_D18) in html
    assert "converted to 18 digits" in html
    rows = _rows(html)
    assert len(rows) == 1 and "dept:civil_affairs" in rows[0]

    html = _lookup(auditor, NOBODY).get_data(as_text=True)
    assert "No exchange touched this person" in html
    assert_no_plain_ids(html)


def test_person_form_never_echoes_the_number(auditor: FlaskClient, seed: Seed) -> None:
    # A typo in the check digit: refused with a reason, the number shown masked at most.
    bad = CHILD_B[:-1] + ("0" if CHILD_B[-1] != "0" else "1")
    response = _lookup(auditor, bad)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "is not valid" in html
    assert_no_plain_ids(html)
    assert bad not in html
    # The input box is never re-filled, whatever was typed.
    assert 'name="id_number" id="id_number" type="text" value=""' in _lookup(
        auditor, CHILD_C
    ).get_data(as_text=True)


def _refuse_review_views(site: Site) -> None:
    """A store that refuses to record review.view entries (a real database trigger)."""
    with site.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_views() RETURNS trigger AS $$ BEGIN "
                "IF NEW.action = 'review.view' THEN RAISE EXCEPTION 'audit store refuses'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_views BEFORE INSERT ON audit_entries "
                "FOR EACH ROW EXECUTE FUNCTION refuse_views()"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_views BEFORE INSERT ON audit_entries "
                "WHEN NEW.action = 'review.view' BEGIN SELECT RAISE(ABORT, 'audit store refuses'); END"
            )


def test_nothing_is_shown_that_could_not_be_audited(
    auditor: FlaskClient, review_site: Site, seed: Seed
) -> None:
    stored = audit.get_entry(review_site, seed.seqs["edu_lookup"])
    assert stored is not None
    _refuse_review_views(review_site)
    response = auditor.get(f"/review/entry/{seed.seqs['edu_lookup']}")
    assert response.status_code == 503
    html = response.get_data(as_text=True)
    assert "nothing is shown that could not be audited" in html
    assert stored["hash"] not in html and "dropout-control" not in html
    assert short_key_of(seed.keys[CHILD_A]) not in html

    response = _lookup(auditor, CHILD_A)
    assert response.status_code == 503
    html = response.get_data(as_text=True)
    assert ids.mask(CHILD_A) not in html and "person-row" not in html
    assert_no_plain_ids(html)
    assert entries(review_site, action="review.view") == []
    # Pages without personal data still work.
    assert auditor.get("/review/log").status_code == 200


def short_key_of(key: str) -> str:
    key_id, _, digest = key.partition(":")
    return f"{key_id}:{digest[:12]}"


# ------------------------------------------------------------------------------------------ verify


def test_verification_ok_then_names_the_first_break(
    auditor: FlaskClient, review_site: Site, seed: Seed
) -> None:
    html = auditor.get("/review/verify").get_data(as_text=True)
    assert 'data-status="not-run"' in html
    last_cp = seed.total  # signed at the end of the seed; the sign-in came after
    assert re.search(rf'id="latest-checkpoint">第 {last_cp} 条 at entry {last_cp}', html)

    token = csrf_of(html)
    html = auditor.post("/review/verify", data={"csrf_token": token}).get_data(as_text=True)
    assert 'data-status="ok"' in html
    assert "OK" in html and "chain verified" in html

    # Someone edits entry 3 directly in the database.
    seq = seed.seqs["ca_lookup"]
    with review_site.begin() as s:
        s.execute(
            sa.update(audit.ENTRIES).where(audit.ENTRIES.c.seq == seq).values(purpose="curiosity")
        )
    html = auditor.post("/review/verify", data={"csrf_token": token}).get_data(as_text=True)
    assert 'data-status="broken"' in html
    first = re.search(r'id="first-break">([^<]*)<', html)
    assert first and f"entry {seq}: hash mismatch (altered)" in first.group(1)


# ------------------------------------------------------------------------------------------ runs


def test_run_history_shows_sync_and_match_runs(make_site, tmp_path) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    syncdata.write_source(source, syncdata.people(12))
    site = make_site({**USERS_CONFIG, **syncdata.job_config(source)}, name="runs")
    syncdata.write_mappings(site.base_dir)
    first = run_job(site, "residents")
    syncdata.write_source(source, syncdata.people(10, versions={0: 1}))
    second = run_job(site, "residents")
    match = run_match(site, dt.date(2016, 10, 1), actor="user:tester")

    client = make_review_app(site).test_client()
    sign_in(client)
    html = client.get("/review/runs").get_data(as_text=True)
    rows = re.findall(r'<tr class="sync-run" data-run="(\d+)">(.*?)</tr>', html, re.S)
    assert [int(r[0]) for r in rows] == [second.run_id, first.run_id]
    cells = [
        re.sub(r"<[^>]+>", " ", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", rows[0][1], re.S)
    ]
    assert "residents" in cells[1] and "snapshot" in cells[2] and "succeeded" in cells[3]
    assert [c.strip() for c in cells[4:11]] == ["10", "0", "1", "9", "0", "2", "0"]
    assert second.mapping_version and second.mapping_version in cells[13]
    assert " s" in cells[12]
    match_rows = re.findall(r'<tr class="match-run" data-run="(\d+)">(.*?)</tr>', html, re.S)
    assert [int(r[0]) for r in match_rows] == [match.run_id]
    assert "2016-10-01" in match_rows[0][1] and "user:tester" in match_rows[0][1]
    out_of_school = match.counts["out_of_school"].count
    assert out_of_school > 0
    assert re.search(rf"疑似失学辍学儿童</span> {out_of_school} ", match_rows[0][1])
    assert_no_plain_ids(html)

    assert client.get("/review/runs?job=residents").status_code == 200
    assert client.get("/review/runs?job=nope").status_code == 400


# ------------------------------------------------------------------------------------------ no IDs


def test_no_page_shows_an_id_number(auditor: FlaskClient, review_site: Site, seed: Seed) -> None:
    pages = [auditor.get("/review/log?per=200").get_data(as_text=True)]
    for seq in range(1, audit.head(review_site)["seq"] + 1):
        pages.append(auditor.get(f"/review/entry/{seq}").get_data(as_text=True))
    for number in (CHILD_A, CHILD_B, CHILD_C, ADULT_D15, NOBODY):
        pages.append(_lookup(auditor, number).get_data(as_text=True))
    token = csrf_of(pages[0])
    pages.append(auditor.post("/review/verify", data={"csrf_token": token}).get_data(as_text=True))
    pages.append(auditor.get("/review/runs").get_data(as_text=True))
    for html in pages:
        assert_no_plain_ids(html)
    # ... nor the log itself, after all these audited views.
    assert_no_plain_ids(repr(entries(review_site)))


def test_scrub_masks_id_like_text() -> None:
    from gateway.web.review import scrub

    assert scrub(f"row 3: {CHILD_A} bad") == f"row 3: {ids.mask(CHILD_A)} bad"
    assert scrub(f"legacy {ADULT_D15}.") == f"legacy {ids.mask(ADULT_D15)}."
    digest = "ab" + "1" * 20 + "cd"
    assert scrub(digest) == digest  # part of a hex digest, not an ID
    assert scrub(None) == ""
