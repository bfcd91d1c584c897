"""Appends from several processes and threads at once keep one valid chain with no gap, on SQLite
and on the real PostgreSQL: the chain head is serialised by the database, not by a Python lock."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway import audit
from gateway.audit_verify import verify_store
from gateway.errors import StoreError
from gateway.site import Site
from gateway.store import Base

ENTRIES = Base.metadata.tables["audit_entries"]
SUBJECTS = Base.metadata.tables["audit_subjects"]
CHECKPOINTS = Base.metadata.tables["audit_checkpoints"]

# Each worker is its own interpreter with its own engine: nothing is shared but the database.
WORKER = r"""
import hashlib, sys, threading
from gateway import audit
from gateway.site import Site

config, mode, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
site = Site.from_config(config)
actor = "job:" + name
key = lambda i: "bi1:" + hashlib.sha256(f"{name}/{i}".encode()).hexdigest()

def entry(i):
    return {"actor": actor, "action": "sync.deliver", "subject_keys": [key(i)], "detail": {"i": i}}

if mode == "record":          # one short transaction per entry (the API's audited-before-response mode)
    for i in range(count):
        audit.record(site, **entry(i))
elif mode == "batch":         # append_many, 5 per transaction
    for i in range(0, count, 5):
        audit.append_many(site, [entry(j) for j in range(i, min(i + 5, count))])
elif mode == "session":       # inside the caller's transaction, two entries per transaction
    for i in range(0, count, 2):
        with site.begin() as session:
            audit.record(session, site=site, **entry(i))
            audit.record(session, site=site, **entry(i + 1))
elif mode == "writer":        # AuditWriter fed by three threads
    with audit.AuditWriter(site, max_entries=7, max_delay_ms=5) as writer:
        def feed(t):
            for i in range(t, count, 3):
                writer.add(**entry(i))
        threads = [threading.Thread(target=feed, args=(t,)) for t in range(3)]
        for t in threads: t.start()
        for t in threads: t.join()
site.engine.dispose()
"""

PER_WORKER = 40
WORKERS = [("record", "a"), ("batch", "b"), ("session", "c"), ("writer", "d"), ("record", "e")]


def _check_chain(site: Site, expected: Counter) -> None:
    report = verify_store(site)
    assert report.ok, [p.message for p in report.sorted_problems()[:5]]
    total = sum(expected.values())
    with site.engine.connect() as conn:
        seqs = conn.execute(select(ENTRIES.c.seq).order_by(ENTRIES.c.seq)).scalars().all()
        actors = Counter(conn.execute(select(ENTRIES.c.actor)).scalars().all())
        subjects = conn.execute(select(SUBJECTS.c.entry_seq)).scalars().all()
    assert seqs == list(range(1, total + 1))  # dense: no gap, no duplicate
    assert actors == expected
    assert len(subjects) == total
    assert audit.head(site)["seq"] == total


def test_appends_from_several_processes_keep_one_chain(make_site, tmp_path: Path) -> None:
    site = make_site({"audit": {"checkpoint_every": 17}})
    config = site.base_dir / "gateway.toml"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(config), mode, name, str(PER_WORKER)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode, name in WORKERS
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    _check_chain(site, Counter({f"job:{name}": PER_WORKER for _mode, name in WORKERS}))
    # automatic checkpoints were signed along the way, each decided under the head lock: never two
    # at one seq and never sooner than checkpoint_every after the previous one
    with site.engine.connect() as conn:
        cps = conn.execute(select(CHECKPOINTS.c.seq).order_by(CHECKPOINTS.c.seq)).scalars().all()
    gaps = [b - a for a, b in zip(cps, cps[1:], strict=False)]
    assert len(cps) >= 5 and min(gaps) >= 17  # the first one signs whatever batch came first


def test_appends_from_threads_of_one_process(make_site) -> None:
    site = make_site({"audit": {"checkpoint_every": 10}})
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for i in range(25):
                key = "bi1:" + hashlib.sha256(f"{name}/{i}".encode()).hexdigest()
                audit.record(site, actor=f"user:{name}", action="api.lookup", subject_keys=[key])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    _check_chain(site, Counter({f"user:t{n}": 25 for n in range(4)}))


def test_verification_during_appends_sees_a_consistent_snapshot(make_site) -> None:
    site = make_site({"audit": {"checkpoint_every": 3}})
    stop = threading.Event()
    failures: list[str] = []

    def append() -> None:
        while not stop.is_set():
            audit.append_many(site, [{"actor": "job:x", "action": "sync.run"}] * 3)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        for _ in range(5):
            report = verify_store(site)
            if not report.ok:
                failures += [p.message for p in report.sorted_problems()[:3]]
    finally:
        stop.set()
        writer.join()
    assert failures == []
    assert verify_store(site).ok


def _reads_then_records(site: Site, session, others: list[threading.Thread]) -> int:
    session.execute(select(ENTRIES.c.seq).limit(1)).all()  # the request's reads come first
    other = threading.Thread(
        target=audit.record, args=(site,), kwargs={"actor": "job:other", "action": "sync.run"}
    )
    others.append(other)
    other.start()  # another writer, committing meanwhile (or waiting for us)
    other.join(timeout=1)
    return audit.record(session, site=site, actor="dept:education", action="api.lookup")


def test_read_then_record_on_a_stale_sqlite_snapshot_gets_a_clear_error(make_site) -> None:
    site = make_site()
    audit.record(site, actor="job:x", action="sync.run")
    others: list[threading.Thread] = []
    if site.engine.dialect.name != "sqlite":
        # PostgreSQL (READ COMMITTED) re-reads the locked head row: reads first are harmless there.
        with site.begin() as session:
            seq = _reads_then_records(site, session, others)
        others[0].join()
        assert seq == 3 and verify_store(site).ok
        return
    with pytest.raises(StoreError, match=r"audit\.transaction\(site\)"), site.begin() as session:
        _reads_then_records(site, session, others)
    others[0].join()
    assert audit.count(site) == 2 and verify_store(site).ok


def test_audit_transaction_takes_the_lock_before_the_reads(make_site) -> None:
    site = make_site()
    audit.record(site, actor="job:x", action="sync.run")
    others: list[threading.Thread] = []
    with audit.transaction(site) as session:
        seq = _reads_then_records(site, session, others)
        waiting = others[0].is_alive()
    others[0].join()
    sqlite = site.engine.dialect.name == "sqlite"
    assert waiting == sqlite  # on SQLite the other writer waited for our commit
    assert seq == (2 if sqlite else 3) and audit.count(site) == 3 and verify_store(site).ok
