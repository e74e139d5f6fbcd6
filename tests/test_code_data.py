"""HumanEval and MBPP loaders, the synthetic tasks, and the evaluation CLI on real canonical and wrong solutions.

The suite runs a seeded subset of each data set through the CLI; the full sets (all 164
HumanEval, 974 MBPP and 427 sanitized MBPP problems) are a CLI command:
    python -m envs.code references --problems mbpp > s.jsonl &&
        python -m envs.code evaluate --problems mbpp --samples s.jsonl
"""

import ast
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from envs.code import synthetic
from envs.code.checks import parse
from envs.code.data import load_problems, split
from envs.code.sandbox import Sandbox, SandboxConfig, evaluate

ROOT = Path(__file__).resolve().parents[1]
SUBSET = 40  # problems per data set in the CLI test


def test_shipped_data_sets_load_in_their_schemas():
    he, mbpp, san = load_problems("humaneval"), load_problems("mbpp"), load_problems("mbpp-sanitized")
    assert (len(he), len(mbpp), len(san)) == (164, 974, 427)
    assert (
        sum(len(q.tests) for q in he) == 1133
        and sum(len(q.tests) for q in mbpp) == 2922
        and sum(len(q.tests) for q in san) == 1324
    )
    for name in ("humaneval", "mbpp"):
        assert (ROOT / "envs/code/data" / name / "LICENSE").exists() and (
            ROOT / "envs/code/data" / name / "SOURCE.md"
        ).exists()
    assert [len(split(mbpp, s)) for s in ("train", "validation", "test", "prompt")] == [374, 90, 500, 10]
    assert len(split(he, "train")) == 164  # no split: all of it
    assert he[0].task_id == "HumanEval/0" and he[0].entry_point == "has_close_elements" and mbpp[0].task_id == "1"


def test_humaneval_check_is_split_into_one_test_per_statement():
    he = {q.task_id: q for q in load_problems("humaneval")}
    assert he["HumanEval/64"].tests[0] == "assert vowels_count('abcde') == 2, 'Test 1'"  # candidate -> the entry point
    assert len(he["HumanEval/64"].tests) == 7  # its `assert True` checks nothing and is dropped
    loop = he["HumanEval/53"].tests[-1]  # a loop, with the import it needs in front
    assert loop.startswith("import random\nfor i in range(100):") and "assert add(x, y) == x + y" in loop
    assert (
        he["HumanEval/53"].tests[0] == "assert add(0, 1) == 1"
    )  # the import is not put in front of tests that do not need it
    last = he["HumanEval/151"].tests[-1].splitlines()
    assert last[0] == "lst = list(range(-99, 100, 2))" and last[-1].startswith(
        "assert double_the_difference(lst) == odd_sum"
    )


def test_any_file_in_one_of_the_schemas_loads(tmp_path):
    he = tmp_path / "he.jsonl"
    he.write_text(
        json.dumps(
            {
                "task_id": "X/0",
                "prompt": "def f(x):\n",
                "canonical_solution": "    return x\n",
                "entry_point": "f",
                "test": "def check(candidate):\n    assert candidate(1) == 1\n",
            }
        )
        + "\n"
    )
    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text(
        json.dumps(
            {
                "task_id": 7,
                "text": "t",
                "code": "def g(): return 2",
                "test_list": ["assert g() == 2"],
                "test_setup_code": "",
            }
        )
        + "\n"
    )
    san = tmp_path / "san.json"
    san.write_text(
        json.dumps(
            [
                {
                    "task_id": 8,
                    "prompt": "p",
                    "code": "import math\ndef h(): return math.pi",
                    "test_imports": ["import math"],
                    "test_list": ["assert math.isclose(h(), 3.14159, rel_tol=0.001)"],
                }
            ]
        )
    )
    (q1,), (q2,), (q3,) = load_problems(str(he)), load_problems(str(mbpp)), load_problems(str(san))
    assert q1.tests == ["assert f(1) == 1"] and q1.reference == "def f(x):\n    return x\n"
    assert (q2.task_id, q2.text, q2.tests) == ("7", "t", ["assert g() == 2"])
    assert q3.setup == "import math" and q3.checks[0].condition == "math.isclose(_h0, 3.14159, rel_tol=0.001)"
    with pytest.raises(ValueError, match="unknown problem schema"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"question": 1}\n')
        load_problems(str(bad))


