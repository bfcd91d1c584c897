"""The unchanged-row fast path: a keyed fingerprint of each native row is stored with the record
it made; a later row with the same fingerprint counts as unchanged without being mapped. These
tests check that it gives exactly what mapping every row would: mapping changes, duplicates (the
first row of the input wins), removals and reappearance, quarantine, key rotation, --full; and that
the fingerprint is keyed. CSV source (identical lines are possible there), real store (SQLite and
PostgreSQL), real target table."""

from __future__ import annotations

import csv
import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import gateway.sync
from gateway.crypto import Keyring, Protector, get_suite
from gateway.protect import RowFingerprints, row_text
from gateway.reindex import reindex
from gateway.store.jobs import QuarantineRow
from gateway.store.records import Resident
from gateway.sync import run_job
from tests.syncdata import (
    MAPPING_TOML,
    SOURCE_COLUMNS,
    create_target,
    file_job_config,
    people,
    read_table,
    write_mappings,
)

COLUMNS = [c for c in SOURCE_COLUMNS if c != "gxsj"]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r[c] for c in COLUMNS])


@pytest.fixture
def env(make_site, tmp_path):
    """A site syncing people.csv (snapshot) into residents, delivering to a SQL target."""
    target = f"sqlite:///{tmp_path / 'target.db'}"
    create_target(target)
    data = tmp_path / "people.csv"
    site = make_site(file_job_config(data, batch_size=40, target_url=target, retries=0))
    write_mappings(site.base_dir)
    return site, data, target


@pytest.fixture
def mapped(monkeypatch):
    """How many native rows the next runs map (the mapper is wrapped, not replaced)."""
    calls = {"rows": 0}
    resolve = gateway.sync.resolve_job
    monkeypatch.setenv("GATEWAY_SYNC_WORKER", "0")  # counted in this process: no reading worker

    def counting_resolve(*args, **kwargs):
        job = resolve(*args, **kwargs)
        inner = job.mapper.map_row

        def map_row(native):
            calls["rows"] += 1
            return inner(native)

        job.mapper.__dict__["map_row"] = map_row
        return job

    monkeypatch.setattr(gateway.sync, "resolve_job", counting_resolve)
    return calls


def _stored(site) -> dict[str, Resident]:
    with site.begin() as s:
        rows = s.execute(sa.select(Resident).order_by(Resident.id)).scalars().all()
    return {r.id_masked: r for r in rows}


def _fingerprints(site) -> dict[int, bytes | None]:
    with site.begin() as s:
        return dict(s.execute(sa.select(Resident.id, Resident.fingerprint)).all())


def _counts(summary) -> tuple[int, ...]:
    assert summary.adds_up, summary
    return (
        summary.read,
        summary.inserted,
        summary.updated,
        summary.unchanged,
        summary.quarantined,
        summary.removed,
    )


def _quarantined(site, run_id: int) -> dict[str, QuarantineRow]:
    with site.begin() as s:
        rows = s.execute(sa.select(QuarantineRow).where(QuarantineRow.run_id == run_id)).scalars()
        return {q.position.rpartition(":")[2]: q for q in rows}


def test_unchanged_rows_are_not_mapped_again(env, mapped):
    site, data, target = env
    _write_csv(data, people(100))
    first = run_job(site, "residents")
    assert _counts(first) == (100, 100, 0, 0, 0, 0) and mapped["rows"] == 100
    assert all(len(fp) == 16 for fp in _fingerprints(site).values())
    before = {k: (r.id_number, r.updated_at, r.fingerprint) for k, r in _stored(site).items()}
    mapped["rows"] = 0
    again = run_job(site, "residents")
    assert _counts(again) == (100, 0, 0, 100, 0, 0)
    assert mapped["rows"] == 0 and again.delivered == 0
    after = {k: (r.id_number, r.updated_at, r.fingerprint) for k, r in _stored(site).items()}
    assert after == before
    # One changed row is mapped (and only it), updated and delivered.
    rows = people(100, versions={7: 1})
    _write_csv(data, rows)
    mapped["rows"] = 0
    changed = run_job(site, "residents")
    assert _counts(changed) == (100, 0, 1, 99, 0, 0)
    assert mapped["rows"] == 1 and changed.delivered == 1
    mirror = {r["sfzh"]: r for r in read_table(target, "mirror_people", "sfzh")}
    assert mirror[rows[7]["sfzh"]]["zz"].endswith("之1")


