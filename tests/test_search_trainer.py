"""The search env plugs into the real trainer: two GRPO steps of a tiny model on a small generated world."""

import json
from pathlib import Path

from envs.base import Trajectory
from rewards import build_reward
from rl.config import load_config
from rl.run.trainer import Trainer

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "search.yaml"


def test_two_training_steps_on_a_generated_world(tmp_path):
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        "steps=2",
        "save_every=0",
        "eval_every=0",
        f"env.params.cache_dir={tmp_path / 'cache'}",
        "env.params.world_people=20",
        "env.params.world_questions=30",
        "env.params.max_tasks=4",
        "model.tiny={layers: 2, hidden: 64, intermediate: 128, heads: 4, kv_heads: 2, vocab_size: 512}",
        "rollout.max_turn_tokens=24",
        "rollout.group_size=2",
        "rollout.tasks_per_step=2",
        "rollout.max_total_tokens=1024",
    ]
    cfg = load_config(CONFIG, overrides)
    trainer = Trainer(cfg)
    try:
        trainer.train(progress=False)
    finally:
        trainer.close()
    assert trainer.step == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in rows if "reward/mean" in m and "eval/reward/mean" not in m]
    assert [m["step"] for m in steps] == [1, 2] and all(m["episodes/failed"] == 0 for m in steps)
    assert all("reward/search_judge" in m and "reward/search_format/malformed_turns" in m for m in steps)
    assert any("eval/reward/mean" in m for m in rows)  # the final greedy evaluation ran too
    fn = build_reward([r.__dict__ for r in cfg.reward])
    logged = [
        json.loads(line) for line in (tmp_path / "run" / "episodes" / "step_000001.jsonl").read_text().splitlines()
    ]
    assert len(logged) == 4
    for e in logged:
        assert e["finish"] in ("done", "max_turns", "length")
        assert fn(Trajectory.from_dict(e["trajectory"])).total == e["reward"]["total"]  # re-scored offline from the log
