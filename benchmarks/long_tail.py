"""The lookup task with a long tail, for benchmarks/async.py: one episode in `long_every` goes on for `long_turns`
turns after its answer (the env says " next :" and ignores what comes), the others end with it; each step may
take `step_ms` (a tool's latency). The answer alone is scored, so the reward learned is the lookup table's;
the tail only takes time.

    env: {name: benchmarks.long_tail, params: {long_every: 10, long_turns: 8}}
"""

import itertools
import time
from dataclasses import dataclass

from envs import lookup
from envs.base import StepResult
from envs.registry import EnvSpec


@dataclass
class LongTailParams(lookup.LookupParams):
    #: one episode in this many (counted as a process makes them) is long
    long_every: int = 10
    #: turns of a long episode
    long_turns: int = 8
    #: milliseconds each step takes (a tool's latency: a sandbox, a retriever), spent asleep
    step_ms: float = 0.0


_made = itertools.count()


class LongTailEnv(lookup.LookupEnv):
    def __init__(self, params: LongTailParams):
        super().__init__(params)
        self.turns = params.long_turns if next(_made) % params.long_every == 0 else 1
        self.step_ms = params.step_ms
        self.score = 0.0

    def step(self, action):
        time.sleep(self.step_ms / 1000)
        if self.turn == 0:
            self.score = float(action.split(".")[0].strip() == self.answer)
        self.turn += 1
        done = self.turn >= self.turns
        return StepResult("" if done else " next :", done, {"score": self.score, "invalid": False})


ENV_SPEC = EnvSpec(LongTailParams, LongTailEnv, lookup.load_tasks, lookup.sample_text)
