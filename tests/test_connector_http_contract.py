"""The connector contract over the http connector's REST mode: a department's paginated REST
service (人员信息接口) served by werkzeug on loopback, read page by page through the signed client.

The write half of the contract cannot run here (see ``TestHttpContract.supports_write``); the
connector's writes are pushes to a peer gateway, exercised below against a real gateway with the
records such a gateway accepts.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from gateway_plugins.http_peer import HttpPeerConnector
from werkzeug.wrappers import Request, Response

from gateway import ids
from gateway.connectors import ConnectorContext
from gateway.crypto import write_secret_file
from gateway.errors import SourceError, TransientSourceError
from gateway.store.records import Student
from tests.conformance import (
    SYSTEM,
    ConnectorContract,
    as_text,
    contract_rows,
    read_batches,
    rows_of,
)
from tests.fixtures.live_server import ServerThread, store_text

KEY_ID = "contract-1"
SUITE = "aes-gcm+hmac-sha256"
PATH = "/v1/persons"
REGION = "522636"
MAX_PAGE = 100


class PersonService:
    """A department's REST service: ``GET /v1/persons?region=..&pageSize=N&after=<token>``.

    It keeps documents (the JSON its system emits) with the update time and an internal row
    number, and serves them ordered by (update time, row number): the opaque ``after`` token is
    the position of the last document served, so documents sharing an update time are neither
    skipped nor repeated. ``next`` is the position after every page that had documents, and null
    on an empty page (the end, for now).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.documents: list[tuple[str, int, Any]] = []  # (gxsj text, row number, document)
        self.requests: list[dict[str, str]] = []
        self.answer: tuple[int, str, bytes] | None = None  # (status, content type, body)

    # -- what the department's system holds ------------------------------------------------------

    def replace(self, rows: list[dict[str, Any]]) -> None:
        with self.lock:
            self.documents = []
        self.add(rows)

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.add_document(document(row), row["gxsj"])

    def add_document(self, doc: Any, stamp: dt.datetime) -> int:
        with self.lock:
            number = len(self.documents) + 1
            self.documents.append((as_text(stamp), number, doc))
            return number

    def token(self, number: int) -> str:
        """The ``after`` token of the document with this row number."""
        stamp = next(s for s, n, _ in self.documents if n == number)
        return _token(stamp, number)

    # -- the WSGI app ----------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        self.requests.append(dict(request.args))
        return self.respond(request)(environ, start_response)

    def respond(self, request: Request) -> Response:
        if self.answer is not None:
            status, content_type, body = self.answer
            return Response(body, status=status, content_type=content_type)
        if request.path != PATH or request.method != "GET":
            return _json({"code": 404, "msg": "no such resource"}, 404)
        if request.args.get("region") != REGION:
            return _json({"code": 400, "msg": "region required"}, 400)
        try:
            size = int(request.args.get("pageSize", "20"))
            after = _untoken(request.args["after"]) if "after" in request.args else None
        except (ValueError, KeyError, TypeError):
            return _json({"code": 400, "msg": "bad pageSize or after"}, 400)
        if not 1 <= size <= MAX_PAGE:
            return _json({"code": 400, "msg": f"pageSize 1..{MAX_PAGE}"}, 400)
        with self.lock:
            ordered = sorted(self.documents, key=lambda d: (d[0], d[1]))
        rest = [d for d in ordered if after is None or (d[0], d[1]) > after]
        page = rest[:size]
        nxt = _token(page[-1][0], page[-1][1]) if page else None
        return _json({"total": len(ordered), "rows": [d[2] for d in page], "next": nxt})


def document(row: dict[str, Any]) -> dict[str, Any]:
    """A contract row as the service's JSON: the update time as the department writes it."""
    return {**row, "gxsj": as_text(row["gxsj"])}


def _token(stamp: str, number: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([stamp, number]).encode()).decode().rstrip("=")


def _untoken(token: str) -> tuple[str, int]:
    stamp, number = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    if not isinstance(stamp, str) or not isinstance(number, int):
        raise ValueError(token)
    return stamp, number


def _json(payload: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(payload, ensure_ascii=False), status=status, mimetype="application/json"
    )


class Running:
    """The service on loopback; ``stop()`` takes it away (the source "goes away")."""

    def __init__(self, service: PersonService):
        self.service = service
        self.server = ServerThread(service).__enter__()
        self.url = self.server.url
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.__exit__(None, None, None)


@pytest.fixture
def running() -> Iterator[Running]:
    running = Running(PersonService())
    yield running
    running.stop()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / f"{KEY_ID}.secret"
    write_secret_file(path, KEY_ID, secrets.token_bytes(32), SUITE)
    return path


