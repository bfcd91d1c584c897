"""Builders for the sync engine's tests: valid ID numbers, native rows of a household-registry-like
source, the source and target databases, and the site configuration of a job.

The source is a real SQL table read through the real sql connector; the target is another real
table written through the same connector, so deliveries are real upserts.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from gateway import ids

SOURCE_COLUMNS = ("pid", "sfzh", "xm", "xb", "csrq", "xzqh", "cun", "zz", "gxsj")
MAPPING_SPEC = "test_registry/residents"
OUT_SPEC_NAME = "residents.out"

# Inbound: the test source's pinyin columns -> canonical residents.
MAPPING_TOML = """\
[mapping]
name = "test_registry/residents"
dataset = "residents"
direction = "inbound"
version = "1"
system = "test_registry"

[fields.id_number]
from = "sfzh"
transforms = ["id_number"]
required = true
sensitivity = "national_id"

[fields.name]
from = "xm"
transforms = ["strip"]
required = true
sensitivity = "personal"

[fields.sex]
from = "xb"

[fields.birth_date]
from = "csrq"
transforms = ["date"]

[fields.area_code]
from = "xzqh"
transforms = ["area"]

[fields.village]
from = "cun"

[fields.address]
from = "zz"
sensitivity = "personal"
"""


OUTBOUND_TOML = """\
[mapping]
name = "mirror/residents.out"
system = "mirror"
dataset = "residents"
direction = "outbound"
version = "1"
key = ["sfzh"]

[fields.sfzh]
from = "id_number"
required = true

[fields.xm]
from = "name"

[fields.area]
from = "area_code"

[fields.zz]
from = "address"
"""


def make_id(i: int, *, area: str = "522601") -> str:
    """A valid 18-character resident ID number, distinct for every ``i`` below 4 million."""
    birth = dt.date(2008, 1, 1) + dt.timedelta(days=(i // 1000) % 4000)
    first17 = f"{area}{birth:%Y%m%d}{i % 1000:03d}"
    return first17 + ids.check_char(first17)


def native_row(i: int, *, version: int = 0) -> dict[str, Any]:
    """Person ``i`` as the source holds it; ``version`` changes the address (an update)."""
    number = make_id(i)
    return {
        "pid": i,
        "sfzh": number,
        "xm": f"测试{i:06d}",
        "xb": "1" if int(number[16]) % 2 else "2",
        "csrq": f"{number[6:10]}-{number[10:12]}-{number[12:14]}",
        "xzqh": f"522601{100 + i % 7:03d}000",
        "cun": f"第{i % 13}村",
        "zz": f"凯里市某路{i}号" + (f" 之{version}" if version else ""),
        "gxsj": dt.datetime(2026, 1, 1) + dt.timedelta(seconds=i + version * 1_000_000),
    }


def people(
    n: int, *, start: int = 0, versions: dict[int, int] | None = None
) -> list[dict[str, Any]]:
    versions = versions or {}
    return [native_row(i, version=versions.get(i, 0)) for i in range(start, start + n)]


def source_table(metadata: sa.MetaData | None = None) -> sa.Table:
    return sa.Table(
        "people",
        metadata or sa.MetaData(),
        sa.Column("pid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sfzh", sa.String(40)),
        sa.Column("xm", sa.String(100)),
        sa.Column("xb", sa.String(2)),
        sa.Column("csrq", sa.String(12)),
        sa.Column("xzqh", sa.String(12)),
        sa.Column("cun", sa.String(100)),
        sa.Column("zz", sa.String(400)),
        sa.Column("gxsj", sa.DateTime),
    )


def target_table(metadata: sa.MetaData | None = None) -> sa.Table:
    """The target department's table: keyed by its own natural key, the ID number."""
    return sa.Table(
        "mirror_people",
        metadata or sa.MetaData(),
        sa.Column("sfzh", sa.String(40), primary_key=True),
        sa.Column("xm", sa.String(100)),
        sa.Column("area", sa.String(12)),
        sa.Column("zz", sa.String(400)),
        sa.Column("removed", sa.Integer),
    )


def write_source(url: str, rows: Iterable[dict[str, Any]], *, replace: bool = True) -> None:
    """(Re)fill the source table ``people`` at ``url`` with ``rows``."""
    engine = sa.create_engine(url)
    try:
        table = source_table()
        if replace:
            table.drop(engine, checkfirst=True)
        table.create(engine, checkfirst=True)
        rows = list(rows)
        with engine.begin() as conn:
            for i in range(0, len(rows), 5000):
                conn.execute(table.insert(), rows[i : i + 5000])
    finally:
        engine.dispose()


