"""The source database goes away mid-run: the real PostgreSQL behind a TCP proxy that the test cuts.
The run fails with a clear one-line cause after its retries; the next run completes, nothing lost."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from gateway.site import Site
from gateway.store import Base
from gateway.store.jobs import Run
from gateway.store.records import Resident
from gateway.sync import SyncFailed, run_job
from tests.fixtures.sites import write_site
from tests.syncdata import job_config, known_secrets, people, write_mappings, write_source


class Proxy:
    """A TCP forwarder to the database; ``cut()`` closes it and every connection through it."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = 0
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown wakes the thread blocked in accept(): close() alone does not, on Linux
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()


@pytest.mark.postgres
def test_source_database_down_mid_run_then_resume(pg_url, tmp_path: Path):
    rows = people(600)
    write_source(pg_url, rows)
    url = make_url(pg_url)
    proxy = Proxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    through_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
    config = job_config(through_proxy, batch_size=50, retries=2)
    path = write_site(tmp_path / "site", f"sqlite:///{tmp_path / 'site' / 'store.db'}", config)
    write_mappings(tmp_path / "site")
    site = Site.from_config(path)
    Base.metadata.create_all(site.engine)

    class CutAfterThree:
        def start(self, summary):
            self.n = 0

        def advance(self, summary):
            self.n += 1
            if self.n == 3:
                proxy.cut()

        def finish(self, summary):
            pass

    with pytest.raises(SyncFailed) as failed:
        run_job(site, "residents", progress=CutAfterThree())
    message = str(failed.value)
    assert "\n" not in message and "registry" in message, message
    assert "Traceback" not in message
    for secret in known_secrets(rows):
        assert secret not in message
    with site.begin() as s:
        run = s.execute(sa.select(Run).order_by(Run.id.desc())).scalars().first()
        assert run.status == "failed" and run.error and run.read == 150
        assert run.read == run.inserted + run.unchanged + run.updated + run.quarantined

    proxy.start()  # the database is back (same port)
    resumed = run_job(site, "residents")
    assert resumed.status == "succeeded" and resumed.resumed_from == run.id
    assert (resumed.read, resumed.inserted, resumed.removed) == (450, 450, 0)
    with site.begin() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Resident)).scalar_one() == 600
        assert not s.execute(
            sa.select(sa.func.count()).where(Resident.removed.is_(True))
        ).scalar_one()
    proxy.cut()
    site.engine.dispose()
