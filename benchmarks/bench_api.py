"""The department API under load: gunicorn on the PostgreSQL store, a signing load generator on loopback.

    .venv/bin/python benchmarks/bench_api.py [--seconds 15] [--procs 2] [--threads 4]
        [--workers 2] [--worker-threads 4] [--records 20000] [--batch-runs 3]
        [--loadgen auto|wrk|python]

Sets up a throwaway PostgreSQL database ($GATEWAY_TEST_PG_URL's server) with ``--records``
poverty records (pushed through the sync engine), starts ``gunicorn -w 2 -k gthread
"gateway.web:create_app()"`` on 127.0.0.1 and then:

* single lookups: ``--procs`` x ``--threads`` keep-alive connections send
  ``POST /api/v1/datasets/poverty/lookup`` with one ID number each, every request signed with its
  own nonce (HMAC-SHA256), for ``--seconds``. The load generator is Debian's ``wrk`` (C; ``apt-get
  install wrk``) when it is installed: ``--procs`` threads replaying requests signed just before
  the run (unique nonces, well inside the 300 s window; a Lua script hands each connection the
  next unused one). Without wrk (or with ``--loadgen python``) ``--procs`` Python processes x
  ``--threads`` threads sign each request as they send it. The output says which one ran; wrk
  costs the shared cores about a quarter of the Python generator's CPU per request. Every request is refused or answered
  only after its nonce and its audit entry are committed (synchronous_commit on): the figures
  include that durable write. Prints requests/s, p50 and p99 latency, and checks afterwards that the
  audit log holds one ``api.lookup`` entry per answered request. Also prints how the keep-alive
  connections were spread over the workers mid-run (``6/2``: a worker serves only the
  connections it accepted, so an uneven split leaves part of a core idle).
* one 10,000-subject batch lookup, ``--batch-runs`` times (median and all runs).
* the HTTP stack's floor (with wrk; ``--no-floor`` skips it): the same server and connections on
  ``GET /healthz``, which signs, reads and audits nothing. No lookup can be faster than this; its
  CPU per request is what gunicorn + Flask alone cost on this machine.

Targets (issue 6): >= 2,000 requests/s, p99 <= 50 ms, a 10,000-subject batch <= 1 s. The load
generator and the server share this machine's cores: the figures say how many.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
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


# wrk: each thread takes every n-th pre-signed request (its own nonces) and never reuses one.
WRK_SCRIPT = r"""
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  local nthreads, interval = tonumber(args[2]), tonumber(args[3])
  pause = interval
  reqs = {}
  local i = 0
  for line in io.lines(args[1]) do
    if i % nthreads == tid then
      local ts, nonce, sig, body = line:match("([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)")
      reqs[#reqs + 1] = wrk.format("POST", args[4], {
        ["X-Gateway-Key"] = args[5], ["X-Gateway-Timestamp"] = ts,
        ["X-Gateway-Nonce"] = nonce, ["X-Gateway-Signature"] = sig,
        ["Content-Type"] = "application/json"}, body)
    end
    i = i + 1
  end
  pos = 0
end
function request()
  pos = pos + 1
  if pos > #reqs then
    exhausted = true
    wrk.thread:stop()
    pos = #reqs
  end
  return reqs[pos]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def prepare_wrk(
    port: int,
    secret: bytes,
    numbers: list[str],
    seconds: float,
    threads: int,
    connections: int,
    folder: Path,
    rate: float = 0.0,
) -> list[str]:
    """Sign the requests of a wrk run now (before its clock starts); returns the command. With
    ``rate``, each connection pauses connections/rate between requests (about that rate)."""
    import random

    rng = random.Random(len(numbers) + int(seconds) + int(rate))
    # Enough for 8,000 requests/s (wrk stops a thread that runs out; it never replays a nonce).
    count = int(8000 * seconds) + 1000
    requests = folder / f"requests-{int(rate)}.tsv"
    with requests.open("w", encoding="utf-8") as out:
        for _ in range(count):
            body = json.dumps(
                {"purpose": "dropout-control", "subjects": [{"id_number": rng.choice(numbers)}]}
            )
            h = signed_headers(secret, "POST", LOOKUP, body.encode())
            out.write(
                f"{h['X-Gateway-Timestamp']}\t{h['X-Gateway-Nonce']}\t"
                f"{h['X-Gateway-Signature']}\t{body}\n"
            )
    pause_ms = int(connections / rate * 1000) if rate else 0
    script = folder / f"lookup-{pause_ms}.lua"
    # wrk schedules through a timer whenever the script has delay(): only for a paced run.
    paced = "\nfunction delay()\n  return pause\nend\n" if pause_ms else ""
    script.write_text(WRK_SCRIPT + paced, encoding="utf-8")
    return [
        shutil.which("wrk") or "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
        "--",
        str(requests),
        str(threads),
        str(pause_ms),
        LOOKUP,
        KEY_ID,
    ]


