"""SIGKILL `gateway sync` at >= 20 distinct points of a 100k-row snapshot and run it again: the
store and the target end identical to an uninterrupted run's, no row lost or doubled, every run's
counts add up. A second, changed snapshot (updates, removals, new rows) is killed too, once while
it marks removals.

Kill points are chosen, not hoped for: each run is started (forked from a pre-imported launcher,
so a start costs milliseconds), the test polls the store until the run has committed the target
batch, waits a random few milliseconds (so the kill lands anywhere in the next batch's work:
reading, mapping, delivering to the target, writing, committing) and sends SIGKILL. Targets are
random batch numbers (fixed seed) spread over the whole run."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.site import Site
from gateway.store import Base
from gateway.store.jobs import JobCursor, Run
from gateway.store.records import Resident
from tests.fixtures.sites import write_site
from tests.syncdata import (
    SyncLauncher,
    create_target,
    file_job_config,
    job_config,
    people,
    read_table,
    write_mappings,
    write_source,
)

ROOT = Path(__file__).resolve().parent.parent
ROWS = 100_000
BATCH = 500
KILLS = 24  # targets; at least 20 distinct committed positions are required
POLL_S = 0.005
DEADLINE_S = 300.0


def _site(folder: Path, source: str, target: str, keyring_from: Path | None = None) -> Site:
    create_target(target)
    return _site_of(folder, job_config(source, target_url=target, batch_size=BATCH), keyring_from)


def _site_of(folder: Path, jobs: dict, keyring_from: Path | None) -> Site:
    """A site on its own SQLite store running ``jobs``, with the keys of ``keyring_from`` if
    given (the same keys: blind indexes and hashes comparable)."""
    path = write_site(folder, f"sqlite:///{folder / 'store.db'}", jobs)
    if keyring_from is not None:
        shutil.copy(keyring_from, folder / "keyring.json")
        os.chmod(folder / "keyring.json", 0o600)
    write_mappings(folder)
    site = Site.from_config(path)
    Base.metadata.create_all(site.engine)
    return site


def _store_state(site: Site) -> list[tuple]:
    p = site.protector
    with site.begin() as s:
        rows = s.execute(sa.select(Resident).order_by(Resident.record_key)).scalars().all()
        return [
            (
                r.record_key,
                r.content_hash,
                r.removed,
                r.id_masked,
                r.area_code,
                p.open(r.id_number, dataset="residents", field="id_number", record=r.subject_key),
                p.open(r.address, dataset="residents", field="address", record=r.subject_key),
            )
            for r in rows
        ]


def _runs(site: Site) -> list[Run]:
    with site.begin() as s:
        return list(s.execute(sa.select(Run).order_by(Run.id)).scalars())


def _cursor(site: Site) -> tuple[int, int, bool]:
    """(snapshot in progress, its last committed batch, its reading done) as the store says."""
    with site.begin() as s:
        state = s.get(JobCursor, "residents")
        if state is None:
            return 0, 0, False
        return state.snapshot_id or 0, state.batch_no, bool(state.reading_done)


class Killer:
    def __init__(self, launcher: SyncLauncher, site: Site, config: Path, logs: Path):
        self.launcher, self.site, self.config, self.logs = launcher, site, config, logs
        self.started = 0
        self.status: int | None = None  # how the last run ended

    def start(self) -> int:
        self.started += 1
        return self.launcher.start(
            ["--config", str(self.config), "sync", "residents"],
            self.logs / f"run{self.started}.log",
        )

    def kill_when(self, reached, rnd: random.Random) -> tuple[int, int] | None:
        """Start a run, SIGKILL it a random moment after ``reached(cursor)`` holds; returns the
        committed position it was killed at, or None if it finished first."""
        pid = self.start()
        deadline = time.monotonic() + DEADLINE_S
        while not reached(_cursor(self.site)):
            self.status = self.launcher.poll(pid)
            if self.status is not None:
                return None
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(POLL_S)
        time.sleep(rnd.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        self.status = self.launcher.wait(pid)
        if self.status != -signal.SIGKILL:
            return None  # it ended on its own just before the signal
        snapshot, batch, _ = _cursor(self.site)
        return snapshot, batch

    def finish(self) -> None:
        """Let one run go to the end: it must succeed, with no traceback."""
        pid = self.start()
        status = self.launcher.wait(pid)
        log = (self.logs / f"run{self.started}.log").read_text(errors="replace")
        assert status == 0, log[-3000:]
        assert "Traceback" not in log


def _assert_same(killed: Site, reference: Site, tmp_path: Path) -> None:
    assert _store_state(killed) == _store_state(reference)
    assert read_table(
        f"sqlite:///{tmp_path / 'target_killed.db'}", "mirror_people", "sfzh"
    ) == read_table(f"sqlite:///{tmp_path / 'target_ref.db'}", "mirror_people", "sfzh")


@pytest.mark.slow
def test_sigkill_at_random_points_loses_and_doubles_nothing(tmp_path):
    source = f"sqlite:///{tmp_path / 'source.db'}"
    write_source(source, people(ROWS))
    killed = _site(tmp_path / "killed", source, f"sqlite:///{tmp_path / 'target_killed.db'}")
    reference = _site(
        tmp_path / "reference",
        source,
        f"sqlite:///{tmp_path / 'target_ref.db'}",
        keyring_from=tmp_path / "killed" / "keyring.json",
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    launcher = SyncLauncher(ROOT)
    try:
        ref = Killer(launcher, reference, tmp_path / "reference" / "gateway.toml", logs / "ref")
        (logs / "ref").mkdir()
        ref_pid = ref.start()  # the uninterrupted run, beside the killing
        kill = Killer(launcher, killed, tmp_path / "killed" / "gateway.toml", logs)
        rnd = random.Random(20261124)
        batches = ROWS // BATCH
        targets = sorted(rnd.sample(range(1, batches - 2), KILLS))
        points: set[tuple[int, int]] = set()
        # Killed while starting up, before its first batch commits: nothing to resume yet.
        assert kill.kill_when(lambda c: True, rnd) is not None
        for target in targets:
            done = max(target, _cursor(killed)[1] + 1)
            point = kill.kill_when(lambda c, done=done: c[1] >= done, rnd)
            assert point is not None, f"the run finished before batch {done}"
            points.add(point)
        kill.finish()
        assert launcher.wait(ref_pid) == 0, (logs / "ref" / "run1.log").read_text()[-3000:]
        assert len(points) >= 20, points
        _assert_same(killed, reference, tmp_path)
        runs = _runs(killed)
        for r in runs:
            assert r.read == r.inserted + r.updated + r.unchanged + r.quarantined, r.id
        first_snapshot = [r for r in runs if r.snapshot_id == runs[-1].snapshot_id]
        assert sum(r.inserted for r in first_snapshot) == ROWS  # each row inserted exactly once
        # ... and read once: resumes skip committed batches.
        assert sum(r.read for r in first_snapshot) == ROWS
        assert first_snapshot[-1].status == "succeeded"
        assert all(r.status == "failed" for r in first_snapshot[:-1])
        assert len(first_snapshot) >= len(points) + 1

        # A changed export: 2,000 updated, 1,000 gone, 500 new; killed a few times as well, and
        # once while it marks the removals.
        rows = [
            r
            for r in people(ROWS + 500, versions={i: 1 for i in range(0, 40_000, 20)})
            if not 60_000 <= r["pid"] < 61_000
        ]
        write_source(source, rows)
        ref_pid = ref.start()
        before = len(_runs(killed))
        for target in sorted(rnd.sample(range(1, len(rows) // BATCH - 2), 3)):
            done = max(target, _cursor(killed)[1] + 1)
            assert kill.kill_when(lambda c, done=done: c[1] >= done, rnd) is not None
        # Reading done: marking removals. The run may finish before the poll sees it.
        if kill.kill_when(lambda c: c[2], rnd) is not None:
            kill.finish()
        else:
            assert kill.status == 0, kill.status
        assert launcher.wait(ref_pid) == 0
        _assert_same(killed, reference, tmp_path)
        second = _runs(killed)[before:]
        assert sum(r.read for r in second) == len(rows)
        assert (
            sum(r.inserted for r in second),
            sum(r.updated for r in second),
            sum(r.removed for r in second),
        ) == (500, 2000, 1000)
        for r in second:
            assert r.read == r.inserted + r.updated + r.unchanged + r.quarantined, r.id
    finally:
        launcher.close()
        killed.engine.dispose()
        reference.engine.dispose()


def _csv_site(folder: Path, csv_path: Path, keyring_from: Path | None = None) -> Site:
    return _site_of(folder, file_job_config(csv_path, batch_size=BATCH), keyring_from)


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.add(int(entry.name))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigkill_of_a_first_ingest_with_its_reading_worker(tmp_path, monkeypatch):
    """A CSV first ingest maps and seals in a reading worker (gateway/sync_worker.py): killed at
    random points it ends as one uninterrupted single-process run, and no worker outlives its run."""
    import csv

    from gateway.sync import run_job

    rows = people(40_000)
    data = tmp_path / "people.csv"
    with data.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        columns = [c for c in rows[0] if c != "gxsj"]
        w.writerow(columns)
        for r in rows:
            w.writerow([r[c] for c in columns])
    killed = _csv_site(tmp_path / "killed", data)
    reference = _csv_site(tmp_path / "reference", data, tmp_path / "killed" / "keyring.json")
    monkeypatch.setenv("GATEWAY_SYNC_WORKER", "0")
    assert run_job(reference, "residents").inserted == len(rows)
    monkeypatch.delenv("GATEWAY_SYNC_WORKER")
    logs = tmp_path / "logs"
    logs.mkdir()
    launcher = SyncLauncher(ROOT)
    try:
        kill = Killer(launcher, killed, tmp_path / "killed" / "gateway.toml", logs)
        rnd = random.Random(20261125)
        workers: set[int] = set()
        for target in sorted(rnd.sample(range(1, len(rows) // BATCH - 2), 10)):
            done = max(target, _cursor(killed)[1] + 1)
            pid = kill.start()
            while _cursor(killed)[1] < done:
                assert launcher.poll(pid) is None, "the run finished early"
                time.sleep(POLL_S)
            time.sleep(rnd.uniform(0.0, 0.05))
            workers |= _children(pid)
            os.kill(pid, signal.SIGKILL)
            assert launcher.wait(pid) == -signal.SIGKILL
        kill.finish()
        assert len(workers) >= 8, f"runs with a reading worker: {len(workers)} of 10"
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = [w for w in workers if Path(f"/proc/{w}").exists()]
        assert not alive, f"reading workers outlived their killed run: {alive}"
        assert _store_state(killed) == _store_state(reference)
        runs = _runs(killed)
        assert sum(r.inserted for r in runs) == len(rows)
        assert sum(r.read for r in runs) == len(rows)
        for r in runs:
            assert r.read == r.inserted + r.updated + r.unchanged + r.quarantined, r.id
    finally:
        launcher.close()
        killed.engine.dispose()
        reference.engine.dispose()
