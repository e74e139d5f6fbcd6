"""The lookup task: the spine's small learnable problem.

A seeded table maps made-up keys to values. The agent is asked for a key's value
and answers with a word (optionally followed by "."); after a wrong answer the
env says so and the agent tries again, up to `max_turns` tries. The prompt ends
with the key, and with a tokenizer trained on this text every key and value is
one token, so with one-token actions a tiny random model starts near 1/vocab and
GRPO teaches it the table in about a hundred steps on a CPU (configs/lookup.yaml):
the task for tests and the quick demo.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from envs.base import StepResult, Task
from envs.registry import EnvSpec

VALUES = ["red", "blue", "green", "gold", "pink", "gray", "teal", "plum"]
_SYLLABLES = ["ka", "mo", "ri", "ze", "lu", "pa", "ti", "ne", "so", "vi", "du", "fe"]
RETRY = " no , try again :"


@dataclass
class LookupParams:
    #: distinct keys, one task each
    num_keys: int = 8
    #: distinct values a key may map to (at most len(VALUES))
    num_values: int = 4
    #: tries per episode
    max_turns: int = 2
    #: seed of the key -> value table
    seed: int = 0


def make_table(p: LookupParams) -> dict[str, str]:
    if not 1 <= p.num_values <= len(VALUES):
        raise ValueError(f"lookup: num_values must be in 1..{len(VALUES)}, got {p.num_values}")
    rng = random.Random(p.seed)
    keys: list[str] = []
    while len(keys) < p.num_keys:
        key = rng.choice(_SYLLABLES) + rng.choice(_SYLLABLES)
        if key not in keys:
            keys.append(key)
    return {k: rng.choice(VALUES[: p.num_values]) for k in keys}


class LookupEnv:
    stop_strings = ["."]

    def __init__(self, params: LookupParams):
        self.max_turns = params.max_turns
        self.turn = 0
        self.answer = ""

    def reset(self, task: Task) -> str:
        self.turn = 0
        self.answer = task.metadata["answer"]
        return task.prompt

    def step(self, action: str) -> StepResult:
        self.turn += 1
        word = action.split(".")[0].strip()
        info = {"score": float(word == self.answer), "invalid": not word}
        if word == self.answer or self.turn >= self.max_turns:
            return StepResult("", True, info)
        return StepResult(RETRY, False, info)


def load_tasks(p: LookupParams, split: str) -> list[Task]:
    # The table is the whole world: eval asks the same keys (it measures what was learned).
    return [Task(f"lookup-{k}", f"what is {k}", {"answer": v}) for k, v in make_table(p).items()]


def sample_text(p: LookupParams) -> list[str]:
    table = make_table(p)
    return [f"what is {k} {v} .{RETRY} {w} ." for k in table for v in VALUES for w in VALUES]


ENV_SPEC = EnvSpec(LookupParams, LookupEnv, load_tasks, sample_text)
