"""The reward lab on a real run: several paths in one call, only the statistics that apply,
and a reward of another env named."""

import json
import shutil
from pathlib import Path

import pytest

from rewards.__main__ import main
from tests.lookup_runs import train_lookup

ROOT = Path(__file__).resolve().parents[1]
EPISODES_PER_STEP = 64  # configs/lookup.yaml: 8 tasks a step, 8 episodes each


@pytest.fixture(scope="module")
def lookup_run(tmp_path_factory):
    """Three steps of the lookup world: episodes of one env, with no searches in them."""
    out = tmp_path_factory.mktemp("lab") / "run"
    train_lookup(out, "steps=3", "save_every=0", "eval_every=0")
    return out


def score(capsys, *args) -> tuple[int, str, str]:
    code = main(["score", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_several_paths_are_scored_together_each_file_once(lookup_run, tmp_path, capsys):
    loose = tmp_path / "loose.jsonl"  # episodes outside any run
    shutil.copy(lookup_run / "episodes" / "step_000002.jsonl", loose)
    step1 = lookup_run / "episodes" / "step_000001.jsonl"  # also read under the run directory: counted once
    code, out, err = score(
        capsys, lookup_run, loose, step1, "--reward", "outcome", "--out", tmp_path / "lab", "--workers", "2"
    )
    assert code == 0 and err == ""
    rep = json.loads((tmp_path / "lab" / "report.json").read_text())
    assert rep["episodes"] == 4 * EPISODES_PER_STEP
    assert rep["sources"] == {str(lookup_run): 3 * EPISODES_PER_STEP, str(loose): EPISODES_PER_STEP, str(step1): 0}
    assert out.startswith(
        f"{4 * EPISODES_PER_STEP} episodes ({lookup_run}: "
        f"{3 * EPISODES_PER_STEP}, {loose}: {EPISODES_PER_STEP}, {step1}: 0)"
    )
    files = [*sorted((lookup_run / "episodes").glob("*.jsonl")), loose]
    outcomes = [json.loads(line)["reward"]["outcome"] for f in files for line in f.read_text().splitlines()]
    assert len(outcomes) == rep["episodes"] and rep["specs"]["outcome"]["total"]["mean"] == pytest.approx(
        sum(outcomes) / len(outcomes)
    )


def test_search_statistics_are_left_out_where_no_episode_searched(lookup_run, tmp_path, capsys):
    code, out, _ = score(capsys, lookup_run, "--reward", "outcome", "--reward", "0*outcome", "--out", tmp_path)
    assert code == 0
    assert "r(search)" not in out and "nan" not in out
    assert out.splitlines()[1].split() == ["spec", "mean", "std", "min", "max", "r(task)", "r(turns)"]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert all(set(s["farming"]) == {"corr_turns", "mean_by_turns"} for s in rep["specs"].values())
    # A reward that is always 0 correlates with nothing: a dash, explained once, not nan.
    row = next(line for line in out.splitlines() if line.startswith("0*outcome"))
    assert row.split()[-2:] == ["-", "-"]
    assert out.count("-: no correlation, one side is constant") == 1


def test_a_reward_of_another_env_is_named_once_and_the_scores_still_come(lookup_run, tmp_path, capsys):
    warning = (
        f"warning: reward 'search_format' is written for search episodes, but {lookup_run} holds lookup episodes "
        f"(env.name in the run's config.yaml): its scores there mean nothing\n"
    )
    code, out, err = score(
        capsys,
        lookup_run,
        "--reward",
        "outcome",
        "--reward",
        "search_format",
        "--reward",
        "outcome + search_format",
        "--out",
        tmp_path,
    )
    assert code == 0 and err == warning
    assert "Kendall tau  outcome | search_format" in out and (tmp_path / "report.json").is_file()

    # A reward of any env says nothing: code's cocos on info["score"] (`level: score`) as much as the generic ones.
    code, _, err = score(
        capsys,
        lookup_run / "episodes" / "step_000003.jsonl",
        "--reward",
        "cocos:level=score",
        "--reward",
        "format",
        "--out",
        tmp_path,
    )
    assert code == 0 and err == ""
    code, _, err = score(
        capsys, lookup_run / "episodes", "--reward", "cocos", "--reward", "cocos:level=score", "--out", tmp_path
    )
    assert code == 0 and len(err.splitlines()) == 1
    assert err.startswith(
        f"warning: reward 'cocos' is written for code episodes, but {lookup_run / 'episodes'} holds lookup"
    )

    # A reward that cannot read the episodes at all: after the warning, one line naming the file,
    # the reward and the task.
    code, out, err = score(
        capsys, lookup_run, "--reward", "search_answer", "--out", tmp_path / "none", "--workers", "2"
    )
    first, second = err.splitlines()
    assert (
        code == 2 and out == "" and first.startswith("warning: reward 'search_answer' is written for search episodes")
    )
    assert (
        second.startswith(f"error: {lookup_run / 'episodes'}/step_00000")
        and "reward 'search_answer' failed on the episode of task 'lookup-" in second
    )
    assert second.endswith("KeyError: 'answers'") and not (tmp_path / "none").exists()
