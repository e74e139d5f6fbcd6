"""Fully asynchronous training: a sync reaches generations in flight, the staleness bound holds for every episode,
and a checkpoint keeps the groups in flight (real HF engine, real Ray workers)."""

import copy
import json

import pytest
import torch

from rl.rollout.engine import HFEngine, Request, SamplingParams
from rl.run.scoring import episode_seed
from tests.test_trainer import metrics
from tests.test_workers import make_trainer, ray_cluster, run  # noqa: F401 (ray_cluster: a fixture)


@torch.no_grad()
def teacher_forced(model, prompt: list[int], completion: list[int]) -> list[float]:
    logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion)[:, None])[:, 0].tolist()


def test_hf_engine_a_sync_reaches_a_generation_in_flight(tiny):
    """The request sampled in part by A goes on with B: its tokens record both versions, each token's logprob is
    its version's, and the probe after the sync reads B."""
    model, tok = tiny
    a = copy.deepcopy(model).eval()
    b = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    engine = HFEngine(copy.deepcopy(a), tok)
    prompt = tok("what is kamo")["input_ids"]
    params = SamplingParams(temperature=1.0)
    engine.add("early", Request(prompt, 12, seed=3), params)
    for _ in range(4):
        assert engine.step() == []
    engine.update_weights(dict(b.named_parameters()))
    engine.finish_sync(1)
    engine.add("late", Request(prompt[:-1], 6, seed=4), params)  # joins the batch after the sync
    done = {}
    while len(done) < 2:
        done.update(engine.step())
    early, late = done["early"], done["late"]
    assert early.versions == [0] * 4 + [1] * 8 and set(late.versions) == {1}  # late: up to 6, or an EOS
    under_a, under_b = teacher_forced(a, prompt, early.token_ids), teacher_forced(b, prompt, early.token_ids)
    assert max(abs(x - y) for x, y in zip(early.logprobs[:4], under_a[:4])) < 1e-4
    assert max(abs(x - y) for x, y in zip(early.logprobs[4:], under_b[4:])) < 1e-4
    assert max(abs(x - y) for x, y in zip(late.logprobs, teacher_forced(b, prompt[:-1], late.token_ids))) < 1e-4
    assert max(abs(x - y) for x, y in zip(early.logprobs[4:], under_a[4:])) > 1e-3  # A and B do differ
    probe = engine.probe_logprobs([prompt + early.token_ids])[0]
    assert max(abs(x - y) for x, y in zip(probe, teacher_forced(b, prompt[:1], (prompt + early.token_ids)[1:]))) < 1e-4


def logged_staleness(run_dir) -> dict[int, list[int]]:
    """Per step, each trained episode's staleness from its logged tokens: the update of step s starts from version
    s - 1, and an episode is as stale as its oldest sampled token."""
    out = {}
    for path in sorted((run_dir / "episodes").glob("step_*.jsonl")):
        step = int(path.stem.split("_")[1])
        episodes = [json.loads(line) for line in path.read_text().splitlines()]
        out[step] = [step - 1 - min(v for v, m in zip(ep["versions"], ep["loss_mask"]) if m) for ep in episodes]
    return out


