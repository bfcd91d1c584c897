"""The connector contract: the same tests, run against every connector.

A connector's test module subclasses :class:`ConnectorContract` (the subclass's name starts with
``Test`` so pytest collects it) and provides the fixtures below; every test here then runs
against that connector::

    class TestCsvContract(ConnectorContract):
        @pytest.fixture
        def connector_factory(self, tmp_path): ...   # (**option_overrides) -> Connector
        @pytest.fixture
        def seed(self, tmp_path): ...                # (rows) -> None: the source holds these rows
        @pytest.fixture
        def append(self, tmp_path): ...              # (rows) -> None: more rows arrive later
        @pytest.fixture
        def seed_with_bad_row(self, tmp_path): ...   # (rows) -> str: rows + one malformed row;
                                                     #    returns (part of) the bad row's position
        @pytest.fixture
        def break_source(self, tmp_path): ...        # () -> None: the source becomes unreadable

Optional: ``writer_factory`` (a connector that writes; default ``connector_factory``) and
``read_back`` (``(writer) -> list[dict]``, what the target holds; default: the writer's own read).
A connector without an incremental position sets ``supports_cursor = False``; one that cannot
write sets ``supports_write = False``. A fixture may ``pytest.skip(reason)`` where a case cannot
arise for its connector (say so in the reason).

Rows are plain dicts over :data:`COLUMNS` with Python values (int id, str name and status,
datetime ``gxsj``: the poverty registry's 更新时间 column). Connectors that yield other native
types override :meth:`ConnectorContract.normalise`; the default compares text forms.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import pytest

from gateway.connectors import Batch, Connector, Row
from gateway.errors import SourceError

SYSTEM = "contract_system"  # the ConnectorContext.system every factory must use
COLUMNS = ("id", "姓名", "状态", "gxsj")
KEY = ("id",)
T0 = dt.datetime(2026, 3, 1, 8, 0, 0)

ConnectorFactory = Callable[..., Connector]
RowsSink = Callable[[list[dict[str, Any]]], None]


def contract_rows(start: int, count: int, *, at: dt.datetime | None = None) -> list[dict[str, Any]]:
    """``count`` rows with ids from ``start``; every three consecutive ids share one timestamp
    (ties that a cursor on ``gxsj`` alone would skip), unless ``at`` fixes them all."""
    rows = []
    for i in range(start, start + count):
        stamp = at if at is not None else T0 + dt.timedelta(minutes=(i - 1) // 3)
        rows.append(
            {"id": i, "姓名": f"张三{i}", "状态": "在读" if i % 4 else "休学", "gxsj": stamp}
        )
    return rows


def as_text(value: Any) -> str:
    """The text form used to compare rows across connectors: what a CSV file would hold."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_batches(connector: Connector, cursor: Any = None, batch_size: int = 5) -> list[Batch]:
    return list(connector.read(cursor=cursor, batch_size=batch_size))


def rows_of(batches: Iterable[Batch]) -> list[Row]:
    return [row for batch in batches for row in batch.rows]


