"""Peak memory of a sync run: CSV -> store at 100k and 1M rows (first ingest, then the unchanged
snapshot), each in a fresh subprocess, peak RSS from resource.getrusage.

    .venv/bin/python benchmarks/bench_memory.py [--rows 100000 1000000]

Target (issue 4): peak memory that does not grow with input size, <= 256 MB.
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
site = b.make_site(folder / "site", folder / "people.csv", "csv", None, 5000)
out = {{}}
for phase in ("first", "unchanged"):
    t = time.perf_counter()
    s = run_job(site, "residents")
    out[phase] = {{"rows": s.read, "seconds": time.perf_counter() - t,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_ingest

    print(f"machine: {bench_ingest.machine()}")
    for n in args.rows:
        with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
            bench_ingest.write_csv(Path(tmp) / "people.csv", n)
            code = CHILD.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), folder=tmp)
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                print(f"{n:,} rows: failed: {done.stderr[-2000:]}")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            for phase, r in result.items():
                print(
                    f"  {n:>9,} rows  {phase:<10} peak RSS {r['peak_rss_mb']:7.1f} MB"
                    f"  ({r['rows'] / r['seconds']:,.0f} rows/s)"
                )


if __name__ == "__main__":
    main()
