"""The API's group commit on the real stores: concurrent requests' nonces and audit entries land in
shared transactions, the chain stays whole, replays are caught, failures reach every waiter."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy.engine import make_url

from gateway import audit
from gateway.audit_verify import verify_store
from gateway.site import Site
from gateway.web.commit import GroupCommitter, Replayed
from tests.fixtures.sites import write_site

EXPIRES = dt.datetime(2099, 1, 1)


def event(i: int, action: str = "api.lookup") -> audit.AuditEvent:
    return audit.AuditEvent.create(
        actor="dept:education",
        action=action,
        outcome="refused" if action == "api.refused" else "ok",
        dataset="poverty",
        purpose="stats",
        subject_keys=[f"bi-1:{i:064x}"],
        detail={"n": i},
    )


def run_concurrently(count: int, work) -> list[BaseException | None]:
    barrier = threading.Barrier(count)
    results: list[BaseException | None] = [None] * count

    def one(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_commits_share_transactions_and_keep_the_chain(site) -> None:
    committer = GroupCommitter(site)
    results = run_concurrently(
        40, lambda i: committer.commit(("edu-1", f"nonce-{i:04d}", EXPIRES), [event(i)])
    )
    assert results == [None] * 40
    assert committer.items == 40 and committer.batches < 40  # batched under contention
    assert audit.count(site, action="api.lookup") == 40
    report = verify_store(site)
    assert report.entries == 40 and not report.problems
    for i in (0, 39):
        keys = [f"bi-1:{i:064x}"]
        assert [e["detail"] for e in audit.subject_report(site, subject_keys=keys)] == [{"n": i}]


def test_a_replayed_nonce_gets_its_refusal_written_instead(site) -> None:
    committer = GroupCommitter(site)
    committer.commit(("edu-1", "used-once-0001", EXPIRES), [event(1)])
    with pytest.raises(Replayed):
        committer.commit(
            ("edu-1", "used-once-0001", EXPIRES), [event(2)], [event(3, "api.refused")]
        )
    # Twice in flight at once: exactly one goes through.
    results = run_concurrently(
        6,
        lambda i: committer.commit(
            ("edu-1", "same-nonce-0002", EXPIRES), [event(10 + i)], [event(20 + i, "api.refused")]
        ),
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, Replayed) for r in results if r is not None)
    assert audit.count(site, action="api.lookup") == 2
    assert audit.count(site, action="api.refused") == 6
    # Entries without a nonce (after an early commit_nonce) are simply written.
    committer.commit(None, [event(99)])
    assert audit.count(site, action="api.lookup") == 3


def test_a_store_failure_reaches_every_waiter_and_the_next_commit(tmp_path) -> None:
    broken = Site.from_config(
        write_site(tmp_path / "broken", f"sqlite:///{tmp_path / 'missing' / 'store.db'}")
    )
    committer = GroupCommitter(broken)
    results = run_concurrently(5, lambda i: committer.commit(None, [event(i)]))
    assert all(r is not None and not isinstance(r, Replayed) for r in results)
    with pytest.raises(Exception) as info:  # noqa: PT011 - the driver's own error
        committer.commit(None, [event(9)])
    assert "unable to open database" in str(info.value)


def test_expired_nonces_are_purged_and_live_ones_kept(site) -> None:
    from gateway.store.api import purge_nonces, remember_nonce

    now = dt.datetime(2026, 1, 1, 12, 0)
    with site.begin() as session:
        assert remember_nonce(session, "edu-1", "old-nonce-01", now - dt.timedelta(seconds=1))
        assert remember_nonce(session, "edu-1", "live-nonce-1", now + dt.timedelta(seconds=300))
    with site.begin() as session:
        assert purge_nonces(session, now) == 1
    with site.begin() as session:
        # The live one is still a replay; the purged one's window has passed (its timestamp
        # would be refused as expired before the nonce is looked at).
        assert not remember_nonce(session, "edu-1", "live-nonce-1", now)
        assert remember_nonce(session, "edu-1", "old-nonce-01", now)


def test_two_committers_sharing_the_store_keep_one_chain_and_catch_replays(site) -> None:
    """Two gunicorn workers in miniature: each committer keeps its own view of the chain head (on
    PostgreSQL), so each moves the head under the other's feet; a nonce both try is one replay."""
    first, second = GroupCommitter(site), GroupCommitter(site)

    def work(i: int) -> None:
        committer = first if i % 2 else second
        committer.commit(("edu-1", f"two-{i:04d}", EXPIRES), [event(i)])

    assert run_concurrently(30, work) == [None] * 30
    results = run_concurrently(
        4,
        lambda i: (first if i % 2 else second).commit(
            ("edu-1", "shared-nonce-1", EXPIRES), [event(100 + i)], [event(200 + i, "api.refused")]
        ),
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, Replayed) for r in results if r is not None)
    # One more from each after the other moved the head: both find where it is now.
    first.commit(("edu-1", "after-1", EXPIRES), [event(300)])
    second.commit(("edu-1", "after-2", EXPIRES), [event(301)])
    assert audit.count(site, action="api.lookup") == 33
    assert audit.count(site, action="api.refused") == 3
    report = verify_store(site)
    assert report.entries == 36 and not report.problems


