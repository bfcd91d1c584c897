"""Ingest throughput: CSV and XLSX -> store (mapped, validated, protected, diffed, audited).

    .venv/bin/python benchmarks/bench_ingest.py [--rows 100000 1000000] [--xlsx-rows 100000]
        [--store URL] [--batch-size 5000] [--profile]

For each size: a first snapshot into an empty store (every row inserted and sealed), then the same
file again (every row unchanged: the snapshot re-ingest figure). Prints rows/s per phase and the
machine. Targets (issue 4): >= 100,000 rows/s CSV, >= 300,000 rows/s unchanged snapshot.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tomli_w  # noqa: E402

from tests.syncdata import MAPPING_TOML, SOURCE_COLUMNS, native_row  # noqa: E402

COLUMNS = [c for c in SOURCE_COLUMNS if c != "gxsj"]


def machine() -> str:
    try:
        from benchmarks._machine import describe  # type: ignore[attr-defined]

        return describe()
    except (ImportError, AttributeError):
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
    from gateway.crypto import Keyring
    from gateway.site import Site
    from gateway.store import Base

    folder.mkdir(parents=True, exist_ok=True)
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
        "systems": {
            "registry": {
                "plugin": "test_registry",
                "connector": connector,
                "path": str(data),
                "mapping": "test_registry/residents",
            }
        },
        "jobs": {
            "residents": {
                "source": "registry",
                "dataset": "residents",
                "mode": "snapshot",
                "batch_size": batch_size,
            }
        },
    }
    (folder / "gateway.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")
    site = Site.from_config(folder / "gateway.toml")
    Base.metadata.drop_all(site.engine)
    Base.metadata.create_all(site.engine)
    return site


def timed_run(site, label: str, n: int, profile: bool) -> float:
    from gateway.sync import run_job

    prof = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if prof:
        prof.enable()
    summary = run_job(site, "residents")
    if prof:
        prof.disable()
    elapsed = time.perf_counter() - start
    assert summary.read == n and summary.adds_up, summary
    print(
        f"  {label:<22} {n:>9,} rows  {elapsed:7.2f} s  {n / elapsed:>10,.0f} rows/s"
        f"  (inserted {summary.inserted:,}, unchanged {summary.unchanged:,}, quarantined {summary.quarantined})",
        flush=True,
    )
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())
    return n / elapsed


def bench(kind: str, n: int, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        folder = Path(tmp)
        data = folder / f"people.{kind}"
        t0 = time.perf_counter()
        (write_csv if kind == "csv" else write_xlsx)(data, n)
        print(
            f"{kind.upper()} {n:,} rows (file written in {time.perf_counter() - t0:.1f} s, {data.stat().st_size / 1e6:.1f} MB)"
        )
        site = make_site(folder / "site", data, kind, args.store, args.batch_size)
        try:
            timed_run(site, "first ingest", n, args.profile)
            timed_run(site, "unchanged snapshot", n, args.profile)
        finally:
            site.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--xlsx-rows", type=int, nargs="*", default=[100_000])
    parser.add_argument(
        "--store", default=None, help="store URL (default: a SQLite file in a temp folder)"
    )
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument(
        "--profile", action="store_true", help="print the top functions by own time"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"store: {args.store or 'SQLite (temp file)'}; batch size {args.batch_size}")
    for n in args.rows:
        bench("csv", n, args)
    for n in args.xlsx_rows:
        bench("xlsx", n, args)


if __name__ == "__main__":
    main()
