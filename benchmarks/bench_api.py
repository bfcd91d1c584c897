"""The department API under load: gunicorn on the PostgreSQL store, a signing load generator on loopback.

    .venv/bin/python benchmarks/bench_api.py [--seconds 15] [--procs 2] [--threads 4]
        [--workers 2] [--worker-threads 4] [--records 20000] [--batch-runs 3]

Sets up a throwaway PostgreSQL database ($GATEWAY_TEST_PG_URL's server) with ``--records``
poverty records (pushed through the sync engine), starts ``gunicorn -w 2 -k gthread
"gateway.web:create_app()"`` on 127.0.0.1 and then:

* single lookups: ``--procs`` processes x ``--threads`` threads, each with its own keep-alive
  connection, send ``POST /api/v1/datasets/poverty/lookup`` with one ID number each, every request
  freshly signed (new nonce, HMAC-SHA256) for ``--seconds``. Every request is refused or answered
  only after its nonce and its audit entry are committed (synchronous_commit on): the figures
  include that durable write. Prints requests/s, p50 and p99 latency, and checks afterwards that the
  audit log holds one ``api.lookup`` entry per answered request.
* one 10,000-subject batch lookup, ``--batch-runs`` times (median and all runs).

Targets (issue 6): >= 2,000 requests/s, p99 <= 50 ms, a 10,000-subject batch <= 1 s. The load
generator and the server share this machine's cores: the figures say how many.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sqlalchemy as sa  # noqa: E402
import tomli_w  # noqa: E402
from _machine import print_machine  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from gateway import audit, ids  # noqa: E402
from gateway.crypto import Keyring, get_suite, request_signature  # noqa: E402

TARGET_RPS, TARGET_P99_MS, TARGET_BATCH_S = 2000, 50.0, 1.0
PG_ADMIN = os.environ.get(
    "GATEWAY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SUITE = "aes-gcm+hmac-sha256"
KEY_ID = "bench-1"
LOOKUP = "/api/v1/datasets/poverty/lookup"
VENV_BIN = Path(sys.executable).parent


def make_ids(count: int) -> list[str]:
    """``count`` distinct valid ID numbers of school-age children (1,000 per birth day)."""
    import datetime as dt

    out = []
    for i in range(count):
        birth = dt.date(2012, 1, 1) + dt.timedelta(days=i // 1000)
        first17 = f"522636{birth:%Y%m%d}{i % 1000:03d}"
        out.append(first17 + ids.check_char(first17))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- setup ------------------------------------------------------------------------------------------


def setup(folder: Path, store: str, records: int) -> tuple[Path, bytes, list[str]]:
    from alembic import command

    from gateway.site import Site
    from gateway.store import Base
    from gateway.store.migrate import alembic_config
    from gateway.web.push import run_push

    Keyring.create(folder / "keyring.json", suite=SUITE)
    config = {
        "gateway": {"store": store, "suite": SUITE, "keyring": "keyring.json"},
        "departments": {
            "bench": {
                "key_id": KEY_ID,
                "rate_limit": 1_000_000,
                "allow": [
                    {
                        "dataset": "poverty",
                        "fields": ["poverty_type", "household_no"],
                        "purposes": ["dropout-control"],
                        "ids": "masked",
                    }
                ],
            }
        },
    }
    path = folder / "gateway.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    ring = Keyring.load(folder / "keyring.json")
    secret = ring.new("department", key_id=KEY_ID).material
    ring.save()
    site = Site.from_config(path)
    Base.metadata.create_all(site.engine)
    command.stamp(alembic_config(site.engine), "head")
    numbers = make_ids(records)
    rows = [
        {
            "id_number": n,
            "name": "某某",
            "area_code": "522636101",
            "household_no": f"H{i // 4:06d}",
            "poverty_type": "lifted" if i % 3 else "unstable",
        }
        for i, n in enumerate(numbers)
    ]
    for start in range(0, len(rows), 10_000):
        run_push(site, "registry", "poverty", rows[start : start + 10_000])
    site.engine.dispose()
    return path, secret, numbers


def start_gunicorn(config: Path, port: int, workers: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "GATEWAY_CONFIG": str(config)}
    cmd = [
        str(VENV_BIN / "gunicorn"),
        "-w",
        str(workers),
        "-k",
        "gthread",
        "--threads",
        str(threads),
        "--keep-alive",
        "30",
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "gateway.web:create_app()",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(
        "gunicorn did not start: " + (proc.stderr.read().decode()[-2000:] if proc.stderr else "")
    )


# -- the load generator ------------------------------------------------------------------------------


def signed_headers(secret: bytes, method: str, path: str, body: bytes) -> dict[str, str]:
    ts, nonce = str(int(time.time())), secrets.token_hex(16)
    return {
        "X-Gateway-Key": KEY_ID,
        "X-Gateway-Timestamp": ts,
        "X-Gateway-Nonce": nonce,
        "X-Gateway-Signature": request_signature(
            get_suite(SUITE), secret, method, path, ts, nonce, body
        ),
        "Content-Type": "application/json",
    }


def _thread_loop(
    port: int,
    secret: bytes,
    numbers: list[str],
    until: float,
    seed: int,
    out: list,
    interval: float = 0.0,
) -> None:
    import random

    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies, errors = [], 0
    next_at = time.perf_counter()
    while time.time() < until:
        if interval:  # paced: one request every `interval` seconds from this connection
            next_at += interval
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        body = json.dumps(
            {"purpose": "dropout-control", "subjects": [{"id_number": rng.choice(numbers)}]}
        ).encode()
        started = time.perf_counter()
        try:
            conn.request(
                "POST", LOOKUP, body=body, headers=signed_headers(secret, "POST", LOOKUP, body)
            )
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        elapsed = time.perf_counter() - started
        if response.status == 200:
            latencies.append(elapsed)
        else:
            errors += 1
    conn.close()
    out.append((latencies, errors))


def _process(args: tuple) -> tuple[list[float], int]:
    import threading

    port, secret, numbers, until, threads, seed, interval = args
    results: list = []
    pool = [
        threading.Thread(
            target=_thread_loop,
            args=(port, secret, numbers, until, seed * 100 + t, results, interval),
        )
        for t in range(threads)
    ]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    latencies = [x for lat, _ in results for x in lat]
    return latencies, sum(e for _, e in results)


def load(
    port: int,
    secret: bytes,
    numbers: list[str],
    seconds: float,
    procs: int,
    threads: int,
    rate: float = 0.0,
):
    """Closed loop (as fast as answers come) or, with ``rate``, paced to that many requests/s."""
    interval = procs * threads / rate if rate else 0.0
    until = time.time() + seconds
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        parts = pool.map(
            _process, [(port, secret, numbers, until, threads, p, interval) for p in range(procs)]
        )
    elapsed = time.perf_counter() - started
    latencies = sorted(x for lat, _ in parts for x in lat)
    errors = sum(e for _, e in parts)
    return latencies, errors, elapsed


def batch(port: int, secret: bytes, numbers: list[str], runs: int) -> list[float]:
    body = json.dumps(
        {"purpose": "dropout-control", "subjects": [{"id_number": n} for n in numbers[:10_000]]}
    ).encode()
    times = []
    for _ in range(runs):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        started = time.perf_counter()
        conn.request(
            "POST", LOOKUP, body=body, headers=signed_headers(secret, "POST", LOOKUP, body)
        )
        response = conn.getresponse()
        answer = json.loads(response.read())
        times.append(time.perf_counter() - started)
        conn.close()
        found = sum(1 for r in answer["results"] if r["found"])
        if response.status != 200 or found != 10_000:
            raise SystemExit(f"batch lookup: status {response.status}, found {found} of 10000")
    return times


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live children (gunicorn's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / tick, sum(values) / tick


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--threads", type=int, default=4, help="connections per process")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--worker-threads", type=int, default=4, help="threads per worker")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch-runs", type=int, default=3)
    args = parser.parse_args()

    print_machine()
    name = "gwbench_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
        commit_mode = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
    store = make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    proc = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            config, secret, numbers = setup(Path(tmp), store, args.records)
            print(
                f"setup: {len(numbers):,} poverty records pushed in {time.perf_counter() - t0:.1f} s"
            )
            port = free_port()
            proc = start_gunicorn(config, port, args.workers, args.worker_threads)
            print(
                f"server: gunicorn -w {args.workers} -k gthread --threads {args.worker_threads}, "
                f"PostgreSQL store (synchronous_commit={commit_mode}); load generator: "
                f"{args.procs} processes x {args.threads} keep-alive connections, same machine "
                f"({os.cpu_count()} cores shared by server, database and load generator)"
            )
            load(port, secret, numbers, 2, args.procs, args.threads)  # warm-up
            from gateway.site import Site

            site = Site.from_config(config)
            before = audit.count(site, action="api.lookup")
            import resource

            server_cpu = _cpu_seconds(proc.pid)
            client_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
            busy0, total0 = _machine_busy()
            latencies, errors, elapsed = load(
                port, secret, numbers, args.seconds, args.procs, args.threads
            )
            busy1, total1 = _machine_busy()
            server_cpu = _cpu_seconds(proc.pid) - server_cpu
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            client_cpu = (usage.ru_utime + usage.ru_stime) - (
                client_cpu.ru_utime + client_cpu.ru_stime
            )
            after = audit.count(site, action="api.lookup")
            rps = len(latencies) / elapsed
            p50, p99 = pct(latencies, 0.50), pct(latencies, 0.99)
            print(
                f"single lookups: {len(latencies):,} answered in {elapsed:.1f} s = {rps:,.0f} req/s "
                f"(target >= {TARGET_RPS:,}); p50 {p50:.1f} ms, p99 {p99:.1f} ms "
                f"(target <= {TARGET_P99_MS:.0f} ms); errors {errors}"
            )
            print(
                f"audited durably: {after - before:,} api.lookup entries for {len(latencies):,} "
                "answers (each committed before its answer was sent)"
            )
            n = max(1, len(latencies))
            cores = (busy1 - busy0) / max(1e-9, elapsed)
            print(
                f"CPU during the run: machine {cores:.2f} of {os.cpu_count()} cores busy "
                f"({(busy1 - busy0) / max(1e-9, total1 - total0):.0%}, other users included); "
                f"gunicorn workers {server_cpu / n * 1000:.2f} ms per request, load generator "
                f"{client_cpu / n * 1000:.2f} ms per request (PostgreSQL: the rest)"
            )
            # Latency when the server is not saturated: paced at half the throughput just measured.
            paced, paced_errors, paced_s = load(
                port, secret, numbers, args.seconds, args.procs, args.threads, rate=rps / 2
            )
            print(
                f"paced at {rps / 2:,.0f} req/s: {len(paced) / paced_s:,.0f} req/s answered; "
                f"p50 {pct(paced, 0.50):.1f} ms, p99 {pct(paced, 0.99):.1f} ms; "
                f"errors {paced_errors}"
            )
            times = batch(port, secret, numbers, args.batch_runs)
            print(
                f"10,000-subject batch: median {statistics.median(times):.3f} s "
                f"(runs: {', '.join(f'{t:.3f}' for t in times)}; target <= {TARGET_BATCH_S:.0f} s)"
            )
            site.engine.dispose()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


if __name__ == "__main__":
    main()
