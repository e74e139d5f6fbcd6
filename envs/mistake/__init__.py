"""Mistake finding on BIG-Bench Mistake (Tyen et al. 2023): name the first wrong step of a reasoning trace.

    env: {name: mistake, params: {tasks: word_sorting, max_turns: 1}}
    reward: [{name: mistake_location}]

The agent reads a question and a chain-of-thought trace with numbered steps ("Thought 1:" ...)
and answers `<answer>N</answer>` (the first step with a logical mistake, counted from 1) or
`<answer>none</answer>`. `info["score"]` is 1 for the right step, `info["predicted"]` and
`info["gold"]` are 0-based indices (None for "no mistake"), `info["task"]` names the task,
so rewards/mistake.py can report accuracy per task. `backtrack` holds the paper's
correction: resample the trace from the flagged step with any `generate(prompt) -> step`.

Data: data/*.jsonl copied unchanged from github.com/WHGTyen/BIG-Bench-Mistake (Apache-2.0,
data/LICENSE; provenance and checksums in data/SOURCE.md).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from envs.base import StepResult, Task
from envs.jsonl import read_jsonl
from envs.registry import EnvSpec

DATA_DIR = Path(__file__).parent / "data"
TASKS = ["word_sorting", "tracking_shuffled_objects", "logical_deduction", "multistep_arithmetic", "dyck_languages"]
QUESTION = (
    "Below is a question and a step-by-step answer. Find the first step that contains a logical mistake.\n"
    "Answer <answer>N</answer> with the number of that step, or <answer>none</answer> if every step is right."
)
RETRY = "\nThat is not the first mistake. Look again and answer:"
_ANSWER = re.compile(r"<answer>\s*(?:step\s*)?(\d+|none)\s*</answer>", re.I)


@dataclass
class MistakeParams:
    #: comma-separated task names (see TASKS), or "all"
    tasks: str = "all"
    #: share of each task's traces held out for evaluation
    eval_fraction: float = 0.2
    #: keep only the first N traces of each task and split (0 = all)
    max_problems: int = 0
    #: seed of the train/eval split
    seed: int = 0
    #: tries per episode; after a wrong answer the env says so
    max_turns: int = 1


@lru_cache(maxsize=None)
def load_records(task: str) -> tuple[dict, ...]:
    """The traces of one task, as in the data files: input, steps, answer, target, mistake_index."""
    if task not in TASKS:
        raise ValueError(f"mistake: unknown task {task!r}; tasks are {TASKS}")
    return tuple(read_jsonl(DATA_DIR / f"{task}.jsonl"))


def task_names(p: MistakeParams) -> list[str]:
    return TASKS if p.tasks == "all" else [t.strip() for t in p.tasks.split(",")]


def format_trace(question: str, steps: list[str]) -> str:
    """The question and its steps, numbered from 1 as in the paper's prompts."""
    return f"Question: {question}\n" + "".join(f"Thought {i + 1}: {s}\n" for i, s in enumerate(steps))


def parse_answer(action: str) -> tuple[bool, int | None]:
    """(valid, 0-based index or None for "none") from `<answer>N</answer>` (N counted from 1)."""
    m = _ANSWER.search(action)
    if not m:
        return False, None
    if m.group(1).lower() == "none":
        return True, None
    n = int(m.group(1))
    return n >= 1, n - 1 if n >= 1 else None


def to_task(task: str, i: int, record: dict) -> Task:
    prompt = f"{QUESTION}\n\n{format_trace(record['input'], record['steps'])}"
    meta = {
        "task": task,
        "mistake_index": record["mistake_index"],
        "num_steps": len(record["steps"]),
        "steps": record["steps"],
        "input": record["input"],
        "target": record["target"],
        "answer": record["answer"],
    }
    return Task(f"mistake-{task}-{i}", prompt, meta)


def load_tasks(p: MistakeParams, split: str) -> list[Task]:
    """Each task's traces, shuffled by `seed` and split: the last `eval_fraction` of them is eval."""
    out = []
    for task in task_names(p):
        records = load_records(task)
        order = list(range(len(records)))
        random.Random(f"{p.seed}-{task}").shuffle(order)
        n_eval = round(len(order) * p.eval_fraction)
        chosen = order[len(order) - n_eval :] if split == "eval" else order[: len(order) - n_eval]
        if p.max_problems:
            chosen = chosen[: p.max_problems]
        out += [to_task(task, i, records[i]) for i in chosen]
    return out


class MistakeEnv:
    stop_strings = ["</answer>"]

    def __init__(self, params: MistakeParams):
        self.max_turns = params.max_turns
        self.turn = 0
        self.meta: dict = {}

    def reset(self, task: Task) -> str:
        self.turn, self.meta = 0, task.metadata
        return task.prompt

    def step(self, action: str) -> StepResult:
        self.turn += 1
        valid, predicted = parse_answer(action)
        gold = self.meta["mistake_index"]
        right = valid and predicted == gold
        info = {
            "score": float(right),
            "invalid": not valid,
            "predicted": predicted,
            "gold": gold,
            "task": self.meta["task"],
        }
        if right or self.turn >= self.max_turns:
            return StepResult("", True, info)
        return StepResult(RETRY, False, info)


def sample_text(p: MistakeParams) -> list[str]:
    """Prompts with their right answers, and the retry message: what a tiny tokenizer should know."""
    out = []
    for t in load_tasks(p, "train"):
        gold = t.metadata["mistake_index"]
        out.append(f"{t.prompt}<answer>{'none' if gold is None else gold + 1}</answer>{RETRY}")
    return out


ENV_SPEC = EnvSpec(MistakeParams, MistakeEnv, load_tasks, sample_text)