def test_full_run_maps_every_row(env, mapped):
    site, data, _ = env
    _write_csv(data, people(60))
    run_job(site, "residents")
    mapped["rows"] = 0
    full = run_job(site, "residents", full=True)
    assert _counts(full) == (60, 0, 0, 60, 0, 0) and mapped["rows"] == 60


def test_a_mapping_change_maps_every_row_again(env, mapped):
    site, data, target = env
    _write_csv(data, people(50))
    run_job(site, "residents")
    stored = _stored(site)
    fps = _fingerprints(site)
    mapping = site.base_dir / "mappings" / "test_registry" / "residents.toml"
    # A new version that maps to the same records: all unchanged, fingerprints renewed, nothing
    # rewritten or delivered (the change feed sees no change either: updated_at stays).
    mapping.write_text(MAPPING_TOML.replace('version = "1"', 'version = "2"'), encoding="utf-8")
    mapped["rows"] = 0
    same = run_job(site, "residents")
    assert _counts(same) == (50, 0, 0, 50, 0, 0) and mapped["rows"] == 50
    assert same.delivered == 0
    renewed = _fingerprints(site)
    assert set(renewed) == set(fps) and all(renewed[i] != fps[i] for i in fps)
    assert {k: r.updated_at for k, r in _stored(site).items()} == {
        k: r.updated_at for k, r in stored.items()
    }
    mapped["rows"] = 0
    assert _counts(run_job(site, "residents")) == (50, 0, 0, 50, 0, 0)
    assert mapped["rows"] == 0
    # A mapping that maps differently (village now from another column): every row updated,
    # though the native rows did not change.
    mapping.write_text(
        MAPPING_TOML.replace('version = "1"', 'version = "3"').replace(
            '[fields.village]\nfrom = "cun"', '[fields.village]\nfrom = "xzqh"'
        ),
        encoding="utf-8",
    )
    changed = run_job(site, "residents")
    assert _counts(changed) == (50, 0, 50, 0, 0, 0)
    assert {r.village for r in _stored(site).values()} <= {
        f"522601{100 + i:03d}000" for i in range(7)
    }


def test_identical_rows_are_duplicates_on_the_fast_path(env):
    site, data, _ = env
    rows = people(100)
    _write_csv(data, rows)
    run_job(site, "residents")
    # Row 5 again in the same batch (line 9 of 40-row batches starting at line 2) and row 50
    # again in a later batch: the copies are duplicates, the originals unchanged.
    copies = rows[:8] + [rows[5]] + rows[8:] + [rows[50]]
    _write_csv(data, copies)
    summary = run_job(site, "residents")
    assert _counts(summary) == (102, 0, 0, 100, 2, 0)
    q = _quarantined(site, summary.run_id)
    assert set(q) == {"10", "103"} and {r.reason for r in q.values()} == {"duplicate"}
    assert "people.csv:7" in q["10"].message  # row 5 is on line 7
    assert "people.csv:42" in q["103"].message or "between" in q["103"].message


@pytest.mark.parametrize("changed_first", [True, False])
def test_the_first_row_of_the_input_wins_over_a_fingerprint_match(env, changed_first):
    site, data, target = env
    rows = people(30)
    _write_csv(data, rows)
    run_job(site, "residents")
    changed = people(30, versions={3: 1})[3]
    # The same person twice in one batch: once as stored (its fingerprint matches), once changed.
    body = [changed, *rows] if changed_first else [*rows, changed]
    _write_csv(data, body)
    summary = run_job(site, "residents")
    q = _quarantined(site, summary.run_id)
    assert summary.quarantined == 1 and summary.adds_up
    mirror = {r["sfzh"]: r for r in read_table(target, "mirror_people", "sfzh")}
    if changed_first:
        assert (summary.updated, summary.unchanged) == (1, 29)
        assert set(q) == {"6"}  # the stored version, on line 6, lost to line 2
        assert "people.csv:2" in q["6"].message
        assert mirror[changed["sfzh"]]["zz"].endswith("之1")
    else:
        assert (summary.updated, summary.unchanged) == (0, 30)
        assert set(q) == {"32"}
        assert not mirror[changed["sfzh"]]["zz"].endswith("之1")


