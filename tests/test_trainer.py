"""The whole loop on the learnable task: learning, exact resume, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.lookup_runs import train_lookup

ROOT = Path(__file__).resolve().parents[1]
LOOKUP = ROOT / "configs" / "lookup.yaml"


train = train_lookup


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_grpo_learns_the_lookup_task(tmp_path):
    train(tmp_path, "steps=60", "learner.lr=3e-3", "save_every=0", "eval_every=0")
    rows = [m for m in metrics(tmp_path) if "reward/mean" in m]
    first = sum(m["reward/mean"] for m in rows[:10]) / 10
    last = sum(m["reward/mean"] for m in rows[-10:]) / 10
    assert first < 0.15, first  # a random tiny model is near chance
    assert last > 0.45 and last > first + 0.3, (first, last)


def test_resume_continues_exactly(tmp_path):
    common = ["learner.lr=3e-3", "save_every=3", "eval_every=0", "learner.warmup_steps=4"]
    train(tmp_path / "straight", "steps=6", *common)
    train(tmp_path / "split", "steps=3", *common)
    train(tmp_path / "other", "steps=6", *common, "resume=" + str(tmp_path / "split"))  # resume= wins over run_dir

    def comparable(run):
        return [
            {k: v for k, v in m.items() if not k.startswith(("time/", "throughput/", "placement"))}
            for m in metrics(run)
        ]

    straight, split = comparable(tmp_path / "straight"), comparable(tmp_path / "split")
    assert [m["step"] for m in split if "reward/mean" in m] == [1, 2, 3, 4, 5, 6]
    assert straight == [m for m in split if not (m["step"] == 3 and "eval/reward/mean" in m)]
    w1 = load_file(tmp_path / "straight" / "checkpoints" / "step_000006" / "model" / "model.safetensors")
    w2 = load_file(tmp_path / "split" / "checkpoints" / "step_000006" / "model" / "model.safetensors")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not (tmp_path / "other").exists()


STAGES = (
    "stages=[{name: warm, steps: 2, overrides: [algo.kl_coef=0.2]},"
    " {steps: 2, overrides: [algo.kl_coef=0.01, 'reward=[{name: outcome, weight: 2.0}]']}]"
)


def test_stages_switch_algo_and_reward_at_their_boundary_and_resume_across_it(tmp_path):
    common = ["steps=4", "learner.lr=3e-3", "eval_every=0", "algo.kl_coef=0.05", STAGES]
    trainer = train(tmp_path / "straight", *common, "save_every=1")
    rows = [m for m in metrics(tmp_path / "straight") if "reward/mean" in m]
    assert [m["stage"] for m in rows] == [1.0, 1.0, 2.0, 2.0]
    # the second stage's reward: the outcome, weighted 2; its KL coefficient in the learner
    totals = [
        {
            json.loads(line)["reward"]["total"]
            for line in (tmp_path / "straight" / "episodes" / f).read_text().splitlines()
        }
        for f in sorted(p.name for p in (tmp_path / "straight" / "episodes").iterdir())
    ]
    assert [t <= {0.0, 1.0} for t in totals] == [True, True, False, False] and all(t <= {0.0, 2.0} for t in totals[2:])
    assert trainer.learner.algo.kl_coef == 0.01 and trainer.cfg.algo.kl_coef == 0.05
    assert "stage 2 (stage_2) from step 3" in (tmp_path / "straight" / "log.txt").read_text()

    # resumed inside the first stage, the run crosses the boundary as the straight one did
    train(tmp_path / "split", *common, "save_every=1")
    for late in ("step_000002", "step_000003", "step_000004"):
        (tmp_path / "split" / "checkpoints" / late).rename(tmp_path / f"aside_{late}")
    train(tmp_path / "x", *common, "save_every=1", f"resume={tmp_path / 'split'}")

    def comparable(run):
        return [
            {k: v for k, v in m.items() if not k.startswith(("time/", "throughput/", "placement"))}
            for m in metrics(run)
        ]

    assert comparable(tmp_path / "split") == comparable(tmp_path / "straight")


def test_failing_env_episodes_are_left_out_and_the_run_goes_on(tmp_path):
    # seed 2: both batches hold a rewarded episode (a random policy finds the answer in about 3 batches of 4),
    # so an update happens
    trainer = train(tmp_path, "steps=2", "env.name=tests.flaky_env", "save_every=0", "eval_every=0", "seed=2")
    rows = [m for m in metrics(tmp_path) if "episodes/failed" in m and "reward/mean" in m]
    assert len(rows) == 2 and all(m["episodes/failed"] == 8 for m in rows)  # one task of 8, its whole group
    assert all(m["learner/grad_norm"] > 0 for m in rows)
    logged = [json.loads(line) for line in (tmp_path / "episodes" / "step_000001.jsonl").read_text().splitlines()]
    failed = [e for e in logged if e["finish"] == "error"]
    assert len(failed) == 8 and all("the environment broke" in e["error"] and e["advantage"] is None for e in failed)
    assert trainer.step == 2
    log = (tmp_path / "log.txt").read_text()  # the run's log: each failed episode with the env's traceback
    assert log.count("scoring: step 1: episode of task lookup-titi failed") == 8
    assert "Traceback" in log and 'flaky_env.py", line' in log and "RuntimeError: the environment broke" in log


def test_a_reward_that_raises_fails_its_episodes_and_the_log_has_its_traceback(tmp_path):
    train(
        tmp_path,
        "steps=1",
        "save_every=0",
        "eval_every=0",
        "imports=[tests.flaky_reward]",
        "reward=[{name: outcome}, {name: broken_on_titi}]",
    )
    logged = [json.loads(line) for line in (tmp_path / "episodes" / "step_000001.jsonl").read_text().splitlines()]
    failed = [e for e in logged if e["finish"] == "error"]
    assert failed and {e["trajectory"]["task"]["id"] for e in failed} == {"lookup-titi"}
    assert all(
        e["error"] == "reward: KeyError: 'no such key'" and 'flaky_reward.py", line' in e["traceback"] for e in failed
    )
    assert len(failed) < len(logged)  # the other tasks' episodes were scored and trained on
    log = (tmp_path / "log.txt").read_text()
    assert (
        log.count("scoring: step 1: episode of task lookup-titi failed") == len(failed)
        and "KeyError: 'no such key'" in log
    )


def test_episode_files_keep_what_rewards_need(tmp_path):
    train(tmp_path, "steps=1", "save_every=0", "eval_every=0")
    from envs.base import Trajectory
    from rewards import build_reward

    fn = build_reward([{"name": "outcome"}])
    for line in (tmp_path / "episodes" / "step_000001.jsonl").read_text().splitlines():
        e = json.loads(line)
        assert fn(Trajectory.from_dict(e["trajectory"])).total == e["reward"]["total"]  # re-scored offline, same value
        assert len(e["token_ids"]) == len(e["loss_mask"]) == len(e["logprobs"]) == len(e["turn_ids"])


def test_cli_reports_unknown_key_and_missing_model(tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "rl", "train", str(LOOKUP), *args], capture_output=True, text=True, cwd=ROOT
        )

    out = cli("learner.lrr=1")
    assert out.returncode == 2 and "unknown config key 'learner.lrr'; did you mean 'lr'?" in out.stderr
    out = cli(f"run_dir={tmp_path}", "model.path=/no/such/model")
    assert out.returncode != 0 and "model path '/no/such/model' does not exist" in out.stderr
