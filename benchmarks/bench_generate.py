"""How long the demo generator takes and how much memory it needs, per size.

    .venv/bin/python benchmarks/bench_generate.py [--students 2000 100000 1000000] [--keep DIR]

Each size runs in a fresh child process so its peak resident memory (ru_maxrss) is its own.
Prints, per size: wall seconds, CPU seconds (the figure to compare on a shared machine: the
generator runs on one core), students per second (wall), rows written over all files, output size on
disk, the ground-truth file's size and the peak RSS. Target (issue 8): 1,000,000 students
"in a few minutes" within flat memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine  # noqa: E402


def _one(students: int, out_dir: Path, seed: int) -> dict[str, float]:
    from gateway.demo import generate

    started = time.perf_counter()
    gt = generate(out_dir, students=students, seed=seed)
    seconds = time.perf_counter() - started
    rows = sum(f.rows_written for f in gt.files.values())
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    truth = (out_dir / "ground_truth.json").stat().st_size
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kib = usage.ru_maxrss  # KiB on Linux
    return {
        "students": students,
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "rows": rows,
        "bytes": size,
        "truth_bytes": truth,
        "peak_mib": peak_kib / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, nargs="+", default=[2000, 100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="write into DIR/<size> and keep the files")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:  # one measured run, in its own process
        print(json.dumps(_one(args.child, args.out, args.seed)))
        return

    print_machine()
    print(
        f"{'students':>10} {'seconds':>8} {'cpu s':>8} {'students/s':>11} {'rows':>10} {'MiB out':>8} "
        f"{'truth MiB':>9} {'peak RSS MiB':>12}"
    )
    for n in args.students:
        with tempfile.TemporaryDirectory() as tmp:
            out = (args.keep / str(n)) if args.keep else Path(tmp) / "demo"
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(n),
                    "--out",
                    str(out),
                    "--seed",
                    str(args.seed),
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode:
                print(f"{n:>10,} failed:\n{proc.stderr}", file=sys.stderr)
                sys.exit(1)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{r['students']:>10,} {r['seconds']:>8.1f} {r['cpu_seconds']:>8.1f} "
            f"{r['students'] / r['seconds']:>11,.0f} "
            f"{r['rows']:>10,} {r['bytes'] / 2**20:>8.1f} {r['truth_bytes'] / 2**20:>9.1f} "
            f"{r['peak_mib']:>12.0f}"
        )


if __name__ == "__main__":
    main()
