"""Evaluation on the held-out tasks (greedy, or k samples each with pass@k), with each task's own metrics.

    python -m rl eval configs/tiny_search.yaml --checkpoint runs/tiny_search/sft/model
    python -m rl eval configs/tiny_code.yaml --checkpoint runs/tiny_code/checkpoints/step_000040/model --out eval.json
    python -m rl eval configs/tiny_code.yaml --checkpoint runs/tiny_code/sft/model --samples 8   # sampled, and pass@8

Every env gets reward, score and length statistics; search adds EM, F1, judge accuracy
and searches per episode (rewards/search.py), code the self-correction metrics
Acc@t1, Acc@tT, delta, delta i->c, delta c->i, CL and CS (rewards/self_correction.py),
and any env whose `EnvSpec` has `metrics` adds what that function computes.
The trainer's periodic evaluations log the same metrics, under eval/.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from envs.registry import BUILTIN, get_env_spec
from rewards.search import search_metrics
from rewards.self_correction import metrics_from_trajectories

TASK_METRICS = {"envs.search": search_metrics, "envs.code": metrics_from_trajectories}  # by env module


def task_metrics(env_name: str, episodes) -> dict[str, float]:
    """The env's own metrics over the episodes that did not fail ({} for envs without any)."""
    fn = get_env_spec(env_name).metrics or TASK_METRICS.get(BUILTIN.get(env_name, env_name))
    ok = [ep.trajectory for ep in episodes if not ep.failed]
    return fn(ok) if fn and ok else {}


def evaluate(cfg, checkpoint: str | Path, episodes_out: str | Path | None = None, samples: int = 0) -> dict[str, float]:
    """Greedy episodes of the model at `checkpoint` on the eval tasks of `cfg`'s env, scored by its rewards.

    With `samples` > 0, that many episodes per task are sampled at `rollout.temperature` instead, and
    `pass@samples` is the share of tasks at least one of them solves (last-turn score 1): RL learns from
    what its samples find, so pass@k above greedy accuracy is the room it has.
    With `episodes_out`, every episode is written there as JSONL (the trainer's episode format).
    """
    # Imported here: rl.trainer imports this module for its periodic evaluations.
    from rewards import build_reward
    from rl.config import build_params
    from rl.learner import resolve_device
    from rl.trainer import episode_metrics, episode_seed
    from rl.workers import LocalPool

    if samples < 0:
        raise ValueError(f"samples must be 0 (greedy) or a number of samples per task, got {samples}")
    spec = get_env_spec(cfg.env.name)
    tasks = spec.load_tasks(build_params(spec.params, cfg.env.params, "env.params"), "eval")
    pool = LocalPool(cfg.workers, str(checkpoint), cfg.env.name, cfg.env.params, cfg.rollout, str(resolve_device(cfg.learner.device)))
    k = max(1, samples)
    try:
        items = [(task, i, episode_seed(cfg.seed, 0, i * k + j)) for i, task in enumerate(tasks) for j in range(k)]
        episodes = pool.rollout(items, greedy=not samples).result()
    finally:
        pool.close()
    reward_fn = build_reward(cfg.reward)
    for ep in episodes:
        if not ep.failed:
            ep.reward = reward_fn(ep.trajectory)
    if episodes_out:
        Path(episodes_out).write_text("".join(json.dumps(ep.to_dict()) + "\n" for ep in episodes))
    metrics = {**episode_metrics(episodes), **task_metrics(cfg.env.name, episodes)}
    if samples:
        solved = [not ep.failed and ep.trajectory.turns[-1].info.get("score", 0.0) >= 1.0 for ep in episodes]
        metrics[f"pass@{samples}"] = sum(any(solved[i * k:(i + 1) * k]) for i in range(len(tasks))) / len(tasks)
    return metrics


def format_table(columns: dict[str, dict[str, float]], keys: list[str] | None = None) -> str:
    """Metrics side by side, one column per run: `columns` maps a column title to its metrics."""
    keys = keys or sorted({k for m in columns.values() for k in m})
    width = max(len(k) for k in keys) + 2
    lines = ["".ljust(width) + "".join(f"{title:>12}" for title in columns)]
    for k in keys:
        cells = [m.get(k, math.nan) for m in columns.values()]
        lines.append(k.ljust(width) + "".join(f"{v:>12.3f}" for v in cells))
    return "\n".join(lines)


def main(cfg, checkpoint: str, out: str = "", samples: int = 0) -> dict[str, float]:
    """`python -m rl eval`: writes the metrics to `out` (default: eval.json beside the checkpoint) and the episodes beside them."""
    path = Path(out) if out else Path(checkpoint).parent / "eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(cfg, checkpoint, path.with_name(path.stem + "_episodes.jsonl"), samples)
    print(format_table({Path(checkpoint).parent.name or "checkpoint": metrics}))
    path.write_text(json.dumps({"checkpoint": str(checkpoint), "samples": samples, "metrics": metrics}, indent=1))
    print(f"written: {path}")
    return metrics
