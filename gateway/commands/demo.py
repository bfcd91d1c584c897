"""``gateway demo``: a realistic synthetic county, every sync job, the match report, the audit check."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click


@click.command("demo")
@click.option("--students", type=click.IntRange(50, 5_000_000), default=2000, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same county.")
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default="gateway-demo",
    show_default=True,
    help="Working folder (a previous demo's folder is replaced).",
)
@click.option("--as-of", type=click.DateTime(["%Y-%m-%d"]), default="2026-11-24", show_default=True)
@click.option("--serve", is_flag=True, help="Then start the web app with demo credentials.")
@click.option("--port", type=int, default=5000, show_default=True)
def demo_command(
    students: int, seed: int, folder: Path, as_of: dt.datetime, serve: bool, port: int
) -> None:
    """Generate a county's department exports, sync them all, run the match, verify the audit chain."""
    from ..demo.run import DEMO_AUDITOR, DEMO_DEPARTMENT, run_demo, summary_lines
    from .sync import make_progress

    result = run_demo(
        folder.resolve(),
        students=students,
        seed=seed,
        as_of=as_of.date(),
        with_auditor=serve,
        progress=make_progress,
        say=lambda text: click.echo(text, err=True),
    )
    click.echo("\n".join(summary_lines(result)))
    if not result.verify.ok:
        raise SystemExit(1)
    if serve:
        from ..site import Site
        from ..web import create_app

        name, key_id = DEMO_DEPARTMENT
        click.echo("")
        click.echo("Demo credentials (this demo only; generated afresh each run):")
        click.echo(
            f"  department {name}: key id {key_id}, secret in {result.folder / 'education.secret.json'}"
        )
        click.echo(
            f"    gateway request GET /api/v1/match/out_of_school -p purpose=dropout-control --url http://127.0.0.1:{port} "
            f"--secret-file {result.folder / 'education.secret.json'}"
        )
        click.echo(
            f"  auditor: http://127.0.0.1:{port}/review/  user {DEMO_AUDITOR}  password {result.auditor_password}"
        )
        app = create_app(Site.from_config(result.config))
        app.run(host="127.0.0.1", port=port)
