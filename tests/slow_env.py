"""A lookup env that sleeps in every step (a fixed time, or at random), hangs for one task or at random, or kills
its own process once."""

import os
import random
import signal
import time
from dataclasses import dataclass

from envs import lookup
from envs.registry import EnvSpec


@dataclass
class SlowParams(lookup.LookupParams):
    step_seconds: float = 0.05  # sleep in every env.step
    jitter_seconds: float = 0.0  # and up to this much more, drawn anew in every step
    hang_task: str = ""  # env.step of this task sleeps for an hour
    hang_prob: float = 0.0  # chance that an env.step sleeps for an hour
    hang_seed: int = 0  # seeds the hang draws: each process draws the same sequence
    die_marker: str = ""  # the first env.step that creates this file (of all processes) kills its own process


_draws: dict[int, random.Random] = {}  # one hang RNG per seed, shared by every env of this process


class SlowEnv(lookup.LookupEnv):
    def __init__(self, params: SlowParams):
        super().__init__(params)
        self.params = params
        self.rng = _draws.setdefault(params.hang_seed, random.Random(params.hang_seed))

    def reset(self, task):
        self.task_id = task.id
        return super().reset(task)

    def step(self, action):
        if self.params.die_marker:
            try:
                os.close(os.open(self.params.die_marker, os.O_CREAT | os.O_EXCL))  # only one step anywhere wins
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        hang = self.task_id == self.params.hang_task or (
            self.params.hang_prob > 0 and self.rng.random() < self.params.hang_prob
        )
        time.sleep(3600 if hang else self.params.step_seconds + random.uniform(0, self.params.jitter_seconds))
        return super().step(action)


ENV_SPEC = EnvSpec(SlowParams, SlowEnv, lookup.load_tasks, lookup.sample_text)
