"""The sql connector on the real MariaDB and PostgreSQL, with tables laid out as departments lay them out."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from gateway_plugins.sql_tables import SqlConnector

from gateway.connectors import ConnectorContext
from gateway.errors import ConfigError, SourceError, TransientSourceError

T0 = dt.datetime(2026, 11, 1, 8, 0, 0)


def poverty_person_table(metadata: sa.MetaData) -> sa.Table:
    """The poverty registry's `person` table: pinyin column names (防返贫监测系统)."""
    return sa.Table(
        "person",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("hbh", sa.String(32)),
        sa.Column("xm", sa.String(32)),
        sa.Column("zjhm", sa.String(32)),
        sa.Column("jcdxlb", sa.String(32)),
        sa.Column("gxsj", sa.DateTime, nullable=False),
    )


def student_table(metadata: sa.MetaData) -> sa.Table:
    """A school database with Chinese column names."""
    return sa.Table(
        "学生信息",
        metadata,
        sa.Column("身份证件号", sa.String(18), primary_key=True),
        sa.Column("姓名", sa.String(32)),
        sa.Column("学籍状态", sa.String(8)),
    )


@pytest.fixture(params=["mariadb", "postgres", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "mariadb":
        return request.getfixturevalue("mysql_url")
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'dept.db'}"


def seed(url: str, rows: list[dict]) -> None:
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    table = poverty_person_table(metadata)
    student_table(metadata)
    metadata.create_all(engine)
    with engine.begin() as conn:
        if rows:
            conn.execute(table.insert(), rows)
    engine.dispose()


def person(i: int, at: dt.datetime = T0, **extra) -> dict:
    return {
        "id": i,
        "hbh": f"H{i // 4:05d}",
        "xm": f"张{i}",
        "zjhm": f"Z{i:06d}",
        "jcdxlb": None,
        "gxsj": at,
        **extra,
    }


def connector(url: str, **options) -> SqlConnector:
    return SqlConnector({"url": url, **options}, ConnectorContext(system="poverty_registry"))


def test_reads_all_rows_in_batches_with_positions(db_url: str) -> None:
    seed(db_url, [person(i) for i in range(1, 12)])
    conn = connector(db_url, table="person")
    batches = list(conn.read(batch_size=4))
    assert [len(b.rows) for b in batches] == [4, 4, 3]
    assert batches[0].rows[0].position == "person:id=1"
    assert [r.data["xm"] for b in batches for r in b.rows] == [f"张{i}" for i in range(1, 12)]
    conn.close()


def test_incremental_cursor_never_skips_rows_sharing_a_timestamp(db_url: str) -> None:
    # Ten rows share one timestamp and the batch boundary falls inside them.
    seed(db_url, [person(i, T0) for i in range(1, 11)] + [person(11, T0 - dt.timedelta(hours=1))])
    conn = connector(db_url, table="person", cursor=["gxsj", "id"])
    seen, cursor = [], None
    for batch in conn.read(batch_size=3):
        seen += [r.data["id"] for r in batch.rows]
        cursor = batch.cursor
    assert seen == [11, *range(1, 11)]
    # New rows: one more at the same timestamp with a higher id, one later.
    engine = sa.create_engine(db_url)
    with engine.begin() as c:
        c.execute(
            poverty_person_table(sa.MetaData()).insert(),
            [person(12, T0), person(13, T0 + dt.timedelta(minutes=1))],
        )
    engine.dispose()
    again = [r.data["id"] for b in conn.read(cursor=cursor, batch_size=3) for r in b.rows]
    assert again == [12, 13]
    conn.close()


def test_write_twice_equals_once(db_url: str) -> None:
    seed(db_url, [])
    conn = connector(db_url, table="学生信息")
    rows = [
        {"身份证件号": f"52263620150101{i:03d}X", "姓名": f"李{i}", "学籍状态": "在读"}
        for i in range(5)
    ]
    first = conn.write(rows, key=["身份证件号"])
    assert (first.inserted, first.updated, first.unchanged) == (5, 0, 0)
    second = conn.write(rows, key=["身份证件号"])
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, 5)
    changed = [dict(rows[0], 学籍状态="休学")]
    third = conn.write(changed, key=["身份证件号"])
    assert (third.inserted, third.updated, third.unchanged) == (0, 1, 0)
    data = {r.data["身份证件号"]: r.data["学籍状态"] for b in conn.read() for r in b.rows}
    assert len(data) == 5 and data[rows[0]["身份证件号"]] == "休学"
    conn.close()


