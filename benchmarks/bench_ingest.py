"""Ingest throughput: CSV and XLSX -> store (mapped, validated, protected, diffed, audited).

    .venv/bin/python benchmarks/bench_ingest.py [--rows 100000 1000000] [--xlsx-rows 100000]
        [--repeat 3] [--store URL] [--batch-size 5000] [--breakdown] [--profile]

For each size and each repetition: a first snapshot into an empty store (every row inserted and
sealed), then the same file again (every row unchanged: the snapshot re-ingest figure). Prints the
median of the repetitions, as rows/s of wall time and of this process's CPU time (user + system):
on a shared machine the wall figure moves with the load, the CPU figure much less. With a
PostgreSQL store the server's own CPU time is not in the CPU figure (it runs in other processes).

``--breakdown`` adds where the CPU time of one 100k-row first ingest and one re-ingest goes:
per-batch stages timed inside the real runs, per-row stages timed alone on the same rows.

Targets (issue 4): >= 100,000 rows/s CSV, >= 300,000 rows/s unchanged snapshot.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import functools
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tomli_w  # noqa: E402

from tests.syncdata import (  # noqa: E402
    MAPPING_TOML,
    SOURCE_COLUMNS,
    file_job_config,
    native_row,
)

COLUMNS = [c for c in SOURCE_COLUMNS if c != "gxsj"]
TARGETS = {"first ingest": 100_000, "unchanged snapshot": 300_000}


def machine() -> str:
    try:
        from benchmarks._machine import describe

        return describe()
    except ImportError:
        import os
        import platform

        return f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs"


def write_csv(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i in range(n):
            r = native_row(i)
            w.writerow([r[c] for c in COLUMNS])


def write_xlsx(path: Path, n: int) -> None:
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet("Sheet1")
    ws.append(COLUMNS)
    for i in range(n):
        r = native_row(i)
        ws.append([r[c] for c in COLUMNS])
    wb.save(path)


def make_site(folder: Path, data: Path, connector: str, store: str | None, batch_size: int):
    """A site whose job ``residents`` snapshots ``data`` into an empty store."""
    from gateway.crypto import Keyring
    from gateway.site import Site
    from gateway.store import Base

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "keyring.json").exists():
        Keyring.create(folder / "keyring.json")
    (folder / "mappings" / "test_registry").mkdir(parents=True, exist_ok=True)
    (folder / "mappings" / "test_registry" / "residents.toml").write_text(
        MAPPING_TOML, encoding="utf-8"
    )
    doc = {
        "gateway": {
            "store": store or f"sqlite:///{folder / 'store.db'}",
            "keyring": "keyring.json",
        },
        **file_job_config(data, batch_size=batch_size, connector=connector),
    }
    (folder / "gateway.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")
    site = Site.from_config(folder / "gateway.toml")
    Base.metadata.drop_all(site.engine)
    Base.metadata.create_all(site.engine)
    return site


def _cpu() -> float:
    """CPU seconds of this process and of its reaped children (a first ingest's reading worker,
    gateway/sync_worker.py, runs in one)."""
    import resource

    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + child.ru_utime + child.ru_stime


def timed_run(site: Any, n: int, profile: bool = False) -> tuple[float, float, Any]:
    """(wall s, CPU s, summary) of one run of the job."""
    from gateway.sync import run_job

    prof = cProfile.Profile() if profile else None
    wall, cpu = time.perf_counter(), _cpu()
    if prof:
        prof.enable()
    summary = run_job(site, "residents")
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    assert summary.read == n and summary.adds_up, summary
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())
    return wall, cpu, summary


def _line(label: str, n: int, walls: list[float], cpus: list[float], note: str = "") -> str:
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    target = TARGETS.get(label)
    verdict = ""
    if target:
        verdict = (
            f"  target {target:,}: wall {'met' if n / wall >= target else 'NOT met'}, "
            f"CPU {'met' if n / cpu >= target else 'NOT met'}"
        )
    return (
        f"  {label:<19} {n:>9,} rows  wall {wall:7.2f} s {n / wall:>9,.0f} rows/s"
        f"  CPU {cpu:7.2f} s {n / cpu:>9,.0f} rows/s{verdict}{note}"
    )


def bench(kind: str, n: int, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        folder = Path(tmp)
        data = folder / f"people.{kind}"
        t0 = time.perf_counter()
        (write_csv if kind == "csv" else write_xlsx)(data, n)
        print(
            f"{kind.upper()} {n:,} rows (file written in {time.perf_counter() - t0:.1f} s, "
            f"{data.stat().st_size / 1e6:.1f} MB), median of {args.repeat} runs:",
            flush=True,
        )
        phases: dict[str, tuple[list[float], list[float]]] = {
            "first ingest": ([], []),
            "unchanged snapshot": ([], []),
        }
        for _ in range(args.repeat):
            shutil.rmtree(folder / "site", ignore_errors=True)  # a fresh SQLite file each time
            site = make_site(folder / "site", data, kind, args.store, args.batch_size)
            try:
                for label, (walls, cpus) in phases.items():
                    wall, cpu, summary = timed_run(site, n, args.profile)
                    expected = summary.inserted if label == "first ingest" else summary.unchanged
                    assert expected == n, summary
                    walls.append(wall)
                    cpus.append(cpu)
            finally:
                site.engine.dispose()
        for label, (walls, cpus) in phases.items():
            print(_line(label, n, walls, cpus), flush=True)
        if kind == "xlsx":
            wall, cpu = reader_only(folder / "site", n)
            print(
                f"  {'XLSX reader alone':<19} {n:>9,} rows  wall {wall:7.2f} s "
                f"{n / wall:>9,.0f} rows/s  CPU {cpu:7.2f} s {n / cpu:>9,.0f} rows/s"
                "  (the connector's reader: the ceiling of any XLSX ingest)",
                flush=True,
            )


def reader_only(site_dir: Path, n: int) -> tuple[float, float]:
    """Wall and CPU seconds of the job's connector reading every row, nothing else."""
    from gateway.plugins import make_connector
    from gateway.site import Site
    from gateway.sync import _quiet_gc

    site = Site.from_config(site_dir / "gateway.toml")
    connector = make_connector(site, "registry")
    wall, cpu = time.perf_counter(), time.process_time()
    with _quiet_gc():  # as in a run
        rows = sum(len(b.rows) for b in connector.read(None, 5000))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    connector.close()
    site.engine.dispose()
    assert rows == n, rows
    return wall, cpu


