"""Throughput of the file connectors: rows/s read from a GBK CSV (encoding detected, content hashed),
from an XLSX export with two title rows, and of an idempotent CSV/XLSX write.

    .venv/bin/python benchmarks/bench_connectors.py [--rows 200000] [--xlsx-rows 50000] [--runs 3]

Each figure is the median of ``--runs`` passes. A CSV read includes everything a sync pays for
before mapping: the pass that hashes the file and proves its encoding, then the csv module's
parse into one dict per row with its position. The sync's end-to-end target is 100k rows/s, so the
CSV read must stay well above it. Python runs this on one thread, so one core.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine  # noqa: E402
from gateway_plugins.csv_files import CsvConnector  # noqa: E402
from gateway_plugins.xlsx_files import XlsxConnector  # noqa: E402
from openpyxl import Workbook  # noqa: E402

from gateway.connectors import ConnectorContext  # noqa: E402

HEADER = [
    "全国学籍号",
    "姓名",
    "性别",
    "出生日期",
    "身份证件类型",
    "身份证件号",
    "学校名称",
    "年级",
    "班级",
    "学籍状态",
    "户籍地村(社区)",
]


def student(i: int) -> list[str]:
    number = (
        f"522636{i:011d}X"  # unique per row (the write benchmark upserts by it), not a valid ID
    )
    return [f"G{number}", f"王小{i % 97}", "男女"[i % 2], f"{2010 + i % 8}0{1 + i % 9}{10 + i % 18}", "1", number,
            f"第{i % 30}小学", f"{1 + i % 6}年级", f"{1 + i % 5}班", "在读", f"河西村{i % 40}组"]  # fmt: skip


class Rate(float):
    """Rows per second of wall time, printed with the rate per second of this process's CPU time
    (on a shared machine the wall figure also measures the neighbours)."""

    cpu: float

    def __format__(self, spec: str) -> str:
        return f"{float(self):{spec}} rows/s (CPU: {self.cpu:{spec}} rows/s)"


def median_rate(runs: int, count: int, fn: Callable[[], int]) -> Rate:
    walls, cpus = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        got = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
        assert got == count, (got, count)
    rate = Rate(count / statistics.median(walls))
    rate.cpu = count / statistics.median(cpus)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--xlsx-rows", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print_machine()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ctx = ConnectorContext(system="bench", base_dir=str(base))
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerow(HEADER)
        writer.writerows(student(i) for i in range(args.rows))
        (base / "students.csv").write_bytes(buf.getvalue().encode("gbk"))
        size = (base / "students.csv").stat().st_size

        def read_csv() -> int:
            c = CsvConnector({"path": "students.csv"}, ctx)
            # Every row built (batches keep rows as bytes until asked for: _files.RawRows).
            return sum(len(list(b.rows)) for b in c.read(batch_size=5000))

        rate = median_rate(args.runs, args.rows, read_csv)
        print(
            f"csv read   (GBK, auto-detected): {args.rows} rows, {size / 2**20:.1f} MiB: {rate:,.0f}"
        )

        def read_csv_raw() -> int:
            c = CsvConnector({"path": "students.csv"}, ctx)
            return sum(len(b.rows) for b in c.read(batch_size=5000))

        rate = median_rate(args.runs, args.rows, read_csv_raw)
        print(f"csv read   (GBK, rows not built, as an unchanged snapshot reads): {rate:,.0f}")

        def read_csv_explicit() -> int:
            c = CsvConnector({"path": "students.csv", "encoding": "gbk"}, ctx)
            return sum(len(list(b.rows)) for b in c.read(batch_size=5000))

        rate = median_rate(args.runs, args.rows, read_csv_explicit)
        print(f"csv read   (GBK, configured):    {rate:,.0f}")

        rows = [dict(zip(HEADER, student(i), strict=True)) for i in range(args.rows)]
        out = CsvConnector({"path": "out.csv", "encoding": "gbk"}, ctx)
        start = time.perf_counter()
        out.write(rows, ["身份证件号"])
        first = time.perf_counter() - start
        rate = median_rate(args.runs, args.rows, lambda: out.write(rows, ["身份证件号"]).unchanged)
        print(
            f"csv write  (GBK, new file):      {args.rows / first:,.0f} rows/s; again, unchanged: {rate:,.0f}"
        )

        wb = Workbook(write_only=True)
        ws = wb.create_sheet("学生名单")
        ws.append(["XX县中小学生学籍信息导出"])
        ws.append(["导出时间：2026-03-01"])
        ws.append(HEADER)
        for i in range(args.xlsx_rows):
            ws.append(student(i))
        wb.save(base / "students.xlsx")

        def read_xlsx() -> int:
            c = XlsxConnector({"path": "students.xlsx"}, ctx)
            return sum(len(b.rows) for b in c.read(batch_size=5000))

        rate = median_rate(args.runs, args.xlsx_rows, read_xlsx)
        print(f"xlsx read  (2 title rows):       {args.xlsx_rows} rows: {rate:,.0f}")

        xrows = rows[: args.xlsx_rows]
        xout = XlsxConnector({"path": "out.xlsx"}, ctx)
        start = time.perf_counter()
        xout.write(xrows, ["身份证件号"])
        first = time.perf_counter() - start
        rate = median_rate(1, args.xlsx_rows, lambda: xout.write(xrows, ["身份证件号"]).unchanged)
        print(
            f"xlsx write (formatted):          {args.xlsx_rows / first:,.0f} rows/s; again, unchanged: {rate:,.0f}"
        )


if __name__ == "__main__":
    main()