def test_query_source(db_url: str) -> None:
    seed(db_url, [person(i, jcdxlb="边缘易致贫户" if i % 2 else None) for i in range(1, 7)])
    conn = connector(
        db_url,
        query="SELECT id, xm, gxsj FROM person WHERE jcdxlb IS NOT NULL",
        cursor=["gxsj", "id"],
    )
    assert [r.data["id"] for b in conn.read(batch_size=2) for r in b.rows] == [1, 3, 5]
    conn.close()


def test_refused_connection_is_transient_and_names_system_and_source() -> None:
    conn = connector("mysql+pymysql://reader:s3cret-pw@127.0.0.1:1/registry", table="person")
    with pytest.raises(TransientSourceError) as info:
        list(conn.read())
    message = str(info.value)
    assert message.startswith(
        "poverty_registry: mysql+pymysql://reader:***@127.0.0.1:1/registry person: "
    )
    assert "s3cret-pw" not in message


def test_missing_table_and_columns_are_clear(db_url: str) -> None:
    seed(db_url, [person(1)])
    with pytest.raises(SourceError, match="no such table"):
        list(connector(db_url, table="nope").read())
    with pytest.raises(SourceError, match="cursor column\\(s\\) not found: updated_at"):
        list(connector(db_url, table="person", cursor=["updated_at", "id"]).read())


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="systems.poverty_registry.url"):
        SqlConnector({"table": "t"}, ConnectorContext(system="poverty_registry"))
    with pytest.raises(ConfigError, match="exactly one of table, query"):
        connector("sqlite://", table="t", query="select 1")


# --- the shared connector contract, on each real server --------------------------------------

from tests.conformance import COLUMNS, SYSTEM, ConnectorContract  # noqa: E402


def contract_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "contract",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("姓名", sa.String(32)),
        sa.Column("状态", sa.String(8)),
        sa.Column("gxsj", sa.DateTime, nullable=False),
    )


class TestSqlContract(ConnectorContract):
    """The contract over a department table with Chinese column names and a (gxsj, id) cursor."""

    @pytest.fixture
    def connector_factory(self, db_url: str):
        engine = sa.create_engine(db_url)
        contract_table(sa.MetaData()).create(engine, checkfirst=True)
        engine.dispose()
        options = {"url": db_url, "table": "contract", "cursor": ["gxsj", "id"]}
        return lambda **overrides: SqlConnector(
            {**options, **overrides}, ConnectorContext(system=SYSTEM)
        )

    @pytest.fixture
    def seed(self, db_url: str):
        def insert(rows: list[dict]) -> None:
            engine = sa.create_engine(db_url)
            table = contract_table(sa.MetaData())
            table.create(engine, checkfirst=True)
            with engine.begin() as conn:
                if rows:
                    conn.execute(table.insert(), [{c: r[c] for c in COLUMNS} for r in rows])
            engine.dispose()

        return insert

    @pytest.fixture
    def append(self, seed):
        return seed

    @pytest.fixture
    def seed_with_bad_row(self):
        def impossible(rows: list[dict]) -> str:
            pytest.skip(
                "a typed table cannot hold a malformed row; bad values are quarantined by the mapper"
            )

        return impossible

    @pytest.fixture
    def break_source(self, db_url: str):
        def drop() -> None:
            engine = sa.create_engine(db_url)
            with engine.begin() as conn:
                conn.exec_driver_sql("DROP TABLE contract")
            engine.dispose()

        return drop


def test_positions_never_hold_an_id_number(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'ids.db'}"
    seed(url, [])
    id_number = "522636201503010029"
    conn = connector(url, table="学生信息")
    conn.write([{"身份证件号": id_number, "姓名": "王五", "学籍状态": "在读"}], key=["身份证件号"])
    position = next(iter(conn.read())).rows[0].position
    assert id_number not in position and position.startswith("学生信息:身份证件号=522636")
    conn.close()
