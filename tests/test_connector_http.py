"""The http connector: two county gateways on loopback exchange a transfer (台账划转), signed both
ways, each side's audit log recording it; reading a REST service page by page; failures."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import pytest
import sqlalchemy as sa
from gateway_plugins.http_peer import HttpPeerConnector, peer_mapping_text, write_peer_mappings
from werkzeug.wrappers import Request, Response

from gateway import audit, ids
from gateway.connectors import ConnectorContext
from gateway.crypto import Keyring, write_public_key
from gateway.errors import ConfigError, SourceError, TransientSourceError
from gateway.site import Site
from gateway.store import Base
from gateway.store.records import Student
from gateway.sync import run_job
from tests.fixtures.live_server import ServerThread, free_port, store_text
from tests.fixtures.servers import PG_ADMIN_URL, _throwaway
from tests.fixtures.sites import write_site


def make_id(area: str, birth: str, seq: str) -> str:
    first17 = area + birth + seq
    return first17 + ids.check_char(first17)


CHILD = make_id("522636", "20130415", "328")  # moves from county A to county B
STAYS = make_id("522636", "20120101", "117")

ROSTER_COLUMNS = (
    "id INTEGER PRIMARY KEY, 身份证件号 TEXT, 姓名 TEXT, 性别 TEXT, 出生日期 TEXT, 学籍状态 TEXT, "
    "学校名称 TEXT, 转入学校 TEXT, 户籍地行政区划代码 TEXT"
)
TRANSFER_FIELDS = ["name", "sex", "birth_date", "status", "school_name", "transfer_to", "area_code"]


@pytest.fixture
def second_store(store_url: str, tmp_path: Path):
    """Another store on the same backend: county B does not share county A's database."""
    if store_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'county_b.db'}"
        return
    yield from _throwaway(PG_ADMIN_URL, "PostgreSQL")


def _site(folder: Path, store: str, extra: dict) -> Site:
    site = Site.from_config(write_site(folder, store, extra))
    Base.metadata.create_all(site.engine)
    write_peer_mappings(site.path("mappings"))
    return site


def _add_key(site: Site, purpose: str, key_id: str, material: bytes | None = None) -> bytes:
    ring = Keyring.load(site.path("keyring.json"))
    key = ring.new(purpose, key_id=key_id, material=material)
    ring.save()
    site.__dict__.pop("keyring", None)
    site.__dict__.pop("protector", None)
    return key.material if purpose != "open" else key.public_key()


def _roster(path: Path) -> str:
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE roster ({ROSTER_COLUMNS})")
        conn.exec_driver_sql(
            "INSERT INTO roster VALUES "
            f"(1, '{CHILD}', '刘小雨', '女', '20130415', '转出', '县一小', '乙县实验小学', '522636101000'),"
            f"(2, '{STAYS}', '陈小军', '男', '20120101', '在读', '县一小', NULL, '522636101000')"
        )
    engine.dispose()
    return f"sqlite:///{path}"


