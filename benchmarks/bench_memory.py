"""Peak memory of a sync run: CSV (or XLSX) -> store at 100k and 1M rows (first ingest, then the unchanged
snapshot), each size in a fresh subprocess; peak RSS from resource.getrusage (the process and any
children it waited for), with the run's wall and CPU rate beside it.

    .venv/bin/python benchmarks/bench_memory.py [--rows 100000 1000000] [--store URL]
        [--format csv|xlsx]

With ``--format xlsx`` the workbook is read by python-calamine up to the size limit of
plugins/_xlsx_books.py (the whole sheet in memory, in the reading worker) and streamed by
openpyxl above it.

Target (issue 4): peak memory that does not grow with input size, <= 256 MB. What does grow with
the store: the snapshot's "seen" array (4 bytes per stored row id: 4 MB at 1M rows) and SQLite's
page cache of the sync's connection (up to 32 MB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from pathlib import Path
import bench_ingest as b
from gateway.sync import run_job
folder = Path({folder!r})
site = b.make_site(folder / "site", folder / "people.{fmt}", "{fmt}", {store!r}, 5000)
out = {{"baseline_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}
def cpu_now():  # this process and its reaped children (a first ingest's reading worker)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime
for phase in ("first", "unchanged"):
    wall, cpu = time.perf_counter(), cpu_now()
    s = run_job(site, "residents")
    peak = max(resource.getrusage(who).ru_maxrss for who in
               (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    out[phase] = {{"rows": s.read, "wall": time.perf_counter() - wall,
                   "cpu": cpu_now() - cpu, "peak_rss_mb": peak / 1024}}
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--store", default=None, help="store URL (default: a SQLite temp file)")
    parser.add_argument("--format", choices=("csv", "xlsx"), default="csv")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_ingest

    print(f"machine: {bench_ingest.machine()}")
    print(
        f"store: {args.store or 'SQLite (temp file)'}; batch size 5000; {args.format.upper()}",
        flush=True,
    )
    for n in args.rows:
        with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
            write = bench_ingest.write_xlsx if args.format == "xlsx" else bench_ingest.write_csv
            write(Path(tmp) / f"people.{args.format}", n)
            code = CHILD.format(
                root=str(ROOT),
                bench=str(ROOT / "benchmarks"),
                folder=tmp,
                store=args.store,
                fmt=args.format,
            )
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                print(f"{n:,} rows: failed: {done.stderr[-2000:]}")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  {n:>9,} rows  after start-up        peak RSS {result['baseline_mb']:7.1f} MB")
            for phase in ("first", "unchanged"):
                r = result[phase]
                print(
                    f"  {n:>9,} rows  {phase:<10} peak RSS {r['peak_rss_mb']:7.1f} MB"
                    f"  (wall {r['rows'] / r['wall']:,.0f} rows/s, CPU {r['rows'] / r['cpu']:,.0f}"
                    " rows/s)",
                    flush=True,
                )
    print("target: <= 256 MB, flat with input size")


if __name__ == "__main__":
    main()
