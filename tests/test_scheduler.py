"""The scheduler: due times from the last start (missed slots run once), the lease, and two real
scheduler processes on one PostgreSQL never running the same job at once."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.scheduler import Scheduler, next_due
from gateway.site import Site
from gateway.store import Base
from gateway.store.jobs import Run, SchedulerLease, acquire_lease, utcnow
from gateway.sync import HeldLease, JobBusy, run_job
from tests.fixtures.sites import write_site
from tests.syncdata import job_config, people, write_mappings, write_source

ROOT = Path(__file__).resolve().parent.parent


def _site(
    folder: Path, store_url: str, source_url: str, schedule: str, rows: int = 30, batch: int = 10
) -> Site:
    write_source(source_url, people(rows))
    path = write_site(
        folder, store_url, job_config(source_url, schedule=schedule, batch_size=batch)
    )
    write_mappings(folder)
    site = Site.from_config(path)
    Base.metadata.create_all(site.engine)
    return site


def test_next_due_is_after_the_base():
    base = dt.datetime(2026, 3, 1, 10, 0, 30)
    assert next_due("* * * * *", base) > base
    assert next_due("* * * * *", base) - base <= dt.timedelta(minutes=1)


def test_missed_slots_run_once_and_the_lease_is_exclusive(site, tmp_path):
    source = f"sqlite:///{tmp_path / 'source.db'}"
    write_source(source, people(30))
    # The `site` fixture has no job: build one on the same store backend.
    store = site.settings.gateway.store
    site = _site(tmp_path / "sched", store, source, "* * * * *")
    sched = Scheduler(site)
    # First sight: the job becomes due at the next minute, not now.
    assert sched.run_once() == []
    # Pretend the last run was 3 hours ago: 180 slots missed, one run.
    with site.begin() as s:
        s.get(SchedulerLease, "residents").last_started_at = utcnow() - dt.timedelta(hours=3)
    first = sched.run_once()
    assert [r.status for r in first] == ["succeeded"]
    assert sched.run_once() == []
    with site.begin() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Run)).scalar_one() == 1
    # While another holder has the lease, neither the scheduler nor `gateway sync` runs the job.
    with site.begin() as s:
        assert acquire_lease(s, "residents", "otherhost:1:abc", 60)
        s.get(SchedulerLease, "residents").last_started_at = utcnow() - dt.timedelta(hours=1)
    assert sched.run_once() == []
    with pytest.raises(JobBusy):
        run_job(site, "residents")
    # A lease whose holder is a dead process on this host is taken over at once.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with site.begin() as s:
        s.get(SchedulerLease, "residents").holder = f"{os.uname().nodename}:{dead.pid}:dead"
    assert [r.status for r in sched.run_once()] == ["succeeded"]
    lease = HeldLease(site, "residents", ttl_s=0.3)
    with lease:
        time.sleep(0.5)  # the heartbeat renews it past its short expiry
        with site.begin() as s:
            assert not acquire_lease(s, "residents", "otherhost:2:def", 60)
    assert not lease.lost.is_set()


def _runs(site: Site) -> list[Run]:
    with site.begin() as s:
        return list(s.execute(sa.select(Run).order_by(Run.started_at)).scalars())


@pytest.mark.postgres
def test_two_scheduler_processes_never_overlap(pg_url, tmp_path):
    source = f"sqlite:///{tmp_path / 'source.db'}"
    # Every 2 seconds; each run takes a good part of that (200 batches of 10 rows).
    site = _site(tmp_path / "sched", pg_url, source, "* * * * * */2", rows=2000, batch=10)
    config = str(tmp_path / "sched" / "gateway.toml")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.syncdata",
                "--config",
                config,
                "scheduler",
                "--poll",
                "0.1",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 40
    while (
        time.monotonic() < deadline and len([r for r in _runs(site) if r.status == "succeeded"]) < 8
    ):
        time.sleep(0.5)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=60) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    runs = _runs(site)
    finished = [r for r in runs if r.finished_at is not None]
    assert len([r for r in finished if r.status == "succeeded"]) >= 4, [
        (r.status, r.error) for r in runs
    ]
    assert all(r.status in ("succeeded", "interrupted") for r in runs), [
        (r.status, r.error) for r in runs
    ]
    # Never two at once: each run ends before the next one starts.
    for a, b in zip(finished, finished[1:], strict=False):
        assert a.finished_at <= b.started_at, (
            a.id,
            a.holder,
            a.finished_at,
            b.id,
            b.holder,
            b.started_at,
        )
    # Each due time at most once: no two runs started within one 2-second slot.
    slots = [int(r.started_at.timestamp()) // 2 for r in runs]
    assert len(slots) == len(set(slots))
    for r in finished:
        assert r.read == r.inserted + r.updated + r.unchanged + r.quarantined
    site.engine.dispose()