def test_a_batch_due_for_a_checkpoint_is_signed(make_site) -> None:
    site = make_site({"audit": {"checkpoint_every": 5}})
    committer = GroupCommitter(site)
    for i in range(12):
        committer.commit(("edu-1", f"cp-{i:04d}", EXPIRES), [event(i)])
    report = verify_store(site)
    assert report.entries == 12 and not report.problems
    assert report.checkpoints >= 2


def _pg_only(site) -> None:
    if site.engine.dialect.name != "postgresql":
        pytest.skip(
            "the one-statement batch, the host's turns and the flush barrier are PostgreSQL's"
        )


def test_committers_of_one_host_take_turns_and_pass_the_head(site, monkeypatch) -> None:
    """Two workers of one host: each batch starts from the head the other left in the hint, so
    no batch statement misses a head the other moved (one statement per batch)."""
    _pg_only(site)
    from gateway.web import commit

    statements: list[str] = []
    execute = commit._PgWriter._execute

    def counted(self, sql, params):
        statements.append(sql)
        return execute(self, sql, params)

    monkeypatch.setattr(commit._PgWriter, "_execute", counted)
    first, second = GroupCommitter(site), GroupCommitter(site)
    first.commit(("edu-1", "turn-start", EXPIRES), [event(0)])  # the chain's first entry
    first.commit(("edu-1", "turn-read", EXPIRES), [event(0)])  # reads the head it left
    statements.clear()
    for i in range(1, 11):
        (first if i % 2 else second).commit(("edu-1", f"turn-{i:04d}", EXPIRES), [event(i)])
    assert statements.count(commit._BATCH_SQL) == 10
    assert len(statements) == 10  # not even a read of the head
    report = verify_store(site)
    assert report.entries == 12 and not report.problems


def test_a_forged_head_hint_costs_a_retry_not_a_wrong_link(site, store_url) -> None:
    _pg_only(site)
    from gateway.web import commit

    first = GroupCommitter(site)
    first.commit(("edu-1", "hint-0", EXPIRES), [event(0)])
    first.commit(("edu-1", "hint-1", EXPIRES), [event(1)])
    path = first._pg._turn.path
    # The file the pg_url fixture removes when it drops the database (no lock file left behind).
    assert path == commit.hint_file(make_url(store_url).render_as_string(hide_password=True))
    assert path.exists()
    forged = f"7 {'ab' * 32} 2026-01-01T00:00:00 0 -".encode().ljust(256)
    for text in (forged, b"garbage", b""):
        path.write_bytes(text)
        second = GroupCommitter(site)  # a new process: its own view of the head
        second.commit(("edu-1", f"hint-{len(text)}-{text[:3]!r}", EXPIRES), [event(2)])
    report = verify_store(site)
    assert report.entries == 5 and not report.problems


def test_a_hint_file_of_another_user_or_readable_by_others_is_not_used(site, monkeypatch) -> None:
    _pg_only(site)
    from gateway.web import commit

    turn = commit._HostTurn("postgresql+psycopg://x@db/other-" + str(id(site)))
    turn.path.write_bytes(b"")
    turn.path.chmod(0o644)
    try:
        with turn:
            assert turn._fd is None  # not used: the committers race as before
    finally:
        turn.path.unlink()


def test_an_answer_waits_until_its_batch_is_flushed_to_disk(site, monkeypatch) -> None:
    """The batch statement commits without waiting for its WAL flush (the head's lock is not held
    through it); the barrier after it returns only once the WAL is flushed past the batch."""
    _pg_only(site)
    import sqlalchemy as sa

    from gateway.web import commit

    written: list[str] = []
    flush = commit._PgWriter._flush

    def watched(self) -> None:
        with site.engine.connect() as conn:  # past the batch's commit record
            written.append(conn.execute(sa.text("SELECT pg_current_wal_insert_lsn()")).scalar())
        flush(self)

    monkeypatch.setattr(commit._PgWriter, "_flush", watched)
    committer = GroupCommitter(site)
    committer.commit(("edu-1", "flush-first", EXPIRES), [event(0)])  # general path: synchronous
    for i in range(3):
        written.clear()
        committer.commit(("edu-1", f"flush-{i}", EXPIRES), [event(i)])
        assert len(written) == 1
        with site.engine.connect() as conn:
            flushed_past = conn.execute(
                sa.text("SELECT pg_current_wal_flush_lsn() >= CAST(:lsn AS pg_lsn)"),
                {"lsn": written[-1]},
            ).scalar()
        assert flushed_past


def test_a_server_refusing_the_flush_barrier_fails_that_batch_then_commits_synchronously(
    site, monkeypatch
) -> None:
    _pg_only(site)
    from gateway.errors import StoreError
    from gateway.web import commit

    committer = GroupCommitter(site)
    committer.commit(("edu-1", "barrier-0", EXPIRES), [event(0)])  # general path
    monkeypatch.setattr(commit, "_FLUSH_SQL", "SELECT gateway_no_such_function()")
    with pytest.raises(StoreError):
        committer.commit(("edu-1", "barrier-1", EXPIRES), [event(1)])
    committer.commit(("edu-1", "barrier-2", EXPIRES), [event(2)])  # synchronous: no barrier
    report = verify_store(site)
    assert not report.problems
