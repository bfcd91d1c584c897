"""``gateway demo``: its summary matches what the generator planted, and nothing leaks an ID."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gateway.demo.run import JOBS, SYSTEMS, run_demo, summary_lines

GATEWAY = Path(sys.executable).with_name("gateway")
ID_RE = re.compile(r"(?<![0-9])[1-9][0-9]{16}[0-9X](?![0-9X])|(?<![0-9])[1-9][0-9]{14}(?![0-9])")

# Ground-truth list -> the match lists that together hold it.
LISTS = {
    "flags": ["flags"],
    "out_of_school": ["out_of_school"],
    "suspended": ["suspended"],
    "transferred_out_unknown": ["transfer_check"],
    "home_teaching": ["home_teaching"],
    "rosters": ["roster_suspected_dropout", "roster_dropout", "roster_suspended"],
    "aid_gaps": ["aid_gaps"],
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("demo") / "county"
    messages: list[str] = []
    result = run_demo(
        folder, students=800, seed=7, as_of=dt.date(2026, 11, 24), say=messages.append
    )
    return result, "\n".join(messages + summary_lines(result))


def _text(path: Path) -> str:
    """A file's text for an ID search: XLSX parts unzipped; digits read the same in any encoding."""
    if path.suffix == ".xlsx":
        with zipfile.ZipFile(path) as book:
            return "".join(book.read(n).decode("utf-8", "replace") for n in book.namelist())
    return path.read_bytes().decode("latin-1")


def _files_of(system: str, truth) -> list:
    folder = SYSTEMS[system][2].split("/")[1]
    return [counts for name, counts in truth.files.items() if name.split("/")[0] == folder]


def test_rows_and_quarantine_match_what_was_planted(demo) -> None:
    result, _ = demo
    expected_reasons: dict[str, int] = {}
    for job, system in JOBS.items():
        files = _files_of(system, result.truth)
        run = result.runs[job]
        assert files, job
        assert run.adds_up
        assert run.read == sum(f.rows_written for f in files), job
        assert run.quarantined == sum(sum(f.quarantined().values()) for f in files), job
        for f in files:
            for reason, count in f.quarantined().items():
                expected_reasons[reason] = expected_reasons.get(reason, 0) + count
    assert dict(result.quarantine_reasons) == expected_reasons


def test_every_list_count_matches_the_ground_truth(demo) -> None:
    result, _ = demo
    for truth_list, match_lists in LISTS.items():
        got = sum(result.match.counts[name].count for name in match_lists)
        assert got == len(getattr(result.truth, truth_list)), truth_list


def test_summary_reports_report_and_verified_chain(demo) -> None:
    result, text = demo
    assert result.verify.ok and "Audit chain: verifies" in text
    assert result.report.exists() and str(result.report) in text
    for name, count in result.match.counts.items():
        assert re.search(rf"{name}\s+{count.count:,}\b", text)


def test_no_id_number_in_the_clear_after_a_demo(demo) -> None:
    result, text = demo
    known: set[str] = set()
    for path in (result.folder / "inbox").rglob("*.*"):
        known |= set(ID_RE.findall(_text(path)))
    assert len(known) > 500
    haystacks = {"summary": text}
    for path in result.folder.glob("gateway.db*"):
        haystacks[path.name] = path.read_bytes().decode("latin-1")
    for path in [*result.folder.glob("reports/*.xlsx"), *result.folder.glob("outbox/**/*.xlsx")]:
        with zipfile.ZipFile(path) as book:
            haystacks[path.name] = "".join(
                book.read(n).decode("utf-8", "replace") for n in book.namelist()
            )
    assert len(haystacks) >= 3
    for name, hay in haystacks.items():
        leaked = known & set(ID_RE.findall(hay))
        assert not leaked, f"{name} holds {len(leaked)} ID number(s) in the clear"


def test_demo_command_runs_and_replaces_only_its_own_folder(tmp_path: Path) -> None:
    def gateway(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(GATEWAY), *args], capture_output=True, text=True, cwd=tmp_path, check=False
        )

    first = gateway("demo", "--students", "300", "--seed", "3")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "Audit chain: verifies" in first.stdout and "Traceback" not in first.stderr
    again = gateway(
        "demo", "--students", "300", "--seed", "3"
    )  # the previous demo folder is replaced
    assert again.returncode == 0 and again.stdout.splitlines()[2:] == first.stdout.splitlines()[2:]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "important.txt").write_text("keep me", encoding="utf-8")
    refused = gateway("demo", "--students", "300", "--dir", "mine")
    assert refused.returncode == 2 and "not a demo folder" in refused.stderr
    assert (tmp_path / "mine" / "important.txt").exists()
