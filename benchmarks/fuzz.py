"""Fuzz every input boundary with a large budget and count the crashes.

    python benchmarks/fuzz.py --examples 2000

Runs each target of tests/fuzz_targets.py on `--examples` drawn inputs (plus its regression
examples) and prints, per target, the inputs tried and how many crashed, with the first
crashing input and its error. Exit code 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, Phase, example, given, settings  # noqa: E402
from hypothesis import seed as seed_of  # noqa: E402

from tests.fuzz_targets import TARGETS  # noqa: E402


def fuzz(target, n: int, seed: int) -> tuple[int, list[tuple[object, str]]]:
    """(inputs tried, [(input, error)] of every crash); unlike a test, it goes on after a crash to count them all."""
    tried, crashes = 0, []

    def counted(value) -> None:
        nonlocal tried
        tried += 1
        try:
            target.check(value)
        except Exception:  # noqa: BLE001 (every kind of failure is what is being counted)
            crashes.append((value, traceback.format_exc(limit=-1).strip().splitlines()[-1]))

    run = given(target.inputs)(counted)
    for regression in target.examples:
        run = example(regression)(run)
    run = settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )(run)
    seed_of(seed)(run)()
    return tried, crashes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="drawn inputs per target")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'target':<34} {'inputs tried':>12} {'crashes':>8} {'seconds':>8}")
    total = 0
    for target in TARGETS:
        start = time.perf_counter()
        tried, crashes = fuzz(target, args.examples, args.seed)
        print(f"{target.name:<34} {tried:>12} {len(crashes):>8} {time.perf_counter() - start:>8.1f}", flush=True)
        if crashes:
            value, error = crashes[0]
            print(f"  first crash: {value!r:.200}\n  -> {error}")
        total += len(crashes)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
