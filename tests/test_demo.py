"""A shortened `make demo`, end to end through the same code: build, SFT, RL on Ray workers, eval, plots."""

import json
import threading
from pathlib import Path

import pytest
import ray
import torch
import yaml

from rl.cli import main as cli_main
from rl.config import load_config
from rl.run.demo import main as demo_main
from rl.run.demo import seed_summary

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_shortened_demo_on_both_worlds(tmp_path, capsys, request):
    short = [
        "steps=2",
        "eval_every=1",
        "save_every=0",
        "sft.steps=8",
        "sft.demos=64",
        "rollout.tasks_per_step=2",
        "rollout.group_size=2",
        "workers.num_workers=1",
        "model.tiny.layers=2",
        "model.tiny.hidden=64",
        "model.tiny.intermediate=128",
    ]
    results = []
    request.addfinalizer(ray.shutdown)  # the demo's trainers started a local Ray cluster; later tests start their own
    for world, extra in (
        (
            "search",
            [
                f"env.params.cache_dir={tmp_path / 'cache'}",
                "env.params.max_tasks=6",
                "env.params.world_questions=200",
                "sft.env_params.world_questions=300",
            ],
        ),
        ("code", ["env.params.max_problems=6"]),
    ):
        results += demo_main(
            [str(CONFIGS / f"tiny_{world}.yaml")], short + extra + [f"run_dir={tmp_path / world}"], samples=2
        )
    printed = capsys.readouterr().out
    for world, result in zip(("search", "code"), results):
        run = tmp_path / world
        assert result["sft"]["episodes/count"] == result["rl"]["episodes/count"] == 6  # the same held-out tasks
        assert result["sft"]["sampled/episodes/count"] == result["rl"]["sampled/episodes/count"] == 12  # 2 samples each
        assert result["rl"]["pass@2"] >= result["rl"]["sampled/score/last_turn"]
        assert (run / "eval_rl_sampled_episodes.jsonl").read_text().count("\n") == 12
        assert result["rl"]["episodes/failed"] == 0
        assert {"model_build", "sft", "rollout", "learner", "eval", "final_eval", "total"} <= set(result["timings"])
        saved = json.loads((run / "demo.json").read_text())
        assert json.dumps(saved["rl"], sort_keys=True) == json.dumps(result["rl"], sort_keys=True)  # NaN-safe equality
        for png in ("reward.png", "eval.png"):
            assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (run / "sft" / "model" / "config.json").exists() and (
            run / "checkpoints" / "step_000002" / "model"
        ).is_dir()
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2] and all("workers/restarts" in r for r in rows)
    assert "em" in results[0]["rl"] and "judge_accuracy" in results[0]["rl"]
    assert "acc_t1" in results[1]["rl"] and "critique" in results[1]["rl"]
    assert "RL - SFT" in printed and "acc_tT" in printed and "judge_accuracy" in printed
    assert "sampled/acc_tT" in printed and "sampled/em" in printed and "pass@2" in printed

    # `python -m rl eval` on the SFT checkpoint gives the demo's SFT column.
    out = tmp_path / "sft_eval.json"
    code_args = [str(CONFIGS / "tiny_code.yaml"), "env.params.max_problems=6", f"run_dir={tmp_path / 'code'}"]
    assert (
        cli_main(["eval", *code_args, "--checkpoint", str(tmp_path / "code" / "sft" / "model"), "--out", str(out)]) == 0
    )
    assert json.loads(out.read_text())["metrics"]["acc_t1"] == results[1]["sft"]["acc_t1"]
    assert (tmp_path / "sft_eval_episodes.jsonl").read_text().count("\n") == 6


def test_seed_summary_gives_mean_and_range_of_sft_rl_and_their_difference():
    runs = [
        {"config": "tiny_code.yaml", "sft": {"acc_t1": sft, "acc_tT": sft}, "rl": {"acc_t1": rl, "acc_tT": rl + 0.1}}
        for sft, rl in ((0.2, 0.5), (0.4, 0.5), (0.3, 0.8))
    ]
    lines = seed_summary(runs, "code").splitlines()
    assert "over 3 seeds" in lines[0]
    row = next(line for line in lines if line.startswith("acc_t1 "))
    assert "0.300 [0.200 .. 0.400]" in row and "0.600 [0.500 .. 0.800]" in row and "0.300 [0.100 .. 0.500]" in row
    assert "0.400 [0.200 .. 0.600]" in next(line for line in lines if line.startswith("acc_tT "))  # RL - SFT of acc_tT


