"""Rollout workers: throughput with 1 and 2 Ray workers, orchestration overhead, weight-sync speed.

Run from the repository root:

    python benchmarks/workers.py

Tables:
  rollout      episodes/s and generated tokens/s of one rollout batch (lookup task, 8 tasks x 8 episodes,
               2 turns of up to 8 tokens) in process, and on 1 and 2 Ray workers (median of 5 batches).
  overhead     in process: the share of rollout wall time spent outside the engine's steps and env calls
               (tokenizing, bookkeeping, the rollout loop itself). Target: under 10%.
  weight sync  time of one sync (learner weights -> object store -> 2 Ray workers, 64 MB buckets) and
               the rate in GB/s counting the bytes each worker receives, for models from ~0.1M to ~100M
               parameters.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .`
from envs.lookup import LookupParams, load_tasks, sample_text
from rl.config import EnvConfig, RolloutConfig, TinyModelConfig, WorkersConfig
from rl.rollout.workers import LocalPool, RayPool, RolloutWorker
from rl.run.tiny import build_tiny_model
from rl.weights import buckets

hf_logging.disable_progress_bar()
ROLLOUT = RolloutConfig(max_turn_tokens=8, max_total_tokens=64, env_timeout_s=0)
PARAMS = LookupParams(max_turns=2)
TASKS = load_tasks(PARAMS, "train")
ITEMS = [(t, g, 100 * g + j) for g, t in enumerate(TASKS) for j in range(8)]


def build(tmp: str, name: str, layers: int, hidden: int, vocab: int) -> str:
    cfg = TinyModelConfig(
        layers=layers,
        hidden=hidden,
        intermediate=4 * hidden,
        heads=max(1, hidden // 64),
        kv_heads=max(1, hidden // 128),
        vocab_size=vocab,
    )
    return str(build_tiny_model(Path(tmp) / name, sample_text(PARAMS) * 4, cfg, seed=0))


def rollout_rate(pool, repeats: int = 5) -> tuple[float, float]:
    pool.rollout(ITEMS).result()  # warm-up
    times, tokens = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        episodes = pool.rollout(ITEMS).result().episodes
        times.append(time.perf_counter() - start)
        tokens = sum(sum(ep.loss_mask) for ep in episodes)
    t = statistics.median(times)
    return len(ITEMS) / t, tokens / t


def overhead_share(model_dir: str) -> float:
    """The share of an in-process worker's rollout wall time outside the engine's steps and the env calls, as the
    rollout measures itself (the default schedule: the two never overlap)."""
    worker = RolloutWorker(model_dir, EnvConfig("lookup", {"max_turns": 2}), ROLLOUT, WorkersConfig(), "cpu")
    worker.rollout(ITEMS)  # warm-up
    inside = wall = 0.0
    for _ in range(5):
        times = worker.rollout(ITEMS).times
        inside += times.engine_s + times.env_s
        wall += times.worker_s
    return 1 - inside / wall


def main() -> None:
    tmp = tempfile.mkdtemp()
    small = build(tmp, "small", layers=2, hidden=64, vocab=256)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}},
    )

    print(f"{'rollout':<22}{'episodes/s':>12}{'tokens/s':>12}")
    local = LocalPool(WorkersConfig(), small, EnvConfig("lookup", {"max_turns": 2}), ROLLOUT, "cpu")
    eps, tok = rollout_rate(local)
    print(f"{'in process':<22}{eps:>12.1f}{tok:>12.0f}")
    local.close()
    for n in (1, 2):
        pool = RayPool(WorkersConfig(ray=True, num_workers=n), small, EnvConfig("lookup", {"max_turns": 2}), ROLLOUT)
        eps, tok = rollout_rate(pool)
        print(f"{f'ray, {n} worker(s)':<22}{eps:>12.1f}{tok:>12.0f}")
        pool.close()

    share = overhead_share(small)
    print(f"\noverhead outside engine steps and env calls: {100 * share:.1f}% of rollout wall time (target < 10%)")

    print(f"\n{'weight sync':<22}{'params':>10}{'MB':>10}{'seconds':>10}{'GB/s':>8}")
    for name, layers, hidden, vocab in [
        ("tiny", 2, 64, 256),
        ("10M", 4, 320, 4096),
        ("50M", 8, 640, 8192),
        ("100M", 12, 768, 16384),
    ]:
        model_dir = build(tmp, name, layers, hidden, vocab)
        weights = dict(AutoModelForCausalLM.from_pretrained(model_dir).named_parameters())
        pool = RayPool(
            WorkersConfig(ray=True, num_workers=2), model_dir, EnvConfig("lookup", {"max_turns": 2}), ROLLOUT
        )
        pool.sync(buckets(weights, 64.0), 1).result()  # warm-up: workers started, first transfer
        times = []
        for _ in range(3):
            start = time.perf_counter()
            pool.sync(buckets(weights, 64.0), 1).result()
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        n_params = sum(p.numel() for p in weights.values())
        mb = sum(p.numel() * p.element_size() for p in weights.values()) / 2**20
        print(f"{name:<22}{n_params / 1e6:>9.1f}M{mb:>10.1f}{t:>10.3f}{2 * mb / 1024 / t:>8.2f}")
        pool.close()
    ray.shutdown()


if __name__ == "__main__":
    with torch.no_grad():
        main()
