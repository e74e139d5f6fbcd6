"""Backtracking (Tyen et al. 2023): given where a trace first goes wrong, resample from that step.

    1. flagged = a mistake finder's 0-based step index (gold label, a reward model, a prompted LLM), or None
    2. None: keep the trace. Otherwise keep steps[:flagged], and draw `n_candidates` new versions of
       step `flagged` with `sample` (the paper: temperature 1, 8 candidates)
    3. take the first candidate that differs from the original step (the paper picks by log-probability,
       which a text-only callable cannot give; with none different, the first candidate)
    4. continue with `greedy` (the paper: temperature 0) until a step says "the answer is", or max_steps

A generator is any callable `prompt_text -> next step text`: an engine wrapped by the caller, or a
small function in tests. The prompt is the question and the steps so far, as `format_trace` writes
them, followed by the next "Thought N:" label.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

from envs.mistake import format_trace

Generate = Callable[[str], str]
_FINAL = re.compile(r"(?<=[Tt]he answer is).*$", re.S)  # the paper's answer extraction


def extract_answer(steps: list[str]) -> str | None:
    """The text after "the answer is" in the last step that has it, stripped of spaces and a final period."""
    for step in reversed(steps):
        m = _FINAL.search(step)
        if m:
            return m.group(0).strip().rstrip(".").strip()
    return None


def next_prompt(question: str, steps: list[str]) -> str:
    return f"{format_trace(question, steps)}Thought {len(steps) + 1}:"


def backtrack(
    question: str,
    steps: list[str],
    flagged: int | None,
    sample: Generate,
    greedy: Generate | None = None,
    n_candidates: int = 8,
    max_steps: int = 40,
) -> list[str]:
    """The corrected trace: `steps` unchanged when nothing is flagged, else resampled from step `flagged`."""
    if flagged is None or flagged >= len(steps):
        return list(steps)
    greedy = greedy or sample
    kept = list(steps[:flagged])
    candidates = [sample(next_prompt(question, kept)).strip() for _ in range(n_candidates)]
    new = next((c for c in candidates if c != steps[flagged].strip()), candidates[0])
    out = kept + [new]
    while extract_answer(out[-1:]) is None and len(out) < max_steps:
        out.append(greedy(next_prompt(question, out)).strip())
    return out


@dataclass
class BacktrackResult:
    """Accuracy of the final answers before and after backtracking, over traces of one task."""

    n: int
    accuracy_before: float
    accuracy_after: float
    gains: int  # wrong before, right after
    losses: int  # right before, wrong after


def evaluate(
    records: list[dict],
    finder: Callable[[dict], int | None],
    sample: Generate,
    greedy: Generate | None = None,
    n_candidates: int = 8,
) -> BacktrackResult:
    """Backtrack each record (data-file dicts) at `finder(record)`; compare answers with the target."""
    before = after = gains = losses = 0
    for r in records:
        old = same_answer(r["answer"], r["target"])
        new_steps = backtrack(r["input"], r["steps"], finder(r), sample, greedy, n_candidates)
        new = same_answer(extract_answer(new_steps), r["target"])
        before, after = before + old, after + new
        gains, losses = gains + (new and not old), losses + (old and not new)
    n = max(len(records), 1)
    return BacktrackResult(len(records), before / n, after / n, gains, losses)


def same_answer(answer: str | None, target: str) -> bool:
    """Whitespace-normalised exact match (the multiple-choice targets are "(A)"-style strings)."""
    return answer is not None and " ".join(answer.split()) == " ".join(target.split())


def gold_finder(record: dict) -> int | None:
    return record["mistake_index"]


def random_finder(seed: int = 0) -> Callable[[dict], int]:
    """The paper's baseline: a uniformly random step of the trace."""
    rng = random.Random(seed)
    return lambda record: rng.randrange(len(record["steps"]))
