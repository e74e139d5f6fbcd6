"""Scoring: rewards on finished episodes, and the metrics that training and evaluation report.

Training and evaluation (the trainer's periodic evaluations, `rl eval`, `rl demo`) use the
same functions, so a metric means the same thing wherever it is logged:

    reward_episodes(episodes, reward_fn)  every episode that did not fail gets its `Reward`
    episode_metrics(episodes)             reward, score, turns, length and finish statistics
    env_metrics(spec, episodes)           what the env's `EnvSpec.metrics` computes (EM, Acc@t1, bias scores ...)
    pass_at_k(episodes, k)                share of tasks that one of their k sampled episodes solves
    episode_seed(seed, step, index)       the sampling seed of one episode: a run is reproducible whatever runs it

An env or reward function that raises fails only its episode, which is then left out of the
update; `report_failures` puts its traceback in the run's log with the task it happened on.
"""

from __future__ import annotations

import logging
import traceback

import numpy as np

from envs.base import solved
from envs.registry import EnvSpec
from rewards import RewardFn
from rl.episode import Episode, Item

log = logging.getLogger(__name__)


def episode_seed(seed: int, step: int, index: int) -> int:
    return ((seed * 1_000_003 + step) * 10_007 + index) % (2**62)


def reward_episodes(episodes: list[Episode], reward_fn: RewardFn) -> None:
    for ep in episodes:
        if ep.failed:
            continue
        try:
            ep.reward = reward_fn(ep.trajectory)
        except Exception as e:  # user code: the episode fails, the run goes on, the traceback is kept
            ep.finish, ep.error = "error", f"reward: {type(e).__name__}: {e}"
            ep.traceback = traceback.format_exc().rstrip()


def report_failures(episodes: list[Episode], where: str) -> None:
    """Log each failed episode with its task, its error and the traceback of the user code that raised."""
    for ep in episodes:
        if ep.failed:
            log.warning(
                "%s: episode of task %s failed and is left out: %s\n%s",
                where,
                ep.trajectory.task.id,
                ep.error,
                ep.traceback,
            )


def staleness_metrics(episodes: list[Episode], step: int) -> dict[str, float]:
    """How far behind the update of `step` (which starts from version step - 1) the trained episodes were sampled.

    An episode's staleness counts from its oldest token: staleness/max and /mean over the episodes,
    staleness/episodes_K how many were K versions behind (a histogram per step), staleness/mixed_share the
    share whose tokens came from more than one version (a sync reached them in flight)."""
    sampled = [ep for ep in episodes if not ep.failed and ep.oldest_version is not None]
    ages = [step - 1 - ep.oldest_version for ep in sampled]
    if not ages:
        return {}
    out = {
        "staleness/max": float(max(ages)),
        "staleness/mean": float(np.mean(ages)),
        "staleness/mixed_share": sum(len({v for v in ep.versions if v >= 0}) > 1 for ep in sampled) / len(sampled),
    }
    for age in range(max(ages) + 1):
        out[f"staleness/episodes_{age}"] = float(ages.count(age))
    return out


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    """Reward, score and length statistics over the episodes that did not fail."""
    ok = [ep for ep in episodes if not ep.failed]
    out = {"episodes/count": float(len(episodes)), "episodes/failed": float(len(episodes) - len(ok))}
    if not ok:
        return out
    totals = np.array([ep.reward.total for ep in ok])
    out["reward/mean"] = float(totals.mean())
    out["reward/std"] = float(totals.std())
    for name in sorted({k for ep in ok for k in ep.reward.components}):
        out[f"reward/{name}"] = float(np.mean([ep.reward.components.get(name, 0.0) for ep in ok]))
    out["score/first_turn"] = float(np.mean([ep.trajectory.turns[0].info.get("score", 0.0) for ep in ok]))
    out["score/last_turn"] = float(np.mean([ep.trajectory.turns[-1].info.get("score", 0.0) for ep in ok]))
    out["episodes/turns"] = float(np.mean([len(ep.trajectory.turns) for ep in ok]))
    out["episodes/policy_tokens"] = float(np.mean([sum(ep.loss_mask) for ep in ok]))
    for finish in ("done", "max_turns", "length"):
        out[f"episodes/finish_{finish}"] = float(np.mean([ep.finish == finish for ep in ok]))
    return out


SCORE_HEADLINE = ("reward/mean", "score/first_turn", "score/last_turn")  # what episode_metrics gives every env


def headline(spec: EnvSpec) -> list[str]:
    """The metrics a summary shows first: the env's `headline`, or reward and score for an env without one."""
    return list(spec.headline or SCORE_HEADLINE)


def env_metrics(spec: EnvSpec, episodes: list[Episode]) -> dict[str, float]:
    """The env's own metrics over the episodes that did not fail ({} for envs without any)."""
    ok = [ep.trajectory for ep in episodes if not ep.failed]
    return spec.metrics(ok) if spec.metrics and ok else {}


def pass_at_k(episodes: list[Episode], k: int) -> float:
    """Share of tasks that at least one of their `k` episodes solves (its last turn is solved: envs.base.solved).

    `episodes` holds k consecutive episodes per task, in task order."""
    right = [not ep.failed and solved(ep.trajectory.turns[-1].info) for ep in episodes]
    n_tasks = len(episodes) // k
    return sum(any(right[i * k : (i + 1) * k]) for i in range(n_tasks)) / max(n_tasks, 1)


def eval_items(tasks: list, seed: int, k: int = 1) -> list[tuple]:
    """(task, group, seed) of `k` episodes per held-out task: the same seeds in training's evaluations and in
    `rl eval`."""
    return [Item(task, i, episode_seed(seed, 0, i * k + j)) for i, task in enumerate(tasks) for j in range(k)]
