"""Score programs against HumanEval, MBPP or your own problems, in the sandbox, without a GPU.

    python -m envs.code evaluate --problems humaneval --samples samples.jsonl [--out results.jsonl]
    python -m envs.code references --problems mbpp > samples.jsonl    # the canonical solutions, as samples

A sample is {"task_id": ..., "solution": <a whole program>} (other fields are kept).
A result line adds "status" (passed, failed, timeout, error: the first test that did not
pass decides), "n_passed", "n_tests" and, when it did not pass, a short "message".
Every test runs in its own sandboxed process (see envs/code/sandbox.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from envs.code.data import load_problems
from envs.code.sandbox import Sandbox, SandboxConfig, evaluate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.code", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="run samples against their problems' tests")
    ev.add_argument("--problems", required=True, help="humaneval, mbpp, mbpp-sanitized, or a path to a file in one of their schemas")
    ev.add_argument("--samples", required=True, help="JSONL of {task_id, solution}")
    ev.add_argument("--out", help="write one result line per sample here (JSONL)")
    # 10 s, not CoCoS's 3 s: MBPP 123 (amicable numbers up to 9999) needs 3 s (full set) to 6 s (sanitized) on an idle core.
    ev.add_argument("--timeout", type=float, default=10.0, help="seconds per test (default 10)")
    ev.add_argument("--workers", type=int, default=0, help="sandbox workers (default: one per CPU core)")
    ref = sub.add_parser("references", help="print each problem's canonical solution as a sample line")
    ref.add_argument("--problems", required=True)
    args = parser.parse_args(argv)

    problems = {q.task_id: q for q in load_problems(args.problems)}
    if args.command == "references":
        for q in problems.values():
            print(json.dumps({"task_id": q.task_id, "solution": q.reference}))
        return 0

    with open(args.samples) as f:
        samples = [json.loads(line) for line in f if line.strip()]
    known = [s for s in samples if str(s.get("task_id")) in problems]
    with Sandbox(SandboxConfig(timeout_s=args.timeout, workers=args.workers)) as sandbox:
        verdicts = evaluate(sandbox, [(str(s["solution"]), problems[str(s["task_id"])].setup, problems[str(s["task_id"])].checks) for s in known])
    by_sample = {id(s): v for s, v in zip(known, verdicts)}

    results = []
    for s in samples:
        if id(s) not in by_sample:
            results.append({**s, "status": "error", "n_passed": 0, "n_tests": 0, "message": f"unknown task_id {s.get('task_id')!r}"})
            continue
        vs = by_sample[id(s)]
        first_bad = next((v for v in vs if v.status != "passed"), None)
        line = {**s, "status": first_bad.status if first_bad else "passed", "n_passed": sum(v.status == "passed" for v in vs), "n_tests": len(vs)}
        if first_bad:
            line["message"] = first_bad.message
        results.append(line)
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)

    counts = Counter(r["status"] for r in results)
    tests = sum(r["n_tests"] for r in results)
    print(f"pass rate: {counts['passed'] / max(len(results), 1):.4f} ({counts['passed']}/{len(results)} samples passed)")
    print(f"statuses: {dict(sorted(counts.items()))}; tests passed: {sum(r['n_passed'] for r in results)}/{tests}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
