"""Verdict check over whole data sets: every canonical solution passes, a wrong one fails every task.

Run from the repository root (a few minutes on 2 cores):

    python benchmarks/code_verdicts.py                      # HumanEval (164) and MBPP (974)
    python benchmarks/code_verdicts.py --sample 20          # every loop-test problem + 20 seeded others per data set

Per data set it prints: tasks, tests, tasks whose canonical solution passes every test, and
tasks where a wrong program passes every test. The wrong program is the canonical one with
each function it defines replaced by one that first writes what a passing verdict could look
like on every file descriptor it has (the result pipe, stdout, stderr; raw and framed), then
returns an object (an opaque value, equal to nothing). Goal: all canonical pass, 0 wrong credited.
"""

import argparse
import ast
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .`
from envs.code.checks import parse
from envs.code.data import load_problems
from envs.code.sandbox import Sandbox, SandboxConfig, evaluate

WRONG = """
def NAME(*args, **kwargs):
    import json, os, struct
    data = json.dumps({"status": "passed"}).encode()
    for fd in range(256):
        for blob in (data, struct.pack(">I", len(data)) + data, b"PASSED\\n"):
            try:
                os.write(fd, blob)
            except OSError:
                pass
    return object()
"""


def wrong_program(q) -> str:
    names = (
        [q.entry_point]
        if q.entry_point
        else [f.name for f in parse(q.reference).body if isinstance(f, ast.FunctionDef)]
    )
    return q.reference + "".join(WRONG.replace("NAME", n) for n in names)


p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument(
    "--sample",
    type=int,
    default=0,
    help="besides the loop-test problems, this many seeded others per data set (0 = all)",
)
p.add_argument("--workers", type=int, default=2)
p.add_argument(
    "--timeout", type=float, default=20.0, help="per program, seconds (MBPP 123 takes seconds on a busy machine)"
)
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()

print(f"{'data set':<10} {'tasks':>6} {'tests':>6} {'canonical pass':>15} {'wrong credited':>15} {'seconds':>8}")
failures = 0
with Sandbox(SandboxConfig(timeout_s=args.timeout, program_timeout_s=args.timeout, workers=args.workers)) as sandbox:
    for name in ("humaneval", "mbpp"):
        problems = load_problems(name)
        if args.sample:
            loops = [q for q in problems if any(c.calls for c in q.checks)]
            others = [q for q in problems if q not in loops]
            problems = loops + random.Random(args.seed).sample(others, min(args.sample, len(others)))
        start = time.monotonic()
        canonical = evaluate(sandbox, [(q.reference, q.setup, q.checks, q.reference) for q in problems])
        wrong = evaluate(sandbox, [(wrong_program(q), q.setup, q.checks, q.reference) for q in problems])
        seconds = time.monotonic() - start
        passing = [all(r.status == "passed" for r in rs) for rs in canonical]
        credited = [all(r.status == "passed" for r in rs) for rs in wrong]
        for q, ok, forged, rs in zip(problems, passing, credited, canonical):
            if not ok:
                print(
                    f"  canonical fails {q.task_id}: {[(r.status, r.message[:80]) for r in rs if r.status != 'passed']}"
                )
            if forged:
                print(f"  wrong credited {q.task_id}")
        n_tests = sum(len(q.checks) for q in problems)
        print(f"{name:<10} {len(problems):>6} {n_tests:>6} {sum(passing):>15} {sum(credited):>15} {seconds:>8.1f}")
        failures += len(problems) - sum(passing) + sum(credited)
sys.exit(1 if failures else 0)
