"""`gateway keys reindex` after rotating the blind_index and seal keys: resumable, and afterwards a
re-sync finds everything unchanged; a sync before the re-index refuses to run."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from gateway.errors import ConfigError
from gateway.reindex import reindex
from gateway.store.jobs import QuarantineRow
from gateway.store.records import Resident
from gateway.sync import run_job
from tests.syncdata import job_config, people, write_mappings, write_source


def test_rotate_then_reindex(make_site, tmp_path):
    source = f"sqlite:///{tmp_path / 'source.db'}"
    rows = people(45)
    rows[4]["xm"] = ""  # one quarantined row, re-sealed too
    write_source(source, rows)
    site = make_site(job_config(source, batch_size=10))
    write_mappings(site.base_dir)
    assert run_job(site, "residents").inserted == 44
    old_blind = site.keyring.active("blind_index").id
    site.keyring.rotate("blind_index")
    site.keyring.rotate("seal")
    site.keyring.save()
    new_blind, new_seal = site.keyring.active("blind_index").id, site.keyring.active("seal").id
    assert new_blind != old_blind
    with pytest.raises(ConfigError, match="keys reindex"):
        run_job(site, "residents")

    stop = threading.Event()
    first = reindex(site, batch_size=10, stop=stop, progress=lambda table, counts: stop.set())
    assert not first.finished and first.tables["residents"]["rekeyed"] == 10
    rest = reindex(site, batch_size=10)
    assert rest.finished and rest.tables["residents"]["rekeyed"] == 34
    with site.begin() as s:
        stored = s.execute(sa.select(Resident).order_by(Resident.id)).scalars().all()
        quarantined = s.execute(sa.select(QuarantineRow)).scalars().all()
    assert all(
        r.subject_key.startswith(new_blind + ":") and r.record_key == r.subject_key for r in stored
    )
    assert all(
        r.id_number.startswith(new_seal + ":") and r.name.startswith(new_seal + ":") for r in stored
    )
    opened = site.protector.open(
        stored[0].id_number, dataset="residents", field="id_number", record=stored[0].subject_key
    )
    assert opened == rows[0]["sfzh"]
    assert [q.row_sealed.split(":")[0] for q in quarantined] == [new_seal]
    # Nothing left to do; and the next sync finds every row unchanged (hashes recomputed alike).
    assert reindex(site).tables["residents"]["rekeyed"] == 0
    again = run_job(site, "residents")
    assert (again.unchanged, again.inserted, again.updated, again.removed) == (44, 0, 0, 0)
