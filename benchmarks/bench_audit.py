"""Audit log throughput: appends (one ``record`` per transaction, ``append_many`` batches, the
``AuditWriter``), verification and export, on SQLite and on PostgreSQL.

    .venv/bin/python benchmarks/bench_audit.py [--backend sqlite|postgres|both] [--records 2000]
        [--batched 50000] [--batch-size 500] [--subjects 1] [--verify-entries 0]

Each append figure is entries per second over one pass, with ``--subjects`` subject keys per entry
and a small ``detail``, checkpoints on (every 1000 entries, the default). ``record`` commits each
entry in its own transaction (the API's audited-before-response mode) so it measures a database
round trip and a commit per entry: compare it with the API's per-request cost. ``--verify-entries N``
first tops the chain up to N entries (with ``append_many``) so verification is timed on a large log.
PostgreSQL runs in a throwaway database on ``--pg-url``'s server (default: the test server).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
import tomli_w
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine  # noqa: E402

from gateway import audit  # noqa: E402
from gateway.audit_export import export  # noqa: E402
from gateway.audit_verify import verify_store  # noqa: E402
from gateway.crypto import Keyring  # noqa: E402
from gateway.site import Site  # noqa: E402
from gateway.store import Base  # noqa: E402

PG_ADMIN = os.environ.get(
    "GATEWAY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def make_site(folder: Path, url: str) -> Site:
    folder.mkdir(parents=True, exist_ok=True)
    Keyring.create(folder / "keyring.json")
    doc = {"gateway": {"store": url, "keyring": "keyring.json"}}
    (folder / "gateway.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")
    site = Site.from_config(folder / "gateway.toml")
    Base.metadata.create_all(site.engine)
    return site


def entry(i: int, subjects: int) -> dict:
    keys = ["bi1:" + hashlib.sha256(f"{i}/{k}".encode()).hexdigest() for k in range(subjects)]
    return {
        "actor": "dept:education",
        "action": "api.lookup",
        "outcome": "delivered",
        "dataset": "poverty",
        "purpose": "student-aid",
        "fields": ["poverty_type"],
        "subject_keys": keys,
        "detail": {"request": i, "mapping": "poverty_registry/poverty@2"},
    }


def timed(label: str, count: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    rate = count / elapsed if elapsed else float("inf")
    print(
        f"  {label:<44} {count:>9} entries  {elapsed:8.2f} s  {rate:>10,.0f} entries/s  ({1e6 / rate:,.0f} µs each)"
    )
    return rate


def bench(site: Site, args: argparse.Namespace, folder: Path) -> None:
    subjects = args.subjects
    events = [entry(i, subjects) for i in range(max(args.records, args.batched))]

    def single() -> None:
        for i in range(args.records):
            audit.record(site, **events[i])

    scratch = sa.Table(
        "bench_scratch",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("v", sa.String(20)),
    )
    scratch.create(site.engine)

    def caller_alone() -> None:  # a request's own write, e.g. its nonce
        for _ in range(args.records):
            with site.begin() as session:
                session.execute(scratch.insert().values(v="x"))

    def in_session() -> None:
        for i in range(args.records):
            with site.begin() as session:
                session.execute(scratch.insert().values(v="x"))
                audit.record(session, site=site, **events[i])

    def batched() -> None:
        prepared = [audit.AuditEvent.create(**e) for e in events[: args.batched]]
        for i in range(0, len(prepared), args.batch_size):
            audit.append_many(site, prepared[i : i + args.batch_size])

    def writer() -> None:
        with audit.AuditWriter(site, max_entries=args.batch_size, max_delay_ms=50) as w:
            for i in range(args.batched):
                w.add(**events[i])

    timed("record(site): 1 entry per transaction", args.records, single)
    alone = timed("caller's transaction alone (1 insert)", args.records, caller_alone)
    joined = timed("same + record(session) in it", args.records, in_session)
    print(
        f"  {'-> marginal cost of record() in a transaction':<44} {1e6 / joined - 1e6 / alone:>57,.0f} µs per entry"
    )
    timed(f"append_many: {args.batch_size} per transaction", args.batched, batched)
    timed(f"AuditWriter: flush every {args.batch_size} / 50 ms", args.batched, writer)
    total = audit.head(site)["seq"]
    if args.verify_entries > total:
        extra = args.verify_entries - total
        block = [audit.AuditEvent.create(**entry(i, subjects)) for i in range(5000)]
        print(f"  (topping the chain up to {args.verify_entries} entries...)")
        for i in range(0, extra, 5000):
            audit.append_many(site, block[: min(5000, extra - i)])
        total = audit.head(site)["seq"]
    audit.checkpoint(site)
    report = None

    def verify() -> None:
        nonlocal report
        report = verify_store(site)

    timed("verify_store (chain + checkpoints)", total, verify)
    assert report is not None and report.ok, report.problems[:3] if report else None
    timed(
        "export to JSONL", total, lambda: export(site, folder / f"export-{uuid.uuid4().hex}.jsonl")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--records", type=int, default=2000, help="entries for the one-per-transaction figures"
    )
    parser.add_argument(
        "--batched", type=int, default=50_000, help="entries for append_many and the writer"
    )
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--subjects", type=int, default=1, help="subject keys per entry")
    parser.add_argument(
        "--verify-entries", type=int, default=0, help="grow the chain to N before verifying"
    )
    parser.add_argument("--pg-url", default=PG_ADMIN)
    args = parser.parse_args()
    print_machine()
    print(f"subject keys per entry: {args.subjects}; checkpoint every 1000 entries")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.backend in ("sqlite", "both"):
            print(f"\nSQLite ({folder / 'sqlite' / 'store.db'}, WAL, synchronous=NORMAL)")
            site = make_site(folder / "sqlite", f"sqlite:///{folder / 'sqlite' / 'store.db'}")
            bench(site, args, folder)
            site.engine.dispose()
        if args.backend in ("postgres", "both"):
            name = "gwbench_" + uuid.uuid4().hex[:10]
            admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {name}")
            try:
                url = make_url(args.pg_url).set(database=name).render_as_string(hide_password=False)
                print(f"\nPostgreSQL ({make_url(url).render_as_string()})")
                site = make_site(folder / "pg", url)
                bench(site, args, folder)
                site.engine.dispose()
            finally:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                admin.dispose()


if __name__ == "__main__":
    main()
