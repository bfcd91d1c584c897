"""Throughput of ID handling on one core: normalise + validate, and + blind index (both suites).

    .venv/bin/python benchmarks/bench_ids.py [--count 200000] [--runs 5]

Each figure is the median of ``--runs`` passes over the same generated IDs (valid synthetic numbers
of school-age children, a tenth of them with a lower-case x, spaces, an apostrophe or full-width
digits, as real exports have them). The blind index is ``gateway.crypto.Protector.blind_index``
over ``ids.index_material``; if gateway.crypto cannot be imported the script falls back to
``hmac.digest`` and says so. Python runs this loop on one thread, so one core.
"""

from __future__ import annotations

import argparse
import hmac
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine  # noqa: E402

from gateway import ids  # noqa: E402

TARGET = 200_000  # IDs/s, issue 2
SUITES = {"sha256": "aes-gcm+hmac-sha256", "sm3": "sm4-gcm+hmac-sm3"}
AREAS = ["110105", "522636", "440304", "510107", "650102", "130102", "370212", "420106"]


def generate(count: int, seed: int, messy_share: float) -> tuple[list[str], int]:
    rng = random.Random(seed)
    first_day = date(2006, 1, 1)
    values: list[str] = []
    messy = 0
    for _ in range(count):
        born = first_day + timedelta(days=rng.randrange(15 * 365))
        first17 = f"{rng.choice(AREAS)}{born:%Y%m%d}{rng.randrange(1000):03d}"
        number = first17 + ids.check_char(first17)
        if rng.random() < messy_share:
            messy += 1
            number = rng.choice(
                [
                    number.lower(),
                    f" {number}\t",
                    "'" + number,
                    number[:6] + " " + number[6:14] + " " + number[14:],
                    number[:6].translate({ord(c): 0xFF10 + int(c) for c in "0123456789"})
                    + number[6:],
                ]
            )
        values.append(number)
    return values, messy


def blind_indexer(suite_key: str) -> tuple[Callable[[str], str], str]:
    """(material -> blind index, what computes it)."""
    try:
        from gateway import crypto
    except ImportError as exc:
        key = os.urandom(32)
        digest = suite_key

        def fallback(material: str) -> str:
            return "k1:" + hmac.digest(key, material.encode(), digest).hex()

        return fallback, f"hmac.digest({digest}) fallback: gateway.crypto not importable ({exc})"
    name = SUITES[suite_key]
    protector = crypto.Protector(crypto.Keyring.create(None, suite=name), crypto.get_suite(name))
    return protector.blind_index, f"gateway.crypto.Protector.blind_index, suite {name}"


def check_only(values: Sequence[str]) -> int:
    check = ids.check
    valid = 0
    for raw in values:
        valid += check(raw).ok
    return valid


def check_and_index(values: Sequence[str], blind_index: Callable[[str], str]) -> int:
    check, material = ids.check, ids.index_material
    valid = 0
    for raw in values:
        result = check(raw)
        if result.ok:
            blind_index(material(result.id_type, result.value))  # type: ignore[arg-type]
            valid += 1
    return valid


def measure(label: str, runs: int, count: int, work: Callable[[], int]) -> float:
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        valid = work()
        elapsed = time.perf_counter() - started
        if valid != count:
            raise SystemExit(f"{label}: {count - valid} generated IDs were rejected")
        rates.append(count / elapsed)
    median = statistics.median(rates)
    verdict = "meets" if median >= TARGET else "BELOW"
    spread = f"{min(rates):,.0f}..{max(rates):,.0f}"
    print(
        f"{label:50} {median:>11,.0f} IDs/s  {1e6 / median:6.2f} µs/ID  "
        f"(runs {spread}; {verdict} {TARGET:,}/s)"
    )
    return median


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=11643)
    parser.add_argument("--messy", type=float, default=0.1, help="share of IDs needing cleaning")
    args = parser.parse_args(argv)

    values, messy = generate(args.count, args.seed, args.messy)
    clean = [ids.check(v).value or "" for v in values]
    print(
        f"bench_ids: {args.count:,} IDs ({messy:,} messy), median of {args.runs} runs, one thread"
    )
    measure("normalise+validate, clean input", args.runs, args.count, lambda: check_only(clean))
    measure("normalise+validate, mixed input", args.runs, args.count, lambda: check_only(values))
    for suite_key in SUITES:
        blind_index, how = blind_indexer(suite_key)
        print(f"  blind index: {how}")
        measure(
            f"normalise+validate+blind index ({suite_key}), mixed",
            args.runs,
            args.count,
            lambda bi=blind_index: check_and_index(values, bi),
        )
    print_machine()


if __name__ == "__main__":
    main()
