"""Synchronous, one-step-off and fully asynchronous training: wall time for the same steps, and the reward reached.

Run from the repository root:

    python benchmarks/async.py                      # 3 seeds of every variant, 40 steps each
    python benchmarks/async.py --seeds 1 --steps 20 # a quick look
    python benchmarks/async.py --set env.params.step_ms=0   # the workload changed for every variant

The workload: configs/lookup.yaml with a 2-layer model of width 256 on a long tail (benchmarks/long_tail.py: one
episode in ten plays eight turns, the others one, and every env step takes 30 ms, a tool's latency), 2 Ray
rollout workers and the learner on this machine, rollout.schedule=overlap in every variant. Variants:
  synchronous      max_staleness=0
  K-step-off       max_staleness=K, partial_rollouts=false: each step's rollouts run whole on one version
  fully async      max_staleness=K, partial_rollouts=true: groups start as the bound admits them, a sync reaches
                   generations in flight, the trainer takes groups as they finish
Every variant off the synchronous one corrects with decoupled PPO (algo.tis_mode=mask, tis_low=0, tis_cap=2).

Columns: median wall seconds of the training loop over the seeds; train reward (mean of the last 10 steps)
and greedy eval reward after the last step, as mean [min, max] over the seeds; mean staleness; the shares of
the time the trainer waited for rollouts and the workers had no episode to play. The last line is the speedup
of the fastest fully asynchronous variant whose mean eval reward lies within the synchronous seeds' [min, max].
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without `pip install -e .`
from transformers.utils import logging as hf_logging  # noqa: E402

from envs.jsonl import read_jsonl  # noqa: E402
from rl import logs  # noqa: E402
from rl.config import load_config  # noqa: E402
from rl.run.trainer import Trainer  # noqa: E402

hf_logging.disable_progress_bar()
WORKLOAD = [
    "env.params={long_every: 10, long_turns: 8, step_ms: 30}",
    "model.tiny={layers: 2, hidden: 256, intermediate: 512, heads: 4, kv_heads: 2, vocab_size: 128,"
    " byte_alphabet: false}",
]
CORRECTION = ["algo.tis_cap=2.0", "algo.tis_mode=mask", "algo.tis_low=0.0"]
VARIANTS = {"synchronous": ["workers.max_staleness=0"]}
for k in (1, 2, 4):
    VARIANTS["one-step-off" if k == 1 else f"{k}-step-off"] = [f"workers.max_staleness={k}", *CORRECTION]
for k in (1, 2, 4):
    VARIANTS[f"fully async K={k}"] = [f"workers.max_staleness={k}", "workers.partial_rollouts=true", *CORRECTION]


def train(run_dir: Path, steps: int, seed: int, overrides: list[str]) -> dict:
    cfg = load_config(
        ROOT / "configs" / "lookup.yaml",
        [
            f"run_dir={run_dir}",
            f"steps={steps}",
            f"seed={seed}",
            "save_every=0",
            "eval_every=0",
            "log_episodes=false",
            "env.name=benchmarks.long_tail",
            "workers.ray=true",
            "workers.num_workers=2",
            "rollout.schedule=overlap",
            *WORKLOAD,
            *overrides,
        ],
    )
    trainer = Trainer(cfg)
    try:
        start = time.perf_counter()
        trainer.train(progress=False)
        wall = time.perf_counter() - start
    finally:
        trainer.close()
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "reward/mean" in r]
    final = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "eval/reward/mean" in r][-1]
    return {
        "wall": wall,
        "reward": statistics.mean(r["reward/mean"] for r in rows[-10:]),
        "eval": final["eval/reward/mean"],
        "staleness": statistics.mean(r.get("staleness/mean", 0.0) for r in rows),
        "trainer_idle": statistics.mean(r["time/trainer_idle_share"] for r in rows),
        "rollout_wait": statistics.mean(r["time/rollout_wait"] for r in rows),
        "update": statistics.mean(r["time/update"] for r in rows),
        "sync": statistics.mean(r["time/sync"] for r in rows),
        "rollout_idle": statistics.mean(r["time/rollout_idle_share"] for r in rows),
    }


def spread(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} [{min(xs):.3f}, {max(xs):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", nargs="*", default=[], help="more key=value overrides for every variant")
    args = parser.parse_args()
    WORKLOAD.extend(args.set)
    logs.quiet_libraries("info")
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            results[name] = [
                train(Path(tmp) / f"{name}-{seed}".replace(" ", "_"), args.steps, seed, VARIANTS[name])
                for seed in range(args.seeds)
            ]
            print(
                f"  {name}: {[round(r['wall'], 1) for r in results[name]]} s, per step: waited for rollouts"
                f" {statistics.mean(r['rollout_wait'] for r in results[name]):.3f} s, update"
                f" {statistics.mean(r['update'] for r in results[name]):.3f} s, sync"
                f" {statistics.mean(r['sync'] for r in results[name]):.3f} s",
                flush=True,
            )
    print(f"\n{args.steps} steps, {args.seeds} seed(s), long-tail lookup, 2 Ray workers + learner")
    print(
        f"{'variant':20} {'wall s':>7} {'train reward':>22} {'eval reward':>22} {'stale':>6} {'trainer idle':>12}"
        f" {'rollout idle':>12}"
    )
    for name, runs in results.items():
        print(
            f"{name:20} {statistics.median(r['wall'] for r in runs):7.1f} {spread([r['reward'] for r in runs]):>22}"
            f" {spread([r['eval'] for r in runs]):>22} {statistics.mean(r['staleness'] for r in runs):6.2f}"
            f" {statistics.mean(r['trainer_idle'] for r in runs):12.2f}"
            f" {statistics.mean(r['rollout_idle'] for r in runs):12.2f}"
        )
    if "synchronous" in results:
        sync = results["synchronous"]
        low, high = min(r["eval"] for r in sync), max(r["eval"] for r in sync)
        base = statistics.median(r["wall"] for r in sync)
        matched = [
            base / statistics.median(r["wall"] for r in runs)
            for name, runs in results.items()
            if name.startswith("fully") and low <= statistics.mean(r["eval"] for r in runs) <= high
        ]
        print(f"speedup fully-async/synchronous: {max(matched, default=0.0):.2f}")


if __name__ == "__main__":
    main()