def test_synthetic_tasks_are_seeded_distinct_and_solved_by_their_references():
    a, b = synthetic.generate(20, seed=3), synthetic.generate(20, seed=3)
    assert [q.tests for q in a] == [q.tests for q in b] and len({q.task_id for q in a}) == 20
    assert [q.tests for q in synthetic.generate(20, seed=4)] != [q.tests for q in a]
    add = synthetic.make_problem(synthetic.TEMPLATES[0], 7, random.Random(0))
    assert (
        add.text == "Write a function add_7(x) that returns x plus 7."
        and add.reference == "def add_7(x):\n    return x + 7\n"
    )
    assert all(t.startswith("assert add_7(") for t in add.tests) and len(set(add.tests)) == 3
    every = synthetic.generate(467, seed=0)  # every (template, k) pair: numbers up to 99 where they make sense
    assert len({q.task_id for q in every}) == 467 and "synthetic/add_99" in {q.task_id for q in every}
    with pytest.raises(ValueError, match="at most 467"):
        synthetic.generate(468, seed=0)
    assert {synthetic.number(q) for q in every} == set(range(2, 100))
    with Sandbox(SandboxConfig(workers=2)) as sb:
        verdicts = evaluate(sb, [(q.reference, q.setup, q.checks, q.reference) for q in a])
    assert all(v.status == "passed" for vs in verdicts for v in vs)


def test_synthetic_max_k_keeps_a_subset_of_the_same_split():
    from envs.code import CodeParams, problems

    full = problems(CodeParams(synthetic_problems=100), "train")
    small = problems(CodeParams(synthetic_problems=100, synthetic_max_k=20), "train")
    assert small == [q for q in full if synthetic.number(q) <= 20] and 0 < len(small) < len(full)
    assert not {q.task_id for q in small} & {q.task_id for q in problems(CodeParams(synthetic_problems=100), "eval")}


def wrong_solution(reference: str) -> str:
    """The reference with every function it defines replaced by one returning a wrong value."""
    names = [n.name for n in parse(reference).body if isinstance(n, ast.FunctionDef)]
    return reference + "\n\n" + "".join(f"def {f}(*args, **kwargs):\n    return 'wrong answer'\n\n" for f in names)


@pytest.mark.parametrize("dataset", ["humaneval", "mbpp", "mbpp-sanitized"])
def test_cli_passes_canonical_and_fails_wrong_solutions(dataset, tmp_path):
    problems = random.Random(0).sample(load_problems(dataset), SUBSET)
    samples = tmp_path / "samples.jsonl"
    lines = [{"task_id": q.task_id, "solution": q.reference, "kind": "canonical"} for q in problems]
    lines += [{"task_id": q.task_id, "solution": wrong_solution(q.reference), "kind": "wrong"} for q in problems]
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "results.jsonl"
    cli = [
        sys.executable,
        "-m",
        "envs.code",
        "evaluate",
        "--problems",
        dataset,
        "--samples",
        str(samples),
        "--out",
        str(out),
        "--timeout",
        "30",
    ]
    proc = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=170)
    assert proc.returncode == 0, proc.stderr
    # Each task has one right and one wrong sample: pass@1 is 1/2, pass@2 is 1.
    assert proc.stdout.startswith(
        f"{dataset}: {SUBSET} tasks, {2 * SUBSET} samples; pass@1 0.5000 (skipped pass@10, pass@100"
    )
    assert f"samples passed: {SUBSET}/{2 * SUBSET};" in proc.stdout
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["kind"] for r in results] == [
        line["kind"] for line in lines
    ]  # one result per sample, in order, fields kept
    for r, q in zip(results, problems + problems):
        assert r["n_tests"] == len(q.tests)
        if r["kind"] == "canonical":
            assert r["status"] == "passed" and r["passed"] and r["n_passed"] == r["n_tests"], r
        else:
            assert (
                r["status"] in ("failed", "error") and not r["passed"] and r["n_passed"] < r["n_tests"] and r["message"]
            ), r


def test_cli_references_prints_samples():
    proc = subprocess.run(
        [sys.executable, "-m", "envs.code", "references", "--problems", "humaneval"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert (
        len(lines) == 164
        and lines[0]["task_id"] == "HumanEval/0"
        and lines[0]["solution"].startswith("from typing import List")
    )
