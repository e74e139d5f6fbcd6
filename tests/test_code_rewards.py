"""Code rewards and self-correction metrics, on hand-computed cases."""

import math

import pytest

from envs.base import Task, Trajectory, Turn
from envs.code.metrics import edit_ratio, levenshtein, metrics_from_trajectories, self_correction_metrics
from rewards import build_reward
from rewards.code import cocos_return, cocos_turn_rewards, score_turn_rewards, turn_levels


def episode(*turns):
    """turns: (n_passed, n_tests) or (n_passed, n_tests, code)."""
    return Trajectory(
        Task("t", "p"),
        [Turn("a", "o", {"n_passed": t[0], "n_tests": t[1], "code": t[2] if len(t) > 2 else ""}) for t in turns],
    )


def test_levels_fraction_count_binary():
    ep = episode((1, 4), (4, 4), (0, 0))
    assert turn_levels(ep) == [0.25, 1.0, 0.0]
    assert turn_levels(ep, count=True) == [1.0, 4.0, 0.0]
    assert turn_levels(ep, binary=True) == [0.0, 1.0, 0.0]  # a turn with no tests is not "all passed"


def test_cocos_accumulated_reward_by_hand():
    # T = 2, gamma = 0.5: R = 0.5 (r1 - 0) + (r2 - r1) = r2 - 0.5 r1
    assert cocos_return([1.0, 1.0]) == 0.5
    assert cocos_return([0.0, 1.0]) == 1.0
    assert cocos_return([0.25, 0.75]) == 0.625  # 0.5 * 0.25 + 0.5
    # T = 3: 0.25 r1 + 0.5 (r2 - r1) + (r3 - r2) with r = 0.5, 0, 1: 0.125 - 0.25 + 1
    assert cocos_return([0.5, 0.0, 1.0]) == 0.875
    assert cocos_return([0.5, 0.0, 1.0], gamma=1.0) == 1.0  # final reward only
    assert cocos_return([0.5, 0.2, 1.0], gamma=0.0) == 0.8  # progress only: r3 - r2
    assert cocos_turn_rewards([1.0, 1.0]) == [1.0, 0.5]  # R_1 = r1, R_2 = R


def test_score_shaping_by_hand():
    assert score_turn_rewards([0.0, 1.0]) == [0.0, 11.0]  # r2 + 10 (r2 - r1)
    assert score_turn_rewards([1.0, 0.0]) == [11.0, -10.0]
    assert score_turn_rewards([1.0, 1.0], alpha=2.0) == [3.0, 1.0]


@pytest.mark.parametrize("name, totals", [("cocos", [1.5, 1.0, 0.5, 0.0]), ("score_shaping", [12.0, 11.0, 1.0, 0.0])])
def test_a_correct_first_attempt_is_never_worth_less(name, totals):
    # (right, right) > (wrong, right) > (right, wrong) > (wrong, wrong), as episode totals.
    fn = build_reward([{"name": name}])
    got = [fn(episode(a, b)).total for a, b in [((3, 3), (3, 3)), ((0, 3), (3, 3)), ((3, 3), (0, 3)), ((0, 3), (0, 3))]]
    assert got == totals


def test_score_bonus_is_paid_on_the_second_attempt_as_scores_paper_writes_it():
    fn = build_reward([{"name": "score_bonus"}])  # alpha 10, binary levels
    cases = {((3, 3), (3, 3)): [1.0, 1.0], ((0, 3), (3, 3)): [0.0, 11.0], ((3, 3), (0, 3)): [1.0, -10.0]}
    for (a, b), process in cases.items():
        r = fn(episode(a, b))
        assert r.process == process and r.components["score_bonus/bonus"] == process[1] - (b[0] == b[1])
    three = build_reward([{"name": "score_bonus", "params": {"alpha": 2.0, "binary": False}}])
    r = three(episode((1, 4), (3, 4), (2, 4)))  # levels 0.25, 0.75, 0.5: each later turn its own bonus
    assert r.process == [0.25, 0.75 + 2 * 0.5, 0.5 - 2 * 0.25] and r.components["score_bonus/bonus"] == 0.5


def test_registered_rewards_and_their_components():
    ep = episode((1, 4), (3, 4))
    r = build_reward([{"name": "cocos"}])(ep)
    assert r.process == [0.25, 0.625] and r.components["cocos/R"] == 0.625  # R = 0.75 - 0.5 * 0.25
    r = build_reward([{"name": "code_pass", "params": {"count": True}}])(ep)
    assert r.process == [1.0, 3.0] and r.total == 4.0
    assert build_reward([{"name": "code_binary"}])(ep).total == 0.0
    r = build_reward([{"name": "score_shaping", "params": {"alpha": 1.0, "binary": False}}])(ep)
    assert r.process == [0.5, 1.25] and r.components["score_shaping/bonus"] == 0.5


def test_self_correction_metrics_by_hand():
    # Four problems, 2 tests each: (right, right), (wrong, right), (right, wrong), (wrong, wrong).
    m = self_correction_metrics(
        [2, 1, 2, 0], [2, 2, 1, 0], [2, 2, 2, 2], ["a", "ab", "abc", "x"], ["a", "b", "abd", "x"]
    )
    assert m["acc_t1"] == 0.5 and m["acc_tT"] == 0.5 and m["delta"] == 0.0
    assert m["delta_i_to_c"] == 0.25 and m["delta_c_to_i"] == 0.25
    assert m["confidence"] == 0.5 and m["critique"] == 0.5
    assert m["rss"] == (0.5 - 0.25) / (2 * 0.5 * 0.5)  # 0.5: no net change
    assert m["better"] == 0.25 and m["worse"] == 0.25
    assert m["edit_distance"] == (0 + 1 / 3 + 1 / 6 + 0) / 4  # ab->b: 1 edit / 3 chars; abc->abd: 1 / 6
    assert m["identical"] == 0.5
    # Acc2 = Acc1 * CL + (1 - Acc1) * CS, and Delta = i->c - c->i, on a lopsided case.
    m = self_correction_metrics([1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1] * 5)
    assert m["acc_tT"] == pytest.approx(m["acc_t1"] * m["confidence"] + (1 - m["acc_t1"]) * m["critique"])
    assert m["delta"] == pytest.approx(m["delta_i_to_c"] - m["delta_c_to_i"])
    assert math.isnan(self_correction_metrics([1], [1], [1])["rss"])  # acc_t1 = 1: undefined


def test_metrics_from_logged_episodes():
    eps = [episode((0, 2, "def f(): return 0"), (2, 2, "def f(): return 1")), episode((2, 2, "x"), (2, 2, "x"))]
    m = metrics_from_trajectories(eps)
    assert m["acc_t1"] == 0.5 and m["acc_tT"] == 1.0 and m["delta_i_to_c"] == 0.5 and m["identical"] == 0.5
    # Per-turn accuracy: an episode that stopped early (right at once) counts with its last attempt at later turns.
    eps = [episode((0, 2), (1, 2), (2, 2)), episode((2, 2)), episode((0, 2), (2, 2)), episode((1, 2), (0, 2), (0, 2))]
    m = metrics_from_trajectories(eps)
    assert [m[f"acc_by_turn/{k}"] for k in (1, 2, 3)] == [0.25, 0.5, 0.75] and "acc_by_turn/4" not in m
    assert m["acc_by_turn/1"] == m["acc_t1"] and m["acc_by_turn/3"] == m["acc_tT"]


def test_levenshtein_by_hand():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0
    assert edit_ratio("", "") == 0.0 and edit_ratio("ab", "cd") == 0.5
