"""A lookup env that sleeps in every step (time to kill a worker mid-rollout), or hangs for one task."""

import time
from dataclasses import dataclass

from envs import lookup
from envs.registry import EnvSpec


@dataclass
class SlowParams(lookup.LookupParams):
    step_seconds: float = 0.05  # sleep in every env.step
    hang_task: str = ""  # env.step of this task sleeps for an hour


class SlowEnv(lookup.LookupEnv):
    def __init__(self, params: SlowParams):
        super().__init__(params)
        self.params = params

    def reset(self, task):
        self.task_id = task.id
        return super().reset(task)

    def step(self, action):
        time.sleep(3600 if self.task_id == self.params.hang_task else self.params.step_seconds)
        return super().step(action)


ENV_SPEC = EnvSpec(SlowParams, SlowEnv, lookup.load_tasks, lookup.sample_text)
