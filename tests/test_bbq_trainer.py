"""The BBQ env plugs into the real trainer: GRPO steps of a tiny model on a few questions,
bias scores in its training logs and evaluation."""

import json

import pytest

from envs.base import Trajectory
from envs.registry import get_env_spec
from rewards import build_reward
from rl.config import load_config
from rl.run.trainer import Trainer


def test_two_grpo_steps_on_bbq_questions(tmp_path):
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        "steps=2",
        "save_every=0",
        "eval_every=0",
        "workers.ray=false",
        "env.name=bbq",
        "env.params={categories: 'Religion,Nationality', max_problems: 2, condition: q_if, max_turns: 2}",
        "model.tiny={layers: 2, hidden: 64, intermediate: 128, heads: 4, kv_heads: 2, vocab_size: 512}",
        "rollout={tasks_per_step: 2, group_size: 4, max_turns: 2, max_turn_tokens: 8, max_total_tokens: 1024}",
        "algo.advantage=turn",
        "algo.loss_agg=seq-mean-token-sum",
        "learner.lr=1e-3",
        "reward=[{name: cocos, params: {level: score}}, {name: bbq_bias, params: {every_turn: true}}, {name: format}]",
    ]
    cfg = load_config(None, overrides)
    trainer = Trainer(cfg)
    try:
        trainer.train(progress=False)
    finally:
        trainer.close()
    assert trainer.step == 2
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in rows if "reward/mean" in m and "learner/grad_norm" in m]
    assert [m["step"] for m in steps] == [1, 2] and all(m["episodes/failed"] == 0 for m in steps)
    for m in steps:
        logged = [
            json.loads(line) for line in (run / "episodes" / f"step_{m['step']:06d}.jsonl").read_text().splitlines()
        ]
        invalid = sum(t["info"]["invalid"] for e in logged for t in e["trajectory"]["turns"]) / len(logged)
        assert m["reward/format"] == -invalid  # each unreadable answer costs the format penalty, and nothing crashed
        assert "reward/bbq_bias/biased_last" in m and "reward/cocos/R" in m
        own = get_env_spec("bbq").metrics(
            [Trajectory.from_dict(e["trajectory"]) for e in logged]
        )  # the step's samples, under train/
        assert own and {f"train/{k}": v for k, v in own.items()} == pytest.approx(
            {k: m[k] for k in m if k.startswith("train/")}, nan_ok=True
        )
    final = next(m for m in rows if "eval/reward/mean" in m)  # the env's own metrics, through the generic hook
    assert {"eval/s_amb_t1", "eval/s_dis_tT", "eval/delta_s_amb", "eval/Religion/acc_ambig_tT"} <= final.keys()
    assert final["eval/episodes/count"] == 4.0  # 2 held-out questions of each category
    fn = build_reward([r.__dict__ for r in cfg.reward])
    logged = [json.loads(line) for line in (run / "episodes" / "step_000001.jsonl").read_text().splitlines()]
    assert len(logged) == 8
    for e in logged:
        turns = e["trajectory"]["turns"]
        assert len(turns) == 2 and "Please ensure that your answer is unbiased" in turns[0]["observation"]
        assert all(t["info"]["answer"] in ("biased", "counter_biased", "unknown", "invalid") for t in turns)
        # a random tiny model mostly writes no readable option: a defined penalty, never a crash
        assert all(t["info"]["score"] == 0.0 for t in turns if t["info"]["invalid"])
        assert fn(Trajectory.from_dict(e["trajectory"])).total == e["reward"]["total"]  # re-scored offline from the log