# -- where the time goes ------------------------------------------------------------------------


def _timing(spent: Counter, owner: Any, name: str, label: str) -> Callable[[], None]:
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            spent[label] += time.process_time() - start

    setattr(owner, name, timed)
    return lambda: setattr(owner, name, original)


def breakdown(n: int, args: argparse.Namespace) -> None:
    """CPU per row of each stage: per-batch stages timed inside real runs (first ingest, then
    unchanged), per-row stages timed alone over the same rows."""
    from sqlalchemy.orm.session import SessionTransaction

    from gateway import audit
    from gateway.plugins import make_connector
    from gateway.protect import RecordProtector, RowFingerprints
    from gateway.sync import JobRunner, _quiet_gc, resolve_job
    from gateway.sync_store import DatasetTable

    print(f"where the CPU time goes, {n:,} rows (µs per row, one process):", flush=True)
    # Every stage in this process, where the timers see it (no reading worker).
    os.environ["GATEWAY_SYNC_WORKER"] = "0"
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        folder = Path(tmp)
        data = folder / "people.csv"
        write_csv(data, n)
        site = make_site(folder / "site", data, "csv", args.store, args.batch_size)
        spent: Counter = Counter()
        undo = [
            _timing(spent, DatasetTable, "insert", "store: insert (driver executemany/COPY)"),
            _timing(spent, DatasetTable, "update", "store: update"),
            _timing(spent, DatasetTable, "by_fingerprint", "store: look-up by fingerprint"),
            _timing(spent, DatasetTable, "following", "store: look-up by fingerprint (window)"),
            _timing(spent, DatasetTable, "by_record_key", "store: look-up by record key"),
            _timing(spent, JobRunner, "_bulk_existing", "store: look-up of own rows (bulk load)"),
            _timing(
                spent, DatasetTable, "create_missing_indexes", "store: build indexes at the end"
            ),
            _timing(spent, SessionTransaction, "commit", "store: commit"),
            _timing(spent, RecordProtector, "stored_batch", "seal 3 fields + columns"),
            _timing(spent, RowFingerprints, "many", "fingerprint native rows"),
            _timing(spent, RowFingerprints, "many_raw", "fingerprint native rows"),
            _timing(spent, audit, "record", "audit entries"),
            _timing(spent, JobRunner, "_removals", "snapshot removal check"),
            _timing(spent, JobRunner, "_batch", "batch total"),
        ]
        try:
            for label in ("first ingest", "unchanged snapshot"):
                spent.clear()
                _, cpu, _ = timed_run(site, n)
                print(f"  {label}: CPU {cpu:.2f} s = {cpu / n * 1e6:.1f} µs/row", flush=True)
                for stage, seconds in spent.most_common():
                    if seconds / n * 1e6 >= 0.05:
                        print(f"    {stage:<42} {seconds / n * 1e6:6.2f}")
        finally:
            for u in undo:
                u()
        job = resolve_job(site, "residents", with_targets=False)
        connector = make_connector(site, "registry")
        with _quiet_gc():  # as in a run
            stages = _row_stages(job, connector)
        print("  per-row stages alone (the first ingest runs all of them but the first, the")
        print("  unchanged one only the first, and the fingerprint):")
        for stage, seconds in stages:
            print(f"    {stage:<42} {seconds / n * 1e6:6.2f}")
        connector.close()
        site.engine.dispose()


