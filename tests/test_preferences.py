"""Preference fitting: the logistic fit by hand, the world's optimal advantages, and Knox et al.'s distinction."""

import json
import math

import numpy as np
import pytest

from envs.base import Task, Trajectory, Turn
from rewards import build_reward
from rewards import preferences as P


def test_logistic_fit_by_hand():
    # x = +1: label 1 three times in four -> P = 0.75 -> w = logit(0.75) = ln 3 (and symmetrically for x = -1)
    x = np.array([[1.0]] * 4 + [[-1.0]] * 4)
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1], float)
    assert P.fit_logistic(x, labels, l2=0.0)[0] == pytest.approx(math.log(3))


def test_optimal_advantage_is_zero_for_the_best_action_and_telescopes():
    mdp = P.GridMDP(seed=0)
    w = np.array(mdp.true_w)
    adv = P.advantages(mdp, w)
    assert np.allclose(adv.max(1), 0.0) and (adv <= 1e-12).all()
    # deterministic transitions: sum_t g^t A*(s_t, a_t) = R(segment) + g^k V*(s_k) - V*(s_0)
    seg = P.sample_segments(mdp, 50, 3, np.random.default_rng(0))
    _, v = P.optimal_values(mdp, w)
    direct = sum(mdp.gamma**t * adv[seg.states[:, t], seg.actions[:, t]] for t in range(3))
    telescoped = P.discounted_features(mdp, seg) @ w + mdp.gamma**3 * v[seg.states[:, 3]] - v[seg.states[:, 0]]
    assert np.allclose(direct, telescoped)
    # and the policy-feature form used by the regret fit gives the same numbers
    assert np.allclose(P.regret_features(mdp, seg, w) @ w, telescoped)


@pytest.mark.parametrize("seed", [0, 1])
def test_each_fit_recovers_the_advantage_order_best_on_its_own_models_data(seed):
    data = P.demo(n_pairs=1000, seed=seed)["data"]
    assert data["regret"]["regret"]["advantage_tau"] > data["regret"]["partial_return"]["advantage_tau"] + 0.03
    assert (
        data["partial_return"]["partial_return"]["advantage_tau"]
        > data["partial_return"]["regret"]["advantage_tau"] + 0.03
    )
    assert data["regret"]["regret"]["advantage_tau"] > 0.95


def trajectory(scores, invalid):
    return Trajectory(Task("t", "p"), [Turn("a", "o", {"score": s, "invalid": i}) for s, i in zip(scores, invalid)])


def test_fit_from_trajectory_preferences_becomes_a_training_reward(tmp_path):
    # The labeller prefers by 2 * (sum of scores) - 1 * (malformed turns), noiselessly via a large margin.
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(400):
        a, b = (
            [(float(rng.random() < 0.5), bool(rng.random() < 0.3)) for _ in range(int(rng.integers(1, 4)))]
            for _ in "ab"
        )
        value = [sum(2 * s - i for s, i in t) for t in (a, b)]
        if value[0] == value[1]:
            continue
        lines.append(
            {
                "a": trajectory(*zip(*a)).to_dict(),
                "b": {"trajectory": trajectory(*zip(*b)).to_dict()},
                "label": int(value[0] > value[1]),
            }
        )
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(line) + "\n" for line in lines))

    model = P.fit_trajectory_preferences(str(prefs), ["score", "invalid"], l2=1e-2)
    w_score, w_invalid = model["weights"]
    assert w_score > 0 > w_invalid and w_score / -w_invalid == pytest.approx(2.0, rel=0.25)

    path = tmp_path / "model.json"
    path.write_text(json.dumps(model))
    reward = build_reward([{"name": "learned", "params": {"path": str(path)}}])(trajectory([1.0, 0.0], [False, True]))
    assert reward.process == pytest.approx([w_score, w_invalid]) and reward.outcome == 0.0