def test_a_removed_row_that_comes_back_unchanged_is_updated(env, mapped):
    site, data, target = env
    rows = people(20)
    _write_csv(data, rows)
    run_job(site, "residents")
    _write_csv(data, rows[:-1])
    gone = run_job(site, "residents")
    assert _counts(gone) == (19, 0, 0, 19, 0, 1)
    removed = [r for r in _stored(site).values() if r.removed]
    assert len(removed) == 1 and removed[0].fingerprint is None
    _write_csv(data, rows)  # the very same line again
    mapped["rows"] = 0
    back = run_job(site, "residents")
    assert _counts(back) == (20, 0, 1, 19, 0, 0) and mapped["rows"] == 1
    assert back.delivered == 1
    assert not any(r.removed for r in _stored(site).values())
    mirror = {r["sfzh"]: r for r in read_table(target, "mirror_people", "sfzh")}
    assert mirror[rows[-1]["sfzh"]]["removed"] in (0, None, False)


def test_a_row_quarantined_in_between_comes_back_unchanged(env):
    site, data, _ = env
    rows = people(30)
    _write_csv(data, rows)
    run_job(site, "residents")
    bad = [dict(r) for r in rows]
    bad[4]["xm"] = ""  # required: quarantined, the stored record is kept (not removed)
    _write_csv(data, bad)
    assert _counts(run_job(site, "residents")) == (30, 0, 0, 29, 1, 0)
    _write_csv(data, rows)
    assert _counts(run_job(site, "residents")) == (30, 0, 0, 30, 0, 0)
    assert not any(r.removed for r in _stored(site).values())


def test_after_a_blind_index_rotation_rows_are_mapped_once_again(env, mapped):
    site, data, _ = env
    _write_csv(data, people(40))
    run_job(site, "residents")
    fps = _fingerprints(site)
    site.keyring.rotate("blind_index")
    site.keyring.save()
    assert reindex(site).finished
    mapped["rows"] = 0
    after = run_job(site, "residents")
    assert _counts(after) == (40, 0, 0, 40, 0, 0) and mapped["rows"] == 40
    renewed = _fingerprints(site)
    assert all(renewed[i] != fps[i] for i in fps)
    mapped["rows"] = 0
    assert _counts(run_job(site, "residents")) == (40, 0, 0, 40, 0, 0)
    assert mapped["rows"] == 0


def test_a_reordered_export_is_still_recognised_row_by_row(env, mapped):
    """The look-up reads the stored rows in the order the last snapshot stored them; an export
    in another order, with rows gone and new ones in between, gives what mapping every row would."""
    import random

    site, data, _ = env
    rows = people(200)
    _write_csv(data, rows)
    run_job(site, "residents")
    shuffled = rows[:150]
    random.Random(4).shuffle(shuffled)
    extra = people(203)[200:]
    body = shuffled[:60] + extra + shuffled[60:]
    _write_csv(data, body)
    mapped["rows"] = 0
    summary = run_job(site, "residents")
    assert _counts(summary) == (153, 3, 0, 150, 0, 50) and mapped["rows"] == 3
    # Back to the stored order, with a block cut out in the middle and a changed row.
    again = people(200, versions={120: 1})
    del again[40:90]
    _write_csv(data, again + extra)
    mapped["rows"] = 0
    summary = run_job(site, "residents")
    assert _counts(summary) == (153, 0, 51, 102, 0, 50) and mapped["rows"] == 51
    mapped["rows"] = 0
    assert _counts(run_job(site, "residents")) == (153, 0, 0, 153, 0, 0)
    assert mapped["rows"] == 0