@pytest.fixture
def rest_connector(
    running: Running, secret_file: Path, tmp_path: Path
) -> Iterator[Callable[..., HttpPeerConnector]]:
    made: list[HttpPeerConnector] = []
    options = {
        "url": running.url,
        "key_id": KEY_ID,
        "purpose": "sync",
        "secret_file": str(secret_file),
        "path": PATH,
        "items": "rows",
        "next_field": "next",
        "cursor_param": "after",
        "limit_param": "pageSize",
        "key": ["id"],
        "params": {"region": REGION},
        "timeout": 10,
        "retries": 1,  # keeps the refused-connection cases quick (the client backs off first)
    }

    def factory(**overrides: Any) -> HttpPeerConnector:
        connector = HttpPeerConnector(
            {**options, **overrides}, ConnectorContext(system=SYSTEM, base_dir=str(tmp_path))
        )
        made.append(connector)
        return connector

    yield factory
    for connector in made:
        connector.close()


class TestHttpContract(ConnectorContract):
    """The shared contract over a department's paginated REST service on loopback."""

    # The http connector writes only by pushing canonical records to a peer gateway's
    # POST /api/v1/datasets/<dataset>/records (its REST mode refuses to write: ConfigError). A peer
    # gateway accepts only the fields of one of its datasets, keyed by the ID number, so the
    # contract's rows (id, 姓名, 状态, gxsj keyed by id) would all be quarantined as unknown fields
    # without an ID: the write half cannot run on these rows. Writes are covered instead by
    # tests/test_connector_http.py::test_transfer_travels_between_two_gateways_signed_both_ways
    # (a push through a sync job, counted at the peer) and ::test_peer_refusals_become_source_errors,
    # and by test_pushes_to_a_peer_gateway_write_twice_once_and_upsert_by_the_id below (the write
    # half of the contract - twice is once, upsert by key - on records a peer accepts).
    supports_write = False

    @pytest.fixture
    def connector_factory(
        self, rest_connector: Callable[..., HttpPeerConnector]
    ) -> Callable[..., HttpPeerConnector]:
        return rest_connector

    @pytest.fixture
    def seed(self, running: Running) -> Callable[[list[dict[str, Any]]], None]:
        return running.service.replace

    @pytest.fixture
    def append(self, running: Running) -> Callable[[list[dict[str, Any]]], None]:
        return running.service.add

    @pytest.fixture(params=["not_an_object", "missing_key"])
    def seed_with_bad_row(
        self, request: pytest.FixtureRequest, running: Running
    ) -> Callable[[list[dict[str, Any]]], str]:
        service = running.service

        def seed(rows: list[dict[str, Any]]) -> str:
            service.replace(rows[:6])
            # The second page (5 a page) holds row 6, then the bad document, sharing row 6's
            # update time: its position is item 1 of the page asked for after row 5.
            if request.param == "not_an_object":
                bad: Any = ["99", "张三99", "在读"]  # a row the system serialised as an array
            else:
                bad = {"姓名": "无编号", "状态": "在读", "gxsj": as_text(rows[5]["gxsj"])}
            service.add_document(bad, rows[5]["gxsj"])
            service.add(rows[6:])
            return f"{PATH} item 1 of page after={service.token(5)}"

        return seed

    @pytest.fixture(params=["http_500", "maintenance_page", "server_gone"])
    def break_source(self, request: pytest.FixtureRequest, running: Running) -> Callable[[], None]:
        def brk() -> None:
            if request.param == "http_500":
                body = json.dumps({"code": 500, "msg": "数据库连接失败"}).encode()
                running.service.answer = (500, "application/json", body)
            elif request.param == "maintenance_page":
                body = "<html><body>系统维护中</body></html>".encode()
                running.service.answer = (200, "text/html; charset=utf-8", body)
            else:
                running.stop()

        return brk


# --- the REST mode beyond the contract --------------------------------------------------------------


def test_pages_are_asked_in_the_batch_size_and_the_service_cursor_is_passed_back(
    running: Running, rest_connector: Callable[..., HttpPeerConnector]
) -> None:
    service = running.service
    service.replace(contract_rows(1, 9))
    batches = read_batches(rest_connector(), batch_size=4)
    assert [[r.data["id"] for r in b.rows] for b in batches] == [
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        [9],
        [],
    ]
    tokens = [service.token(n) for n in (4, 8, 9)]
    assert [b.cursor for b in batches] == [*tokens, tokens[-1]]
    base = {"region": REGION, "pageSize": "4"}
    assert service.requests == [base] + [{**base, "after": t} for t in tokens]
    assert [r.position for r in rows_of(batches)][:2] == [f"{PATH} id=1", f"{PATH} id=2"]
    # page_size caps the page below the batch size.
    service.requests.clear()
    read_batches(rest_connector(page_size=3), batch_size=4)
    assert {r["pageSize"] for r in service.requests} == {"3"}


