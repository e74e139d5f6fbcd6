"""Rollout workers on a real local Ray cluster (2 CPU workers) and in process: same episodes,
dead workers replaced, weight syncs verified, env hangs cut off, one-step-off async training."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch

from rl.config import load_config
from rl.rollout.workers import Later
from rl.run.trainer import Trainer
from tests import ray_cluster as ray_cluster_of_our_own
from tests.test_trainer import LOOKUP, metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_cluster():
    temp_dir = ray_cluster_of_our_own.start(num_cpus=2)
    yield temp_dir
    ray_cluster_of_our_own.stop(temp_dir)


def test_two_clusters_side_by_side_share_nothing(ray_cluster):
    # A second cluster, in another process, while ours runs: each has its own GCS, session and namespace.
    other = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ray_cluster.py")], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert other.returncode == 0, other.stderr[-2000:]
    theirs, ours = json.loads(other.stdout.strip().splitlines()[-1]), ray_cluster_of_our_own.describe()
    assert theirs["gcs"] != ours["gcs"] and theirs["namespace"] != ours["namespace"]
    assert theirs["task_namespace"] == theirs["namespace"]  # its tasks ran in its own cluster
    assert theirs["session_dir"].startswith("/tmp/ray-") and ours["session_dir"].startswith(ray_cluster + "/")
    assert not theirs["session_dir"].startswith(ray_cluster + "/")
    assert ray.get(ray.remote(lambda: 1 + 1).remote()) == 2  # ours is unharmed by the other's start and stop


def make_trainer(run_dir, *overrides):
    return Trainer(load_config(LOOKUP, [f"run_dir={run_dir}", "save_every=0", "eval_every=0", *overrides]))


def run(trainer):
    try:
        return trainer.train(progress=False)
    finally:
        trainer.close()


def test_ray_and_in_process_give_the_same_episodes_and_update(tmp_path, ray_cluster):
    runs = {}
    for mode in ("local", "ray"):
        trainer = make_trainer(tmp_path / mode, "steps=2", "learner.lr=3e-3", f"workers.ray={mode == 'ray'}")
        run(trainer)
        runs[mode] = trainer
    for step in (1, 2):
        local, remote = [
            [
                json.loads(line)
                for line in (tmp_path / mode / "episodes" / f"step_{step:06d}.jsonl").read_text().splitlines()
            ]
            for mode in ("local", "ray")
        ]
        assert [e["token_ids"] for e in local] == [e["token_ids"] for e in remote]
        assert [e["reward"] for e in local] == [e["reward"] for e in remote]
        for a, b in zip(local, remote):
            assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-5)
    m_local, m_ray = metrics(tmp_path / "local"), metrics(tmp_path / "ray")
    assert m_local[0]["learner/loss"] == pytest.approx(m_ray[0]["learner/loss"], rel=1e-5, abs=1e-7)
    for name, p in runs["local"].learner.model.named_parameters():
        assert torch.allclose(p, dict(runs["ray"].learner.model.named_parameters())[name], atol=1e-6), name
    assert all(m["sync/probe_max_abs"] < 1e-4 for m in m_ray if "reward/mean" in m)


def test_a_worker_killed_mid_rollout_is_replaced(tmp_path, ray_cluster):
    # The first env.step of either worker kills that worker's process, once: its 32 episodes are under way.
    marker = tmp_path / "died"
    trainer = make_trainer(
        tmp_path,
        "steps=1",
        "workers.ray=true",
        "env.name=tests.slow_env",
        f"env.params={{step_seconds: 0, die_marker: {marker}}}",
    )
    run(trainer)
    assert marker.exists()
    (m,) = [m for m in metrics(tmp_path) if "reward/mean" in m]
    assert m["workers/restarts"] == 1
    assert m["episodes/count"] == 64 and m["episodes/failed"] == 0
    lines = (tmp_path / "episodes" / "step_000001.jsonl").read_text().splitlines()
    assert len(lines) == 64


def test_probe_check_fails_the_step_when_a_sync_is_skipped(tmp_path):
    # seed 2: the first batch holds a rewarded episode, so the update changes the weights the engine must follow
    ok = make_trainer(tmp_path / "ok", "steps=1", "learner.lr=3e-3", "seed=2")
    run(ok)
    assert (
        metrics(tmp_path / "ok")[0]["sync/probe_max_abs"] < 1e-4
        and metrics(tmp_path / "ok")[0]["learner/grad_norm"] > 0
    )
    skipped = make_trainer(tmp_path / "skipped", "steps=1", "learner.lr=3e-3", "seed=2")
    skipped.pool.sync = lambda weight_buckets, version: Later(lambda: None)  # the weights never reach the engine
    with pytest.raises(RuntimeError, match="weight sync check failed"):
        run(skipped)


def test_a_hanging_env_step_fails_only_its_episodes(tmp_path):
    trainer = make_trainer(
        tmp_path,
        "steps=1",
        "env.name=tests.slow_env",
        "env.params={step_seconds: 0, hang_task: lookup-titi}",
        "rollout.env_timeout_s=0.5",
    )
    run(trainer)
    (m,) = [m for m in metrics(tmp_path) if "reward/mean" in m]
    assert m["episodes/failed"] == 8 and m["episodes/count"] == 64
    failed = [json.loads(line) for line in (tmp_path / "episodes" / "step_000001.jsonl").read_text().splitlines()]
    failed = [e for e in failed if e["finish"] == "error"]
    assert all("no answer within 0.5s" in e["error"] for e in failed)


def test_async_one_step_off_reaches_the_sync_reward_floor(tmp_path, ray_cluster):
    args = ["steps=60", "learner.lr=3e-3"]
    run(make_trainer(tmp_path / "async", *args, "workers.ray=true", "workers.max_staleness=1", "algo.tis_cap=2.0"))
    rows = [m for m in metrics(tmp_path / "async") if "reward/mean" in m]
    assert all(m["staleness/max"] == 1 for m in rows[1:]) and rows[0]["staleness/max"] == 0
    assert all(0 < m["learner/tis_weight"] <= 2.0 for m in rows)
    first = sum(m["reward/mean"] for m in rows[:10]) / 10
    last = sum(m["reward/mean"] for m in rows[-10:]) / 10
    assert last > 0.45 and last > first + 0.3, (first, last)  # the floor test_grpo_learns_the_lookup_task sets


def test_async_resume_is_exact(tmp_path):
    """A crash after a checkpoint: the rollouts in flight were saved with it, so nothing changes."""
    common = ["learner.lr=3e-3", "workers.max_staleness=1", "algo.tis_cap=2.0", "save_every=3"]

    def comparable(run_dir):
        return [
            {k: v for k, v in m.items() if not k.startswith(("time/", "throughput/", "placement"))}
            for m in metrics(run_dir)
        ]

    run(make_trainer(tmp_path / "straight", "steps=6", *common))
    run(make_trainer(tmp_path / "crashed", "steps=6", *common))
    shutil.rmtree(tmp_path / "crashed" / "checkpoints" / "step_000006")  # as if it died after step 3's checkpoint
    resumed = make_trainer(tmp_path / "crashed", "steps=6", *common, f"resume={tmp_path / 'crashed'}")
    assert resumed.step == 3 and [p.step for p in resumed.pending] == [4]
    run(resumed)
    assert comparable(tmp_path / "straight") == comparable(tmp_path / "crashed")