@pytest.fixture
def two_counties(store_url: str, second_store: str, tmp_path: Path, live_server):
    port_a, port_b = free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    roster = _roster(tmp_path / "a_school.db")
    site_a = _site(
        tmp_path / "county_a",
        store_url,
        {
            "gateway": {"site_name": "county_a"},
            "api": {"changes_settle_seconds": 0},
            "systems": {
                "transfers": {
                    "plugin": "student_status",
                    "connector": "sql",
                    "url": roster,
                    "query": "SELECT * FROM roster WHERE \"学籍状态\" = '转出'",
                    "key": ["id"],
                },
                "county_b": {
                    "plugin": "gateway_peer",
                    "connector": "http",
                    "dataset": "students",
                    "url": url_b,
                    "key_id": "a-at-b",
                    "purpose": "transfer",
                },
            },
            "jobs": {
                "transfer_out": {
                    "source": "transfers",
                    "dataset": "students",
                    "targets": ["county_b"],
                }
            },
            "departments": {
                "county_b": {
                    "key_id": "b-at-a",
                    "public_key": "keys/county_b.pub",
                    "allow": [
                        {
                            "dataset": "students",
                            "fields": TRANSFER_FIELDS,
                            "purposes": ["transfer"],
                            "ids": "sealed",
                        }
                    ],
                }
            },
        },
    )
    site_b = _site(
        tmp_path / "county_b",
        second_store,
        {
            "gateway": {"site_name": "county_b"},
            "systems": {
                "county_a_feed": {
                    "plugin": "gateway_peer",
                    "connector": "http",
                    "dataset": "students",
                    "mapping": "gateway_peer/students",
                    "url": url_a,
                    "key_id": "b-at-a",
                    "purpose": "transfer",
                    "page_size": 1,
                }
            },
            "jobs": {
                "transfer_in": {
                    "source": "county_a_feed",
                    "dataset": "students",
                    "mode": "incremental",
                }
            },
            "departments": {
                "county_a": {
                    "key_id": "a-at-b",
                    "allow": [
                        {
                            "dataset": "students",
                            "fields": TRANSFER_FIELDS,
                            "purposes": ["transfer"],
                            "write": True,
                        }
                    ],
                }
            },
        },
    )
    # The secrets each side holds: A signs pushes to B with a-at-b; B signs reads from A with
    # b-at-a. B's open key: A seals the IDs it sends B to its public key.
    secret_ab = _add_key(site_b, "department", "a-at-b")
    _add_key(site_a, "department", "a-at-b", secret_ab)
    secret_ba = _add_key(site_a, "department", "b-at-a")
    _add_key(site_b, "department", "b-at-a", secret_ba)
    public_b = _add_key(site_b, "open", "county-b-open")
    site_a.path("keys").mkdir()
    write_public_key(site_a.path("keys/county_b.pub"), public_b, kind="x25519")
    live_server(site_a, port_a)
    live_server(site_b, port_b)
    yield site_a, site_b
    site_b.engine.dispose()


def test_transfer_travels_between_two_gateways_signed_both_ways(two_counties) -> None:
    site_a, site_b = two_counties
    # 1. County A's job pushes the transferred child to county B's gateway (signed by A).
    summary = run_job(site_a, "transfer_out")
    assert summary.read == 1 and summary.inserted == 1 and summary.delivered == 1
    t = Student.__table__
    with site_b.engine.connect() as conn:
        rows = conn.execute(sa.select(t)).mappings().all()
    assert len(rows) == 1
    arrived = rows[0]
    assert arrived["source"] == "api:county_a"
    assert arrived["status"] == "transferred_out" and arrived["transfer_to"] == "乙县实验小学"
    key_b = audit.subject_keys_for_id(site_b, CHILD)[0]
    assert arrived["subject_key"] == key_b
    # B's log: the push by county A, with the child's subject key (B's own blind index).
    pushed = audit.search(site_b, action="api.push")[0]
    assert pushed["actor"] == "dept:county_a" and pushed["purpose"] == "transfer"
    assert [e["action"] for e in audit.subject_report(site_b, CHILD)][-1] == "api.push"
    # A's log: the delivery to county_b, with the child's subject key (A's blind index).
    delivered = audit.search(site_a, action="sync.deliver")[0]
    assert delivered["detail"]["target"] == "county_b" and delivered["subject_count"] == 1
    assert "sync.deliver" in [e["action"] for e in audit.subject_report(site_a, CHILD)]

    # 2. County B's job reads A's change feed (signed by B); the ID arrives sealed to B's key.
    summary_b = run_job(site_b, "transfer_in")
    assert summary_b.read == 1 and summary_b.inserted == 1, summary_b
    with site_b.engine.connect() as conn:
        sources = sorted(conn.execute(sa.select(t.c.source)).scalars())
    assert sources == ["api:county_a", "county_a_feed"]
    read = audit.search(site_a, action="api.changes")
    assert read and read[-1]["actor"] == "dept:county_b" and read[-1]["fields"][0] == "id_number"
    assert any(e["subject_count"] == 1 for e in read)
    a_history = [e["action"] for e in audit.subject_report(site_a, CHILD)]
    assert "api.changes" in a_history
    # The child who stays in county A never left it.
    assert audit.subject_report(site_b, subject_keys=audit.subject_keys_for_id(site_b, STAYS)) == []

    # 3. Nothing travels twice: the same export again pushes nothing; the feed has nothing new.
    again = run_job(site_a, "transfer_out")
    assert again.unchanged == 1 and again.delivered == 0
    assert run_job(site_b, "transfer_in").read == 0
    for site in (site_a, site_b):
        text = store_text(site)
        assert CHILD not in text and STAYS not in text and "刘小雨" not in text
        assert audit.count(site, outcome="refused") == 0