def test_rows_stored_elsewhere_do_not_throw_the_window_off(env, monkeypatch):
    """Rows added in the last run are stored after all others; where one ends a batch, the next
    batch still reads its window where the rest of the input continues: only the added rows are
    looked up one by one."""
    from gateway.sync_store import DatasetTable

    site, data, _ = env
    rows = people(240)
    _write_csv(data, rows[:234])
    run_job(site, "residents")
    body = []
    for k in range(6):  # 40-row batches, each ending with a row new in the next run
        body += rows[k * 39 : (k + 1) * 39] + [rows[234 + k]]
    _write_csv(data, body)
    assert _counts(run_job(site, "residents")) == (240, 6, 0, 234, 0, 0)
    looked_up: list[int] = []
    by_fingerprint = DatasetTable.by_fingerprint

    def counting(self, conn, source, fingerprints):
        looked_up.append(len(fingerprints))
        return by_fingerprint(self, conn, source, fingerprints)

    monkeypatch.setattr(DatasetTable, "by_fingerprint", counting)
    assert _counts(run_job(site, "residents")) == (240, 0, 0, 240, 0, 0)
    assert sum(looked_up) <= 6, looked_up


def test_the_national_suite_recognises_unchanged_rows_too(make_site, tmp_path, mapped):
    """Under the SM suite the fingerprint of the source bytes is an HMAC-SM3."""
    data = tmp_path / "people.csv"
    site = make_site(
        file_job_config(data, batch_size=40),
        suite="sm4-gcm+hmac-sm3",
        name="sm",
    )
    write_mappings(site.base_dir)
    _write_csv(data, people(90))
    assert _counts(run_job(site, "residents")) == (90, 90, 0, 0, 0, 0)
    mapped["rows"] = 0
    assert _counts(run_job(site, "residents")) == (90, 0, 0, 90, 0, 0)
    assert mapped["rows"] == 0


def test_rows_of_a_quoted_export_are_recognised(env, mapped):
    """Lines with quoted fields (some spanning lines) go through the csv module; the others are
    recognised by their bytes alone. Either way an unchanged row is not mapped again."""
    site, data, _ = env
    rows = people(90)
    for i in range(0, 90, 7):
        rows[i] = {**rows[i], "zz": f'{rows[i]["zz"]}, "东"\n二楼'}
    _write_csv(data, rows)
    assert _counts(run_job(site, "residents"))[:2] == (90, 90)
    mapped["rows"] = 0
    assert _counts(run_job(site, "residents")) == (90, 0, 0, 90, 0, 0)
    assert mapped["rows"] == 0


# -- the fingerprint itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"x": "1"}, {"x": 1}),
        ({"x": None}, {"x": ""}),
        ({"x": "a\x1fb", "y": "c"}, {"x": "a", "y": "b\x1fc"}),
        ({"x": "a", "y": "b"}, {"y": "a", "x": "b"}),
        ({"x\x1fy": "a"}, {"x": "y\x1fa"}),
        ({"x": "a\x1eb"}, {"x\x1ea": "b"}),
        ({"x": 1.0}, {"x": 1}),
        ({"x": "1", "y": "2"}, {"x": "1"}),
    ],
)
def test_row_text_tells_different_rows_apart(a, b):
    assert row_text(a) != row_text(b)
    assert row_text(a) == row_text(dict(a))


def test_the_fingerprint_is_keyed_and_bound_to_its_context():
    row = {"sfzh": "52260120080101001X", "xm": "测试"}
    suite = get_suite("aes-gcm+hmac-sha256")
    ring = Keyring.create(None)
    p = Protector(ring, suite)
    fp = RowFingerprints(p, "ctx").of(row)
    assert len(fp) == 16
    assert fp == RowFingerprints(p, "ctx").of(dict(row))
    assert fp != RowFingerprints(p, "other mapping version").of(row)
    assert fp != RowFingerprints(Protector(Keyring.create(None), suite), "ctx").of(row)
    # Not a plain digest of the row, nor an HMAC under the blind-index key itself.
    text = row_text(row).encode()
    assert fp != hashlib.sha256(text).digest()[:16]
    key = ring.active("blind_index").material
    assert fp != hmac.digest(key, text, "sha256")[:16]
    assert RowFingerprints(p, "ctx").many([row, None]) == [fp, None]


