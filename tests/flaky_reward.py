"""A reward with a bug that shows on one task only: its episodes must fail and the run go on, the traceback logged."""

from rewards import Reward, register_reward


@register_reward("broken_on_titi")
def broken_on_titi():
    def fn(trajectory):
        if trajectory.task.id == "lookup-titi":
            return {}["no such key"]  # the bug
        return Reward([0.0] * len(trajectory.turns), 0.0)

    return fn
