"""The store: Alembic migrations build exactly the models' schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from gateway.cli import cli
from gateway.commands import BUILTIN
from gateway.errors import StoreError
from gateway.store import Base, create_store_engine, migrate
from gateway.store.records import Student

for _command in BUILTIN():
    cli.add_command(_command)


def _diff(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


def test_migrations_build_the_models_schema(store_url: str) -> None:
    engine = create_store_engine(store_url)
    before, after = migrate.upgrade(engine)
    assert before is None and after == migrate.head_revision()
    assert _diff(engine) == [], "models changed without a migration: regenerate it"
    # A second upgrade is a no-op: a running site can run it on every deploy.
    assert migrate.upgrade(engine) == (after, after)
    assert migrate.is_current(engine)
    engine.dispose()


def test_upgrade_keeps_existing_rows(store_url: str) -> None:
    engine = create_store_engine(store_url)
    migrate.upgrade(engine)
    now = dt.datetime(2026, 11, 24, 8, 0)
    with sa.orm.Session(engine) as session, session.begin():
        session.add(
            Student(
                source="student_status",
                record_key="k1",
                subject_key="bi-1:ab",
                id_type="1",
                content_hash="h",
                updated_at=now,
                status="enrolled",
                birth_date=dt.date(2015, 3, 1),
            )
        )
    migrate.upgrade(engine)
    with sa.orm.Session(engine) as session:
        row = session.scalars(sa.select(Student)).one()
        assert (row.status, row.birth_date, row.removed) == ("enrolled", dt.date(2015, 3, 1), False)
    engine.dispose()


def test_unique_natural_key_per_source(store_url: str) -> None:
    engine = create_store_engine(store_url)
    migrate.upgrade(engine)
    now = dt.datetime(2026, 11, 24)
    row = dict(source="s", record_key="k", subject_key="x", content_hash="h", updated_at=now)
    with sa.orm.Session(engine) as session, session.begin():
        session.add(Student(**row))
    with pytest.raises(sa.exc.IntegrityError), sa.orm.Session(engine) as session, session.begin():
        session.add(Student(**row))
    engine.dispose()


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'g.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_relative_sqlite_path_is_relative_to_the_config(tmp_path) -> None:
    engine = create_store_engine("sqlite:///sub.db", tmp_path)
    assert engine.url.database == str(tmp_path / "sub.db")


def test_unreachable_store_is_a_clear_error() -> None:
    engine = create_store_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError, match="store unreachable"):
        migrate.current_revision(engine)


def test_bad_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="not a database URL"):
        create_store_engine("not a url")


def test_db_upgrade_and_status_commands(tmp_path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nstore = "sqlite:///g.db"\n', encoding="utf-8")
    runner = CliRunner()
    status = runner.invoke(cli, ["--config", str(config), "db", "status"])
    assert status.exit_code == 1 and "migrations pending" in status.output
    first = runner.invoke(cli, ["--config", str(config), "db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert f"empty -> {migrate.head_revision()}" in first.output
    assert (tmp_path / "g.db").exists()
    again = runner.invoke(cli, ["--config", str(config), "db", "upgrade"])
    assert "store is current" in again.output
    assert runner.invoke(cli, ["--config", str(config), "db", "status"]).exit_code == 0


def test_db_upgrade_rebuilds_indexes_a_killed_bulk_load_left_out(tmp_path) -> None:
    from gateway.store.records import Student
    from gateway.sync_store import DatasetTable

    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nstore = "sqlite:///g.db"\n', encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(cli, ["--config", str(config), "db", "upgrade"]).exit_code == 0
    engine = create_store_engine(f"sqlite:///{tmp_path / 'g.db'}")
    table = DatasetTable(Student.__table__, "sqlite", engine.dialect)
    with engine.begin() as conn:
        table.drop_deferred_indexes(conn)  # as a bulk load does before its first batch
        dropped = table.missing_indexes(conn)
    assert dropped
    result = runner.invoke(cli, ["--config", str(config), "db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert all(f"index rebuilt: {name}" in result.output for name in dropped)
    with engine.connect() as conn:
        assert table.missing_indexes(conn) == []
    engine.dispose()


def test_missing_config_exits_2_without_traceback(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "nope.toml"), "db", "upgrade"])
    assert result.exit_code == 2
    assert "no such config file" in result.output and "Traceback" not in result.output


def test_0002_turns_the_natural_key_into_a_unique_index(store_url: str) -> None:
    from alembic import command

    engine = create_store_engine(store_url)
    command.upgrade(migrate.alembic_config(engine), "0001")
    now = dt.datetime(2026, 11, 24)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(Student.__table__),
            [
                dict(
                    source="s",
                    record_key="k",
                    subject_key="x",
                    id_type="1",
                    content_hash="h",
                    removed=False,
                    updated_at=now,
                )
            ],
        )
    migrate.upgrade(engine)
    assert _diff(engine) == []
    indexes = {ix["name"]: ix for ix in sa.inspect(engine).get_indexes("students")}
    assert indexes["uq_students_source_record_key"]["unique"]
    assert indexes["uq_students_source_record_key"]["column_names"] == ["source", "record_key"]
    with engine.connect() as conn:
        assert conn.execute(sa.select(Student.__table__.c.record_key)).scalars().all() == ["k"]
    row = dict(source="s", record_key="k", subject_key="y", content_hash="h", updated_at=now)
    with pytest.raises(sa.exc.IntegrityError), sa.orm.Session(engine) as session, session.begin():
        session.add(Student(**row))
    command.downgrade(migrate.alembic_config(engine), "0001")
    assert migrate.current_revision(engine) == "0001"
    engine.dispose()
