"""The CUDA paths: HF engine and learner on the GPU, fp32 and bf16 autocast. Skipped where there is no GPU."""

import pytest
import torch

from envs.base import Task
from envs.lookup import LookupEnv, LookupParams
from rewards.base import Reward
from rl.batch import Batch
from rl.config import AlgoConfig, LearnerConfig, RolloutConfig
from rl.learn.learner import Learner
from rl.model import load_model
from rl.rollout.chat import TurnFormatter
from rl.rollout.engine import HFEngine
from rl.rollout.loop import rollout
from rl.tensors import pad

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def gpu_batch(tiny_model_dir, tiny):
    _, tok = tiny
    engine = HFEngine(load_model(tiny_model_dir, torch.device("cuda")).eval(), tok, "cuda")
    params = LookupParams(max_turns=3)
    items = [(Task(f"t{i}", "what is kalu" + " red" * i, {"answer": "blue"}), i, i) for i in range(8)]
    episodes = rollout(
        engine, TurnFormatter(tok), lambda: LookupEnv(params), items, RolloutConfig(max_turn_tokens=6)
    ).episodes
    # Each episode alone in its group, scored +-1: with algo.lone_group_score,
    # GRPO gives it that score as its advantage.
    for i, ep in enumerate(episodes):
        ep.reward = Reward([0.0] * len(ep.trajectory.turns), 1.0 if i % 2 else -1.0)
    advantages = [
        torch.tensor(ep.loss_mask, dtype=torch.float32) * (1 if i % 2 else -1) for i, ep in enumerate(episodes)
    ]
    return episodes, advantages


def updated(learner, episodes, advantages) -> dict[str, float]:
    """learner.update on a fresh batch of the episodes, whose credit must be the fixture's advantages."""
    batch = Batch.from_episodes(episodes)
    metrics = learner.update(batch)
    assert torch.equal(batch.advantages, pad(advantages, 0, torch.float32))
    return metrics


def test_fp32_learner_on_gpu_matches_gpu_engine(tiny_model_dir, gpu_batch):
    episodes, advantages = gpu_batch
    learner = Learner(
        tiny_model_dir, LearnerConfig(device="cuda", bf16=False), AlgoConfig(lone_group_score=True), temperature=1.0
    )
    metrics = updated(learner, episodes, advantages)
    assert learner.device.type == "cuda" and next(learner.model.parameters()).is_cuda
    assert metrics["mismatch_max_abs"] < 1e-3, metrics


def test_bf16_autocast_update_on_gpu(tiny_model_dir, gpu_batch):
    episodes, advantages = gpu_batch
    learner = Learner(
        tiny_model_dir,
        LearnerConfig(device="cuda", bf16=True, lr=1e-3),
        AlgoConfig(kl_coef=0.05, lone_group_score=True),
        temperature=1.0,
    )
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    metrics = updated(learner, episodes, advantages)
    assert next(learner.model.parameters()).dtype == torch.float32  # master weights stay fp32
    assert 0 < metrics["mismatch_max_abs"] < 0.2, metrics  # bf16 forward: close to, not equal to, the fp32 sampler
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert any(not torch.equal(p, before[n]) for n, p in learner.model.named_parameters())


def test_lookup_learns_on_gpu(tmp_path):
    from tests.test_trainer import metrics, train

    train(tmp_path, "steps=60", "learner.lr=3e-3", "save_every=0", "eval_every=0", "learner.device=cuda")
    rows = [m for m in metrics(tmp_path) if "reward/mean" in m]
    first = sum(m["reward/mean"] for m in rows[:10]) / 10
    last = sum(m["reward/mean"] for m in rows[-10:]) / 10
    assert last > 0.45 and last > first + 0.3, (first, last)


def test_sharded_bf16_step_on_gpu(tiny_model_dir, gpu_batch):
    """FSDP2 ranks over NCCL (one GPU each; as many as there are, up to 2), bf16 compute, float32 master weights."""
    from rl.learn.sharding import ShardedLearner
    from tests import ray_cluster

    episodes, advantages = gpu_batch
    world = min(2, torch.cuda.device_count())
    temp_dir = ray_cluster.start(num_cpus=2)
    try:
        cfg = LearnerConfig(lr=1e-3, bf16=True, world_size=world, gpus_per_rank=1.0, micro_batch_size=3)
        learner = ShardedLearner(tiny_model_dir, cfg, AlgoConfig(kl_coef=0.05, lone_group_score=True), temperature=1.0)
        try:
            before = {k: v.copy() for bucket in learner.weight_buckets(64) for k, v in ray_get(bucket).items()}
            metrics = updated(learner, episodes, advantages)
            after = {k: v for bucket in learner.weight_buckets(64) for k, v in ray_get(bucket).items()}
        finally:
            learner.close()
    finally:
        ray_cluster.stop(temp_dir)
    assert learner.device.type == "cuda"
    assert all(
        v.dtype.name == "float32" for v in after.values()
    )  # master weights (and what the engines get) stay float32
    assert 0 < metrics["mismatch_max_abs"] < 0.2, metrics  # bf16 forward: close to, not equal to, the fp32 sampler
    assert metrics["grad_norm"] > 0 and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert any((after[k] != before[k]).any() for k in before)


def ray_get(ref):
    import ray

    return ray.get(ref)
