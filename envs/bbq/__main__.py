"""Score any model's answers to BBQ questions: accuracy and bias scores per category, first and last turn.

    python -m envs.bbq evaluate --answers q.jsonl --answers q_if.jsonl --answers q_if_cot.jsonl [--out DIR]

An answers file is JSONL, one question per line, either
    {"category": "Age", "example_id": 0, "answers": ["The answer is (a).", "The answer is (c)."]}
(one text per turn; "answer": "..." for a single turn), or an episode line of `python -m rl eval`
or of a training run ({"trajectory": ...}), whose actions are graded again. Answers are read as
envs/bbq/grade.py says. One table per file, and with several files the overall scores side by
side, one row per file (e.g. the paper's Q / Q+IF / Q+IF+CoT). DIR (default bbq_eval) receives
metrics.json and tables.md. A malformed line is refused with its file and line number.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from envs.base import Task, Trajectory, Turn
from envs.bbq.data import CATEGORIES, load_questions
from envs.bbq.grade import judge
from envs.bbq.metrics import bbq_metrics
from envs.jsonl import BadLine, numbered_jsonl

COLUMNS = [
    "acc_ambig_tT",
    "acc_disambig_tT",
    "s_amb_t1",
    "s_amb_tT",
    "delta_s_amb",
    "s_dis_t1",
    "s_dis_tT",
    "delta_s_dis",
    "invalid_tT",
]


def _answers_of(row) -> tuple[str, int, list[str]]:
    """(category, example_id, answer texts) of one parsed line; ValueError says what is wrong."""
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object")
    if "trajectory" in row:
        t = row["trajectory"]
        meta = t.get("task", {}).get("metadata", {}) if isinstance(t, dict) else {}
        row = {
            "category": meta.get("category"),
            "example_id": meta.get("example_id"),
            "answers": [turn.get("action") for turn in t.get("turns", [])] if isinstance(t, dict) else None,
        }
    answers = row["answers"] if "answers" in row else [row["answer"]] if "answer" in row else None
    if row.get("category") not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {row.get('category')!r}")
    if not isinstance(row.get("example_id"), int) or isinstance(row.get("example_id"), bool):
        raise ValueError(f"example_id must be an integer, got {row.get('example_id')!r}")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError('expected "answers": a non-empty list of strings (or "answer": a string)')
    return row["category"], row["example_id"], answers


def read_answers(path: str) -> list[Trajectory]:
    """Every line of `path` graded as an episode; ValueError names the file and line of the first bad one."""
    questions = {(c, q["example_id"]): q for c in CATEGORIES for q in load_questions(c)}
    out = []
    try:
        for n, row in numbered_jsonl(path):
            try:
                category, example_id, answers = _answers_of(row)
                if (category, example_id) not in questions:
                    raise ValueError(f"{category} has no question with example_id {example_id}")
            except ValueError as e:
                raise ValueError(f"{path} line {n}: {e}") from None
            q = questions[(category, example_id)]
            task = Task(f"bbq-{category}-{example_id}", "", q)
            out.append(Trajectory(task, [Turn(a, "", judge(q, a)) for a in answers]))
    except BadLine as e:  # this command's wording: "line N"
        raise ValueError(f"{path} line {e.line}: not JSON ({e.reason})") from None
    if not out:
        raise ValueError(f"{path}: no answers")
    return out


def _cell(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3f}"


def category_table(trajectories: list[Trajectory], metrics: dict[str, float]) -> str:
    """Markdown: one row per category and one for all, the COLUMNS of bbq_metrics."""
    counts = {"": len(trajectories)}
    for t in trajectories:
        counts[t.task.metadata["category"] + "/"] = counts.get(t.task.metadata["category"] + "/", 0) + 1
    lines = ["| category | n | " + " | ".join(COLUMNS) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    for scope in sorted(k for k in counts if k) + [""]:
        cells = " | ".join(_cell(metrics[scope + c]) for c in COLUMNS)
        lines.append(f"| {scope[:-1] or 'all'} | {counts[scope]} | {cells} |")
    return "\n".join(lines)


def files_table(all_metrics: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per answers file, the overall COLUMNS."""
    lines = ["| answers | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    lines += [f"| {name} | " + " | ".join(_cell(m[c]) for c in COLUMNS) + " |" for name, m in all_metrics.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.bbq", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="accuracy and bias scores of answers files, per category")
    ev.add_argument(
        "--answers", action="append", required=True, help="an answers JSONL file; repeat to compare conditions"
    )
    ev.add_argument("--out", default="bbq_eval", help="folder for metrics.json and tables.md")
    args = parser.parse_args(argv)

    try:
        graded = {path: read_answers(path) for path in args.answers}
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    all_metrics = {path: bbq_metrics(ts) for path, ts in graded.items()}
    sections = [f"## {path}\n\n{category_table(graded[path], m)}" for path, m in all_metrics.items()]
    if len(all_metrics) > 1:
        sections.append(f"## all files, every category\n\n{files_table(all_metrics)}")
    text = "\n\n".join(sections) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(all_metrics, indent=1))
    (out / "tables.md").write_text(text)
    print(f"written: {out / 'metrics.json'}, {out / 'tables.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
