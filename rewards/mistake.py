"""Rewards and metrics for mistake finding (envs/mistake): name the first wrong step of a trace.

    reward: [{name: mistake_location}]                     # 1 for the right step (or a right "none")
    reward: [{name: mistake_location, params: {near: 0.5, invalid: -0.5}}]

`location_accuracy` reports, per task, how often the agent's last answer is the gold step:
    python -m rewards mistakes runs/mistake/episodes/
"""

from __future__ import annotations

from collections import defaultdict

from envs.base import Trajectory
from rewards.base import Reward, register_reward


def last_answer(trajectory: Trajectory) -> dict:
    """The info of the agent's last turn (it holds predicted, gold, task, invalid); {} without turns."""
    return trajectory.turns[-1].info if trajectory.turns else {}


@register_reward("mistake_location")
def mistake_location(near: float = 0.0, invalid: float = 0.0):
    """Outcome: 1 for the gold step (or "none" when there is no mistake); `near` for a step one off;
    `invalid` (e.g. -0.5) for an answer the env could not read. Only the last answer counts."""

    def fn(trajectory: Trajectory) -> Reward:
        info = last_answer(trajectory)
        predicted, gold = info.get("predicted"), info.get("gold")
        if info.get("invalid", True):
            value = invalid
        elif predicted == gold:
            value = 1.0
        elif predicted is not None and gold is not None and abs(predicted - gold) == 1:
            value = near
        else:
            value = 0.0
        return Reward(
            [0.0] * len(trajectory.turns), value, {"exact": float(not info.get("invalid", True) and predicted == gold)}
        )

    return fn


def location_accuracy(trajectories: list[Trajectory]) -> dict[str, dict[str, float]]:
    """Per task (and "all"): episodes, accuracy of the last answer, accuracy on traces with and without a mistake."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for t in trajectories:
        info = last_answer(t)
        if "gold" in info:
            groups[info["task"]].append(info)
            groups["all"].append(info)

    def rate(infos):
        return (
            sum(not i["invalid"] and i["predicted"] == i["gold"] for i in infos) / len(infos) if infos else float("nan")
        )

    return {
        task: {
            "n": len(infos),
            "accuracy": rate(infos),
            "accuracy_with_mistake": rate([i for i in infos if i["gold"] is not None]),
            "accuracy_no_mistake": rate([i for i in infos if i["gold"] is None]),
        }
        for task, infos in sorted(groups.items())
    }
