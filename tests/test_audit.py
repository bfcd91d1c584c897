"""The audit log's API on the real stores: appends, canonical hashing, checkpoints and their outside
copy, search, the per-person report, exports verified offline, retention across the cut, and the
rule that no ID number ever reaches the log."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import select, text

from gateway import audit
from gateway.audit import AuditError, AuditEvent, AuditWriter
from gateway.audit_export import export, prune, read_export
from gateway.audit_verify import PublicKeys, verify_exports, verify_store
from gateway.crypto import encode_public_key
from gateway.site import Site
from gateway.store import Base

# Valid GB 11643 numbers (check characters computed), never to appear in the log.
ID_A = "110105201003151239"
ID_B = "410527201206070026"
ID_C = "11010519491231002X"


def subject_key(site: Site, id_number: str) -> str:
    return site.protector.blind_index(id_number)


def add(site_or_session, n: int = 1, **kw) -> list[int]:
    seqs = []
    for i in range(n):
        args = {
            "actor": "job:students",
            "action": "sync.run",
            "dataset": "students",
            "detail": {"i": i},
        }
        args.update(kw)
        seqs.append(audit.record(site_or_session, **args))
    return seqs


def public_key_file(site: Site, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key in site.keyring.keys("audit_signing"):
        (folder / f"{key.id}.pem").write_text(
            encode_public_key(site.protector.public_key(key.id), kind="ed25519")
        )
    return folder


# --------------------------------------------------------------------------------------- encoding


def test_canonical_encoding_is_fixed_and_hash_follows_the_documented_rule() -> None:
    entry = {
        "seq": 7,
        "ts": "2026-03-01T08:00:00.000001Z",
        "actor": "dept:education",
        "action": "api.lookup",
        "outcome": "delivered",
        "dataset": "poverty",
        "purpose": "学生资助",
        "fields": ["poverty_type", "household_no"],
        "subject_count": 2,
        "subject_keys": ["k2:bb", "k1:aa", "k2:bb"],
        "detail": {"z": 1, "a": {"y": [1, 2], "b": None}},
        "alg": "sha256",
    }
    canon = audit.canonical_entry(entry)
    assert (
        canon
        == (
            '{"action":"api.lookup","actor":"dept:education","alg":"sha256","dataset":"poverty",'
            '"detail":{"a":{"b":null,"y":[1,2]},"z":1},"fields":["poverty_type","household_no"],'
            '"outcome":"delivered","purpose":"学生资助","seq":7,"subject_count":2,'
            '"subject_keys":["k1:aa","k2:bb"],"ts":"2026-03-01T08:00:00.000001Z","v":1}'
        ).encode()
    )
    prev = "ab" * 32
    assert (
        audit.link_hash("sha256", prev, canon)
        == hashlib.sha256(bytes.fromhex(prev) + canon).hexdigest()
    )
    assert (
        audit.link_hash("sm3", prev, canon)
        == hashlib.new("sm3", bytes.fromhex(prev) + canon).hexdigest()
    )


def test_record_chains_entries_and_stores_subject_keys(site: Site) -> None:
    key_a, key_b = subject_key(site, ID_A), subject_key(site, ID_B)
    s1 = audit.record(
        site,
        actor="job:students",
        action="sync.run",
        dataset="students",
        subject_keys=[key_b, key_a, key_a],
        detail={"inserted": 2, "mapping": "student_status/students@3"},
    )
    s2 = audit.record(
        site,
        actor="dept:education",
        action="api.refused",
        outcome="refused",
        detail={"reason": "purpose"},
    )
    assert (s1, s2) == (1, 2)
    with site.begin() as s:
        rows = s.execute(
            text("SELECT seq, prev_hash, hash, subject_count FROM audit_entries ORDER BY seq")
        ).all()
        keys = (
            s.execute(text("SELECT subject_key FROM audit_subjects WHERE entry_seq = 1"))
            .scalars()
            .all()
        )
    assert rows[0].prev_hash == audit.GENESIS and rows[1].prev_hash == rows[0].hash
    assert rows[0].subject_count == 2 and sorted(keys) == sorted([key_a, key_b])
    entry = audit.get_entry(site, 1)
    assert entry["subject_keys"] == sorted([key_a, key_b])
    recomputed = audit.link_hash("sha256", entry["prev_hash"], audit.canonical_entry(entry))
    assert recomputed == entry["hash"] == rows[0].hash
    assert verify_store(site).ok


def test_entry_in_callers_transaction_commits_or_rolls_back_with_it(site: Site) -> None:
    add(site)
    with pytest.raises(RuntimeError), site.begin() as session:
        audit.record(session, site=site, actor="job:students", action="sync.run")
        raise RuntimeError("the batch failed")
    assert audit.head(site)["seq"] == 1 and audit.count(site) == 1
    with site.begin() as session:
        seq = audit.record(
            session,
            suite=site.suite,
            actor="job:students",
            action="sync.deliver",
            outcome="delivered",
        )
    assert seq == 2 and verify_store(site).ok


def test_append_many_assigns_dense_seqs_in_one_transaction(site: Site) -> None:
    events = [
        AuditEvent.create(actor="job:x", action="sync.deliver", detail={"n": i}) for i in range(25)
    ]
    assert audit.append_many(site, events) == list(range(1, 26))
    assert audit.append_many(site, [{"actor": "job:x", "action": "sync.run"}]) == [26]
    assert audit.append_many(site, []) == []
    report = verify_store(site)
    assert report.ok and report.entries == 26


@pytest.mark.parametrize(
    "detail, where",
    [
        ({"note": f"lookup {ID_A}"}, "detail.note"),
        ({"ids": ["x", "110105201003151"]}, "detail.ids[1]"),  # a legacy 15-digit number
        ({"cert": ID_A + "42"}, "detail.cert"),  # a disability certificate: ID + category + grade
        ({"student": "G" + ID_A}, "detail.student"),
        ({"raw": 110105201003151239}, "detail.raw"),  # Excel turned it into a number
        ({"raw": 1.10105201003151e17}, "detail.raw"),
        ({ID_C: 1}, "detail key"),
    ],
)
def test_detail_refuses_anything_like_an_id_number(site: Site, detail: dict, where: str) -> None:
    with pytest.raises(AuditError) as info:
        audit.record(site, actor="job:students", action="sync.run", detail=detail)
    message = str(info.value)
    assert where in message and "ID number" in message
    assert ID_A not in message and ID_C not in message and "110105201003151" not in message
    assert audit.head(site) is None or audit.head(site)["seq"] == 0


def test_detail_allows_digests_counts_and_versions(site: Site) -> None:
    detail = {
        "mapping_sha256": hashlib.sha256(b"x").hexdigest() + "1234567890123456",
        "rows": 123456,
        "versions": {"student_status": "1.2.0"},
        "as_of": dt.date(2026, 3, 1),
    }
    seq = audit.record(site, actor="job:students", action="sync.run", detail=detail)
    assert audit.get_entry(site, seq)["detail"]["as_of"] == "2026-03-01"


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"actor": "education"}, "audit actor"),
        ({"action": "Sync Run"}, "audit action"),
        ({"outcome": "maybe"}, "audit outcome"),
        ({"fields": "name"}, "audit fields"),
        ({"subject_keys": "k1:aa"}, "subject_keys"),
        ({"subject_keys": [ID_A]}, "subject_keys"),
        ({"purpose": ID_A}, "audit purpose"),
        ({"detail": {"password": "x"}}, "not allowed"),
        ({"detail": {"x": float("nan")}}, "finite"),
        ({"detail": {"x": object()}}, "not a JSON value"),
        ({"detail": {"big": "x" * 70_000}}, "larger than"),
    ],
)
def test_bad_entries_get_precise_errors(site: Site, kw: dict, fragment: str) -> None:
    args = {"actor": "job:students", "action": "sync.run", **kw}
    with pytest.raises(AuditError, match=fragment):
        audit.record(site, **args)


def test_time_never_goes_back(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    add(site)
    first = audit.get_entry(site, 1)["ts"]
    monkeypatch.setattr(audit, "_utcnow", lambda: dt.datetime(2001, 1, 1))  # a clock set back
    add(site)
    assert audit.get_entry(site, 2)["ts"] == first
    assert verify_store(site).ok


# ------------------------------------------------------------------------------------- the writer


def test_audit_writer_batches_and_flushes_on_close(site: Site) -> None:
    with AuditWriter(site, max_entries=10, max_delay_ms=60_000) as writer:
        for i in range(35):
            writer.add(
                actor="dept:education", action="api.lookup", purpose="student-aid", detail={"i": i}
            )
    assert writer.written == 35
    entries = audit.search(site, ascending=True, limit=100)
    assert [e["detail"]["i"] for e in entries] == list(range(35))  # written in add() order
    assert verify_store(site).ok


def test_audit_writer_flushes_by_time(site: Site) -> None:
    import time

    writer = AuditWriter(site, max_entries=1000, max_delay_ms=20)
    try:
        writer.add(actor="dept:education", action="api.lookup")
        for _ in range(200):
            if audit.count(site) == 1:
                break
            time.sleep(0.05)
        assert audit.count(site) == 1
    finally:
        writer.close()


def test_audit_writer_refuses_bad_entries_at_add(site: Site) -> None:
    with AuditWriter(site) as writer:
        with pytest.raises(AuditError):
            writer.add(actor="job:x", action="sync.run", detail={"id": ID_B})
        writer.add(actor="job:x", action="sync.run")
    assert audit.count(site) == 1
    with pytest.raises(AuditError, match="closed"):
        writer.add(actor="job:x", action="sync.run")


def test_audit_writer_keeps_entries_when_a_write_fails(site: Site) -> None:
    writer = AuditWriter(site, max_entries=1000, max_delay_ms=60_000)
    writer.add(actor="job:x", action="sync.run")
    with site.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_entries RENAME TO audit_entries_away"))
    with pytest.raises(Exception):  # noqa: B017 - the driver's error, whatever it is
        writer.flush()
    with site.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_entries_away RENAME TO audit_entries"))
    writer.close()  # the kept entry is written now
    assert audit.count(site) == 1 and verify_store(site).ok


# ------------------------------------------------------------------------------------ checkpoints


def test_checkpoints_every_n_entries_and_on_demand(make_site) -> None:
    site = make_site({"audit": {"checkpoint_every": 10}})
    add(site, 25)
    with site.begin() as s:
        seqs = s.execute(text("SELECT seq FROM audit_checkpoints ORDER BY seq")).scalars().all()
    assert seqs == [1, 11, 21]  # the first entry, then every 10
    cp = audit.checkpoint(site)
    assert cp["seq"] == 25 and cp == audit.checkpoint(site)  # nothing new: the same one
    assert audit.checkpoint_if_due(site) is None
    report = verify_store(site)
    assert (
        report.ok
        and report.checkpoints == 4
        and report.last_checkpoint_seq == 25
        and not report.notes
    )


def test_checkpoint_after_minutes(make_site, monkeypatch: pytest.MonkeyPatch) -> None:
    site = make_site({"audit": {"checkpoint_every": 1000, "checkpoint_minutes": 5}})
    start = dt.datetime(2026, 3, 1, 8, 0)
    monkeypatch.setattr(audit, "_utcnow", lambda: start)
    add(site, 3)  # checkpoint at 1 only
    assert audit.checkpoint_if_due(site) is None
    monkeypatch.setattr(audit, "_utcnow", lambda: start + dt.timedelta(minutes=6))
    assert audit.checkpoint_if_due(site)["seq"] == 3
    add(site)
    with site.begin() as s:
        seqs = s.execute(text("SELECT seq FROM audit_checkpoints ORDER BY seq")).scalars().all()
    assert seqs == [1, 3]  # entry 4 came within 5 minutes of the last checkpoint


def test_checkpoint_signature_covers_seq_hash_ts_and_key(site: Site) -> None:
    from gateway.crypto import verify_signature

    add(site, 3)
    cp = audit.checkpoint(site)
    message = audit.checkpoint_message(cp["seq"], cp["hash"], cp["ts"], cp["key_id"])
    pub = site.protector.public_key(cp["key_id"])
    assert verify_signature(pub, message, bytes.fromhex(cp["signature"]))
    forged = audit.checkpoint_message(cp["seq"] + 1, cp["hash"], cp["ts"], cp["key_id"])
    assert not verify_signature(pub, forged, bytes.fromhex(cp["signature"]))


def test_checkpoints_signed_before_a_key_rotation_still_verify(site: Site) -> None:
    add(site, 3)
    old = audit.checkpoint(site)["key_id"]
    site.keyring.rotate("audit_signing")
    add(site, 2)
    new = audit.checkpoint(site)["key_id"]
    assert new != old
    report = verify_store(site)
    assert report.ok and report.checkpoints >= 2


def test_outside_copy_file_gets_committed_checkpoints_only(make_site, tmp_path: Path) -> None:
    copy = tmp_path / "worm" / "checkpoints.jsonl"
    site = make_site({"audit": {"checkpoint_every": 2, "checkpoint_export": str(copy)}})
    add(site, 4)  # checkpoints at 1 and 3
    with pytest.raises(RuntimeError), site.begin() as session:
        audit.record(session, site=site, actor="job:x", action="sync.run")  # would sign 5
        raise RuntimeError("rolled back")
    lines = [json.loads(x) for x in copy.read_text().splitlines()]
    assert [r["seq"] for r in lines] == [1, 3]  # the rolled-back checkpoint never left
    with site.begin() as session:
        audit.record(session, site=site, actor="job:x", action="sync.run")
    assert [json.loads(x)["seq"] for x in copy.read_text().splitlines()] == [1, 3, 5]
    assert verify_store(site).ok


def test_outside_copy_folder_and_resync(make_site, tmp_path: Path) -> None:
    folder = tmp_path / "worm-folder"
    folder.mkdir()
    site = make_site({"audit": {"checkpoint_every": 3, "checkpoint_export": str(folder)}})
    add(site, 7)
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 3 and names[0].startswith("checkpoint-000000000001-")
    for p in folder.iterdir():  # the outside place lost its copies (an outage)
        p.chmod(0o644)
        p.unlink()
    assert audit.sync_outside_copy(site) == 3
    assert audit.sync_outside_copy(site) == 0
    assert len(list(folder.iterdir())) == 3


# --------------------------------------------------------------------------- search and the report


@pytest.fixture
def busy_site(site: Site, monkeypatch: pytest.MonkeyPatch) -> Site:
    ka, kb = subject_key(site, ID_A), subject_key(site, ID_B)
    day = dt.datetime(2026, 3, 1, 8, 0)
    clock = {"now": day}
    monkeypatch.setattr(audit, "_utcnow", lambda: clock["now"])
    audit.record(
        site,
        actor="job:students",
        action="sync.run",
        dataset="students",
        subject_keys=[ka, kb],
        detail={"inserted": 2},
    )
    clock["now"] = day + dt.timedelta(days=1)
    audit.record(
        site,
        actor="dept:education",
        action="api.lookup",
        outcome="delivered",
        dataset="poverty",
        purpose="student-aid",
        fields=["poverty_type"],
        subject_keys=[ka],
    )
    clock["now"] = day + dt.timedelta(days=2)
    audit.record(
        site,
        actor="job:flags",
        action="sync.deliver",
        outcome="delivered",
        dataset="disability",
        purpose="dropout-control",
        fields=["category", "grade"],
        subject_keys=[kb],
        detail={"recipient": "dept:township-a"},
    )
    audit.record(
        site,
        actor="dept:civil",
        action="api.refused",
        outcome="refused",
        dataset="students",
        purpose="curiosity",
        subject_keys=[ka],
    )
    monkeypatch.setattr(audit, "_utcnow", audit.utcnow)
    return site


def test_search_filters(busy_site: Site) -> None:
    site = busy_site
    seqs = lambda rows: [r["seq"] for r in rows]  # noqa: E731
    assert seqs(audit.search(site)) == [4, 3, 2, 1]
    assert seqs(audit.search(site, id_number=ID_A)) == [4, 2, 1]
    assert seqs(audit.search(site, id_number=ID_B, ascending=True)) == [1, 3]
    assert seqs(audit.search(site, id_number=ID_C)) == []
    assert seqs(audit.search(site, department="education")) == [2]
    assert seqs(audit.search(site, actor="job:*")) == [3, 1]
    assert seqs(audit.search(site, purpose="dropout-control")) == [3]
    assert seqs(audit.search(site, dataset="students")) == [4, 1]
    assert seqs(audit.search(site, action="api.*")) == [4, 2]
    assert seqs(audit.search(site, outcome="refused")) == [4]
    assert seqs(audit.search(site, since=dt.date(2026, 3, 2), until=dt.date(2026, 3, 3))) == [2]
    assert seqs(audit.search(site, limit=2)) == [4, 3]
    assert seqs(audit.search(site, limit=2, before_seq=3)) == [2, 1]
    assert audit.count(site, id_number=ID_A, outcome="delivered") == 1


def test_search_by_invalid_id_is_a_precise_error_without_the_number(busy_site: Site) -> None:
    with pytest.raises(AuditError) as info:
        audit.search(busy_site, id_number="110105201003151238")  # wrong check digit
    assert "110105********1238" in str(info.value) and "110105201003151238" not in str(info.value)


def test_subject_report_says_who_received_what_when_and_why(busy_site: Site) -> None:
    report = audit.subject_report(busy_site, ID_B)
    assert [
        (r["seq"], r["recipient"], r["dataset"], r["fields"], r["purpose"], r["outcome"])
        for r in report
    ] == [
        (1, "job:students", "students", [], None, "ok"),
        (3, "dept:township-a", "disability", ["category", "grade"], "dropout-control", "delivered"),
    ]
    assert report[1]["ts"].startswith("2026-03-03T08:00")
    by_key = audit.subject_report(busy_site, subject_keys=[subject_key(busy_site, ID_A)])
    assert [r["seq"] for r in by_key] == [1, 2, 4]


def test_subject_report_follows_blind_index_rotation_and_is_audited(busy_site: Site) -> None:
    site = busy_site
    site.keyring.rotate("blind_index")  # new entries use the new key; old ones must still be found
    audit.record(
        site, actor="dept:education", action="api.lookup", subject_keys=[subject_key(site, ID_A)]
    )
    report = audit.subject_report(site, ID_A, actor="user:auditor1")
    assert [r["seq"] for r in report] == [1, 2, 4, 5]
    last = audit.search(site, limit=1)[0]
    assert (last["action"], last["actor"], last["subject_count"]) == (
        "audit.subject",
        "user:auditor1",
        2,
    )
    assert verify_store(site).ok


# ------------------------------------------------------------------------------ export and offline


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_verifies_offline_with_the_public_key_alone(
    busy_site: Site, tmp_path: Path, fmt: str
) -> None:
    site = busy_site
    audit.checkpoint(site)
    out = tmp_path / f"audit.{fmt}"
    summary = export(site, out)
    assert (summary.entries, summary.first_seq, summary.last_seq, summary.format) == (4, 1, 4, fmt)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == summary.sha256
    keys = PublicKeys.from_files([public_key_file(site, tmp_path / "keys")])
    report = verify_exports([out], keys)
    assert report.ok, report.problems
    # signed at the first entry, after each day-long pause (checkpoint_minutes), and at the head
    assert (report.entries, report.last_seq, report.checkpoints, report.last_checkpoint_seq) == (
        4,
        4,
        4,
        4,
    )
    exported = list(read_export(out).entries())
    assert exported[0]["subject_keys"] == sorted([subject_key(site, ID_A), subject_key(site, ID_B)])
    assert exported[2]["detail"] == {"recipient": "dept:township-a"}


def test_offline_verification_refuses_a_stranger_key(busy_site: Site, tmp_path: Path) -> None:
    from gateway.crypto import Keyring, Protector

    audit.checkpoint(busy_site)
    out = tmp_path / "audit.jsonl"
    export(busy_site, out)
    stranger = Protector(Keyring.create(), busy_site.suite)
    keys = PublicKeys({}, [stranger.public_key()])
    report = verify_exports([out], keys)
    assert not report.ok
    assert report.sorted_problems()[0].message.endswith(
        f"bad signature (key {busy_site.keyring.active('audit_signing').id})"
    )


def test_partial_export_by_time_range(busy_site: Site, tmp_path: Path) -> None:
    out = tmp_path / "part.jsonl"
    summary = export(busy_site, out, since=dt.date(2026, 3, 2), until=dt.date(2026, 3, 3))
    assert (summary.first_seq, summary.last_seq) == (2, 2)
    report = verify_exports([out], PublicKeys.from_site(busy_site))
    assert report.ok and report.entries == 1
    assert any("without a signed anchor" in n for n in report.notes)
    with pytest.raises(AuditError, match="already exists"):
        export(busy_site, out)


def test_damaged_export_file_is_reported(busy_site: Site, tmp_path: Path) -> None:
    audit.checkpoint(busy_site)
    out = tmp_path / "a.jsonl"
    export(busy_site, out)
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text(
        "\n".join(lines[:-2]) + "\n", encoding="utf-8"
    )  # the last entry and the end record lost
    report = verify_exports([out], PublicKeys.from_site(busy_site))
    assert not report.ok
    messages = [p.message for p in report.sorted_problems()]
    assert messages[0] == "chain ends at 3 but checkpoint signed at 4 (tail truncated)"
    assert any("no end record" in m for m in messages)


# -------------------------------------------------------------------------------------- retention


def _aged_site(site: Site, monkeypatch: pytest.MonkeyPatch) -> tuple[Site, dt.datetime]:
    now = audit.utcnow()
    for days, n in ((400, 5), (300, 4), (10, 3)):
        monkeypatch.setattr(audit, "_utcnow", lambda d=days: now - dt.timedelta(days=d))
        add(site, n, subject_keys=[subject_key(site, ID_A)])
    monkeypatch.setattr(audit, "_utcnow", audit.utcnow)
    audit.checkpoint(site)
    return site, now


def test_prune_refuses_a_cut_inside_the_retention_period(
    site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    site, now = _aged_site(site, monkeypatch)
    with pytest.raises(AuditError, match="kept 183 days"):
        prune(site, before=now - dt.timedelta(days=100), archive=tmp_path, actor="user:admin")
    assert audit.count(site) == 12


def test_prune_archives_verifies_and_keeps_the_chain_verifiable_across_the_cut(
    site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    site, now = _aged_site(site, monkeypatch)
    first = prune(site, before=now - dt.timedelta(days=350), archive=tmp_path, actor="user:admin")
    assert (first.first_seq, first.last_seq, first.entries) == (1, 5, 5)
    assert first.archive.name == "audit-000000000001-000000000005.jsonl"
    second = prune(site, before=now - dt.timedelta(days=200), archive=tmp_path, actor="user:admin")
    assert (second.first_seq, second.last_seq) == (6, 9)
    assert (
        prune(site, before=now - dt.timedelta(days=200), archive=tmp_path, actor="user:admin")
        is None
    )

    assert audit.count(site) == 3 + 2  # the recent entries and the two audit.prune entries
    report = verify_store(site)
    assert report.ok, report.problems
    assert (report.start_seq, report.first_seq, report.last_seq) == (9, 10, 14)
    assert (
        audit.search(site, action="audit.prune", limit=1)[0]["detail"]["archive"]
        == second.archive.name
    )

    # offline: the archives and an export of what remains chain together
    audit.checkpoint(site)
    rest = tmp_path / "rest.jsonl"
    export(site, rest)
    keys = PublicKeys.from_files([public_key_file(site, tmp_path / "keys")])
    chained = verify_exports([first.archive, second.archive, rest], keys)
    assert chained.ok, chained.problems
    assert (chained.entries, chained.start_seq, chained.last_seq) == (14, 0, 14)
    # the subject report now only sees what is kept
    assert [r["seq"] for r in audit.subject_report(site, ID_A)] == [10, 11, 12]
    # an archive left out is a gap
    broken = verify_exports([first.archive, rest], keys)
    assert not broken.ok
    assert "rest.jsonl does not continue the previous file" in broken.sorted_problems()[0].message


def test_removing_the_anchor_after_a_prune_is_detected(
    site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    site, now = _aged_site(site, monkeypatch)
    prune(
        site, before=now - dt.timedelta(days=350), archive=tmp_path / "a.jsonl", actor="user:admin"
    )
    with site.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_anchors"))
    report = verify_store(site)
    assert not report.ok
    assert (
        report.sorted_problems()[0].message
        == "entries 1-5 missing: the chain starts at 6 (removed)"
    )


def test_prune_refuses_a_broken_chain(
    site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    site, now = _aged_site(site, monkeypatch)
    with site.engine.begin() as conn:
        conn.execute(text("UPDATE audit_entries SET purpose = 'x' WHERE seq = 2"))
    with pytest.raises(audit.ChainBroken, match="entry 2: hash mismatch"):
        prune(site, before=now - dt.timedelta(days=350), archive=tmp_path, actor="user:admin")
    assert audit.count(site) == 12 and not list(tmp_path.glob("audit-*.jsonl"))


# -------------------------------------------------------------------------------------- national suite


def test_national_suite_chains_with_sm3(tmp_path: Path, store_url: str) -> None:
    from tests.fixtures.sites import write_site

    folder = tmp_path / "sm"
    config = write_site(folder, store_url, suite="sm4-gcm+hmac-sm3")
    from gateway.crypto import Keyring

    (folder / "keyring.json").unlink()
    Keyring.create(folder / "keyring.json", suite="sm4-gcm+hmac-sm3")
    site = Site.from_config(config)
    Base.metadata.create_all(site.engine)
    try:
        add(site, 3)
        entry = audit.get_entry(site, 2)
        assert entry["alg"] == "sm3"
        expected = hashlib.new(
            "sm3", bytes.fromhex(entry["prev_hash"]) + audit.canonical_entry(entry)
        ).hexdigest()
        assert entry["hash"] == expected
        assert verify_store(site).ok
    finally:
        site.engine.dispose()


# ------------------------------------------------------------------------------ no ID in the clear


def test_no_id_number_in_store_exports_or_reports(busy_site: Site, tmp_path: Path) -> None:
    site = busy_site
    audit.subject_report(site, ID_A, actor="user:auditor1")
    audit.search(site, id_number=ID_B)
    audit.checkpoint(site)
    jsonl, csv_ = tmp_path / "a.jsonl", tmp_path / "a.csv"
    export(site, jsonl)
    export(site, csv_)
    texts = [jsonl.read_text(encoding="utf-8-sig"), csv_.read_text(encoding="utf-8-sig")]
    texts.append(json.dumps(audit.subject_report(site, ID_A), ensure_ascii=False))
    with site.begin() as s:
        for table in (
            "audit_entries",
            "audit_subjects",
            "audit_checkpoints",
            "audit_head",
            "audit_anchors",
        ):
            texts.append(repr(s.execute(select(Base.metadata.tables[table])).all()))
    url = site.settings.gateway.store
    if url.startswith("sqlite"):
        db = Path(url.removeprefix("sqlite:///"))
        for f in [db, *db.parent.glob(db.name + "-wal")]:
            texts.append(f.read_bytes().decode("latin-1"))
    for blob in texts:
        for number in (ID_A, ID_B, ID_A[:17], ID_B[:17]):
            assert number not in blob


def test_hostile_text_is_defused_in_terminal_and_spreadsheet(site: Site, tmp_path: Path) -> None:
    import csv

    # a refused request is audited with the purpose it asked for, whatever that was
    seq = audit.record(
        site,
        actor="dept:civil",
        action="api.refused",
        outcome="refused",
        purpose='=HYPERLINK("x")\x1b[2J',
    )
    assert audit.get_entry(site, seq)["purpose"] == '=HYPERLINK("x")\ufffd[2J'
    audit.checkpoint(site)
    out = tmp_path / "a.csv"
    export(site, out)
    with open(out, encoding="utf-8-sig", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["record_type"] == "entry"]
    assert rows[0]["purpose"] == "'" + '=HYPERLINK("x")\ufffd[2J'  # a spreadsheet shows text
    assert verify_exports([out], PublicKeys.from_site(site)).ok
    assert next(read_export(out).entries())["purpose"] == '=HYPERLINK("x")\ufffd[2J'


@pytest.mark.parametrize(
    "kw",
    [{"actor": ID_A}, {"actor": "dept:" + ID_A}, {"action": ID_A}, {"fields": ["x" * 50 + ID_A]}],
)
def test_errors_never_echo_an_id_number(site: Site, kw: dict) -> None:
    args = {"actor": "job:students", "action": "sync.run", **kw}
    with pytest.raises(AuditError) as info:
        audit.record(site, **args)
    assert ID_A not in str(info.value) and ID_A[:15] not in str(info.value)
