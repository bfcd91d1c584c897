"""A sample third-party gateway plugin: a connector, a transform and a command."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import click

from gateway.connectors import Batch, Connector, Row, WriteResult
from gateway.hookspecs import hookimpl


class MemoryConnector(Connector):
    """Rows kept in this process, by store name; the cursor is the number of rows read."""

    name = "memory"
    options = ("store",)
    stores: ClassVar[dict[str, list[dict[str, Any]]]] = {}

    def _rows(self) -> list[dict[str, Any]]:
        return self.stores.setdefault(self.config.get("store", "default"), [])

    def read(self, cursor: Any = None, batch_size: int = 5000) -> Iterator[Batch]:
        rows = self._rows()
        start = int(cursor or 0)
        for i in range(start, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            yield Batch(
                [Row(f"row {i + n + 1}", dict(r)) for n, r in enumerate(chunk)], i + len(chunk)
            )

    def write(self, rows: Sequence[Mapping[str, Any]], key: Sequence[str]) -> WriteResult:
        stored = self._rows()
        index = {tuple(r[k] for k in key): n for n, r in enumerate(stored)}
        result = WriteResult()
        for row in rows:
            at = index.get(tuple(row[k] for k in key))
            if at is None:
                index[tuple(row[k] for k in key)] = len(stored)
                stored.append(dict(row))
                result.inserted += 1
            elif stored[at] == dict(row):
                result.unchanged += 1
            else:
                stored[at] = dict(row)
                result.updated += 1
        return result


@hookimpl
def register_connectors() -> list[type[Connector]]:
    return [MemoryConnector]


@hookimpl
def register_transforms() -> dict[str, Any]:
    return {"shout": lambda value, **params: str(value).upper() + params.get("suffix", "")}


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.command("memory-hello")
    @click.argument("name")
    def memory_hello(name: str) -> None:
        """Greet from the memory plugin."""
        click.echo(f"hello {name} from gateway-memory-plugin")
