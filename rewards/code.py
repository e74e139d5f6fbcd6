"""Rewards for code episodes, read from each turn's test results (`info` of envs/code).

The level of turn t, r_t, is the fraction of tests it passed (`n_passed / n_tests`,
CoCoS's "fine-grained" reward), or the raw count with `count=True` (CoCoS's released
code), or 1/0 for "all passed" (binary, as in SCoRe). A turn that did not run (no
`n_tests` in its info) has level 0. With `level="score"`, cocos and score_shaping read
`info["score"]` instead (any env following envs.base's convention, e.g. bbq's 1/0 for a
right answer), so the same accumulated rewards serve episodes without tests.

Not punishing a correct first attempt. CoCoS's accumulated reward
R = sum_t gamma^(T-t) (r_t - r_{t-1}) (r_0 = 0) equals r_T - (1 - gamma) sum_{t<T} gamma^(T-1-t) r_t:
for T = 2 and gamma = 0.5, R = r_2 - 0.5 r_1. CoCoS can use it because its k samples share
one turn 1, so r_1 cancels in the baseline. This trainer samples whole episodes
independently and gives every token of an episode the episode's total reward, so R as
the total would rank (wrong, right) = 1.0 above (right, right) = 0.5 and teach the first
attempt to be wrong. SCoRe's shaping has the same flaw as a total: r_1 + r_2 + alpha (r_2 - r_1)
weighs r_1 by 1 - alpha = -9. The choice made here: each turn is rewarded with the formula's
value for the episode cut at that turn,
  cocos:  turn t earns R_t = sum_{k<=t} gamma^(t-k) (r_k - r_{k-1})  (R_1 = r_1, R_T = CoCoS's R),
  score:  turn t earns r_t + alpha (r_t - r_{t-1}), with r_0 = 0 as in CoCoS, so turn 1 earns (1 + alpha) r_1,
so that a learner with per-turn credit gives the last turn exactly the paper's signal,
and the episode total (what this trainer uses) is sum_k gamma^(T-k) r_k for cocos and
sum_t r_t + alpha r_T for score: increasing in every turn's level. A correct first
attempt then always helps: (right, right) > (wrong, right) > (right, wrong) > (wrong, wrong).
The paper's R is still logged, as the component "R".
"""

from __future__ import annotations

from envs.base import Trajectory, solved
from rewards.base import Reward, register_reward

LEVELS = ("tests", "score")


def check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def turn_levels(trajectory: Trajectory, count: bool = False, binary: bool = False, level: str = "tests") -> list[float]:
    """r_t for each turn: fraction of tests passed, the raw count, or 1/0 for all passed; with level="score"
    the turn's `info["score"]` (1/0 for solved, envs.base.solved, when binary)."""
    if level == "score":
        if binary:
            return [float(solved(turn.info)) for turn in trajectory.turns]
        return [float(turn.info.get("score", 0.0)) for turn in trajectory.turns]
    levels = []
    for turn in trajectory.turns:
        passed, total = turn.info.get("n_passed", 0), turn.info.get("n_tests", 0)
        if binary:
            levels.append(float(total > 0 and passed == total))
        else:
            levels.append(float(passed) if count else (passed / total if total else 0.0))
    return levels


def cocos_return(levels: list[float], gamma: float = 0.5) -> float:
    """CoCoS's accumulated reward R = sum_t gamma^(T-t) (r_t - r_{t-1}), r_0 = 0 (the paper's, as one number)."""
    T = len(levels)
    return sum(gamma ** (T - t) * (r - prev) for t, (prev, r) in enumerate(zip([0.0] + levels, levels), start=1))


def cocos_turn_rewards(levels: list[float], gamma: float = 0.5) -> list[float]:
    """Turn t earns CoCoS's R of the episode cut at t; they sum to sum_k gamma^(T-k) r_k."""
    return [cocos_return(levels[: t + 1], gamma) for t in range(len(levels))]


def score_turn_rewards(levels: list[float], alpha: float = 10.0) -> list[float]:
    """SCoRe's shaped reward r_t + alpha (r_t - r_{t-1}) per turn, with r_0 = 0; they sum to sum_t r_t + alpha r_T."""
    return [r + alpha * (r - prev) for prev, r in zip([0.0] + levels, levels)]


@register_reward("code_pass")
def code_pass(count: bool = False):
    """Each turn earns its level r_t: the fraction of tests passed (or the raw count with count=True)."""

    def fn(trajectory: Trajectory) -> Reward:
        levels = turn_levels(trajectory, count)
        return Reward(levels, 0.0, {"first": levels[0] if levels else 0.0, "last": levels[-1] if levels else 0.0})

    return fn


@register_reward("code_binary")
def code_binary():
    """Each turn earns 1 if it passed every test, else 0."""

    def fn(trajectory: Trajectory) -> Reward:
        levels = turn_levels(trajectory, binary=True)
        return Reward(levels, 0.0, {"first": levels[0] if levels else 0.0, "last": levels[-1] if levels else 0.0})

    return fn


@register_reward("cocos")
def cocos(gamma: float = 0.5, count: bool = False, level: str = "tests"):
    """CoCoS's accumulated reward, per turn as in the module docstring; the paper's R is the component "R"."""
    check_level(level)

    def fn(trajectory: Trajectory) -> Reward:
        levels = turn_levels(trajectory, count, level=level)
        return Reward(cocos_turn_rewards(levels, gamma), 0.0, {"R": cocos_return(levels, gamma)})

    return fn


@register_reward("score_shaping")
def score_shaping(alpha: float = 10.0, binary: bool = True, level: str = "tests"):
    """SCoRe's stage-II shaping, per turn as in the module docstring (binary levels by default, as in SCoRe)."""
    check_level(level)

    def fn(trajectory: Trajectory) -> Reward:
        levels = turn_levels(trajectory, binary=binary, level=level)
        bonus = sum(alpha * (r - prev) for prev, r in zip(levels, levels[1:]))
        return Reward(score_turn_rewards(levels, alpha), 0.0, {"bonus": bonus})

    return fn


@register_reward("score_bonus")
def score_bonus(alpha: float = 10.0, binary: bool = True, level: str = "tests"):
    """SCoRe's stage-II reward as the paper writes it: the first attempt earns r_1, every later attempt t earns
    r_t + alpha (r_t - r_{t-1}) (two attempts: the bonus on the second only). As an episode total it weighs r_1
    by 1 - alpha (the module docstring); the paper credits each attempt with its own reward (gamma = 0), which
    is per-turn credit without returns to go: algo.advantage=turn with algo.turn_gamma=0."""
    check_level(level)

    def fn(trajectory: Trajectory) -> Reward:
        levels = turn_levels(trajectory, binary=binary, level=level)
        bonuses = [alpha * (r - prev) for prev, r in zip(levels, levels[1:])]
        turns = levels[:1] + [r + b for r, b in zip(levels[1:], bonuses)]
        return Reward(turns, 0.0, {"bonus": sum(bonuses)})

    return fn
