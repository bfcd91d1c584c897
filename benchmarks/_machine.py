"""The machine a benchmark ran on, printed beside its figures so that they can be compared.

    from _machine import print_machine            # a script in benchmarks/
    from benchmarks._machine import describe      # from the repository root

Reads /proc on Linux and falls back to the ``platform`` module elsewhere. The load average is part
of it: the figures of a shared machine mean little without it.
"""

from __future__ import annotations

import os
import platform
import ssl
import sys
from pathlib import Path
from typing import TextIO


def _proc_field(path: str, field: str) -> str | None:
    try:
        for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == field:
                return value.strip()
    except OSError:
        return None
    return None


def _cpu_model() -> str:
    for field in ("model name", "Hardware", "Processor", "cpu"):
        value = _proc_field("/proc/cpuinfo", field)
        if value:
            return value
    return platform.processor() or platform.machine() or "unknown"


def _memory() -> str:
    total_kb = _proc_field("/proc/meminfo", "MemTotal")
    if total_kb:
        total = int(total_kb.split()[0]) * 1024
    else:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return "unknown"
    return f"{total / 2**30:.1f} GiB"


def _cores() -> str:
    logical = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = logical
    return f"{logical}" if usable == logical else f"{logical} ({usable} usable)"


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "unknown"


def speed() -> str:
    """One core's speed at the gateway's own kind of work: ``gateway.ids.check`` of 20,000 valid
    ID numbers, median of 5 rounds. The figures of two machines (or two sessions on a shared
    host, which have differed by 1.9x) compare only through it: a rate target is met on one
    machine and not on another with the same code."""
    import statistics
    import time

    try:
        from gateway import ids
    except ImportError:
        return "unknown (gateway not importable)"
    first17 = [
        f"522601{2010 + i % 8}{1 + i % 12:02d}{1 + i % 28:02d}{i % 1000:03d}" for i in range(20_000)
    ]
    numbers = [f + ids.check_char(f) for f in first17]
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for n in numbers:
            ids.check(n)
        rounds.append(time.perf_counter() - t0)
    return f"{len(numbers) / statistics.median(rounds):,.0f} ID checks/s on one core (gateway.ids.check)"


def details() -> dict[str, str]:
    """CPU model, cores, memory, Python, OpenSSL (it does the hashing), platform, load average and
    the single-core ``speed`` calibration."""
    return {
        "cpu": _cpu_model(),
        "cores": _cores(),
        "memory": _memory(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "openssl": ssl.OPENSSL_VERSION,
        "platform": platform.platform(),
        "load": _load(),
        "speed": speed(),
    }


def describe() -> str:
    """One line: ``AMD EPYC, 2 cores, 7.8 GiB, CPython 3.11.7, Linux-..., load 1.02 0.80 0.70``."""
    d = details()
    return (
        f"{d['cpu']}, {d['cores']} cores, {d['memory']}, {d['python']}, {d['openssl']}, "
        f"{d['platform']}, load {d['load']}, speed {d['speed']}"
    )


def print_machine(file: TextIO | None = None) -> None:
    """Print the machine, one ``name: value`` line per item."""
    out = file or sys.stdout
    print("machine:", file=out)
    for name, value in details().items():
        print(f"  {name:9} {value}", file=out)


if __name__ == "__main__":
    print_machine()
