"""Time ``gateway.match.run_match`` on a county-sized (SQLite) or province-sized (PostgreSQL) store.

    .venv/bin/python benchmarks/bench_match.py                       # SQLite: 1M students, 0.4M registry rows
    .venv/bin/python benchmarks/bench_match.py --backend postgres    # PostgreSQL: 5M students, 2M registry rows
    .venv/bin/python benchmarks/bench_match.py --scale 0.1           # a tenth of either

Subject keys are random hex (the comparisons never look inside them). The registries hold whole
households, as the real ones do: 35% of their rows are children (born 2006-2020; 90% of them have a
student record, the rest have none) and 65% adults (born 1940-2000). Students are born 2006-2019
with the status mix of STATUSES. The aid-granted dataset covers 95% of the flagged students.
Loading uses executemany (SQLite) or COPY (PostgreSQL, a database created for the run and dropped
after). Indexes are built after loading.
Prints the load time, each step of the match and the total; targets: <= 10 s (SQLite, 1M) and
<= 60 s (PostgreSQL, 5M).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import config as config_mod  # noqa: E402
from gateway import match  # noqa: E402
from gateway.site import Site  # noqa: E402
from gateway.store import Base  # noqa: E402
from gateway.store.records import DATASET_MODELS  # noqa: E402

AS_OF = dt.date(2025, 3, 15)
NOW = dt.datetime(2025, 3, 1, 8, 0, 0)
PG_ADMIN = os.environ.get(
    "GATEWAY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TOWNSHIPS = [f"110105{n:03d}" for n in range(1, 21)]
STATUSES = (
    ["enrolled"] * 930
    + ["suspended"] * 20
    + ["suspected_dropout"] * 10
    + ["dropout"] * 10
    + ["transferred_out"] * 20
    + ["graduated"] * 10
)
REGISTRY_SHARE = {"residents": 0.4, "poverty": 0.3, "assistance": 0.2, "disability": 0.1}
COMMON = [
    "source",
    "record_key",
    "subject_key",
    "id_type",
    "id_masked",
    "sex",
    "birth_date",
    "area_code",
    "village",
    "content_hash",
    "removed",
    "updated_at",
]
EXTRA = {
    "students": ["school_code", "school_name", "grade", "class_name", "status", "transfer_to"],
    "poverty": ["household_no", "poverty_type", "risk_eliminated"],
    "disability": ["category", "grade", "valid_until"],
    "assistance": ["assistance_type", "start_date", "end_date", "active"],
    "residents": [],
}


def machine() -> str:
    try:
        from benchmarks._machine import describe  # type: ignore[import-not-found]

        return describe()
    except ImportError:
        return f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def _key(rng: random.Random) -> str:
    return "bi1:" + rng.getrandbits(256).to_bytes(32, "big").hex()


def _birth(rng: random.Random, year: int, years: int) -> dt.date:
    return dt.date(year, 1, 1) + dt.timedelta(days=rng.randrange(years * 365))


CHILD_SHARE, CHILD_IS_STUDENT = 0.35, 0.9


def generate(dataset: str, n: int, keys: list[str], rng: random.Random) -> Iterator[tuple]:
    """Rows of one table as tuples in COMMON + EXTRA[dataset] order."""
    source = {
        "students": "student_status",
        "residents": "household_registry",
        "poverty": "poverty_registry",
        "assistance": "civil_affairs",
        "disability": "disability_federation",
    }[dataset]
    for i in range(n):
        if dataset == "students":
            key, born = keys[i], _birth(rng, 2006, 14)
        elif rng.random() < CHILD_SHARE:
            key = rng.choice(keys) if rng.random() < CHILD_IS_STUDENT else _key(rng)
            born = _birth(rng, 2006, 15)
        else:
            key, born = _key(rng), _birth(rng, 1940, 60)
        town = rng.choice(TOWNSHIPS)
        common = (
            source,
            f"{key}|{i}",
            key,
            "1",
            "110105********1234",
            str(rng.randint(1, 2)),
            born,
            town,
            f"村{rng.randrange(10)}",
            "0" * 64,
            False,
            NOW,
        )
        if dataset == "students":
            status = rng.choice(STATUSES)
            school = rng.randrange(200)
            dest = "外县某校" if status == "transferred_out" and rng.random() < 0.5 else None
            extra: tuple = (
                f"S{school:04d}",
                f"第{school}学校",
                str(rng.randint(1, 9)),
                "1班",
                status,
                dest,
            )
        elif dataset == "poverty":
            extra = (
                f"H{rng.randrange(10**6)}",
                rng.choice(["lifted"] * 6 + ["unstable", "marginal", "hardship"]),
                False,
            )
        elif dataset == "disability":
            extra = (
                rng.randint(1, 7),
                rng.randint(1, 4),
                None if rng.random() < 0.8 else dt.date(2024, 1, 1),
            )
        elif dataset == "assistance":
            kind = rng.choice(["dibao"] * 5 + ["tekun", "orphan", "unsupported_child", "temporary"])
            ended = rng.random() < 0.1
            extra = (kind, dt.date(2022, 1, 1), dt.date(2024, 6, 30) if ended else None, not ended)
        else:
            extra = ()
        yield common + extra


def _chunks(rows: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    chunk: list[tuple] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _record_indexes() -> list[sa.Index]:
    return [ix for model in DATASET_MODELS.values() for ix in model.__table__.indexes]


def load(engine: sa.Engine, url: str, students: int, registry: int, seed: int) -> float:
    """Create the schema, load the rows, build the indexes; returns seconds."""
    began = time.perf_counter()
    Base.metadata.create_all(engine)
    for ix in _record_indexes():  # faster to build once at the end than to maintain per row
        ix.drop(engine)
    rng = random.Random(seed)
    keys = [_key(rng) for _ in range(students)]
    plan = {
        "students": students,
        **{d: round(registry * share) for d, share in REGISTRY_SHARE.items()},
    }
    for dataset, n in plan.items():
        columns = COMMON + EXTRA[dataset]
        rows = generate(dataset, n, keys, rng)
        t0 = time.perf_counter()
        if engine.dialect.name == "sqlite":
            path = sa.engine.make_url(url).database
            con = sqlite3.connect(path)
            con.execute("PRAGMA synchronous=OFF")
            sql = f"INSERT INTO {dataset} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            for chunk in _chunks(rows, 50_000):
                con.executemany(
                    sql,
                    [
                        tuple(
                            v.isoformat(sep=" ")
                            if isinstance(v, dt.datetime)
                            else v.isoformat()
                            if isinstance(v, dt.date)
                            else v
                            for v in r
                        )
                        for r in chunk
                    ],
                )
            con.commit()
            con.close()
        else:
            raw = engine.raw_connection()
            try:
                cur = raw.cursor()
                with cur.copy(f"COPY {dataset} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                raw.commit()
            finally:
                raw.close()
        print(f"  loaded {n:>9,} {dataset} in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        # Aid granted this school year to ~95% of the people with a registry entry (by key bits).
        stamp = NOW.isoformat(sep=" ")
        conn.exec_driver_sql(
            "INSERT INTO aid_granted (source, record_key, subject_key, id_type, content_hash, removed,"
            " updated_at, program, granted_on)"
            f" SELECT 'student_aid', subject_key, subject_key, '1', '0', FALSE, '{stamp}', 'two-free',"
            " '2024-10-01' FROM (SELECT subject_key FROM poverty UNION SELECT subject_key FROM disability"
            " UNION SELECT subject_key FROM assistance) k WHERE substr(subject_key, 5, 2) >= '0d'"
        )
    print(f"  aid granted in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    for ix in _record_indexes():
        ix.create(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    print(f"  indexes + ANALYZE in {time.perf_counter() - t0:.1f} s", flush=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="fraction of the full size (default 1)"
    )
    parser.add_argument("--seed", type=int, default=20250315)
    parser.add_argument(
        "--runs", type=int, default=2, help="match runs to time (the 2nd has a previous run)"
    )
    args = parser.parse_args()
    full = (1_000_000, 400_000) if args.backend == "sqlite" else (5_000_000, 2_000_000)
    students, registry = (max(1, round(n * args.scale)) for n in full)
    print(f"machine: {machine()}")
    print(
        f"backend: {args.backend}; students: {students:,}; registry rows: {registry:,}", flush=True
    )

    logging.basicConfig(level=logging.WARNING, format="  %(message)s")
    logging.getLogger("gateway.match").setLevel(logging.INFO)
    workdir = Path(tempfile.mkdtemp(prefix="bench_match_"))
    admin = None
    if args.backend == "sqlite":
        url = f"sqlite:///{workdir / 'store.db'}"
    else:
        name = "bench_match_" + uuid.uuid4().hex[:8]
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        url = sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    try:
        from gateway.crypto import Keyring

        Keyring.create(workdir / "keyring.json")
        settings = config_mod.parse(
            {
                "gateway": {"store": url, "keyring": "keyring.json"},
                "match": {"aid_dataset": "student_aid"},
            }
        )
        site = Site(settings, workdir)
        seconds = load(site.engine, url, students, registry, args.seed)
        print(f"load total: {seconds:.1f} s", flush=True)
        for n in range(args.runs):
            began, cpu = time.perf_counter(), time.process_time()
            summary = match.run_match(site, AS_OF, actor="job:benchmark")
            elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
            listed = ", ".join(f"{k} {v.count:,}" for k, v in summary.counts.items())
            # SQLite runs in this process, so its CPU time is ours; PostgreSQL's is the server's.
            print(
                f"match run {n + 1}: {elapsed:.2f} s wall, {cpu:.2f} s CPU in this process",
                flush=True,
            )
            print(f"  lists: {listed}", flush=True)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        target = 10 if args.backend == "sqlite" else 60
        print(f"target at full scale: <= {target} s")
        site.engine.dispose()
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.dispose()
        for path in sorted(workdir.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        workdir.rmdir()


if __name__ == "__main__":
    main()
