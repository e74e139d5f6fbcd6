"""Evaluation on the held-out tasks (greedy, or k samples each with pass@k), with each task's own metrics.

    python -m rl eval configs/tiny_search.yaml --checkpoint runs/tiny_search/sft/model
    python -m rl eval configs/tiny_code.yaml --checkpoint runs/tiny_code/checkpoints/step_000040/model --out eval.json
    python -m rl eval configs/tiny_code.yaml --checkpoint runs/tiny_code/sft/model --samples 8   # sampled, and pass@8

Every env gets reward, score and length statistics, and each env adds the metrics its
`EnvSpec.metrics` computes: search EM, F1, judge accuracy and searches per episode
(envs/search/metrics.py), code the self-correction metrics Acc@t1, Acc@tT, delta,
delta i->c, delta c->i, CL and CS (envs/code/metrics.py), BBQ its bias scores.
The trainer's periodic evaluations log the same metrics (rl/run/scoring.py), under eval/.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rewards import build_reward
from rl.config import Config, stage_config
from rl.model import resolve_device
from rl.rollout.workers import LocalPool
from rl.run.scoring import env_metrics, episode_metrics, eval_items, pass_at_k, report_failures, reward_episodes


def evaluate(
    cfg: Config, checkpoint: str | Path, episodes_out: str | Path | None = None, samples: int = 0
) -> dict[str, float]:
    """Greedy episodes of the model at `checkpoint` on the eval tasks of `cfg`'s env, scored by its rewards.

    With `samples` > 0, that many episodes per task are sampled at `rollout.temperature` instead, and
    `pass@samples` is the share of tasks at least one of them solves (last-turn score 1): RL learns from
    what its samples find, so pass@k above greedy accuracy is the room it has.
    With `episodes_out`, every episode is written there as JSONL (the trainer's episode format).
    """
    if samples < 0:
        raise ValueError(f"samples must be 0 (greedy) or a number of samples per task, got {samples}")
    spec, params = cfg.env.resolve()
    tasks = spec.load_tasks(params, "eval")
    pool = LocalPool(cfg.workers, str(checkpoint), cfg.env, cfg.rollout, str(resolve_device(cfg.learner.device)))
    try:
        episodes = pool.rollout(eval_items(tasks, cfg.seed, max(1, samples)), greedy=not samples).result().episodes
    finally:
        pool.close()
    final = stage_config(cfg, len(cfg.stages) - 1) if cfg.stages else cfg  # a staged run ends with its last stage's
    reward_episodes(episodes, build_reward(final.reward))
    report_failures(episodes, f"evaluation of {checkpoint}")
    if episodes_out:
        Path(episodes_out).write_text("".join(json.dumps(ep.to_dict()) + "\n" for ep in episodes))
    metrics = {**episode_metrics(episodes), **env_metrics(spec, episodes)}
    if samples:
        metrics[f"pass@{samples}"] = pass_at_k(episodes, samples)
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


def main(cfg: Config, checkpoint: str, out: str = "", samples: int = 0) -> dict[str, float]:
    """`python -m rl eval`: writes the metrics to `out` (default: eval.json beside the checkpoint) and the episodes
    beside them."""
    path = Path(out) if out else Path(checkpoint).parent / "eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(cfg, checkpoint, path.with_name(path.stem + "_episodes.jsonl"), samples)
    print(format_table({Path(checkpoint).parent.name or "checkpoint": metrics}))
    path.write_text(json.dumps({"checkpoint": str(checkpoint), "samples": samples, "metrics": metrics}, indent=1))
    print(f"written: {path}")
    return metrics
