"""SIGKILL `gateway sync` at random moments (fixed seeds) over a 100k-row snapshot and run it again:
the store and the target end identical to an uninterrupted run's, no row lost or doubled, every
run's counts add up. A second, changed snapshot (updates and removals) is killed too."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
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
    create_target,
    job_config,
    people,
    read_table,
    write_mappings,
    write_source,
)

ROOT = Path(__file__).resolve().parent.parent
ROWS = 100_000
BATCH = 500


def _site(folder: Path, source: str, target: str, keyring_from: Path | None = None) -> Site:
    create_target(target)
    path = write_site(
        folder,
        f"sqlite:///{folder / 'store.db'}",
        job_config(source, target_url=target, batch_size=BATCH),
    )
    if keyring_from is not None:  # the same keys: blind indexes and hashes comparable
        shutil.copy(keyring_from, folder / "keyring.json")
        os.chmod(folder / "keyring.json", 0o600)
    write_mappings(folder)
    site = Site.from_config(path)
    Base.metadata.create_all(site.engine)
    return site


def _sync(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.syncdata", "--config", str(config), "sync", "residents"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


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


def _position(site: Site) -> tuple[int, int]:
    """(snapshot in progress, its last committed batch) as the store says."""
    with site.begin() as s:
        state = s.get(JobCursor, "residents")
        return (state.snapshot_id or 0, state.batch_no) if state else (0, 0)


def _wait_for_run(site: Site, after: int, proc: subprocess.Popen) -> int:
    """Wait until ``proc`` has recorded its run (so the kill lands in the work, not the start-up)."""
    while proc.poll() is None:
        runs = _runs(site)
        if runs and runs[-1].id > after:
            return runs[-1].id
        time.sleep(0.05)
    return after


def _kill_until_done(
    config: Path, site: Site, rnd: random.Random, min_points: int
) -> set[tuple[int, int]]:
    """Start the sync, SIGKILL it a random moment after its run began, again, until it was killed
    at ``min_points`` distinct committed positions; then let one run finish. Returns the points."""
    points: set[tuple[int, int]] = set()
    last_run = max((r.id for r in _runs(site)), default=0)
    for _ in range(min_points * 3):
        if len(points) >= min_points:
            break
        proc = _sync(config)
        last_run = _wait_for_run(site, last_run, proc)
        time.sleep(rnd.uniform(0.0, 0.8))
        if proc.poll() is not None:  # it finished first: nothing left to kill in this snapshot
            proc.communicate()
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        points.add(_position(site))
    proc = _sync(config)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 1), err[-3000:]
    assert "Traceback" not in err
    return points


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
    ref = _sync(tmp_path / "reference" / "gateway.toml")  # runs beside the killing
    points = _kill_until_done(
        tmp_path / "killed" / "gateway.toml", killed, random.Random(20261124), 20
    )
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    assert len(points) >= 20, points
    assert _store_state(killed) == _store_state(reference)
    assert read_table(
        f"sqlite:///{tmp_path / 'target_killed.db'}", "mirror_people", "sfzh"
    ) == read_table(f"sqlite:///{tmp_path / 'target_ref.db'}", "mirror_people", "sfzh")
    runs = _runs(killed)
    for r in runs:
        assert r.read == r.inserted + r.updated + r.unchanged + r.quarantined, r.id
    first_snapshot = [r for r in runs if r.snapshot_id == runs[0].snapshot_id]
    assert sum(r.inserted for r in first_snapshot) == ROWS  # each row inserted exactly once
    assert (
        sum(r.read for r in first_snapshot) == ROWS
    )  # and read once: resumes skip committed batches
    assert first_snapshot[-1].status == "succeeded"
    assert all(r.status == "failed" for r in first_snapshot[:-1])

    # A changed export: 2,000 updated, 1,000 gone, 500 new; killed a few times as well.
    rows = [
        r
        for r in people(ROWS + 500, versions={i: 1 for i in range(0, 40_000, 20)})
        if not 60_000 <= r["pid"] < 61_000
    ]
    write_source(source, rows)
    ref = _sync(tmp_path / "reference" / "gateway.toml")
    before = len(_runs(killed))
    _kill_until_done(tmp_path / "killed" / "gateway.toml", killed, random.Random(7), 3)
    ref.communicate(timeout=300)
    assert _store_state(killed) == _store_state(reference)
    assert read_table(
        f"sqlite:///{tmp_path / 'target_killed.db'}", "mirror_people", "sfzh"
    ) == read_table(f"sqlite:///{tmp_path / 'target_ref.db'}", "mirror_people", "sfzh")
    second = _runs(killed)[before:]
    assert sum(r.read for r in second) == len(rows)
    assert (
        sum(r.inserted for r in second),
        sum(r.updated for r in second),
        sum(r.removed for r in second),
    ) == (
        500,
        2000,
        1000,
    )
    for r in second:
        assert r.read == r.inserted + r.updated + r.unchanged + r.quarantined, r.id
    killed.engine.dispose()
    reference.engine.dispose()