class ConnectorContract:
    """The contract every connector passes: read all, read incrementally, write twice = once,
    a bad row reported with its position, an unreadable source reported as a SourceError."""

    supports_cursor: ClassVar[bool] = True
    supports_write: ClassVar[bool] = True
    batch_size: ClassVar[int] = 5

    # --- fixtures a connector's test module provides -------------------------------------------

    @pytest.fixture
    def connector_factory(self) -> ConnectorFactory:
        raise NotImplementedError("the connector's test module must provide connector_factory")

    @pytest.fixture
    def seed(self) -> RowsSink:
        raise NotImplementedError("the connector's test module must provide seed")

    @pytest.fixture
    def append(self) -> RowsSink:
        raise NotImplementedError("the connector's test module must provide append")

    @pytest.fixture
    def seed_with_bad_row(self) -> Callable[[list[dict[str, Any]]], str]:
        raise NotImplementedError("the connector's test module must provide seed_with_bad_row")

    @pytest.fixture
    def break_source(self) -> Callable[[], None]:
        raise NotImplementedError("the connector's test module must provide break_source")

    @pytest.fixture
    def writer_factory(self, connector_factory: ConnectorFactory) -> ConnectorFactory:
        return connector_factory

    @pytest.fixture
    def read_back(self) -> Callable[[Connector], list[dict[str, Any]]]:
        return lambda writer: [row.data for row in rows_of(read_batches(writer, batch_size=1000))]

    # --- how rows compare ------------------------------------------------------------------------

    def normalise(self, data: Mapping[str, Any]) -> dict[str, str]:
        """A native row as comparable text over the contract columns."""
        return {column: as_text(data.get(column)) for column in COLUMNS}

    def expected(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
        return [self.normalise(row) for row in rows]

    def assert_same_rows(self, got: Sequence[Row], rows: Sequence[Mapping[str, Any]]) -> None:
        """Exactly these rows, each once, in source order."""
        assert [self.normalise(r.data) for r in got] == self.expected(rows)

    # --- read all --------------------------------------------------------------------------------

    def test_reads_every_row_once_in_batches(
        self, connector_factory: ConnectorFactory, seed: RowsSink
    ) -> None:
        rows = contract_rows(1, 23)
        seed(rows)
        batches = read_batches(connector_factory(), batch_size=self.batch_size)
        assert all(len(b.rows) <= self.batch_size for b in batches)
        assert sum(1 for b in batches if b.rows) >= 23 // self.batch_size
        got = rows_of(batches)
        self.assert_same_rows(got, rows)
        assert all(not r.problems for r in got)

    def test_every_row_has_a_distinct_stable_position(
        self, connector_factory: ConnectorFactory, seed: RowsSink
    ) -> None:
        seed(contract_rows(1, 12))
        first = [r.position for r in rows_of(read_batches(connector_factory()))]
        second = [r.position for r in rows_of(read_batches(connector_factory()))]
        assert all(isinstance(p, str) and p for p in first)
        assert len(set(first)) == len(first) == 12
        assert first == second

    def test_empty_source_reads_no_rows(
        self, connector_factory: ConnectorFactory, seed: RowsSink
    ) -> None:
        seed([])
        assert rows_of(read_batches(connector_factory())) == []

    # --- read incrementally ----------------------------------------------------------------------

    def test_cursor_after_every_batch_is_json(
        self, connector_factory: ConnectorFactory, seed: RowsSink
    ) -> None:
        if not self.supports_cursor:
            pytest.skip("this connector has no incremental position")
        seed(contract_rows(1, 12))
        for batch in read_batches(connector_factory(), batch_size=self.batch_size):
            assert batch.cursor is not None
            assert json.loads(json.dumps(batch.cursor)) == batch.cursor

    def test_resume_after_any_batch_loses_and_repeats_nothing(
        self, connector_factory: ConnectorFactory, seed: RowsSink
    ) -> None:
        if not self.supports_cursor:
            pytest.skip("this connector has no incremental position")
        rows = contract_rows(1, 17)
        seed(rows)
        full = read_batches(connector_factory(), batch_size=self.batch_size)
        positions = [r.position for r in rows_of(full)]
        for n, batch in enumerate(full):
            # A new connector, as after a restart, given the cursor as the store kept it (JSON).
            cursor = json.loads(json.dumps(batch.cursor))
            rest = rows_of(
                read_batches(connector_factory(), cursor=cursor, batch_size=self.batch_size)
            )
            done = rows_of(full[: n + 1])
            self.assert_same_rows(done + rest, rows)
            assert [r.position for r in done + rest] == positions

    def test_nothing_new_after_the_last_batch(
        self, connector_factory: ConnectorFactory, seed: RowsSink
    ) -> None:
        if not self.supports_cursor:
            pytest.skip("this connector has no incremental position")
        seed(contract_rows(1, 10))
        last = read_batches(connector_factory(), batch_size=self.batch_size)[-1].cursor
        assert rows_of(read_batches(connector_factory(), cursor=json.loads(json.dumps(last)))) == []

    def test_rows_arriving_later_are_read_once_even_sharing_a_timestamp(
        self, connector_factory: ConnectorFactory, seed: RowsSink, append: RowsSink
    ) -> None:
        if not self.supports_cursor:
            pytest.skip("this connector has no incremental position")
        rows = contract_rows(1, 10)
        seed(rows)
        last = read_batches(connector_factory(), batch_size=self.batch_size)[-1].cursor
        # The new rows carry the timestamp of the last row already read: a cursor that compares
        # only the timestamp with ">" would skip them, one that uses ">=" would repeat row 10.
        later = contract_rows(11, 4, at=rows[-1]["gxsj"])
        append(later)
        got = rows_of(read_batches(connector_factory(), cursor=json.loads(json.dumps(last))))
        self.assert_same_rows(got, later)
        # ... and a full read (no cursor) still gives everything.
        self.assert_same_rows(rows_of(read_batches(connector_factory())), rows + later)

    # --- write -----------------------------------------------------------------------------------

    def test_write_twice_is_once(
        self,
        writer_factory: ConnectorFactory,
        read_back: Callable[[Connector], list[dict[str, Any]]],
    ) -> None:
        if not self.supports_write:
            pytest.skip("this connector cannot write")
        rows = contract_rows(1, 8)
        writer = writer_factory()
        first = writer.write(rows, KEY)
        assert (first.inserted, first.updated, first.unchanged) == (8, 0, 0)
        stored = sorted((self.normalise(r) for r in read_back(writer)), key=lambda r: int(r["id"]))
        assert stored == self.expected(rows)
        second = writer_factory().write(rows, KEY)
        assert (second.inserted, second.updated, second.unchanged) == (0, 0, 8)
        assert (
            sorted((self.normalise(r) for r in read_back(writer)), key=lambda r: int(r["id"]))
            == stored
        )

    def test_write_upserts_by_key(
        self,
        writer_factory: ConnectorFactory,
        read_back: Callable[[Connector], list[dict[str, Any]]],
    ) -> None:
        if not self.supports_write:
            pytest.skip("this connector cannot write")
        rows = contract_rows(1, 6)
        writer_factory().write(rows, KEY)
        changed = {**rows[2], "状态": "转出"}
        new = contract_rows(7, 1)[0]
        result = writer_factory().write([rows[0], changed, new], KEY)
        assert (result.inserted, result.updated, result.unchanged) == (1, 1, 1)
        stored = sorted(
            (self.normalise(r) for r in read_back(writer_factory())), key=lambda r: int(r["id"])
        )
        assert stored == self.expected([*rows[:2], changed, *rows[3:], new])

    # --- bad input -------------------------------------------------------------------------------

    def test_bad_row_is_reported_with_its_position_and_reading_goes_on(
        self,
        connector_factory: ConnectorFactory,
        seed_with_bad_row: Callable[[list[dict[str, Any]]], str],
    ) -> None:
        rows = contract_rows(1, 9)
        where = seed_with_bad_row(rows)
        got = rows_of(read_batches(connector_factory(), batch_size=self.batch_size))
        bad = [r for r in got if r.problems]
        assert len(bad) == 1, [r.position for r in bad]
        assert where in bad[0].position
        for problem in bad[0].problems:
            assert len(problem) == 3 and all(isinstance(part, str) for part in problem)
            assert problem[1] and problem[2]  # a reason code and a message
        self.assert_same_rows([r for r in got if not r.problems], rows)

    def test_unreadable_source_is_one_source_error_naming_the_system(
        self, connector_factory: ConnectorFactory, seed: RowsSink, break_source: Callable[[], None]
    ) -> None:
        seed(contract_rows(1, 3))
        break_source()
        with pytest.raises(SourceError) as info:
            read_batches(connector_factory())
        assert info.value.system == SYSTEM
        assert SYSTEM in str(info.value) and info.value.source and info.value.cause
