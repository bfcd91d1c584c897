"""``gateway id check``: normalise and validate document numbers from the command line or stdin.

Needs no site configuration. Valid numbers are printed masked unless ``--show``; an invalid input is
never echoed, only its reason.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

import click

from .. import ids
from ..errors import EXIT_PROBLEMS


@click.group("id")
def id_group() -> None:
    """Resident ID numbers (GB 11643) and other identity documents."""


def _stdin_lines() -> Iterator[str]:
    """One value per line. UTF-8, else GB 18030 (files from Chinese Windows), line by line."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # stdin replaced by a text-only stream: already decoded
        for text in sys.stdin:
            yield text.rstrip("\r\n")
        return
    for raw in stream:
        line = raw.rstrip(b"\r\n")
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError:
            yield line.decode("gb18030", errors="replace")


def _inputs(values: Iterable[str]) -> Iterator[str]:
    for value in values:
        if value == "-":
            yield from _stdin_lines()
        else:
            yield value


def _line(result: ids.IdResult, show: bool) -> str:
    if not result.ok:
        return f"INVALID {result.code}: {result.message}"
    if result.value is None:
        return "OK (blank: document type Z without a number)"
    shown = result.value if show else ids.mask(result.value)
    return f"OK {shown}" + (" converted-from-15" if result.converted else "")


@id_group.command("check")
@click.argument("values", nargs=-1, required=True, metavar="ID...")
@click.option(
    "--type",
    "id_type",
    type=click.Choice(list(ids.DOCUMENT_TYPES), case_sensitive=False),
    default="1",
    show_default=True,
    help="Document type (身份证件类型): 1 resident ID, 6 Hong Kong, 7 Macao, 8 Taiwan, "
    "9 foreign permanent residence, A passport, Z other.",
)
@click.option("--show", is_flag=True, help="Print valid numbers in full (masked by default).")
def check_command(values: tuple[str, ...], id_type: str, show: bool) -> None:
    """Check each ID (``-`` reads one per line from stdin, which also keeps the numbers out of
    the shell history and the process list).

    Prints one line per input: ``OK <number>`` (`` converted-from-15`` for a legacy number) or
    ``INVALID <code>: <reason>``. Exit status 1 if any input is invalid.
    """
    id_type = id_type.upper()
    invalid = 0
    for value in _inputs(values):
        result = ids.check(value, id_type)
        invalid += not result.ok
        click.echo(_line(result, show))
    if invalid:
        click.get_current_context().exit(EXIT_PROBLEMS)