def create_target(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        target_table().create(engine, checkfirst=True)
    finally:
        engine.dispose()


def read_table(url: str, name: str, order_by: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [
                dict(r._mapping)
                for r in conn.execute(sa.text(f"SELECT * FROM {name} ORDER BY {order_by}"))
            ]
    finally:
        engine.dispose()


def job_config(
    source_url: str,
    *,
    target_url: str | None = None,
    mode: str = "snapshot",
    batch_size: int = 100,
    retries: int = 0,
    schedule: str | None = None,
    job: str = "residents",
) -> dict[str, Any]:
    """The [systems] and [jobs] tables of a site syncing ``people`` into ``residents``."""
    systems: dict[str, Any] = {
        "registry": {
            "plugin": "test_registry",
            "connector": "sql",
            "url": source_url,
            "table": "people",
            "mapping": MAPPING_SPEC,
        }
    }
    if mode == "incremental":
        systems["registry"]["cursor"] = ["gxsj", "pid"]
    else:
        systems["registry"]["key"] = ["pid"]
    jobs: dict[str, Any] = {
        "source": "registry",
        "dataset": "residents",
        "mode": mode,
        "batch_size": batch_size,
        "retries": retries,
        "targets": [],
    }
    if schedule:
        jobs["schedule"] = schedule
    if target_url:
        systems["mirror"] = _mirror(target_url)
        jobs["targets"] = ["mirror"]
    return {"systems": systems, "jobs": {job: jobs}}


def file_job_config(
    path: Any,
    *,
    batch_size: int,
    connector: str = "csv",
    target_url: str | None = None,
    retries: int | None = None,
) -> dict[str, Any]:
    """The [systems] and [jobs] tables of a site snapshotting the file(s) at ``path`` (read by
    the csv or xlsx connector) into ``residents``."""
    systems: dict[str, Any] = {
        "registry": {
            "plugin": "test_registry",
            "connector": connector,
            "path": str(path),
            "mapping": MAPPING_SPEC,
        }
    }
    job: dict[str, Any] = {
        "source": "registry",
        "dataset": "residents",
        "mode": "snapshot",
        "batch_size": batch_size,
    }
    if retries is not None:
        job["retries"] = retries
    if target_url:
        systems["mirror"] = _mirror(target_url)
        job["targets"] = ["mirror"]
    return {"systems": systems, "jobs": {"residents": job}}


def _mirror(target_url: str) -> dict[str, Any]:
    """The SQL target system a job delivers to: table ``mirror_people`` at ``target_url``."""
    return {"plugin": "mirror", "connector": "sql", "url": target_url, "table": "mirror_people"}


def known_secrets(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Values that must never appear in the clear in the store or any output."""
    return [r["sfzh"] for r in rows] + [r["xm"] for r in rows[:50]]


def dump_store_text(url: str) -> str:
    """Every text value in every table of the store, one blob to search for secrets in."""
    engine = sa.create_engine(url)
    out: list[str] = []
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for row in conn.execute(table.select()):
                    out.extend(str(v) for v in row if v is not None)
    finally:
        engine.dispose()
    return "\n".join(out)


def write_mappings(site_dir: Path) -> None:
    """The job's inbound mapping and the target's outbound mapping, as the site's own copies."""
    folder = site_dir / "mappings"
    (folder / "test_registry").mkdir(parents=True, exist_ok=True)
    (folder / "mirror").mkdir(parents=True, exist_ok=True)
    (folder / "test_registry" / "residents.toml").write_text(MAPPING_TOML, encoding="utf-8")
    (folder / "mirror" / "residents.out.toml").write_text(OUTBOUND_TOML, encoding="utf-8")


# Modules a `gateway sync` of the test job imports: loaded once by the launcher, before it forks.
PRELOAD = (
    "gateway.cli",
    "gateway.commands.sync",
    "gateway.sync",
    "gateway.site",
    "gateway.store",
    "gateway.mapping",
    "gateway.schemas",
    "gateway.audit",
    "gateway.plugins",
    "gateway_plugins.sql_tables",
    "gateway_plugins.transforms",
)


class SyncLauncher:
    """Starts `gateway` commands as forks of one pre-imported Python process: a command starts
    in milliseconds instead of the second or more an interpreter needs to import the gateway
    (on a loaded machine), so a kill test can start many runs. Each command is a real, separate
    process running the real CLI; the launcher reaps it and reports its exit status."""

    def __init__(self, root: Path):
        import os
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.syncdata", "--launcher"],
            env={**os.environ, "PYTHONPATH": str(root)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _ask(self, **request: Any) -> dict[str, Any]:
        import json

        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the launcher ended (status {self.proc.wait()})")
        return json.loads(line)

    def start(self, argv: Sequence[str], output: Path) -> int:
        """Fork ``gateway ARGV`` (stdout and stderr to ``output``); returns its pid."""
        return int(self._ask(op="start", argv=list(argv), output=str(output))["pid"])

    def wait(self, pid: int) -> int:
        """Its exit status: the exit code, or minus the signal that ended it."""
        return int(self._ask(op="wait", pid=pid)["status"])

    def poll(self, pid: int) -> int | None:
        """Its exit status if it has ended, else None."""
        status = self._ask(op="poll", pid=pid)["status"]
        return None if status is None else int(status)

    def close(self) -> None:
        if self.proc.poll() is None:
            self._ask(op="quit")
            self.proc.wait(timeout=30)


def _launcher() -> None:
    """The launcher's side of SyncLauncher: JSON requests on stdin, one JSON answer each."""
    import importlib
    import json
    import os
    import traceback

    for name in PRELOAD:
        importlib.import_module(name)
    from gateway.cli import main as gateway_main

    ended: dict[int, int] = {}  # pid -> exit status, once reaped
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            print(json.dumps({}), flush=True)
            return
        if request["op"] in ("wait", "poll"):
            pid = request["pid"]
            if pid not in ended:
                done, status = os.waitpid(pid, os.WNOHANG if request["op"] == "poll" else 0)
                if done:
                    ended[pid] = os.waitstatus_to_exitcode(status)
            print(json.dumps({"status": ended.get(pid)}), flush=True)
            continue
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the command: output to its file, never back into the launcher's pipe
            code = 70
            try:
                fd = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                try:
                    gateway_main(request["argv"])
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - reported in the output, as a crash would be
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)


def main(argv: list[str]) -> None:
    """``python -m tests.syncdata ARGS``: the ``gateway`` command (for subprocess tests), or
    ``--launcher``: the pre-imported process SyncLauncher forks commands from."""
    if argv == ["--launcher"]:
        _launcher()
        return
    from gateway.cli import main as gateway_main

    gateway_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