def run_wrk(cmd: list[str]) -> tuple[int, int, float, float, float]:
    """(answered, errors, seconds, p50 ms, p99 ms) of a prepared wrk run."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no result: {done.stdout[-500:]} {done.stderr[-500:]}")
    total, duration_us, socket_errors, status_errors, p50_us, p99_us = map(int, line.split()[1:])
    return (
        total - status_errors,
        socket_errors + status_errors,
        duration_us / 1e6,
        p50_us / 1000,
        p99_us / 1000,
    )


def _pg_cpu_seconds(admin: sa.Engine, database: str) -> float:
    """utime + stime of the PostgreSQL processes serving ``database`` and of the server's own
    background processes (WAL writer, checkpointer, ...): read from /proc, same machine."""
    with admin.connect() as conn:
        pids = conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE (datname = %(db)s "
            "OR backend_type <> 'client backend') AND pid <> pg_backend_pid()",
            {"db": database},
        ).scalars()
        return sum(_own_cpu_seconds(pid) for pid in pids)


def _own_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


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


def floor(pid: int, port: int, seconds: float, threads: int, connections: int) -> None:
    """The same server under the same wrk load on ``GET /healthz``: no signature, no store, no
    audit entry, so what gunicorn's gthread worker and Flask alone allow on this machine."""
    cmd = [
        shutil.which("wrk") or "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"http://127.0.0.1:{port}/healthz",
    ]
    cpu0, (busy0, _) = _cpu_seconds(pid), _machine_busy()
    split = sampled_split(pid, port, seconds / 2)
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    cpu, (busy1, _) = _cpu_seconds(pid) - cpu0, _machine_busy()
    # wrk's summary: "  N requests in 10.00s, ..." and "Requests/sec:  N".
    total = next(
        int(line.split()[0]) for line in done.stdout.splitlines() if " requests in " in line
    )
    rps = next(
        float(line.split()[1])
        for line in done.stdout.splitlines()
        if line.startswith("Requests/sec")
    )
    print(
        f"floor, GET /healthz on the same server (no signature, store or audit): {rps:,.0f} "
        f"req/s; gunicorn workers {cpu / max(1, total) * 1000:.2f} ms per request; machine "
        f"{(busy1 - busy0) / max(1e-9, seconds):.2f} cores busy; connections per worker "
        f"{split()}"
    )


