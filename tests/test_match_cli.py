"""``gateway match`` end to end: the workbook and JSON really written and read back, masking,
the reveal permission and its audit, township files, stored runs, and user mistakes."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from openpyxl import load_workbook

from gateway import audit, ids, match
from gateway.cli import cli
from gateway.commands.match import match_command
from gateway.store.records import Poverty
from tests.matchdata import EXPECTED, T1, T2, T3, MatchData, build_county

cli.add_command(match_command)  # main() does this for the console script

LIST_SHEETS = [spec.title for spec in match.LISTS.values()]


def run(site: Any, *args: str) -> Result:
    config = site.base_dir / "gateway.toml"
    return CliRunner().invoke(
        cli, ["--config", str(config), "match", *args], catch_exceptions=False
    )


@pytest.fixture
def county(make_site):
    def factory(**match_settings: Any):
        site = make_site({"match": {"aid_dataset": "student_aid", **match_settings}})
        b = MatchData(site)
        build_county(b)
        return site, b

    return factory


def sheet_rows(path: Path, title: str) -> list[dict[str, Any]]:
    """A list sheet as dicts keyed by the column's JSON key (the header's last word)."""
    sheet = load_workbook(path, read_only=True)[title]
    values = list(sheet.iter_rows(values_only=True))
    keys = [h.rsplit(" ", 1)[-1] for h in values[0]]
    return [dict(zip(keys, row, strict=True)) for row in values[1:]]


def xlsx_text(path: Path) -> str:
    """Every XML part of the workbook: what anyone unzipping the file would see."""
    with zipfile.ZipFile(path) as z:
        return "".join(z.read(n).decode("utf-8") for n in z.namelist() if n.endswith(".xml"))


def assert_nothing_personal(b: MatchData, text: str) -> None:
    for person in b.people.values():
        assert person.number not in text, person.label
        assert person.number.lower() not in text, person.label
        assert person.name not in text, person.label


def labelled(b: MatchData, keys: list[str]) -> Counter[str]:
    by_key = {p.subject_key: label for label, p in b.people.items()}
    return Counter(by_key[k] for k in keys)


def test_workbook_masked(county, tmp_path):
    site, b = county()
    out = tmp_path / "lists.xlsx"
    result = run(site, "--as-of", "2025-03-15", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "out_of_school" in result.output and "疑似失学辍学儿童" in result.output
    assert f"wrote {sum(sum(c.values()) for c in EXPECTED.values())} rows" in result.output

    wb = load_workbook(out, read_only=True)
    assert wb.sheetnames == ["汇总", "分乡镇", "分学校", *LIST_SHEETS]
    for name, spec in match.LISTS.items():
        found = sheet_rows(out, spec.title)
        assert labelled(b, [r["subject_key"] for r in found]) == EXPECTED[name], name

    oos = {r["subject_key"]: r for r in sheet_rows(out, "疑似失学辍学儿童")}
    child = b.people["o_none_multi"]
    row = oos[child.subject_key]
    assert row["name"] == child.name[0] + "*"
    assert row["id_masked"] == ids.mask(child.number)
    assert (row["area_code"], row["village"], row["age"]) == (T2, "二村", 9)
    assert row["registries"] == "户籍、防返贫监测、民政"
    assert "id_number" not in row
    home = {r["subject_key"]: r for r in sheet_rows(out, "送教上门")}
    disabled = home[b.key("o_disabled")]
    assert (disabled["disability_category"], disabled["disability_grade"], disabled["reason"]) == (
        "智力",
        "一级",
        "失学辍学",
    )

    summary = list(wb["汇总"].iter_rows(values_only=True))
    counts = {r[0]: r[2:] for r in summary if r and r[0] in match.LISTS}
    assert counts["out_of_school"] == (10, 10, 0)
    townships = {(r[0], r[2]): r[4:] for r in list(wb["分乡镇"].iter_rows(values_only=True))[1:]}
    assert townships[("out_of_school", T1)] == (8, 8, 0)
    assert townships[("out_of_school", T3)] == (1, 1, 0)

    assert_nothing_personal(b, xlsx_text(out) + result.output)

    entry = audit.search(site, action="match.export")[0]
    assert entry["outcome"] == "delivered" and entry["detail"]["format"] == "xlsx"
    listed = {
        r["subject_key"] for name in match.LISTS for r in sheet_rows(out, match.LISTS[name].title)
    }
    assert entry["subject_count"] == len(listed)
    stored = audit.get_entry(site, entry["seq"])
    assert set(stored["subject_keys"]) == listed
    assert audit.search(site, action="match.run")[0]["detail"]["counts"]["flags"]["count"] == 18


def test_json_to_stdout(county):
    site, b = county()
    result = CliRunner().invoke(
        cli,
        [
            "--config",
            str(site.base_dir / "gateway.toml"),
            "match",
            "--as-of",
            "2025-03-15",
            "--format",
            "json",
            "--out",
            "-",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert "match run" in result.stderr  # the figures go to stderr, the document to stdout
    assert doc["ids"] == "masked" and doc["run"]["as_of"] == "2025-03-15"
    for name in match.LISTS:
        assert labelled(b, [r["subject_key"] for r in doc["lists"][name]]) == EXPECTED[name], name
    row = next(r for r in doc["lists"]["flags"] if r["subject_key"] == b.key("f_dis2"))
    assert (row["disability_category"], row["disability_grade"], row["student_status"]) == (
        1,
        2,
        "enrolled",
    )
    assert row["poverty_lifted"] is False and row["name"] == b.people["f_dis2"].name[0] + "*"
    township = {(c["list_name"], c["code"]): c["count"] for c in doc["counts"]["township"]}
    assert township[("out_of_school", T2)] == 1
    assert_nothing_personal(b, result.stdout + result.stderr)


def test_json_file_matches_workbook(county, tmp_path):
    site, b = county()
    assert run(site, "--as-of", "2025-03-15", "--out", str(tmp_path / "a.xlsx")).exit_code == 0
    run_id = match.get_run(site).run_id
    result = run(site, "--run", str(run_id), "--out", str(tmp_path / "a.json"))
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    for name, spec in match.LISTS.items():
        from_xlsx = sorted(r["subject_key"] for r in sheet_rows(tmp_path / "a.xlsx", spec.title))
        assert sorted(r["subject_key"] for r in doc["lists"][name]) == from_xlsx
    assert len(match.list_runs(site)) == 1  # --run wrote the stored run, it did not run again


def test_reveal_refused_without_permission(county, tmp_path):
    site, b = county()
    out = tmp_path / "lists.xlsx"
    result = run(site, "--as-of", "2025-03-15", "--out", str(out), "--reveal")
    assert result.exit_code == 2
    assert "error:" in result.output and "reveal" in result.output
    assert not out.exists()
    assert match.list_runs(site) == []  # refused before any work
    refused = audit.search(site, action="match.reveal")
    assert [e["outcome"] for e in refused] == ["refused"]


def test_reveal_with_permission(county, tmp_path):
    site, b = county(permissions=["reveal"])
    out = tmp_path / "lists.xlsx"
    result = run(site, "--as-of", "2025-03-15", "--out", str(out), "--reveal")
    assert result.exit_code == 0, result.output
    rows = {r["subject_key"]: r for r in sheet_rows(out, "疑似失学辍学儿童")}
    for label in ("o_none_multi", "n_passport", "f_removed_student"):
        person = b.people[label]
        assert rows[person.subject_key]["id_number"] == person.number
        assert rows[person.subject_key]["name"] == person.name
    flags = {r["subject_key"]: r for r in sheet_rows(out, "学生身份标注")}
    assert (
        flags[b.key("f_id15")]["id_number"] == b.people["f_id15"].number
    )  # the student's own record
    entry = audit.search(site, action="match.reveal")[0]
    assert entry["outcome"] == "delivered"
    assert entry["fields"] == ["name", "id_number"]
    assert b.key("o_none_multi") in audit.get_entry(site, entry["seq"])["subject_keys"]
    assert_nothing_personal(b, result.output)  # the terminal still shows no ID


def test_township_files(county, tmp_path):
    site, b = county(township_outbox="outbox")
    result = run(site, "--as-of", "2025-03-15")
    assert result.exit_code == 0, result.output
    folder = site.base_dir / "outbox" / "2025-03"
    assert sorted(p.name for p in folder.iterdir()) == [f"{T1}.xlsx", f"{T2}.xlsx", f"{T3}.xlsx"]
    t3 = folder / f"{T3}.xlsx"
    assert load_workbook(t3, read_only=True).sheetnames == [
        "汇总",
        "疑似失学辍学儿童",
        "休学适龄儿童",
        "送教上门",
        "转出去向待核实",
    ]
    assert labelled(b, [r["subject_key"] for r in sheet_rows(t3, "疑似失学辍学儿童")]) == Counter(
        ["o_pov_only"]
    )
    t1_oos = labelled(
        b, [r["subject_key"] for r in sheet_rows(folder / f"{T1}.xlsx", "疑似失学辍学儿童")]
    )
    assert sum(t1_oos.values()) == 8 and "o_pov_only" not in t1_oos
    for path in folder.iterdir():
        assert_nothing_personal(b, xlsx_text(path))
    deliveries = audit.search(site, action="match.export")
    assert sorted(e["detail"]["recipient"] for e in deliveries) == [
        f"township:{c}" for c in (T1, T2, T3)
    ]


def test_rerun_prints_no_change(county):
    site, b = county()
    assert run(site, "--as-of", "2025-03-15").exit_code == 0
    second = run(site, "--as-of", "2025-03-15")
    assert second.exit_code == 0
    assert "compared with run 1" in second.output
    line = next(x for x in second.output.splitlines() if x.strip().startswith("out_of_school"))
    assert line.split()[1:4] == ["10", "0", "0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--as-of", "2025-13-01"], "Invalid value for '--as-of'"),
        (["--reveal"], "--reveal needs --out"),
        (["--out", "-", "--format", "xlsx"], "--out - writes JSON only"),
        (["--run", "999", "--out", "x.json"], "no match run 999"),
        (["--run", "1", "--as-of", "2025-03-15"], "give one of them"),
    ],
)
def test_user_mistakes(county, tmp_path, args, message):
    site, b = county()
    result = run(site, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_unwritable_output(county, tmp_path):
    site, b = county()
    result = run(site, "--as-of", "2025-03-15", "--out", str(tmp_path / "missing" / "x.json"))
    assert result.exit_code == 2
    assert "error: match: cannot write" in result.output


def test_a_token_that_does_not_open_is_shown_empty(county, tmp_path):
    site, b = county()
    # Another person's sealed name moved onto o_pov_only's row: bound to another record, it must not open.
    t = Poverty.__table__
    with site.engine.begin() as conn:
        other = conn.execute(
            sa.select(t.c.name).where(t.c.subject_key == b.key("f_lifted"))
        ).scalar_one()
        conn.execute(sa.update(t).where(t.c.subject_key == b.key("o_pov_only")).values(name=other))
    out = tmp_path / "lists.json"
    result = run(site, "--as-of", "2025-03-15", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "warning: 1 sealed names/IDs did not open" in result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    row = next(r for r in doc["lists"]["out_of_school"] if r["subject_key"] == b.key("o_pov_only"))
    assert row["name"] is None
    assert b.people["f_lifted"].name[0] + "*" not in json.dumps(row, ensure_ascii=False)
    assert audit.search(site, action="match.export")[0]["detail"]["unopened"] == 1


def test_keep_months_prunes_old_lists(county):
    site, b = county()
    for day in ("2025-01-15", "2025-02-15", "2025-03-15"):
        assert run(site, "--as-of", day).exit_code == 0
    result = run(site, "--as-of", "2025-03-20", "--keep-months", "1")
    assert result.exit_code == 0, result.output
    assert "pruned" in result.output
    statuses = [r.status for r in sorted(match.list_runs(site), key=lambda r: r.run_id)]
    assert statuses == ["pruned", "pruned", "pruned", "ok"]
    assert len(match.trend(site, "out_of_school")) == 3  # January to March, from the kept counts
    assert run(site, "--keep-months", "0").exit_code == 2