def test_malformed_items_keep_what_they_held_for_the_quarantine(
    running: Running, rest_connector: Callable[..., HttpPeerConnector]
) -> None:
    service = running.service
    stamp = dt.datetime(2026, 3, 1, 8, 0)
    for doc in (["a", 1], "text", 7, None, {"id": "", "姓名": "空编号"}, {"id": 3, "姓名": "好"}):
        service.add_document(doc, stamp)
    rows = rows_of(read_batches(rest_connector(), batch_size=10))
    problems = [(r.problems[0][0], r.problems[0][1]) if r.problems else None for r in rows]
    assert problems == [
        ("", "not_an_object"),
        ("", "not_an_object"),
        ("", "not_an_object"),
        ("", "not_an_object"),
        ("id", "missing_key"),
        None,
    ]
    assert [r.problems[0][2] for r in rows[:4]] == [
        "the item is a JSON array, not an object",
        "the item is a JSON string, not an object",
        "the item is a JSON number, not an object",
        "the item is a JSON null, not an object",
    ]
    assert rows[0].data == {"_item": ["a", 1]} and rows[4].data["姓名"] == "空编号"
    assert [r.position for r in rows] == [
        *(f"{PATH} item {i} of the first page" for i in range(5)),
        f"{PATH} id=3",
    ]


def test_positions_never_hold_an_id_number(
    running: Running, rest_connector: Callable[..., HttpPeerConnector]
) -> None:
    """A service keyed by the ID number: positions (stored in the clear) show it masked."""
    first17 = "52263620130415328"
    number = first17 + ids.check_char(first17)
    stamp = dt.datetime(2026, 3, 1, 8, 0)
    running.service.add_document({"身份证件号": number, "姓名": "刘小雨"}, stamp)
    running.service.add_document({"姓名": "无证件号"}, stamp)
    rows = rows_of(read_batches(rest_connector(key=["身份证件号"])))
    assert [bool(r.problems) for r in rows] == [False, True]
    assert rows[0].position == f"{PATH} 身份证件号={ids.mask(number)}"
    assert rows[0].data["身份证件号"] == number  # the data itself is untouched
    assert all(number not in r.position for r in rows)


def test_a_service_that_goes_away_is_a_transient_error_without_the_secret(
    running: Running, rest_connector: Callable[..., HttpPeerConnector], secret_file: Path
) -> None:
    running.service.replace(contract_rows(1, 3))
    running.stop()
    with pytest.raises(TransientSourceError) as info:
        read_batches(rest_connector())
    assert info.value.system == SYSTEM and "cannot connect" in info.value.cause
    secret = json.loads(secret_file.read_text())["secret"]
    for text in (str(info.value), repr(info.value)):
        assert secret not in text and base64.b64decode(secret).hex() not in text


def test_a_refused_request_is_a_source_error_not_worth_retrying(
    running: Running, rest_connector: Callable[..., HttpPeerConnector]
) -> None:
    running.service.replace(contract_rows(1, 3))
    with pytest.raises(SourceError) as info:
        read_batches(rest_connector(params={"region": "110101"}))
    assert not isinstance(info.value, TransientSourceError)
    assert "400" in info.value.cause and PATH in info.value.source


# --- the write half, on records a peer gateway accepts -----------------------------------------------


def _id(seq: int) -> str:
    first17 = f"5226362013041{seq:03d}1"
    return first17 + ids.check_char(first17)


def test_pushes_to_a_peer_gateway_write_twice_once_and_upsert_by_the_id(
    api_site: Callable[..., Any], live_server: Callable[..., str], tmp_path: Path
) -> None:
    departments = {
        "county_a": {
            "key_id": "a-at-b",
            "allow": [
                {
                    "dataset": "students",
                    "fields": ["name", "status"],
                    "purposes": ["transfer"],
                    "write": True,
                }
            ],
        }
    }
    peer, depts = api_site(departments, name="county_b")
    url = live_server(peer)
    secret = tmp_path / "a-at-b.secret"
    write_secret_file(secret, "a-at-b", depts["county_a"].secret, SUITE)
    options = {
        "url": url,
        "key_id": "a-at-b",
        "purpose": "transfer",
        "remote_dataset": "students",
        "secret_file": str(secret),
        "push_batch": 2,  # several requests per write
    }

    def writer() -> HttpPeerConnector:
        return HttpPeerConnector(options, ConnectorContext("county_b", str(tmp_path)))

    records = [
        {"id_number": _id(i), "name": f"学生{i}", "status": "enrolled", "subject_key": "x"}
        for i in range(1, 6)
    ]
    counts = []
    for batch in (records, records, [{**records[2], "status": "transferred_out"}, *records[:2]]):
        w = writer()
        result = w.write(batch, ["id_number"])
        w.close()
        counts.append((result.inserted, result.updated, result.unchanged))
    assert counts == [(5, 0, 0), (0, 0, 5), (0, 1, 2)]
    t = Student.__table__
    with peer.engine.connect() as conn:
        stored = conn.execute(sa.select(t.c.status, t.c.source)).all()
    assert sorted(stored) == sorted(
        [("enrolled", "api:county_a")] * 4 + [("transferred_out", "api:county_a")]
    )
    text = store_text(peer)
    assert all(r["id_number"] not in text and r["name"] not in text for r in records)
