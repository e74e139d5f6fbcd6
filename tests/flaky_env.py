"""A lookup env that raises inside one task's episodes: the run must go on without them."""

from dataclasses import dataclass

from envs import lookup
from envs.registry import EnvSpec


@dataclass
class FlakyParams(lookup.LookupParams):
    broken_task: str = "lookup-titi"  # episodes of this task raise in env.step


class FlakyEnv(lookup.LookupEnv):
    def __init__(self, params: FlakyParams):
        super().__init__(params)
        self.broken_task = params.broken_task

    def reset(self, task):
        self.task_id = task.id
        return super().reset(task)

    def step(self, action):
        if self.task_id == self.broken_task:
            raise RuntimeError("the environment broke")
        return super().step(action)


ENV_SPEC = EnvSpec(FlakyParams, FlakyEnv, lookup.load_tasks, lookup.sample_text)
