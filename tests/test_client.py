"""GatewayClient against real HTTP servers on loopback: signing, safe retries, pagination, sealed
values. A scripted WSGI server plays the gateway where a failure must be provoked on purpose."""

from __future__ import annotations

import json
import socket
import time
from collections import deque

import pytest
from werkzeug.wrappers import Request, Response

from gateway.client import ClientError, GatewayClient, open_document
from gateway.crypto import (
    CryptoError,
    Keyring,
    Sealer,
    get_suite,
    verify_request_signature,
    x25519_keypair,
)
from tests.fixtures.live_server import ServerThread

SUITE = get_suite("aes-gcm+hmac-sha256")
SECRET = b"k" * 32


class Scripted:
    """A WSGI app answering from a script and recording what it received (path as sent)."""

    def __init__(self, *answers: tuple[int, dict, dict]):
        self.answers = deque(answers)
        self.seen: list[dict] = []

    def __call__(self, environ, start_response):
        request = Request(environ)
        body = request.get_data()
        self.seen.append(
            {
                "method": request.method,
                "target": environ.get("RAW_URI") or environ.get("REQUEST_URI"),
                "headers": dict(request.headers),
                "body": body,
            }
        )
        status, headers, doc = self.answers.popleft() if self.answers else (200, {}, {})
        mimetype = "application/problem+json" if status >= 400 else "application/json"
        return Response(json.dumps(doc), status=status, headers=headers, mimetype=mimetype)(
            environ, start_response
        )

    def verified(self, index: int, secret: bytes = SECRET) -> bool:
        seen = self.seen[index]
        h = seen["headers"]
        return verify_request_signature(
            SUITE,
            secret,
            seen["method"],
            seen["target"],
            h["X-Gateway-Timestamp"],
            h["X-Gateway-Nonce"],
            seen["body"],
            h["X-Gateway-Signature"],
        )


@pytest.fixture
def scripted():
    servers: list[ServerThread] = []

    def start(*answers) -> tuple[Scripted, str]:
        app = Scripted(*answers)
        server = ServerThread(app).__enter__()
        servers.append(server)
        return app, server.url

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def client(url: str, **kw) -> GatewayClient:
    return GatewayClient(url, "dept-1", SECRET, SUITE, backoff=0.01, **kw)


def test_signs_path_query_and_body_as_sent(scripted) -> None:
    app, url = scripted((200, {}, {"ok": True}))
    answer = client(url + "/gw").call(
        "POST", "/api/v1/datasets/students/lookup", json={"名": "x"}, params={"a": "b c", "z": 1}
    )
    assert answer == {"ok": True}
    seen = app.seen[0]
    assert seen["target"] == "/gw/api/v1/datasets/students/lookup?a=b+c&z=1"
    assert seen["headers"]["X-Gateway-Key"] == "dept-1"
    assert json.loads(seen["body"]) == {"名": "x"}
    assert app.verified(0)
    assert not app.verified(0, secret=b"other" * 7)


def test_retries_429_and_503_with_fresh_nonces(scripted) -> None:
    app, url = scripted(
        (429, {"Retry-After": "1"}, {"type": "x/rate-limited"}),
        (503, {}, {"type": "x/busy"}),
        (200, {}, {"done": 1}),
    )
    started = time.monotonic()
    assert client(url).call("POST", "/api/v1/x", json={"a": 1}) == {"done": 1}
    assert time.monotonic() - started >= 1.0  # Retry-After was honoured
    nonces = [s["headers"]["X-Gateway-Nonce"] for s in app.seen]
    assert len(app.seen) == 3 and len(set(nonces)) == 3
    assert all(app.verified(i) for i in range(3))


def test_outcome_unknown_is_retried_for_reads_only(scripted) -> None:
    app, url = scripted((502, {}, {}), (200, {}, {"items": []}))
    assert client(url).call("GET", "/api/v1/x") == {"items": []}
    assert len(app.seen) == 2
    app, url = scripted((502, {}, {"title": "bad gateway"}), (200, {}, {}))
    with pytest.raises(ClientError) as info:
        client(url).call("POST", "/api/v1/x", json={})
    assert info.value.status == 502 and len(app.seen) == 1  # a POST may have been applied


def test_gives_up_after_the_retries(scripted) -> None:
    app, url = scripted(*[(503, {}, {"detail": "store down"})] * 5)
    with pytest.raises(ClientError) as info:
        client(url, retries=2).call("GET", "/api/v1/x")
    assert info.value.status == 503 and "store down" in str(info.value)
    assert len(app.seen) == 3