def _worker_pids(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def connection_split(pid: int, port: int) -> str:
    """How the load generator's keep-alive connections are spread over gunicorn's workers right
    now, e.g. ``6/2``: a worker answers only its own connections, so with 8 long-lived ones an
    uneven split leaves one worker's core idle while the other's GIL caps the rate."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            # local address "ADDR:PORT" in hex; state 01 = ESTABLISHED; inode is field 9
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":
                inodes.add(f[9])
    counts = []
    for worker in _worker_pids(pid):
        n = 0
        try:
            for fd in Path(f"/proc/{worker}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    n += link.startswith("socket:[") and link[8:-1] in inodes
        except OSError:
            pass
        counts.append(n)
    return "/".join(str(n) for n in sorted(counts, reverse=True)) or "unknown"


def sampled_split(pid: int, port: int, after: float) -> Callable[[], str]:
    """``connection_split`` taken ``after`` seconds from now (mid-run), in a thread."""
    result = ["unknown"]

    def take() -> None:
        time.sleep(after)
        result[0] = connection_split(pid, port)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()

    def get() -> str:
        thread.join()
        return result[0]

    return get


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live children (gunicorn's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid, *_worker_pids(pid)]
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
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="auto: wrk when installed (apt-get install wrk), else the Python generator",
    )
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the /healthz floor (HTTP stack alone)"
    )
    args = parser.parse_args()
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))
    if use_wrk and not shutil.which("wrk"):
        raise SystemExit("--loadgen wrk: wrk is not installed (Debian: apt-get install wrk)")

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
            connections = args.procs * args.threads
            generator = (
                f"wrk, {args.procs} threads x {connections // args.procs} keep-alive connections "
                "replaying requests signed just before the run"
                if use_wrk
                else f"Python, {args.procs} processes x {args.threads} threads, each with its "
                "keep-alive connection, signing as they send"
            )
            print(
                f"server: gunicorn -w {args.workers} -k gthread --threads {args.worker_threads}, "
                f"PostgreSQL store (synchronous_commit={commit_mode}); load generator: "
                f"{generator}; same machine "
                f"({os.cpu_count()} cores shared by server, database and load generator)"
            )

            def prepared(seconds: float, rate: float = 0.0):
                """A zero-argument run of the chosen generator (wrk's requests signed now):
                it returns (answered, errors, seconds, p50 ms, p99 ms)."""
                if use_wrk:
                    cmd = prepare_wrk(
                        port, secret, numbers, seconds, args.procs, connections, Path(tmp), rate
                    )
                    return lambda: run_wrk(cmd)

                def python_run() -> tuple[int, int, float, float, float]:
                    lat, errs, took = load(
                        port, secret, numbers, seconds, args.procs, args.threads, rate=rate
                    )
                    return len(lat), errs, took, pct(lat, 0.50), pct(lat, 0.99)

                return python_run

            prepared(2)()  # warm-up
            time.sleep(0.5)  # requests still in flight when the warm-up stopped its clock
            from gateway.site import Site

            site = Site.from_config(config)
            before = audit.count(site, action="api.lookup")
            import resource

            run = prepared(args.seconds)
            server_cpu = _cpu_seconds(proc.pid)
            pg_cpu = _pg_cpu_seconds(admin, name)
            client_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
            busy0, total0 = _machine_busy()
            split = sampled_split(proc.pid, port, args.seconds / 2)
            answered, errors, elapsed, p50, p99 = run()
            busy1, total1 = _machine_busy()
            server_cpu = _cpu_seconds(proc.pid) - server_cpu
            pg_cpu = _pg_cpu_seconds(admin, name) - pg_cpu
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            client_cpu = (usage.ru_utime + usage.ru_stime) - (
                client_cpu.ru_utime + client_cpu.ru_stime
            )
            time.sleep(0.5)
            after = audit.count(site, action="api.lookup")
            rps = answered / elapsed
            print(
                f"single lookups ({'wrk' if use_wrk else 'Python load generator'}): "
                f"{answered:,} answered in {elapsed:.1f} s = {rps:,.0f} req/s "
                f"(target >= {TARGET_RPS:,}); p50 {p50:.1f} ms, p99 {p99:.1f} ms "
                f"(target <= {TARGET_P99_MS:.0f} ms); errors {errors}"
            )
            in_flight = (
                f"; wrk stops its clock with up to {connections} requests in flight, answered "
                "and audited after it"
                if use_wrk
                else ""
            )
            print(
                f"audited durably: {after - before:,} api.lookup entries for {answered:,} "
                f"answers counted (each committed before its answer was sent{in_flight})"
            )
            n = max(1, answered)
            cores = (busy1 - busy0) / max(1e-9, elapsed)
            print(
                f"CPU during the run: machine {cores:.2f} of {os.cpu_count()} cores busy "
                f"({(busy1 - busy0) / max(1e-9, total1 - total0):.0%}, other users included); "
                f"per request: gunicorn workers {server_cpu / n * 1000:.2f} ms, PostgreSQL "
                f"{pg_cpu / n * 1000:.2f} ms, load generator {client_cpu / n * 1000:.2f} ms; "
                f"connections per worker {split()}"
            )
            # Latency when the server is not saturated: paced at half the throughput just measured.
            paced, paced_errors, paced_s, paced_p50, paced_p99 = prepared(args.seconds, rps / 2)()
            print(
                f"paced at about {rps / 2:,.0f} req/s: {paced / paced_s:,.0f} req/s answered; "
                f"p50 {paced_p50:.1f} ms, p99 {paced_p99:.1f} ms; errors {paced_errors}"
            )
            times = batch(port, secret, numbers, args.batch_runs)
            print(
                f"10,000-subject batch: median {statistics.median(times):.3f} s "
                f"(runs: {', '.join(f'{t:.3f}' for t in times)}; target <= {TARGET_BATCH_S:.0f} s)"
            )
            if use_wrk and not args.no_floor:
                floor(proc.pid, port, args.seconds, args.procs, connections)
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
