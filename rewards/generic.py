"""Rewards that work for any env following the `info` convention of `envs.base`."""

from __future__ import annotations

from envs.base import Trajectory
from rewards.base import Reward, register_reward


def _scores(trajectory: Trajectory) -> list[float]:
    return [float(t.info.get("score", 0.0)) for t in trajectory.turns]


@register_reward("outcome")
def outcome(binary: bool = False, threshold: float = 1.0):
    """Outcome reward: the last turn's score (or 1/0 for score >= threshold when binary)."""

    def fn(trajectory: Trajectory) -> Reward:
        scores = _scores(trajectory)
        final = scores[-1] if scores else 0.0
        if binary:
            final = float(final >= threshold)
        return Reward([0.0] * len(scores), final)

    return fn


@register_reward("turn_score")
def turn_score():
    """Process reward: each turn earns its own score (e.g. fraction of tests passed at that turn)."""

    def fn(trajectory: Trajectory) -> Reward:
        return Reward(_scores(trajectory), 0.0)

    return fn


@register_reward("format")
def format_penalty(penalty: float = 1.0):
    """Process reward: -penalty for each turn the env flagged as malformed (`info["invalid"]`)."""

    def fn(trajectory: Trajectory) -> Reward:
        return Reward([-penalty if t.info.get("invalid") else 0.0 for t in trajectory.turns], 0.0)

    return fn
