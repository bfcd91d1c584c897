"""Throughput of the compiled mappers on one core: ``map_row``, and ``map_row`` + ``validate_record``.

    .venv/bin/python benchmarks/bench_mapping.py [--count 100000] [--runs 5]

Rows are generated in each department's native layout as the connectors hand them over (CSV: every
value text; the poverty table: what PyMySQL returns), with valid synthetic ID numbers of school-age
children, a tenth of them messy (full-width digits, a lower-case x, spaces). The mappings are the
shipped files, with the transforms and code tables of the installed plugins. Each figure is the
median of ``--runs`` passes; Python runs the loop on one thread, so one core. The sync engine's
target is >= 100,000 rows/s end to end on 2 cores, so mapping must take a small part of 10 us a row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine  # noqa: E402

from gateway import ids  # noqa: E402
from gateway.mapping import Mapper, load_mapping, plugin_context  # noqa: E402
from gateway.plugins import get_plugin_manager  # noqa: E402
from gateway.schemas import validate_record  # noqa: E402

AREAS = ["420106", "420102", "522636", "110105"]
STATUSES = ["在读"] * 20 + ["休学", "转出", "疑似辍学", "辍学"]
WIDE = str.maketrans("0123456789", "０１２３４５６７８９")


def person(rng: random.Random) -> tuple[str, dt.date, str]:
    born = dt.date(2008, 1, 1) + dt.timedelta(days=rng.randrange(0, 3650))
    first17 = f"{rng.choice(AREAS)}{born:%Y%m%d}{rng.randrange(0, 1000):03d}"
    number = first17 + ids.check_char(first17)
    sex = "男" if int(number[16]) % 2 else "女"
    return number, born, sex


def messy(rng: random.Random, number: str) -> str:
    if rng.random() >= 0.1:
        return number
    return rng.choice([number.lower(), f" {number}\t", number.translate(WIDE)])


def students(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        number, born, sex = person(rng)
        rows.append(
            {
                "全国学籍号": "G" + number,
                "姓名": rng.choice("王李张刘陈杨黄赵") + rng.choice(["小明", "雨", "家豪", "欣怡"]),
                "性别": sex,
                "出生日期": f"{born:%Y%m%d}",
                "身份证件类型": "1",
                "身份证件号": messy(rng, number),
                "学校标识码": f"21420{i % 300:05d}",
                "学校名称": f"第{i % 300}小学",
                "年级": f"{rng.randrange(1, 10)}年级",
                "班级": f"{rng.randrange(1, 8)}班",
                "学籍状态": rng.choice(STATUSES),
                "转入学校": "",
                "户籍地行政区划代码": f"{number[:6]}{rng.randrange(1, 20):03d}000",
                "户籍地村(社区)": f"{rng.randrange(1, 40)}村",
                "监护人联系电话": f"139{rng.randrange(10**8):08d}",
            }
        )
    return rows


def poverty(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        number, _, sex = person(rng)
        rows.append(
            {
                "id": i + 1,
                "hbh": f"H{i // 4:07d}",
                "rbh": f"P{i:08d}",
                "xm": "张小丽",
                "zjhm": messy(rng, number),
                "xb": "1" if sex == "男" else "2",
                "yhzgx": "之女",
                "hlx": rng.choice(["脱贫户", "监测户"]),
                "jcdxlb": rng.choice(["脱贫不稳定户", "边缘易致贫户", "突发严重困难户"]),
                "fxxc": rng.choice(["是", "否"]),
                "xzqh": f"{number[:6]}003000",
                "xzc": "青山村",
                "gxsj": dt.datetime(2024, 9, 1, 8, 0) + dt.timedelta(seconds=i),
            }
        )
    return rows


def timed(fn: Callable[[], None], runs: int) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds) over ``runs``: on a shared machine the CPU time of this
    process is the steadier figure, the wall time says what a user waits."""
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def measure(name: str, mapper: Mapper, rows: list[Mapping[str, Any]], runs: int) -> None:
    map_row, dataset = mapper.map_row, mapper.dataset
    bad = sum(1 for r in rows if map_row(r)[1])
    assert bad == 0, f"{name}: {bad} rows did not map"

    def mapping_only() -> None:
        for r in rows:
            map_row(r)

    def with_validation() -> None:
        for r in rows:
            record, errors = map_row(r)
            if not errors:
                validate_record(dataset, record)

    fields = len(mapper.sensitivity)
    for label, fn in (("map_row", mapping_only), ("map_row + validate_record", with_validation)):
        wall, cpu = timed(fn, runs)
        per_row = cpu / len(rows) * 1e6
        print(
            f"{name:<34} {label:<26} {len(rows) / cpu:>9,.0f} rows/CPU-s ({len(rows) / wall:>9,.0f} rows/s wall)"
            f"  {per_row:6.2f} us/row  {per_row / fields:5.2f} us/field ({fields} fields)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    print_machine()
    transforms, tables = plugin_context(get_plugin_manager())

    def load(spec: str) -> Mapper:
        mapper = load_mapping(spec, transforms=transforms, code_tables=tables)
        assert isinstance(mapper, Mapper)
        return mapper

    print(f"rows per pass: {args.count:,}, median of {args.runs} passes, one core")
    measure(
        "student_status/students (CSV)",
        load("student_status/students"),
        students(args.count, 1),
        args.runs,
    )
    measure(
        "poverty_registry/poverty (MySQL)",
        load("poverty_registry/poverty"),
        poverty(args.count, 2),
        args.runs,
    )


if __name__ == "__main__":
    main()