def trained_seeds(run_dir) -> list[int]:
    return [
        json.loads(line)["seed"]
        for path in sorted((run_dir / "episodes").glob("step_*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def expected_seeds(steps: int, tasks_per_step: int, group_size: int) -> list[int]:
    """The seeds of every group a run of `steps` steps plays (group n: the n % N-th group of step n // N + 1)."""
    return [
        episode_seed(0, step, g * group_size + j)
        for step in range(1, steps + 1)
        for g in range(tasks_per_step)
        for j in range(group_size)
    ]


STREAM = [
    "workers.ray=true",
    "workers.partial_rollouts=true",
    "rollout.schedule=overlap",
    "algo.tis_cap=2.0",
    "algo.tis_mode=mask",
]


@pytest.mark.parametrize("K", [1, 2, 4])
def test_no_trained_token_is_more_than_k_versions_old(tmp_path, ray_cluster, K):  # noqa: F811
    """With workers slowed at random, every episode of every step: its oldest token at most K versions behind."""
    run_dir = tmp_path / f"k{K}"
    trainer = make_trainer(
        run_dir,
        "steps=6",
        "learner.lr=3e-3",
        "rollout.tasks_per_step=4",
        "rollout.group_size=4",
        f"workers.max_staleness={K}",
        *STREAM,
        "env.name=tests.slow_env",
        "env.params={step_seconds: 0, jitter_seconds: 0.03}",
    )
    run(trainer)
    staleness = logged_staleness(run_dir)
    assert sorted(staleness) == list(range(1, 7)) and all(len(s) == 16 for s in staleness.values())
    assert max(max(s) for s in staleness.values()) <= K
    rows = [m for m in metrics(run_dir) if "reward/mean" in m]
    assert [m["staleness/max"] for m in rows] == [float(max(s)) for s in staleness.values()]
    assert sorted(trained_seeds(run_dir)) == sorted(expected_seeds(6, 4, 4))  # every group once


def test_a_checkpoint_keeps_the_partial_episodes_in_flight(tmp_path, ray_cluster):  # noqa: F811
    """K=2, N=2 groups of 2: six groups start on version 0. The first two play through and train step 1; the other
    four wait between their turns until that step's sync, so their second turns sample version 1. The checkpoint
    after step 2 holds the ones step 2 did not take. Resumed from it, the run trains every group once, the
    partial ones included, within the bound."""
    gate = tmp_path / "gate"
    gate.mkdir()
    run_dir = tmp_path / "run"
    args = [
        "steps=4",
        "save_every=2",
        "learner.lr=3e-3",
        "rollout.tasks_per_step=2",
        "rollout.group_size=2",
        "workers.num_workers=1",
        "workers.max_staleness=2",
        *STREAM,
        "env.name=tests.gated_env",
        f"env.params={{gate_dir: {gate}, open_first: 4, gated: 8}}",
    ]
    trainer = make_trainer(run_dir, *args)
    try:
        trainer.train_step()  # step 1: the two open groups; the others wait for the release
        assert trainer.step == 1 and trainer.check_sync()["sync/probe_max_abs"] < 1e-4  # step 1's sync has landed
        (gate / "release").touch()  # so their second turns sample version 1
        trainer.log(trainer.step, trainer.train_step())
        trainer.save()  # step 2's checkpoint, the groups still in flight played to their end first
    finally:
        trainer.close()
    state = torch.load(run_dir / "checkpoints" / "step_000002" / "state.pt", weights_only=False)
    admitted, queued = state["stream"]
    partial = [ep for _, _, _, rolled, _ in queued for ep in rolled.episodes if set(ep.versions) - {-1} == {0, 1}]
    assert admitted == 8 and len(queued) == 4 and len(partial) >= 4  # at least two of the gated groups wait in it
    resumed = make_trainer(run_dir, *args, f"resume={run_dir}")
    assert resumed.step == 2
    run(resumed)
    staleness = logged_staleness(run_dir)
    assert sorted(staleness) == [1, 2, 3, 4] and max(max(s) for s in staleness.values()) <= 2
    assert sorted(trained_seeds(run_dir)) == sorted(expected_seeds(4, 2, 2))  # nothing lost, nothing twice
    mixed = [m["staleness/mixed_share"] for m in metrics(run_dir) if "staleness/mixed_share" in m]
    assert sum(mixed) > 0


def test_a_worker_killed_mid_generation_loses_only_its_groups_in_flight(tmp_path, ray_cluster):  # noqa: F811
    """The first env step of either worker kills its process: its groups in flight start again on a new worker
    (from the latest weights); every group trains once and none fails."""
    marker = tmp_path / "died"
    run_dir = tmp_path / "run"
    trainer = make_trainer(
        run_dir,
        "steps=3",
        "rollout.tasks_per_step=4",
        "rollout.group_size=4",
        "workers.max_staleness=1",
        *STREAM,
        "env.name=tests.slow_env",
        f"env.params={{step_seconds: 0, die_marker: {marker}}}",
    )
    run(trainer)
    rows = [m for m in metrics(run_dir) if "reward/mean" in m]
    assert marker.exists() and rows[-1]["workers/restarts"] == 1
    assert all(m["episodes/failed"] == 0 and m["episodes/count"] == 16 for m in rows)
    assert sorted(trained_seeds(run_dir)) == sorted(expected_seeds(3, 4, 4))
