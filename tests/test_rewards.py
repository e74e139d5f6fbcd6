import pytest

from envs.base import Task, Trajectory, Turn
from rewards import build_reward


def traj(*turns):
    return Trajectory(Task("t", "p"), [Turn("a", "o", info) for info in turns])


def test_weighted_combination_by_hand():
    fn = build_reward(
        [
            {"name": "outcome", "weight": 2.0},
            {"name": "turn_score", "weight": 0.5},
            {"name": "format", "weight": 1.0, "params": {"penalty": 0.25}},
        ]
    )
    r = fn(traj({"score": 0.0, "invalid": True}, {"score": 0.5}, {"score": 1.0}))
    assert r.process == [0.5 * 0.0 - 0.25, 0.5 * 0.5, 0.5 * 1.0]
    assert r.outcome == 2.0 * 1.0
    assert r.total == pytest.approx(2.0 + 0.5 * 1.5 - 0.25)
    assert r.components == {"outcome": 2.0, "turn_score": 0.75, "format": -0.25}


def test_binary_outcome():
    fn = build_reward([{"name": "outcome", "params": {"binary": True, "threshold": 0.9}}])
    assert fn(traj({"score": 0.8})).outcome == 0.0
    assert fn(traj({"score": 0.95})).outcome == 1.0


def test_unknown_reward_and_parameter_are_named():
    with pytest.raises(ValueError, match="unknown reward 'outcom'.*did you mean 'outcome'"):
        build_reward([{"name": "outcom"}])
    with pytest.raises(ValueError, match="no parameter 'penalti'.*did you mean 'penalty'"):
        build_reward([{"name": "format", "params": {"penalti": 1}}])
