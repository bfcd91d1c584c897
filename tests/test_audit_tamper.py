"""Tampering with the stored audit log directly (as someone with database access would) and with
export files: verification must catch each change and name the right entry, on SQLite and on the
real PostgreSQL. The forger knows the (public) hash rule but not the signing key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, text, update

from gateway import audit
from gateway.audit_export import export
from gateway.audit_verify import PublicKeys, verify_exports, verify_store
from gateway.site import Site
from gateway.store import Base

ENTRIES = Base.metadata.tables["audit_entries"]
SUBJECTS = Base.metadata.tables["audit_subjects"]
CHECKPOINTS = Base.metadata.tables["audit_checkpoints"]
HEAD = Base.metadata.tables["audit_head"]
N = 20


def key(i: int) -> str:
    """A subject key as Protector.blind_index makes them."""
    return "bi1:" + hashlib.sha256(str(i).encode()).hexdigest()


def _fill(site: Site) -> Site:
    for i in range(1, N + 1):
        audit.record(
            site,
            actor="dept:education" if i % 2 else "job:students",
            action="api.lookup" if i % 2 else "sync.run",
            outcome="delivered" if i % 2 else "ok",
            dataset="poverty" if i % 2 else "students",
            purpose="student-aid" if i % 2 else None,
            fields=["poverty_type"] if i % 2 else [],
            subject_keys=[key(i), key(i + 1000)],
            detail={"i": i, "mapping": "poverty_registry/poverty@2"},
        )
    audit.checkpoint(site)  # checkpoints at 1, 6, 11, 16 (every 5) and 20
    return site


@pytest.fixture
def chain(make_site) -> Site:
    return _fill(make_site({"audit": {"checkpoint_every": 5}}))


@pytest.fixture
def chain_with_copy(make_site, tmp_path: Path) -> Site:
    copy = tmp_path / "outside" / "checkpoints.jsonl"
    return _fill(make_site({"audit": {"checkpoint_every": 5, "checkpoint_export": str(copy)}}))


def first_problem(site: Site, **kw: Any) -> str:
    report = verify_store(site, **kw)
    assert not report.ok, "tampering went unnoticed"
    return report.sorted_problems()[0].message


def rows_from(site: Site, seq: int) -> tuple[list[dict], list[dict]]:
    with site.engine.connect() as conn:
        entries = [
            dict(r)
            for r in conn.execute(
                select(ENTRIES).where(ENTRIES.c.seq >= seq).order_by(ENTRIES.c.seq)
            ).mappings()
        ]
        subjects = [
            dict(r)
            for r in conn.execute(select(SUBJECTS).where(SUBJECTS.c.entry_seq >= seq)).mappings()
        ]
    return entries, subjects


def entry_dict(row: dict, keys: list[str]) -> dict:
    return audit.entry_from_row(row, keys)


def rehash_from(site: Site, seq: int) -> None:
    """What a forger without the key can do: recompute every hash from ``seq`` to the end."""
    entries, subjects = rows_from(site, seq)
    with site.engine.connect() as conn:
        prev = (
            conn.execute(select(ENTRIES.c.hash).where(ENTRIES.c.seq == seq - 1)).scalar()
            or audit.GENESIS
        )
    with site.engine.begin() as conn:
        for row in entries:
            keys = [s["subject_key"] for s in subjects if s["entry_seq"] == row["seq"]]
            e = entry_dict({**row, "prev_hash": prev}, keys)
            digest = audit.link_hash(e["alg"], prev, audit.canonical_entry(e))
            conn.execute(
                update(ENTRIES)
                .where(ENTRIES.c.seq == row["seq"])
                .values(prev_hash=prev, hash=digest)
            )
            prev = digest
        conn.execute(update(HEAD).values(hash=prev))


# ------------------------------------------------------------------------------------------ store


def test_untouched_chain_verifies(chain: Site) -> None:
    report = verify_store(chain)
    assert report.ok and report.entries == N and report.checkpoints == 5 and not report.notes


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_entries SET purpose = 'dropout-control' WHERE seq = 9",
        "UPDATE audit_entries SET outcome = 'refused' WHERE seq = 9",
        'UPDATE audit_entries SET detail = \'{"i": 99,"mapping":"poverty_registry/poverty@2"}\' WHERE seq = 9',
        'UPDATE audit_entries SET fields = \'["poverty_type","name"]\' WHERE seq = 9',
        "UPDATE audit_entries SET subject_count = 1 WHERE seq = 9",
        "UPDATE audit_entries SET actor = 'dept:civil' WHERE seq = 9",
        "UPDATE audit_entries SET detail = 'not json' WHERE seq = 9",
        f"UPDATE audit_subjects SET subject_key = '{key(10)}' WHERE subject_key = '{key(9)}'",
        f"DELETE FROM audit_subjects WHERE subject_key = '{key(9)}'",
        "INSERT INTO audit_subjects (entry_seq, subject_key) VALUES (9, 'bi1:added')",
    ],
)
def test_edited_field_is_named(chain: Site, statement: str) -> None:
    with chain.engine.begin() as conn:
        assert conn.execute(text(statement)).rowcount == 1
    assert first_problem(chain) == "entry 9: hash mismatch (altered)"


def test_edited_time_is_named(chain: Site) -> None:
    with chain.engine.begin() as conn:
        ts = conn.execute(select(ENTRIES.c.ts).where(ENTRIES.c.seq == 9)).scalar()
        conn.execute(
            update(ENTRIES).where(ENTRIES.c.seq == 9).values(ts=ts.replace(year=ts.year - 1))
        )
    assert first_problem(chain) == "entry 9: hash mismatch (altered)"


def test_deleted_entry_is_named(chain: Site) -> None:
    with chain.engine.begin() as conn:
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq == 9))
    assert first_problem(chain) == "entry 9 missing: seq gap after 8 (removed)"


def test_deleted_first_entries_are_named(chain: Site) -> None:
    with chain.engine.begin() as conn:
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq <= 2))
    assert first_problem(chain) == "entries 1-2 missing: the chain starts at 3 (removed)"


def test_swapped_entries_are_named(chain: Site) -> None:
    entries, subjects = rows_from(chain, 9)
    a, b = entries[0], entries[1]
    with chain.engine.begin() as conn:
        for row, seq in ((a, 10), (b, 9)):
            conn.execute(
                update(ENTRIES)
                .where(ENTRIES.c.seq == seq)
                .values({k: v for k, v in row.items() if k != "seq"})
            )
        conn.execute(delete(SUBJECTS).where(SUBJECTS.c.entry_seq.in_([9, 10])))
        moved = [
            {"entry_seq": 19 - s["entry_seq"], "subject_key": s["subject_key"]}
            for s in subjects
            if s["entry_seq"] in (9, 10)
        ]
        conn.execute(insert(SUBJECTS), moved)
    assert (
        first_problem(chain) == "entry 9: prev_hash does not match entry 8 (inserted or reordered)"
    )


def test_inserted_entry_is_named(chain: Site) -> None:
    entries, subjects = rows_from(chain, 9)
    forged = audit.AuditEvent.create(
        actor="dept:civil", action="api.lookup", dataset="students"
    ).entry(9, audit.format_ts(entries[0]["ts"]), "sha256")
    digest = audit.link_hash("sha256", entries[0]["prev_hash"], audit.canonical_entry(forged))
    with chain.engine.begin() as conn:
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq >= 9))  # subjects go with them (cascade)
        conn.execute(insert(ENTRIES), [{**e, "seq": e["seq"] + 1} for e in entries])
        conn.execute(insert(SUBJECTS), [{**s, "entry_seq": s["entry_seq"] + 1} for s in subjects])
        row = {
            **forged,
            "fields": "[]",
            "detail": None,
            "prev_hash": entries[0]["prev_hash"],
            "hash": digest,
        }
        row["ts"] = entries[0]["ts"]
        del row["subject_keys"]
        conn.execute(insert(ENTRIES), [row])
        conn.execute(update(HEAD).values(seq=N + 1))
    assert first_problem(chain) == "entry 9: inserted (entry 10 also follows entry 8)"


def test_insert_without_care_is_named(chain: Site) -> None:
    entries, subjects = rows_from(chain, 9)
    with chain.engine.begin() as conn:
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq >= 9))
        conn.execute(insert(ENTRIES), [{**e, "seq": e["seq"] + 1} for e in entries])
        conn.execute(insert(ENTRIES), [{**entries[0], "purpose": "forged", "prev_hash": "ab" * 32}])
    assert (
        first_problem(chain) == "entry 9: prev_hash does not match entry 8 (inserted or reordered)"
    )


def test_truncated_tail_is_named(chain: Site) -> None:
    with chain.engine.begin() as conn:
        h17 = conn.execute(select(ENTRIES.c.hash).where(ENTRIES.c.seq == 17)).scalar()
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq > 17))
        conn.execute(update(HEAD).values(seq=17, hash=h17))  # a careful forger fixes the head too
    assert first_problem(chain) == "chain ends at 17 but checkpoint signed at 20 (tail truncated)"


def test_truncated_tail_with_head_left_alone_is_named(chain: Site) -> None:
    with chain.engine.begin() as conn:
        conn.execute(delete(CHECKPOINTS).where(CHECKPOINTS.c.seq > 17))
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq > 17))
    assert first_problem(chain) == "chain ends at 17 but the chain head records 20 (tail truncated)"


def test_truncation_with_checkpoints_deleted_is_caught_by_the_outside_copy(
    chain_with_copy: Site,
) -> None:
    site = chain_with_copy
    with site.engine.begin() as conn:
        h17 = conn.execute(select(ENTRIES.c.hash).where(ENTRIES.c.seq == 17)).scalar()
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq > 17))
        conn.execute(delete(CHECKPOINTS).where(CHECKPOINTS.c.seq > 17))
        conn.execute(update(HEAD).values(seq=17, hash=h17, checkpoint_seq=16))
    assert first_problem(site) == "chain ends at 17 but checkpoint signed at 20 (tail truncated)"


def test_rehashed_suffix_is_caught_by_the_checkpoints(chain: Site) -> None:
    with chain.engine.begin() as conn:
        conn.execute(text("UPDATE audit_entries SET purpose = 'forged' WHERE seq = 13"))
    rehash_from(chain, 13)
    report = verify_store(chain)
    messages = [p.message for p in report.sorted_problems()]
    assert messages == [
        "checkpoint at 16: head hash differs (re-hashed suffix: an entry in 12-16 was altered)",
        "checkpoint at 20: head hash differs (re-hashed suffix: an entry in 12-20 was altered)",
    ]


def test_rehashed_suffix_with_forged_checkpoints_is_caught(chain: Site) -> None:
    from gateway.crypto import Keyring, Protector

    with chain.engine.begin() as conn:
        conn.execute(text("UPDATE audit_entries SET purpose = 'forged' WHERE seq = 13"))
    rehash_from(chain, 13)
    forger = Protector(Keyring.create(), chain.suite)  # any key but the site's
    with chain.engine.begin() as conn:
        for cp in conn.execute(select(CHECKPOINTS).where(CHECKPOINTS.c.seq >= 13)).mappings().all():
            new_hash = conn.execute(
                select(ENTRIES.c.hash).where(ENTRIES.c.seq == cp["seq"])
            ).scalar()
            message = audit.checkpoint_message(
                cp["seq"], new_hash, audit.format_ts(cp["ts"]), cp["key_id"]
            )
            _kid, signature = forger.sign(message)
            conn.execute(
                update(CHECKPOINTS)
                .where(CHECKPOINTS.c.id == cp["id"])
                .values(hash=new_hash, signature=signature.hex())
            )
    key = chain.keyring.active("audit_signing").id
    assert first_problem(chain) == f"checkpoint at 16: bad signature (key {key})"


def test_rehashed_suffix_with_checkpoints_deleted_is_caught_by_the_outside_copy(
    chain_with_copy: Site,
) -> None:
    site = chain_with_copy
    with site.engine.begin() as conn:
        conn.execute(text("UPDATE audit_entries SET purpose = 'forged' WHERE seq = 13"))
        conn.execute(delete(CHECKPOINTS))
    rehash_from(site, 13)
    assert (
        first_problem(site)
        == "checkpoint at 16: head hash differs (re-hashed suffix: an entry in 12-16 was altered)"
    )


def test_an_extra_copy_given_on_the_command_line_counts(chain: Site, tmp_path: Path) -> None:
    copy = tmp_path / "auditor-copy.jsonl"
    with chain.engine.connect() as conn:
        rows = conn.execute(select(CHECKPOINTS)).mappings().all()
    copy.write_text("".join(json.dumps(audit.checkpoint_record(r)) + "\n" for r in rows))
    with chain.engine.begin() as conn:
        conn.execute(delete(CHECKPOINTS))
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq > 18))
        h18 = conn.execute(select(ENTRIES.c.hash).where(ENTRIES.c.seq == 18)).scalar()
        conn.execute(update(HEAD).values(seq=18, hash=h18))
    # Without any checkpoint left, a cut tail is invisible (the report says nothing is signed)...
    alone = verify_store(chain)
    assert alone.ok and any("no signed checkpoint" in note for note in alone.notes)
    # ...which is why the checkpoints are copied where the gateway cannot write.
    assert (
        first_problem(chain, outside=[copy])
        == "chain ends at 18 but checkpoint signed at 20 (tail truncated)"
    )


def test_forged_entry_appended_beyond_the_head_is_named(chain: Site) -> None:
    entries, _ = rows_from(chain, N)
    last = entries[0]
    forged = audit.AuditEvent.create(actor="dept:civil", action="api.lookup").entry(
        N + 1, audit.format_ts(last["ts"]), "sha256"
    )
    digest = audit.link_hash("sha256", last["hash"], audit.canonical_entry(forged))
    row = {
        **forged,
        "fields": "[]",
        "detail": None,
        "prev_hash": last["hash"],
        "hash": digest,
        "ts": last["ts"],
    }
    del row["subject_keys"]
    with chain.engine.begin() as conn:
        conn.execute(insert(ENTRIES), [row])
    assert (
        first_problem(chain)
        == f"entries {N + 1}-{N + 1} lie beyond the chain head at {N} (appended outside the log)"
    )


# ------------------------------------------------------------------------------------------ exports


@pytest.fixture
def exported(chain: Site, tmp_path: Path) -> tuple[Path, PublicKeys, list[str]]:
    out = tmp_path / "audit.jsonl"
    export(chain, out)
    return out, PublicKeys.from_site(chain), out.read_text(encoding="utf-8").splitlines()


def _entry_index(lines: list[str], seq: int) -> int:
    return next(
        i
        for i, line in enumerate(lines)
        if line.startswith('{"type":"entry"') and json.loads(line)["seq"] == seq
    )


def _verify_lines(path: Path, keys: PublicKeys, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = verify_exports([path], keys)
    assert not report.ok
    return report.sorted_problems()[0].message


def test_export_edited(exported) -> None:
    path, keys, lines = exported
    i = _entry_index(lines, 9)
    rec = json.loads(lines[i])
    rec["purpose"] = "other"
    lines[i] = json.dumps(rec, ensure_ascii=False)
    assert _verify_lines(path, keys, lines) == "entry 9: hash mismatch (altered)"


def test_export_line_removed(exported) -> None:
    path, keys, lines = exported
    del lines[_entry_index(lines, 9)]
    assert _verify_lines(path, keys, lines) == "entry 9 missing: seq gap after 8 (removed)"


def test_export_lines_swapped(exported) -> None:
    path, keys, lines = exported
    i, j = _entry_index(lines, 9), _entry_index(lines, 10)
    lines[i], lines[j] = lines[j], lines[i]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    messages = [p.message for p in verify_exports([path], keys).sorted_problems()]
    assert messages[0] == "entry 9 missing: seq gap after 8 (removed)"
    assert "entry 9: appears after entry 10 (duplicated or reordered)" in messages


def test_export_checkpoint_forged(exported) -> None:
    path, keys, lines = exported
    i = next(
        i
        for i, line in enumerate(lines)
        if '"type": "checkpoint"' in line or '"type":"checkpoint"' in line
    )
    rec = json.loads(lines[i])
    rec["seq"] = 21  # claims more entries than the file has
    lines[i] = json.dumps(rec)
    assert _verify_lines(path, keys, lines).startswith("checkpoint at 21: bad signature")