def test_peer_refusals_become_source_errors(two_counties) -> None:
    site_a, site_b = two_counties
    context = ConnectorContext("county_b", str(site_a.base_dir), {"site": site_a})
    options = dict(site_a.settings.systems["county_b"].options, purpose="marketing")
    connector = HttpPeerConnector(options, context)
    with pytest.raises(SourceError) as info:
        connector.write([{"id_number": CHILD, "name": "x", "status": "enrolled"}], ["id_number"])
    assert not isinstance(info.value, TransientSourceError)
    assert "forbidden-purpose" not in str(info.value) and "marketing" in str(info.value)
    options["url"] = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TransientSourceError):
        list(HttpPeerConnector(dict(options, retries=0), context).read())


def test_ids_not_disclosed_by_the_peer_are_quarantined(two_counties) -> None:
    site_a, site_b = two_counties
    site_a.settings.departments["county_b"].allow[0].ids = "masked"
    run_job(site_a, "transfer_out")
    summary = run_job(site_b, "transfer_in")
    assert summary.read == 1 and summary.quarantined == 1
    from gateway.store.jobs import QuarantineRow

    with site_b.begin() as s:
        row = s.execute(sa.select(QuarantineRow)).scalars().one()
    assert row.reason == "not_disclosed" and "sealed" in row.message


class Pages:
    """A REST service with cursor pagination, on loopback."""

    def __init__(self, pages: list[dict]):
        self.pages = deque(pages)
        self.targets: list[str] = []

    def __call__(self, environ, start_response):
        request = Request(environ)
        self.targets.append(environ.get("RAW_URI") or request.full_path)
        page = self.pages.popleft() if self.pages else {"data": [], "next": None}
        return Response(json.dumps(page), mimetype="application/json")(environ, start_response)


def test_reads_a_paginated_rest_service(tmp_path: Path) -> None:
    app = Pages(
        [
            {"data": [{"n": 1}, {"n": 2}], "next": "p2"},
            {"data": [{"n": 3}], "next": None},
        ]
    )
    secret = tmp_path / "me.secret"
    from gateway.crypto import write_secret_file

    write_secret_file(secret, "me-1", b"s" * 32, "aes-gcm+hmac-sha256")
    with ServerThread(app) as server:
        options = {
            "url": server.url,
            "key_id": "me-1",
            "purpose": "sync",
            "secret_file": str(secret),
            "path": "/v1/persons",
            "items": "data",
            "next_field": "next",
            "cursor_param": "page",
            "params": {"region": "5226"},
        }
        connector = HttpPeerConnector(options, ConnectorContext("rest", str(tmp_path)))
        batches = list(connector.read())
        assert [[r.data["n"] for r in b.rows] for b in batches] == [[1, 2], [3]]
        assert [b.cursor for b in batches] == ["p2", "p2"]
        assert app.targets == ["/v1/persons?region=5226", "/v1/persons?region=5226&page=p2"]
        with pytest.raises(ConfigError):
            connector.write([{"a": 1}], ["a"])


def test_configuration_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        HttpPeerConnector({"key_id": "x", "purpose": "p"}, ConnectorContext("peer", str(tmp_path)))
    assert "systems.peer.url" in str(info.value)
    with pytest.raises(ConfigError) as info:
        HttpPeerConnector(
            {"url": "http://x", "key_id": "x", "purpose": "p", "page_size": 5000},
            ConnectorContext("peer", str(tmp_path)),
        )
    assert "page_size" in str(info.value)


def test_peer_mappings_are_the_identity() -> None:
    from gateway.mapping import code_tables_of, load_mapping
    from gateway.plugins import get_plugin_manager, systems, transforms

    pm = get_plugin_manager()
    text = peer_mapping_text("assistance")
    assert 'record_key = ["subject_key", "assistance_type"]' in text
    import tempfile

    folder = Path(tempfile.mkdtemp())
    write_peer_mappings(folder, ["assistance"])
    mapper = load_mapping(
        "gateway_peer/assistance",
        transforms=transforms(pm),
        code_tables=code_tables_of(systems(pm)),
        base_dirs=[folder],
    )
    record, errors = mapper.map_row(
        {
            "id_number": STAYS,
            "name": "x",
            "assistance_type": "dibao",
            "start_date": "2024-01-02",
            "active": True,
        }
    )
    assert errors == [] and record["start_date"].isoformat() == "2024-01-02"
    assert record["assistance_type"] == "dibao" and record["active"] is True
