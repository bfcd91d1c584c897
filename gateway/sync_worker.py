"""The reading worker of a first ingest: a child process reads, maps, validates, keys, hashes and
fingerprints the batches while the run's own process seals and writes them (two cores, not one).

Only where that is safe and pays (``usable``): the source has no row stored but those of this
snapshot's own earlier batches (a resumed first ingest), so every keyed row is inserted or is a
later duplicate and no fingerprint needs looking up (JobRunner._fresh_source); the source is a
local file (CSV, XLSX), whose reader shares nothing with the parent; POSIX ``fork``; and no thread
but the run's lease heartbeat and a progress bar's is alive (a fork copies locks other threads
may hold).

The worker never touches the store: everything it makes goes through a pipe to the parent, which
looks up, writes and commits each batch with its cursor and audit entry exactly as without it. So
a kill at any point leaves the store as a kill of a single process would. The worker dies with the
parent (PR_SET_PDEATHSIG on Linux, else on the broken pipe of its next batch), is killed by the
parent when the reading ends early (stop, failure), and never outlives a run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import Pipe
from typing import TYPE_CHECKING, Any

from .connectors import Row
from .errors import GatewayError, SourceError, TransientSourceError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from .connectors import Connector

# Connectors whose reading is private to the process that reads (files on local disk).
FILE_CONNECTORS = frozenset({"CsvConnector", "XlsxConnector"})
# Set to "0" to keep a run in one process (debugging, per-stage timings).
ENV = "GATEWAY_SYNC_WORKER"


@dataclass(slots=True)
class Prepared:
    """One batch as the worker made it (``JobRunner._prepare``)."""

    cursor: Any
    count: int  # rows read
    positions: tuple[str, str]  # of the first and the last row
    rows: bytes  # the native rows, pickled: opened only if one must be quarantined
    # (row index, stage, field, reason, message) of the rows quarantined while mapping
    quarantine: list[tuple[int, str, str | None, str, str]]
    keep: list[str]  # record keys of quarantined rows whose stored row stays
    pending: list[tuple[int, str, str, str, bytes | None]]  # (index, record key, subject key,
    # content hash, fingerprint) of the keyed rows, first of each key only
    records: list[dict[str, Any]]  # their records: the parent seals them (it waits for the
    # worker otherwise: ~13 µs per row each with sealing there, 17.5 and 12 with it here)


class Rows(Sequence[Row]):
    """A prepared batch's native rows, unpickled on first use (the common batch never needs
    them: rows are only needed to quarantine one)."""

    def __init__(self, prepared: Prepared):
        self._prepared = prepared
        self._rows: list[Row] | None = None

    def __len__(self) -> int:
        return self._prepared.count

    def __getitem__(self, i: Any) -> Any:
        if self._rows is None:
            self._rows = [Row(p, d, pr) for p, d, pr in pickle.loads(self._prepared.rows)]
        return self._rows[i]

    def ref(self, i: int) -> RowRef:
        return RowRef(self, i)


class RowRef:
    """Row ``i`` of ``Rows``, read through only when used."""

    __slots__ = ("_rows", "_i")

    def __init__(self, rows: Rows, i: int):
        self._rows, self._i = rows, i

    @property
    def position(self) -> str:
        return self._rows[self._i].position

    @property
    def data(self) -> dict[str, Any]:
        return self._rows[self._i].data

    @property
    def problems(self) -> list[tuple[str, str, str]]:
        return self._rows[self._i].problems


def usable(connector: Connector) -> bool:
    if os.environ.get(ENV) == "0" or not hasattr(os, "fork") or os.cpu_count() == 1:
        return False
    if type(connector).__name__ not in FILE_CONNECTORS:
        return False
    if not type(connector).__module__.startswith("gateway_plugins."):
        return False
    # A fork copies every lock, held or not, but only the forking thread: another thread inside
    # OpenSSL (another run, the API) could leave one held that the worker then waits on forever.
    # Allowed beside the run: its lease heartbeat (SQLite only) and a terminal progress bar's
    # refresh thread (stderr only; the worker never writes there, see _child_setup).
    me = threading.current_thread()
    return all(
        t is me or t.name.startswith("lease-") or type(t).__name__ == "_RefreshThread"
        for t in threading.enumerate()
    )


def batches(
    prepare: Any, connector: Connector, cursor: Any, batch_size: int, system: str
) -> Iterator[Prepared]:
    """The batches of ``connector.read(cursor, batch_size)``, each passed through ``prepare`` in
    a child process (``system``: the source's name, for errors). Gateway errors raised there are
    raised here again (a TransientSourceError keeps its retry); anything else fails the run."""
    receive, send = Pipe(duplex=False)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the worker
        code = 0
        try:
            receive.close()
            _child_setup(parent)
            _child(prepare, connector, cursor, batch_size, send)
        except BaseException:  # noqa: BLE001 - nothing may escape into the parent's code
            code = 1
        finally:
            os._exit(code)  # no atexit, no finalizers: they could touch the parent's store handles
    send.close()
    done = False
    try:
        while True:
            try:
                message = pickle.loads(receive.recv_bytes())
            except EOFError:
                raise SourceError(system, "reading worker", "ended without a word") from None
            kind = message[0]
            if kind == "batch":
                yield message[1]
            elif kind == "end":
                done = True
                return
            elif kind == "source":
                _, transient, *parts = message
                raise (TransientSourceError if transient else SourceError)(*parts)
            elif kind == "raise":
                raise message[1]
            else:
                raise SourceError(system, "reading worker", message[1])
    finally:
        receive.close()
        if not done:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _child_setup(parent: int) -> None:
    # The parent decides when a run stops (SIGINT/SIGTERM handlers set its stop event); the worker
    # ends when the parent kills it or goes away.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Its errors go through the pipe; a log line could wait on a stderr lock a thread of the
    # parent held at the fork.
    logging.disable(logging.CRITICAL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def _child(prepare: Any, connector: Connector, cursor: Any, batch_size: int, send: Connection):
    def put(message: tuple[Any, ...]) -> None:
        send.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    try:
        for batch in connector.read(cursor, batch_size):
            put(("batch", prepare(batch)))
        put(("end",))
    except (BrokenPipeError, EOFError):
        raise
    except SourceError as exc:  # its __init__ takes three parts: not picklable as it is
        put(("source", isinstance(exc, TransientSourceError), exc.system, exc.source, exc.cause))
    except GatewayError as exc:
        try:
            pickle.loads(pickle.dumps(exc))
            put(("raise", exc))
        except Exception:  # noqa: BLE001 - an error class pickle cannot rebuild
            put(("error", str(exc)))
    except Exception as exc:  # noqa: BLE001 - reported, not lost; its text may hold row values
        put(("error", f"failed: {exc.__class__.__name__}"))
    finally:
        send.close()