@pytest.mark.parametrize("suite_name", ["aes-gcm+hmac-sha256", "sm4-gcm+hmac-sm3"])
def test_the_fingerprint_of_source_bytes_is_keyed_and_bound_to_its_form(suite_name):
    from gateway.connectors import RawRecords

    suite = get_suite(suite_name)
    ring = Keyring.create(None, suite=suite_name)
    p = Protector(ring, suite)
    fps = RowFingerprints(p, "ctx")
    line = "52260120080101001X,测试\r\n".encode()
    fp = fps.of_raw("form a", line)
    assert len(fp) == 16 and fp == RowFingerprints(p, "ctx").of_raw("form a", line)
    assert fp != fps.of_raw("form b", line)  # another header, encoding or dialect
    assert fp != RowFingerprints(p, "other mapping version").of_raw("form a", line)
    assert fp != fps.of_raw("form a", line[:-1])
    # The key: derived from the fingerprint key for the form; the MAC: keyed BLAKE2b under the
    # AES suite, HMAC-SM3 under the national suite.
    derived = suite.mac(
        ring.active("blind_index").material, b"gateway-row-fingerprint-v1\x1d" + b"ctx"
    )
    key = suite.mac(derived, b"raw\x1dform a")
    if suite.hash_name == "sm3":
        assert fp == hmac.digest(key, line, "sm3")[:16]
    else:
        assert fp == hashlib.blake2b(line, key=key, digest_size=16).digest()
    raw = RawRecords([line, b"x", line], [(0, "form a"), (2, "form b")])
    assert fps.many_raw(raw) == [fp, fps.of_raw("form a", b"x"), fps.of_raw("form b", line)]


@pytest.mark.parametrize("suite_name", ["aes-gcm+hmac-sha256", "sm4-gcm+hmac-sm3"])
def test_seal_many_makes_tokens_that_open_like_seal(suite_name):
    p = Protector(Keyring.create(None, suite=suite_name), get_suite(suite_name))
    texts = ["52260120080101001X", "张三", "", "凯里市某路1号"]
    records = ["bi-1:aa", "bi-1:bb", "bi-1:cc", "bi-1:é"]
    tokens = p.seal_many(texts, dataset="residents", field="name", records=records)
    assert len(set(tokens)) == 4 and all(t.split(":")[0] == tokens[0].split(":")[0] for t in tokens)
    for text, record, token in zip(texts, records, tokens, strict=True):
        assert p.open(token, dataset="residents", field="name", record=record) == text
        assert texts[0] not in token
    # Bound to its record and field, like seal().
    from gateway.crypto import CryptoError

    with pytest.raises(CryptoError):
        p.open(tokens[0], dataset="residents", field="name", record=records[1])
    with pytest.raises(CryptoError):
        p.open(tokens[0], dataset="residents", field="address", record=records[0])
    # Fresh nonces: the same value twice gives two tokens.
    again = p.seal_many([texts[0]] * 2, dataset="residents", field="name", records=records[:1] * 2)
    assert again[0] != again[1]
    with pytest.raises(ValueError, match="one record per plaintext"):
        p.seal_many(texts, dataset="residents", field="name", records=records[:1])


def test_postgresql_planner_statistics_follow_a_large_ingest(env, monkeypatch):
    """On PostgreSQL the look-ups need fresh planner statistics (else every batch reads all rows
    of the source): a run that doubles the table refreshes them."""
    site, data, _ = env
    if site.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL planner statistics")
    monkeypatch.setattr(gateway.sync, "ANALYZE_MIN_ROWS", 50)

    def counted() -> float:
        with site.engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT reltuples FROM pg_class WHERE oid = 'residents'::regclass")
            ).scalar_one()

    assert counted() <= 0  # never analyzed
    _write_csv(data, people(200))
    run_job(site, "residents")
    assert counted() >= 100  # analyzed at 50+ and again at 100+ rows (batches of 40)
