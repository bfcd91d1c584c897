"""What every connector is: batches of native rows with their positions, and idempotent writes.

Connectors live in plugins (``plugins/sql.py``, ``csv``, ``xlsx``, ``http``) and are found through
the ``register_connectors`` hook; the sync engine only knows this interface.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, overload


@dataclass(slots=True)
class Row:
    """One native row. ``position`` says where it came from: ``file.csv:17``, ``Sheet1!A23``, ``id=42``."""

    position: str
    data: dict[str, Any]
    # A problem found while reading (wrong column count, Excel-damaged ID cell): the row goes to
    # quarantine with this reason instead of being mapped. (field, reason_code, message)
    problems: list[tuple[str, str, str]] = field(default_factory=list)


class LazyRows(Sequence[Row]):
    """Rows built only when asked for: a connector that can tell unchanged rows apart by their
    bytes (``RawRecords``) gives these, so rows the sync recognises are never parsed. ``take``
    builds many at once (cheaper than one by one); a built row is kept."""

    def __len__(self) -> int:
        raise NotImplementedError

    def take(self, indexes: Sequence[int]) -> list[Row]:
        """The rows at ``indexes`` (in that order), built together."""
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> Row: ...

    @overload
    def __getitem__(self, index: slice) -> list[Row]: ...

    def __getitem__(self, index: int | slice) -> Row | list[Row]:
        n = len(self)
        if isinstance(index, slice):
            return self.take(range(*index.indices(n)))
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("row index out of range")
        return self.take([index])[0]

    def __iter__(self) -> Iterator[Row]:
        return iter(self.take(range(len(self))))

    # What code written for ``list[Row]`` does with batch.rows keeps working (as lists).
    def __add__(self, other: Sequence[Row]) -> list[Row]:
        return list(self) + list(other)

    def __radd__(self, other: Sequence[Row]) -> list[Row]:
        return list(other) + list(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LazyRows | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment] - mutable, like a list

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r})"


@dataclass(slots=True)
class RawRecords:
    """The exact source bytes of each row of a batch, for telling unchanged rows apart without
    building them: ``records[i]`` is row i's bytes; ``forms`` lists ``(first row index, form)``
    ascending, where ``form`` names everything else that decides a row's data from its bytes
    (format, encoding, dialect, header). Equal form and equal bytes must mean equal row data."""

    records: Sequence[bytes]
    forms: Sequence[tuple[int, str]]


@dataclass(slots=True)
class Batch:
    rows: Sequence[Row]  # a list, or LazyRows
    # JSON-serialisable position after this batch; stored with the batch in one transaction so a
    # run that dies resumes here. None when the source has no incremental position.
    cursor: Any = None
    # Optional (connectors that can): the rows' source bytes, one record per row.
    raw: RawRecords | None = None


@dataclass(slots=True)
class WriteResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass
class ConnectorContext:
    """What a connector may use from the gateway: the system's name (for error messages), the
    working directory relative paths resolve against, and the signed HTTP client factory."""

    system: str
    base_dir: str = "."
    extras: dict[str, Any] = field(default_factory=dict)


class Connector:
    """Base class; subclasses set ``name`` and implement ``read`` and/or ``write``.

    ``options`` is the system's table from gateway.toml (``path``, ``url``, ``table``, ``cursor`` ...).
    Errors a user can cause are raised as ``gateway.errors.SourceError`` (or ``TransientSourceError``
    for what is worth retrying), naming the system, the source and the cause - never a traceback.
    """

    name: ClassVar[str] = ""
    # Option names this connector understands; config validation rejects others.
    options: ClassVar[Sequence[str]] = ()

    def __init__(self, options: Mapping[str, Any], context: ConnectorContext):
        self.config = dict(options)
        self.context = context

    def read(self, cursor: Any = None, batch_size: int = 5000) -> Iterator[Batch]:
        """Yield batches after ``cursor`` (None: from the beginning)."""
        raise NotImplementedError(f"connector {self.name} cannot read")

    def write(self, rows: Sequence[Mapping[str, Any]], key: Sequence[str]) -> WriteResult:
        """Upsert ``rows`` keyed by ``key`` (native field names); writing the same rows twice
        changes nothing the second time."""
        raise NotImplementedError(f"connector {self.name} cannot write")

    def close(self) -> None:
        """Release connections and file handles."""
