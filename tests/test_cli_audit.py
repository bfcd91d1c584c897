"""``gateway audit verify|search|export|subject|checkpoint|prune`` end to end: exit codes, what is
printed, offline verification without store or keyring, and no ID number in any output."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from gateway import audit
from gateway.cli import cli
from gateway.commands.audit import audit_group
from gateway.commands.keys import keys_group
from gateway.site import Site

cli.add_command(audit_group)  # main() does this for the console script
cli.add_command(keys_group)

ID_A = "110105201003151239"
ID_B = "410527201206070026"


def run(site: Site, *args: str, input: str | None = None) -> Result:
    config = site.base_dir / "gateway.toml"
    return CliRunner().invoke(
        cli, ["--config", str(config), *args], input=input, catch_exceptions=False
    )


def no_id(*texts: str) -> None:
    for blob in texts:
        for number in (ID_A, ID_B):
            assert number not in blob


@pytest.fixture
def logged(site: Site, monkeypatch: pytest.MonkeyPatch) -> Site:
    ka, kb = site.protector.blind_index(ID_A), site.protector.blind_index(ID_B)
    clock = {"now": dt.datetime(2026, 3, 2, 9, 0)}
    monkeypatch.setattr(audit, "_utcnow", lambda: clock["now"])
    audit.record(
        site,
        actor="job:students",
        action="sync.run",
        dataset="students",
        subject_keys=[ka, kb],
        detail={"inserted": 2},
    )
    clock["now"] += dt.timedelta(hours=3)
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
    audit.record(
        site,
        actor="dept:civil",
        action="api.refused",
        outcome="refused",
        dataset="students",
        purpose="curiosity",
        subject_keys=[kb],
    )
    monkeypatch.setattr(audit, "_utcnow", audit.utcnow)
    return site


def test_verify_ok_and_broken(logged: Site) -> None:
    ok = run(logged, "audit", "verify")
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("chain verified: 3 entries (1-3) from genesis")
    with logged.engine.begin() as conn:
        conn.execute(text("UPDATE audit_entries SET purpose = 'other' WHERE seq = 2"))
    broken = run(logged, "audit", "verify")
    assert broken.exit_code == 1
    assert "CHAIN BROKEN: 1 problem(s)" in broken.output
    assert "  entry 2: hash mismatch (altered)" in broken.output.splitlines()
    as_json = json.loads(run(logged, "audit", "verify", "--json").output)
    assert as_json["ok"] is False and as_json["problems"][0]["kind"] == "altered"


def test_export_then_verify_offline_without_store_or_keyring(logged: Site, tmp_path: Path) -> None:
    out = tmp_path / "export" / "audit.jsonl"
    pem = tmp_path / "audit.pem"
    result = run(logged, "audit", "export", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "wrote 4 audit entries (entries 1-4) and "
    )  # its own audit.export entry
    assert run(logged, "keys", "public", "audit_signing", "--out", str(pem)).exit_code == 0
    # an auditor's machine: no config, no store, no keyring
    offline = CliRunner().invoke(
        cli,
        [
            "--config",
            str(tmp_path / "none.toml"),
            "audit",
            "verify",
            "--export",
            str(out),
            "--public-key",
            str(pem),
        ],
    )
    assert offline.exit_code == 0, offline.output
    assert "chain verified: 4 entries (1-4) from genesis" in offline.output
    assert "not yet covered" not in offline.output  # the export signed its own head
    last = json.loads(out.read_text(encoding="utf-8").splitlines()[-2])
    assert (last["action"], last["detail"]["file"]) == ("audit.export", "audit.jsonl")

    lines = out.read_text(encoding="utf-8").splitlines()
    entry = next(
        i for i, line in enumerate(lines) if '"seq":2,' in line and '"type":"entry"' in line
    )
    lines[entry] = lines[entry].replace('"student-aid"', '"curiosity"')
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tampered = CliRunner().invoke(
        cli,
        [
            "--config",
            str(tmp_path / "none.toml"),
            "audit",
            "verify",
            "--export",
            str(out),
            "--public-key",
            str(pem),
        ],
    )
    assert (
        tampered.exit_code == 1
        and "  entry 2: hash mismatch (altered)" in tampered.output.splitlines()
    )


def test_offline_verify_needs_a_public_key(logged: Site, tmp_path: Path) -> None:
    out = tmp_path / "a.jsonl"
    run(logged, "audit", "export", "--out", str(out))
    result = run(logged, "audit", "verify", "--export", str(out))
    assert result.exit_code == 2 and "--public-key" in result.output


def test_export_csv_verifies_offline(logged: Site, tmp_path: Path) -> None:
    out = tmp_path / "audit.csv"
    assert run(logged, "audit", "export", "--out", str(out)).exit_code == 0
    assert out.read_bytes().startswith(b"\xef\xbb\xbfrecord_type,seq,ts,actor")
    keys = tmp_path / "keys"
    keys.mkdir()
    run(logged, "keys", "public", "audit_signing", "--out", str(keys / "current.pem"))
    result = run(logged, "audit", "verify", "--export", str(out), "--public-key", str(keys))
    assert result.exit_code == 0, result.output
    again = run(logged, "audit", "export", "--out", str(out))
    assert again.exit_code == 2 and "already exists" in again.output


def test_export_by_time_range(logged: Site, tmp_path: Path) -> None:
    out = tmp_path / "morning.jsonl"
    result = run(
        logged,
        "audit",
        "export",
        "--out",
        str(out),
        "--since",
        "2026-03-02",
        "--until",
        "2026-03-02T10:00:00Z",
    )
    assert result.exit_code == 0, result.output
    assert "wrote 1 audit entries (entries 1-1)" in result.output


def test_search_by_id_from_stdin_never_prints_it(logged: Site) -> None:
    result = run(logged, "audit", "search", "--id", "-", input=ID_A + "\n")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["2", "1"]
    assert lines[-1] == "2 of 2 matching entries shown"
    no_id(result.output)
    looked = audit.search(logged, action="audit.search", limit=1)[0]  # the lookup itself is audited
    assert looked["subject_count"] == 1 and looked["actor"].startswith("user:")


def test_search_filters_and_json(logged: Site) -> None:
    by_dept = run(logged, "audit", "search", "--department", "education", "--json")
    rows = [json.loads(line) for line in by_dept.output.splitlines()]
    assert [(r["seq"], r["purpose"], r["fields"]) for r in rows] == [
        (2, "student-aid", ["poverty_type"])
    ]
    refused = run(logged, "audit", "search", "--outcome", "refused", "--dataset", "students")
    assert refused.output.splitlines()[0].split()[0] == "3"
    early = run(logged, "audit", "search", "--until", "2026-03-02T10:00:00", "--action", "sync.*")
    assert early.output.splitlines()[-1] == "1 of 1 matching entries shown"
    bad = run(logged, "audit", "search", "--since", "yesterday")
    assert bad.exit_code == 2 and "not a date" in bad.output


def test_subject_report(logged: Site) -> None:
    result = run(logged, "audit", "subject", ID_B)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "access report for 410527********0026: 2 exchanges"
    assert "job:students" in lines[1] and "sync.run" in lines[1] and "dataset=students" in lines[1]
    assert "dept:civil" in lines[2] and "refused" in lines[2] and "purpose=curiosity" in lines[2]
    no_id(result.output)
    as_json = json.loads(run(logged, "audit", "subject", ID_A, "--json").output)
    assert [(r["recipient"], r["purpose"]) for r in as_json] == [
        ("job:students", None),
        ("dept:education", "student-aid"),
    ]


def test_subject_with_an_invalid_id_is_a_usage_error_without_the_number(logged: Site) -> None:
    result = run(logged, "audit", "subject", "110105201003151238")
    assert result.exit_code == 2
    assert result.output.startswith("error: ID number 110105********1238 is not valid")
    assert "110105201003151238" not in result.output


def test_checkpoint_command(make_site, tmp_path: Path) -> None:
    copy = tmp_path / "copy.jsonl"
    site = make_site({"audit": {"checkpoint_export": str(copy)}})
    assert run(site, "audit", "checkpoint").output == "the audit log is empty: nothing to sign\n"
    audit.record(site, actor="job:x", action="sync.run")
    audit.record(site, actor="job:x", action="sync.run")
    result = run(site, "audit", "checkpoint")
    key = site.keyring.active("audit_signing").id
    assert result.output.startswith(f"checkpoint at 2 signed with key {key}")
    copy.unlink()
    synced = run(site, "audit", "checkpoint", "--sync")
    assert f"copied 2 checkpoint(s) to {copy}" in synced.output
    assert [json.loads(x)["seq"] for x in copy.read_text().splitlines()] == [1, 2]


def test_prune_refuses_then_archives(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = audit.utcnow() - dt.timedelta(days=400)
    monkeypatch.setattr(audit, "_utcnow", lambda: old)
    for _ in range(3):
        audit.record(site, actor="job:x", action="sync.run")
    monkeypatch.setattr(audit, "_utcnow", audit.utcnow)
    audit.record(site, actor="job:x", action="sync.run")

    usage = run(site, "audit", "prune", "--archive", str(tmp_path))
    assert usage.exit_code == 2 and "exactly one of" in usage.output
    refused = run(site, "audit", "prune", "--older-than-days", "30", "--archive", str(tmp_path))
    assert refused.exit_code == 2 and "kept 183 days" in refused.output
    done = run(site, "audit", "prune", "--older-than-days", "200", "--archive", str(tmp_path))
    assert done.exit_code == 0, done.output
    assert done.output.startswith("archived entries 1-3 (3) to ")
    assert run(site, "audit", "verify").output.startswith(
        "chain verified: 2 entries (4-5) from anchor at 3"
    )
    nothing = run(site, "audit", "prune", "--older-than-days", "200", "--archive", str(tmp_path))
    assert nothing.output.startswith("nothing to prune")


def test_installed_command_has_the_audit_group(logged: Site) -> None:
    gateway = Path(sys.executable).with_name("gateway")
    result = subprocess.run(
        [str(gateway), "--config", str(logged.base_dir / "gateway.toml"), "audit", "verify"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("chain verified: 3 entries")