def test_connection_refused_is_retried_then_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = client(f"http://127.0.0.1:{port}", retries=1)
    with pytest.raises(ClientError) as info:
        c.call("POST", "/api/v1/x", json={})
    assert info.value.status == 0 and "Connection refused" in str(info.value)


def test_problem_answers_raise_with_the_problem(scripted) -> None:
    problem = {"type": "https://gateway.invalid/problems/forbidden-field", "detail": "field x"}
    app, url = scripted((403, {}, problem))
    with pytest.raises(ClientError) as info:
        client(url).call("GET", "/api/v1/x")
    assert info.value.problem == problem and info.value.status == 403


def test_paginate_follows_next_cursor(scripted) -> None:
    app, url = scripted(
        (200, {}, {"items": [1, 2], "next_cursor": "c1"}),
        (200, {}, {"items": [3], "next_cursor": "c2"}),
        (200, {}, {"items": [], "next_cursor": None}),
    )
    assert list(client(url).paginate("/api/v1/feed", {"purpose": "p"})) == [1, 2, 3]
    assert [s["target"] for s in app.seen] == [
        "/api/v1/feed?purpose=p",
        "/api/v1/feed?purpose=p&cursor=c1",
        "/api/v1/feed?purpose=p&cursor=c2",
    ]


def test_opens_sealed_values_with_private_key_or_keyring(scripted) -> None:
    private, public = x25519_keypair()
    sealer = Sealer(public)
    doc = {
        "dataset": "poverty",
        "results": [
            {"records": [{"id_number": {"sealed": sealer.seal("X1", aad=b"poverty/id_number")}}]}
        ],
    }
    app, url = scripted((200, {}, doc))
    opened = client(url, private_key=private).lookup("poverty", [{"id_number": "1"}], purpose="p")
    assert opened["results"][0]["records"][0]["id_number"] == "X1"
    # Without a key the value stays sealed; a department keyring opens it too.
    assert client(url).open_sealed(doc) == doc
    ring = Keyring(suite=None)
    ring.new("open", key_id="dept-open", material=private)
    assert (
        client(url, keyring=ring).open_sealed(doc)["results"][0]["records"][0]["id_number"] == "X1"
    )
    # The associated data binds the value to its dataset and field.
    moved = {
        "dataset": "students",
        "x": {"id_number": doc["results"][0]["records"][0]["id_number"]},
    }
    with pytest.raises(CryptoError):
        client(url, private_key=private).open_sealed(moved)
    with pytest.raises(CryptoError):
        open_document({"id_number": {"sealed": "x25519:AAAA"}}, lambda t, a: "never")


def test_repr_and_errors_never_show_the_secret(scripted) -> None:
    app, url = scripted((401, {}, {"title": "Signature does not match"}))
    c = client(url)
    assert SECRET.decode() not in repr(c)
    with pytest.raises(ClientError) as info:
        c.call("GET", "/api/v1/x")
    assert SECRET.decode() not in str(info.value)


def test_against_the_real_gateway(api_site, live_server) -> None:
    """The client's requests verify at a real gateway: lookup, paginated feed, push."""
    departments = {
        "education": {
            "key_id": "edu-1",
            "rate_limit": 10_000,
            "allow": [
                {
                    "dataset": "students",
                    "fields": ["name", "status"],
                    "purposes": ["enrolment"],
                    "write": True,
                    "ids": "subject_key",
                }
            ],
        }
    }
    site, depts = api_site(departments, {"api": {"changes_settle_seconds": 0}})
    c = depts["education"].client(live_server(site))
    from gateway import ids

    numbers = [f"522636201203{i:02d}12" for i in range(1, 6)]
    numbers = [n[:17] + ids.check_char(n[:17]) for n in (x + "0" for x in numbers)]
    pushed = c.push(
        "students",
        [{"id_number": n, "name": "某", "status": "enrolled"} for n in numbers],
        purpose="enrolment",
    )
    assert pushed["inserted"] == 5
    items = list(c.changes("students", purpose="enrolment"))
    assert len(items) == 5
    pages = c.changes_page("students", purpose="enrolment", limit=2)
    assert len(pages["items"]) == 2 and pages["next_cursor"]
    found = c.lookup("students", [{"id_number": n} for n in numbers], purpose="enrolment")
    assert all(r["found"] for r in found["results"])