def test_demo_with_seeds_runs_each_seed_and_prints_the_spread(tmp_path, capsys):
    lookup = str(CONFIGS / "lookup.yaml")
    assert (
        cli_main(
            ["demo", lookup, "steps=2", "eval_every=0", "save_every=0", f"run_dir={tmp_path}", "--seeds", "0", "1"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "over 2 seeds: mean [min .. max]" in printed and "score/last_turn" in printed
    runs = [json.loads((tmp_path / f"seed_{s}" / "demo.json").read_text()) for s in (0, 1)]
    assert all(r["rl"]["episodes/count"] == runs[0]["rl"]["episodes/count"] > 0 for r in runs)
    assert "sampled/score/last_turn" in printed and "pass@4" in printed  # the default: 4 sampled episodes per task
    for s in (0, 1):  # each run trained with its own seed, in its own directory
        assert yaml.safe_load((tmp_path / f"seed_{s}" / "config.yaml").read_text())["seed"] == s


def test_eval_with_samples_adds_pass_at_k_over_each_tasks_samples(tmp_path, lookup_experts):
    from rl.run.start import starting_model

    lookup = str(CONFIGS / "lookup.yaml")
    args = [
        lookup,
        f"run_dir={tmp_path}",
        f"sft.data={lookup_experts}",
        "sft.steps=5",
        "sft.lr=3e-3",
        "sft.warmup_steps=0",
        "sft.batch_size=8",
    ]
    model, _ = starting_model(load_config(args[0], args[1:]), tmp_path)  # a few SFT steps: some keys learned, not all
    out = tmp_path / "eval.json"
    assert cli_main(["eval", *args, "--checkpoint", str(model), "--out", str(out), "--samples", "4"]) == 0
    saved = json.loads(out.read_text())
    episodes = [json.loads(line) for line in (tmp_path / "eval_episodes.jsonl").read_text().splitlines()]
    assert saved["samples"] == 4 and saved["metrics"]["episodes/count"] == len(episodes) == 8 * 4
    solved: dict[str, list[bool]] = {}
    for ep in episodes:
        solved.setdefault(ep["trajectory"]["task"]["id"], []).append(
            ep["trajectory"]["turns"][-1]["info"]["score"] == 1.0
        )
    assert sorted(len(v) for v in solved.values()) == [4] * 8
    assert saved["metrics"]["pass@4"] == sum(any(v) for v in solved.values()) / 8
    assert saved["metrics"]["pass@4"] >= saved["metrics"]["score/last_turn"]
    assert len({tuple(ep["token_ids"]) for ep in episodes}) > 8  # sampled: a task's episodes are not all the same
    assert cli_main(["eval", lookup, "--checkpoint", str(model), "--samples", "-1"]) == 2


def test_demo_refuses_a_negative_sample_count():
    assert cli_main(["demo", str(CONFIGS / "lookup.yaml"), "--samples", "-1"]) == 2


def test_the_next_runs_sft_is_made_in_another_process_while_a_run_trains(tmp_path, lookup_experts):
    lookup = str(CONFIGS / "lookup.yaml")
    args = [
        "steps=2",
        "eval_every=0",
        "save_every=0",
        f"run_dir={tmp_path}",
        f"sft.data={lookup_experts}",
        "sft.steps=5",
        "sft.warmup_steps=0",
    ]
    first, second = demo_main([lookup], args, seeds=[0, 1], samples=0)
    assert "sft" in first["timings"] and first["timings_beside_previous_run"] == {}
    # Seed 1's SFT ran beside seed 0's training; its trainer found the SFT model made and did not redo it.
    assert {"model_build", "sft_data", "sft"} <= set(second["timings_beside_previous_run"]) and "sft" not in second[
        "timings"
    ]
    assert (
        "train_runtime" in (tmp_path / "seed_1" / "sft" / "log.txt").read_text()
    )  # TRL's log, kept out of the demo's output
    assert yaml.safe_load((tmp_path / "seed_1" / "config.yaml").read_text())["seed"] == 1
    stats = [json.loads((tmp_path / f"seed_{s}" / "sft" / "sft_metrics.json").read_text()) for s in (0, 1)]
    assert (
        all(s["sft/steps_run"] == 5 for s in stats) and stats[0]["sft/first_loss"] != stats[1]["sft/first_loss"]
    )  # each its own seed


def test_a_failing_sft_beside_a_run_stops_the_demo_with_its_error_after_that_run(tmp_path):
    text = (CONFIGS / "lookup.yaml").read_text()
    good, broken = tmp_path / "good.yaml", tmp_path / "broken.yaml"
    good.write_text(text.replace("run_dir: runs/lookup", f"run_dir: {tmp_path / 'good'}"))
    (tmp_path / "garbled.jsonl").write_text(
        "not a trajectory\n"
    )  # there, so the config loads; unreadable, so the SFT fails
    broken.write_text(
        text.replace("run_dir: runs/lookup", f"run_dir: {tmp_path / 'broken'}")
        + f"sft: {{steps: 5, data: {tmp_path / 'garbled.jsonl'}}}\n"
    )
    with pytest.raises(ValueError, match="garbled.jsonl"):
        demo_main([str(good), str(broken)], ["steps=2", "eval_every=0", "save_every=0"], samples=0)
    assert (
        json.loads((tmp_path / "good" / "demo.json").read_text())["rl"]["episodes/count"] > 0
    )  # the run before it is kept


def test_demo_runs_need_run_directories_of_their_own(tmp_path):
    lookup = str(CONFIGS / "lookup.yaml")
    with pytest.raises(ValueError, match="run directories of their own"):
        demo_main([lookup, lookup], [f"run_dir={tmp_path}"])


def test_sft_beside_a_run_takes_every_thread_once_the_run_is_over():
    from transformers import TrainerState

    from rl.run.demo import MoreThreadsOnceFree

    before, free = torch.get_num_threads(), threading.Event()
    callback = MoreThreadsOnceFree(free, before + 1)
    try:
        callback.on_step_begin(None, TrainerState(), None)
        assert torch.get_num_threads() == before
        free.set()
        callback.on_step_begin(None, TrainerState(), None)
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)