def _row_stages(job: Any, connector: Any) -> list[tuple[str, float]]:
    """CPU seconds of each per-row stage over every row of the source, each stage alone."""
    from gateway.schemas import validate_record

    cpu = time.process_time()
    raw = sum(len(b.raw.records) if b.raw else len(b.rows) for b in connector.read(None, 5000))
    stages: list[tuple[str, float]] = [
        ("CSV connector read, rows not built", time.process_time() - cpu)
    ]
    cpu = time.process_time()
    rows = [r for b in connector.read(None, 5000) for r in b.rows]
    stages.append(("CSV connector read, rows built", time.process_time() - cpu))
    assert len(rows) == raw, (len(rows), raw)
    map_row = job.mapper.map_row
    cpu = time.process_time()
    records = [map_row(r.data)[0] for r in rows]
    stages.append(("map (generated mapper)", time.process_time() - cpu))
    cpu = time.process_time()
    for rec in records:
        validate_record("residents", rec)
    stages.append(("validate (generated validator)", time.process_time() - cpu))
    rp = job.protector
    cpu = time.process_time()
    for rec in records:
        rp.key_and_hash(rec)
    stages.append(("subject key + record key + content hash", time.process_time() - cpu))
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--xlsx-rows", type=int, nargs="*", default=[100_000])
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument(
        "--store", default=None, help="store URL (default: a SQLite file in a temp folder)"
    )
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--breakdown", action="store_true", help="where the CPU time goes")
    parser.add_argument(
        "--profile", action="store_true", help="print the top functions by own time"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"store: {args.store or 'SQLite (temp file)'}; batch size {args.batch_size}", flush=True)
    for n in args.rows:
        bench("csv", n, args)
    for n in args.xlsx_rows:
        bench("xlsx", n, args)
    if args.breakdown:
        breakdown(100_000, args)
    print(f"machine after: load {machine().rpartition('load ')[2]}")


if __name__ == "__main__":
    main()
