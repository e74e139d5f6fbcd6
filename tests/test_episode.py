"""rl/episode.py: an episode written as a log line (to_dict) reads back as the same episode (from_dict)."""

import json

from envs.base import Task, Trajectory, Turn
from rewards.base import Reward
from rl.episode import PROMPT_TURN, Episode


def episode() -> Episode:
    task = Task("lookup-3", [{"role": "user", "content": "What is k3?"}], {"answer": "blue"})
    turns = [Turn("red", "Wrong, try again.", {"score": 0.0, "invalid": False}), Turn("blue", "", {"score": 1.0})]
    ep = Episode(Trajectory(task, turns), group=2, seed=17, finish="done")
    ep.append([5, 6, 7], PROMPT_TURN)
    ep.append([8, 9], 0, [-0.5, -1.25])
    ep.append([10], 0)
    ep.append([11], 1, [-0.125])
    ep.reward = Reward([0.0, 0.5], 1.0, {"outcome": 1.0, "turn_score": 0.5})
    return ep


def test_an_episode_reads_back_from_its_dict():
    ep = episode()
    assert Episode.from_dict(ep.to_dict()).to_dict() == ep.to_dict()
    # as a log line, with more keys beside it
    line = json.loads(json.dumps({**ep.to_dict(), "step": 3, "token_advantages": [0.0] * 7}))
    again = Episode.from_dict(line)
    assert again.to_dict() == ep.to_dict() and again.reward.total == 1.5
    assert again.trajectory.turns[1].info["score"] == 1.0


def test_an_episode_without_a_reward_reads_back_without_one():
    ep = episode()
    ep.reward, ep.finish, ep.error = None, "error", "env: ValueError: boom"
    again = Episode.from_dict(ep.to_dict())
    assert again.reward is None and again.failed and again.to_dict() == ep.to_dict()
