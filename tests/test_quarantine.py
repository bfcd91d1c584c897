"""Quarantine: list, show (IDs masked), replay after fixing the mapping; through the CLI."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from gateway.cli import _add_builtin_commands, cli
from gateway.quarantine import list_rows, mask_value, replay, show_row
from gateway.store.jobs import QuarantineRow, Run
from gateway.store.records import Resident
from gateway.sync import run_job
from tests.syncdata import create_target, job_config, people, write_mappings, write_source

_add_builtin_commands()


@pytest.fixture
def site_and_rows(make_site, tmp_path):
    source, target = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'target.db'}"
    rows = people(40)
    rows[2]["xm"] = ""  # required name missing
    rows[5]["sfzh"] = rows[5]["sfzh"][:10]  # too short
    rows[9]["xb"] = "男"  # not a canonical sex code: the mapping does not translate it yet
    write_source(source, rows)
    create_target(target)
    site = make_site(job_config(source, target_url=target, batch_size=15))
    write_mappings(site.base_dir)
    return site, rows


def test_list_show_and_masking(site_and_rows):
    site, rows = site_and_rows
    summary = run_job(site, "residents")
    assert summary.quarantined == 3 and summary.adds_up
    listed = list_rows(site, job="residents")
    assert sorted(q.position for q in listed) == ["people:pid=2", "people:pid=5", "people:pid=9"]
    assert {q.reason for q in list_rows(site, reason="required")} == {"required"}
    by_pos = {q.position: q for q in listed}
    shown = show_row(site, by_pos["people:pid=9"].id)
    assert shown.row["xm"] == rows[9]["xm"]  # names are shown, ID numbers are not
    assert shown.row["sfzh"] == rows[9]["sfzh"][:6] + "********" + rows[9]["sfzh"][-4:]
    assert shown.field == "sex"
    assert mask_value("证号 522601200801010011 末") == "证号 522601********0011 末"
    assert mask_value("1.10105194912310E+17") != "1.10105194912310E+17"


def test_cli_list_show_replay(site_and_rows):
    site, rows = site_and_rows
    run_job(site, "residents")
    runner = CliRunner()
    config = str(site.base_dir / "gateway.toml")
    out = runner.invoke(cli, ["--config", config, "quarantine", "list", "--job", "residents"])
    assert out.exit_code == 0, out.output
    assert "people:pid=9" in out.output and "required" in out.output
    q9 = next(q for q in list_rows(site) if q.position == "people:pid=9")
    shown = runner.invoke(cli, ["--config", config, "quarantine", "show", str(q9.id)])
    assert shown.exit_code == 0
    for r in rows:
        assert r["sfzh"] not in out.output + shown.output
    assert rows[9]["sfzh"][:6] + "********" in shown.output
    # Nothing fixed yet: replay leaves all three, exit 1.
    again = runner.invoke(cli, ["--config", config, "quarantine", "replay", "--job", "residents"])
    assert again.exit_code == 1 and "0 resolved, 3 still quarantined" in again.output
    assert all(q.attempts == 2 for q in list_rows(site))
    # Fix the mapping: translate 男/女 to the canonical codes, then replay that row.
    path = site.base_dir / "mappings" / "test_registry" / "residents.toml"
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            '[fields.sex]\nfrom = "xb"\n',
            '[fields.sex]\nfrom = "xb"\ntransforms = [{ name = "map", values = { "男" = "1", "女" = "2", "1" = "1", "2" = "2" } }]\n',
        ),
        encoding="utf-8",
    )
    fixed = runner.invoke(cli, ["--config", config, "quarantine", "replay", str(q9.id)])
    assert fixed.exit_code == 0, fixed.output
    assert "1 resolved, 0 still quarantined" in fixed.output
    with site.begin() as s:
        q = s.get(QuarantineRow, q9.id)
        assert q.status == "resolved" and q.resolved_run_id
        replay_run = s.get(Run, q.resolved_run_id)
        assert (replay_run.kind, replay_run.inserted, replay_run.status) == (
            "replay",
            1,
            "succeeded",
        )
        assert s.execute(sa.select(sa.func.count()).select_from(Resident)).scalar_one() == 38
    # The still-bad rows keep their reason; a replay of the rest changes nothing.
    rest = replay(site, job="residents")
    assert rest[0].quarantined == 2 and rest[0].read == 2
    assert sorted(q.reason for q in list_rows(site)) == ["bad_length", "required"]


def test_snapshot_supersedes_old_quarantine_rows(site_and_rows):
    site, _ = site_and_rows
    run_job(site, "residents")
    run_job(site, "residents")
    open_rows = list_rows(site)
    assert len(open_rows) == 3  # the second snapshot's rows; the first's are superseded
    assert len(list_rows(site, status="superseded")) == 3
