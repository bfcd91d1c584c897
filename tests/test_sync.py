"""The sync engine end to end: a real SQL source, the real store (SQLite and PostgreSQL), a real
target table; counts that add up, diffs, removals, duplicates, quarantine, dry runs, resumes."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from gateway.errors import ConfigError, SourceError
from gateway.store.jobs import JobCursor, QuarantineRow, Run, SnapshotSeen
from gateway.store.records import Resident
from gateway.sync import RunSummary, SyncFailed, run_job
from tests.syncdata import (
    create_target,
    dump_store_text,
    file_job_config,
    job_config,
    known_secrets,
    people,
    read_table,
    write_mappings,
    write_source,
)


@pytest.fixture
def urls(tmp_path):
    return f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'target.db'}"


def _site(make_site, urls, **kw):
    source, target = urls
    create_target(target)
    site = make_site(job_config(source, target_url=target, **kw))
    write_mappings(site.base_dir)
    return site


def _url(site) -> str:
    return site.engine.url.render_as_string(hide_password=False)


def _stored(site) -> list[Resident]:
    with site.begin() as s:
        return list(s.execute(sa.select(Resident).order_by(Resident.id)).scalars())


def _check_adds_up(summary: RunSummary) -> None:
    assert summary.adds_up, summary
    assert (
        summary.read == summary.inserted + summary.updated + summary.unchanged + summary.quarantined
    )


def test_first_snapshot_stores_protects_and_delivers(make_site, urls):
    rows = people(250)
    write_source(urls[0], rows)
    site = _site(make_site, urls)
    summary = run_job(site, "residents")
    _check_adds_up(summary)
    assert (summary.status, summary.read, summary.inserted, summary.quarantined) == (
        "succeeded",
        250,
        250,
        0,
    )
    assert summary.delivered == 250
    stored = _stored(site)
    assert len(stored) == 250
    first = stored[0]
    assert first.subject_key.count(":") == 1 and len(first.content_hash) == 64
    assert first.id_masked == rows[0]["sfzh"][:6] + "********" + rows[0]["sfzh"][-4:]
    # Sealed columns open back to the source's values, bound to the subject key.
    p = site.protector
    assert (
        p.open(first.id_number, dataset="residents", field="id_number", record=first.subject_key)
        == rows[0]["sfzh"]
    )
    assert (
        p.open(first.address, dataset="residents", field="address", record=first.subject_key)
        == rows[0]["zz"]
    )
    # No ID number or name in the clear anywhere in the store.
    text = dump_store_text(_url(site))
    for secret in known_secrets(rows):
        assert secret not in text
    target = read_table(urls[1], "mirror_people", "sfzh")
    assert len(target) == 250 and target[0]["sfzh"] == min(r["sfzh"] for r in rows)
    with site.begin() as s:
        run = s.get(Run, summary.run_id)
        assert (run.status, run.read, run.inserted, run.mapping_version[:2]) == (
            "succeeded",
            250,
            250,
            "1+",
        )
        assert json.loads(run.plugin_versions)
        assert s.get(JobCursor, "residents").snapshot_id is None  # the snapshot finished
        assert s.execute(sa.select(sa.func.count()).select_from(SnapshotSeen)).scalar_one() == 0


def test_unchanged_rerun_writes_nothing_and_reports_unchanged(make_site, urls):
    write_source(urls[0], people(180))
    site = _site(make_site, urls)
    run_job(site, "residents")
    before = read_table(urls[1], "mirror_people", "sfzh")
    stored_before = [(r.id, r.content_hash, r.id_number, r.updated_at) for r in _stored(site)]
    # The target changes behind our back: a re-run over unchanged input must not overwrite it.
    engine = sa.create_engine(urls[1])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE mirror_people SET zz = 'edited by the department'"))
    engine.dispose()
    again = run_job(site, "residents")
    _check_adds_up(again)
    assert (again.read, again.unchanged, again.inserted, again.updated, again.removed) == (
        180,
        180,
        0,
        0,
        0,
    )
    assert again.delivered == 0
    assert {r["zz"] for r in read_table(urls[1], "mirror_people", "sfzh")} == {
        "edited by the department"
    }
    assert len(before) == 180
    # Nothing was rewritten in the store either (same tokens, same timestamps).
    assert [
        (r.id, r.content_hash, r.id_number, r.updated_at) for r in _stored(site)
    ] == stored_before


def test_changes_removals_and_reappearance(make_site, urls):
    write_source(urls[0], people(200))
    site = _site(make_site, urls)
    run_job(site, "residents")
    # 10 people change address, 15 are gone, 5 new ones appear.
    changed = {i: 1 for i in range(0, 10)}
    rows = [r for r in people(205, versions=changed) if not 100 <= r["pid"] < 115]
    write_source(urls[0], rows)
    summary = run_job(site, "residents")
    _check_adds_up(summary)
    assert (
        summary.read,
        summary.inserted,
        summary.updated,
        summary.unchanged,
        summary.removed,
    ) == (
        190,
        5,
        10,
        175,
        15,
    )
    assert summary.delivered == 5 + 10 + 15
    stored = _stored(site)
    assert len(stored) == 205  # removals are marked, never deleted
    assert sum(r.removed for r in stored) == 15
    removed_ids = {r.id_masked for r in stored if r.removed}
    assert len(removed_ids) == 15
    target = {t["sfzh"]: t for t in read_table(urls[1], "mirror_people", "sfzh")}
    assert target[people(1)[0]["sfzh"]]["zz"].endswith("之1")
    # They come back: updated (no longer removed), delivered again.
    write_source(urls[0], people(205, versions=changed))
    back = run_job(site, "residents")
    assert (back.updated, back.removed, back.inserted, back.unchanged) == (15, 0, 0, 190)
    assert not any(r.removed for r in _stored(site))


def test_quarantine_and_duplicates(make_site, urls):
    rows = people(120)
    rows[3]["sfzh"] = rows[3]["sfzh"][:17] + (
        "0" if rows[3]["sfzh"][17] != "0" else "1"
    )  # check digit
    rows[7]["xm"] = "  "
    dup = dict(rows[10], pid=10_000)  # the same person again, later in the input
    dup_same_batch = dict(rows[20], pid=21)  # replaces pid 21 by a copy of 20: same batch
    rows[21] = dup_same_batch
    write_source(urls[0], rows + [dup])
    site = _site(make_site, urls, batch_size=50)
    summary = run_job(site, "residents")
    _check_adds_up(summary)
    assert summary.quarantined == 4 and summary.read == 121 and summary.inserted == 117
    with site.begin() as s:
        q = {r.position: r for r in s.execute(sa.select(QuarantineRow)).scalars()}
    reasons = sorted(r.reason for r in q.values())
    assert reasons == ["bad_check_digit", "duplicate", "duplicate", "required"]
    same = q["people:pid=21"]
    assert same.reason == "duplicate" and "people:pid=20" in same.message
    later = q["people:pid=10000"]
    assert later.reason == "duplicate" and "people:pid=0" in later.message  # its batch's range
    # The raw row is sealed, bound to the quarantine row's uid, never stored in the clear.
    bad = q["people:pid=3"]
    raw = json.loads(
        site.protector.open(bad.row_sealed, dataset="quarantine", field="row", record=bad.uid)
    )
    assert raw["sfzh"] == rows[3]["sfzh"]
    text = dump_store_text(_url(site))
    assert rows[3]["sfzh"] not in text and rows[10]["sfzh"] not in text


def test_quarantined_row_is_not_removed(make_site, urls):
    rows = people(60)
    write_source(urls[0], rows)
    site = _site(make_site, urls)
    run_job(site, "residents")
    rows[5]["csrq"] = None  # still keyed, but now invalid elsewhere? keep it valid: empty name
    rows[5]["xm"] = ""
    write_source(urls[0], rows)
    summary = run_job(site, "residents")
    assert (summary.quarantined, summary.unchanged, summary.removed) == (1, 59, 0)


def test_dry_run_writes_nothing(make_site, urls):
    write_source(urls[0], people(90))
    site = _site(make_site, urls)
    summary = run_job(site, "residents", dry_run=True)
    _check_adds_up(summary)
    assert (summary.dry_run, summary.inserted, summary.run_id) == (True, 90, None)
    assert _stored(site) == []
    assert read_table(urls[1], "mirror_people", "sfzh") == []
    with site.begin() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Run)).scalar_one() == 0
        assert s.get(JobCursor, "residents") is None
    run_job(site, "residents")
    write_source(urls[0], people(80))
    dry = run_job(site, "residents", dry_run=True)
    assert (dry.unchanged, dry.removed) == (80, 10)
    assert not any(r.removed for r in _stored(site))


def test_incremental_mode_follows_the_cursor(make_site, urls):
    write_source(urls[0], people(150))
    site = _site(make_site, urls, mode="incremental", batch_size=40)
    first = run_job(site, "residents")
    assert (first.inserted, first.removed) == (150, 0)
    with site.begin() as s:
        cursor = json.loads(s.get(JobCursor, "residents").cursor)
    assert cursor[1] == 149
    # Nothing new: nothing read.
    assert run_job(site, "residents").read == 0
    # Two rows updated (their gxsj moves past the cursor) and one appended.
    rows = people(151, versions={3: 1, 8: 1})
    write_source(urls[0], rows)
    nxt = run_job(site, "residents")
    _check_adds_up(nxt)
    assert (nxt.read, nxt.updated, nxt.inserted, nxt.removed) == (3, 2, 1, 0)
    # --full re-reads everything and finds it unchanged.
    full = run_job(site, "residents", full=True)
    assert (full.read, full.unchanged) == (151, 151)


def test_failed_source_is_recorded_and_the_next_run_resumes(make_site, urls, tmp_path):
    rows = people(300)
    write_source(urls[0], rows)
    site = _site(make_site, urls, batch_size=50)

    class CutAfter:
        """Drops the source table after 3 batches: the read fails mid-run."""

        def __init__(self):
            self.batches = 0

        def start(self, summary):
            pass

        def advance(self, summary):
            self.batches += 1
            if self.batches == 3:
                engine = sa.create_engine(urls[0])
                with engine.begin() as conn:
                    conn.execute(sa.text("ALTER TABLE people RENAME TO people_away"))
                engine.dispose()

        def finish(self, summary):
            pass

    with pytest.raises(SyncFailed) as failed:
        run_job(site, "residents", progress=CutAfter())
    message = str(failed.value)
    assert "failed" in message and "\n" not in message
    for secret in known_secrets(rows):
        assert secret not in message
    with site.begin() as s:
        run = s.execute(sa.select(Run).order_by(Run.id.desc())).scalars().first()
        assert run.status == "failed" and run.error and run.read == 150
        assert run.read == run.inserted + run.updated + run.unchanged + run.quarantined
    engine = sa.create_engine(urls[0])
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE people_away RENAME TO people"))
    engine.dispose()
    resumed = run_job(site, "residents")
    _check_adds_up(resumed)
    assert resumed.resumed_from == run.id
    assert (resumed.read, resumed.inserted, resumed.removed) == (150, 150, 0)
    stored = _stored(site)
    assert len(stored) == 300 and not any(r.removed for r in stored)
    assert len(read_table(urls[1], "mirror_people", "sfzh")) == 300


def test_unknown_job_is_a_config_error(make_site, urls):
    site = _site(make_site, urls)
    with pytest.raises(ConfigError, match="jobs.nope"):
        run_job(site, "nope")


def test_quiet_gc_is_restored_by_the_last_run_out():
    import gc

    from gateway.sync import _quiet_gc

    before = gc.get_threshold()
    first, second = _quiet_gc(), _quiet_gc()
    first.__enter__()
    assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] >= 10_000
    second.__enter__()  # a second run in another thread of the process
    first.__exit__(None, None, None)  # the first ends before it: still quiet for the second
    assert gc.get_threshold()[0] >= 10_000
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def _plain_indexes(site) -> set[str]:
    names = {ix["name"] for ix in sa.inspect(site.engine).get_indexes("residents")}
    return {n for n in names if n in _PLAIN}


_PLAIN = {
    "ix_residents_subject_key",
    "ix_residents_area_code",
    "ix_residents_fingerprint",
    "uq_residents_source_record_key",
}


def test_first_ingest_builds_its_indexes_once_at_its_end(make_site, urls, monkeypatch):
    from gateway.sync_store import DatasetTable

    write_source(urls[0], people(300))
    site = _site(make_site, urls, batch_size=100)
    during: list[set[str]] = []
    insert = DatasetTable.insert

    def spy(self, conn, columns):
        during.append(_plain_indexes(site))
        return insert(self, conn, columns)

    monkeypatch.setattr(DatasetTable, "insert", spy)
    first = run_job(site, "residents")
    assert first.inserted == 300 and len(during) == 3
    # SQLite: a first ingest writes without the table's indexes; PostgreSQL keeps them.
    assert all(d == (set() if site.engine.dialect.name == "sqlite" else _PLAIN) for d in during)
    assert _plain_indexes(site) == _PLAIN
    # A later run into rows of the source keeps them all the way.
    during.clear()
    write_source(urls[0], people(350))
    again = run_job(site, "residents")
    assert again.inserted == 50 and during and all(d == _PLAIN for d in during)
    assert _plain_indexes(site) == _PLAIN


def test_next_run_builds_the_indexes_a_killed_bulk_load_left_out(make_site, urls):
    write_source(urls[0], people(120))
    site = _site(make_site, urls)
    run_job(site, "residents")
    if site.engine.dialect.name != "sqlite":
        pytest.skip("bulk loads drop indexes on SQLite only")
    with site.engine.begin() as conn:  # what a bulk load killed before its end leaves
        for name in sorted(_PLAIN):
            conn.exec_driver_sql(f"DROP INDEX {name}")
    again = run_job(site, "residents")
    assert again.unchanged == 120
    assert _plain_indexes(site) == _PLAIN


def test_failed_bulk_load_still_builds_its_indexes(make_site, urls, monkeypatch):
    from gateway import sync

    write_source(urls[0], people(300))
    site = _site(make_site, urls, batch_size=100)
    calls = 0
    original = sync.JobRunner._batch

    def failing(self, batch):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))
        return original(self, batch)

    monkeypatch.setattr(sync.JobRunner, "_batch", failing)
    with pytest.raises(SyncFailed):
        run_job(site, "residents")
    assert _plain_indexes(site) == _PLAIN
    monkeypatch.setattr(sync.JobRunner, "_batch", original)
    resumed = run_job(site, "residents")
    assert (resumed.resumed_from, resumed.read, resumed.inserted) == (1, 200, 200)
    assert len(_stored(site)) == 300


@pytest.mark.parametrize("clash", ["across batches", "within a batch"])
def test_bulk_load_survives_record_keys_whose_hashes_collide(make_site, urls, monkeypatch, clash):
    from gateway import sync
    from gateway.sync_store import DatasetTable

    rows = people(200)
    write_source(urls[0], rows + [dict(rows[5], pid=10_000)])  # a real duplicate, batch 5
    site = _site(make_site, urls, batch_size=50)
    if site.engine.dialect.name != "sqlite":
        pytest.skip("bulk loads are SQLite only")

    def key(i: int) -> str:
        return site.protector.blind_index(rows[i]["sfzh"])

    clashing = (0, 60) if clash == "across batches" else (110, 111)
    same = {key(i) for i in clashing}
    monkeypatch.setattr(sync, "_key_hash", lambda k: 42 if k in same else hash(k))
    unique_during: list[bool] = []
    insert = DatasetTable.insert

    def spy(self, conn, columns):
        names = {ix["name"] for ix in sa.inspect(conn).get_indexes("residents")}
        unique_during.append("uq_residents_source_record_key" in names)
        return insert(self, conn, columns)

    monkeypatch.setattr(DatasetTable, "insert", spy)
    summary = run_job(site, "residents")
    _check_adds_up(summary)
    assert (summary.read, summary.inserted, summary.quarantined) == (201, 200, 1)
    # From the batch of the clash on, the run looks up through the natural-key index.
    first_with_index = 1 if clash == "across batches" else 2
    assert unique_during == [i >= first_with_index for i in range(4)]  # batch 5: the duplicate
    with site.begin() as s:
        (q,) = s.execute(sa.select(QuarantineRow)).scalars()
    assert (q.position, q.reason) == ("people:pid=10000", "duplicate")
    assert "between people:pid=0 and people:pid=49" in q.message
    assert len({r.record_key for r in _stored(site)}) == 200
    assert _plain_indexes(site) == _PLAIN


def _write_csv(path, rows: list[dict], extra_lines: str = "") -> None:
    import csv

    columns = [c for c in rows[0] if c != "gxsj"]
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([r[c] for c in columns])
        f.write(extra_lines)


def _outcome(site) -> tuple:
    p = site.protector
    with site.begin() as s:
        stored = sorted(
            (
                r.record_key,
                r.content_hash,
                r.id_masked,
                r.fingerprint,
                p.open(r.name, dataset="residents", field="name", record=r.subject_key),
            )
            for r in s.execute(sa.select(Resident)).scalars()
        )
        quarantined = [
            (
                q.position,
                q.stage,
                q.field,
                q.reason,
                q.message,
                p.open(q.row_sealed, dataset="quarantine", field="row", record=q.uid),
            )
            for q in s.execute(sa.select(QuarantineRow).order_by(QuarantineRow.id)).scalars()
        ]
    return stored, quarantined


def test_reading_worker_stores_what_one_process_stores(make_site, tmp_path, monkeypatch):
    from gateway import sync, sync_worker

    rows = people(420)
    rows[3]["sfzh"] = rows[3]["sfzh"][:17] + ("0" if rows[3]["sfzh"][17] != "0" else "1")
    rows[7]["xm"] = ""
    rows[21] = dict(rows[20], pid=21)  # a duplicate in the same batch
    rows.append(dict(rows[10], pid=10_000))  # ... and in a later one
    rows.append(dict(rows[300], pid=10_001))
    path = tmp_path / "people.csv"
    _write_csv(path, rows, extra_lines="1,2,3\n")  # a misshapen line: quarantined as read
    used = []
    prepared = sync.JobRunner._batch_prepared

    def spy(self, p):
        used.append(p.count)
        return prepared(self, p)

    monkeypatch.setattr(sync.JobRunner, "_batch_prepared", spy)
    from gateway.store import Base

    site = make_site(file_job_config(path, batch_size=100))
    write_mappings(site.base_dir)
    outcomes = []
    for worker in ("1", "0"):
        monkeypatch.setenv(sync_worker.ENV, worker)
        Base.metadata.drop_all(site.engine)  # an empty store each time, the same keys
        Base.metadata.create_all(site.engine)
        summary = run_job(site, "residents")
        _check_adds_up(summary)
        assert (summary.read, summary.inserted, summary.quarantined) == (423, 417, 6), summary
        outcomes.append(_outcome(site))
    assert sum(used) == 423  # the first ran every batch through the worker, the second none
    assert outcomes[0] == outcomes[1]
    reasons = sorted(q[3] for q in outcomes[0][1])
    assert reasons == [
        "bad_check_digit",
        "duplicate",
        "duplicate",
        "duplicate",
        "field_count",
        "required",
    ]


def test_reading_worker_reports_a_failed_read_as_the_run_s_failure(
    make_site, tmp_path, monkeypatch
):
    from gateway import sync_worker
    from gateway.connectors import Batch

    path = tmp_path / "people.csv"
    _write_csv(path, people(250))
    site = make_site(file_job_config(path, batch_size=100))
    write_mappings(site.base_dir)
    from gateway.plugins import make_connector

    connector_class = type(make_connector(site, "registry"))
    read = connector_class.read

    def failing(self, cursor=None, batch_size=5000):
        for i, batch in enumerate(read(self, cursor, batch_size)):
            if i == 1:
                raise SourceError("registry", "people.csv", "the disk went away")
            yield Batch(batch.rows, batch.cursor)

    monkeypatch.setattr(connector_class, "read", failing)
    monkeypatch.setenv(sync_worker.ENV, "1")
    with pytest.raises(SyncFailed, match="the disk went away"):
        run_job(site, "residents")
    with site.begin() as s:
        run = s.execute(sa.select(Run)).scalars().one()
    assert (run.status, run.read, run.inserted) == ("failed", 100, 100)
    assert "the disk went away" in run.error


def test_reading_worker_only_beside_threads_that_cannot_hold_its_locks(make_site, tmp_path):
    import threading

    from gateway import sync_worker
    from gateway.plugins import make_connector

    path = tmp_path / "people.csv"
    _write_csv(path, people(3))
    site = make_site(file_job_config(path, batch_size=100))
    connector = make_connector(site, "registry")
    stop = threading.Event()
    assert sync_worker.usable(connector)
    for name, expected in (("lease-residents", True), ("api-worker", False)):
        thread = threading.Thread(target=stop.wait, name=name, daemon=True)
        thread.start()
        try:
            assert sync_worker.usable(connector) is expected
        finally:
            stop.set()
            thread.join()
            stop.clear()
