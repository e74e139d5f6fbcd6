"""Mistake finding: the shipped data, the env, its reward and per-task accuracy, and backtracking."""

import hashlib
import json
import re

import pytest

from envs.base import play as play_env
from envs.mistake import DATA_DIR, TASKS, MistakeEnv, MistakeParams, load_records, load_tasks, parse_answer
from envs.mistake.backtrack import backtrack, evaluate, extract_answer, gold_finder, random_finder
from envs.registry import get_env_spec
from rewards import build_reward, lab
from rewards.__main__ import main
from rewards.mistake import location_accuracy


def test_data_ships_with_license_and_matches_its_checksums():
    source = (DATA_DIR / "SOURCE.md").read_text()
    assert "Apache License" in (DATA_DIR / "LICENSE").read_text()
    for task in TASKS:
        digest = hashlib.sha256((DATA_DIR / f"{task}.jsonl").read_bytes()).hexdigest()
        assert f"{task}.jsonl `{digest}`" in source
    assert {t: len(load_records(t)) for t in TASKS} == {
        "word_sorting": 300,
        "tracking_shuffled_objects": 300,
        "logical_deduction": 300,
        "multistep_arithmetic": 300,
        "dyck_languages": 986,
    }


def test_splits_are_disjoint_and_sized():
    p = MistakeParams(tasks="word_sorting,multistep_arithmetic")
    train, evals = load_tasks(p, "train"), load_tasks(p, "eval")
    assert len(train) == 480 and len(evals) == 120 and not {t.id for t in train} & {t.id for t in evals}
    assert (
        get_env_spec("mistake").load_tasks(MistakeParams(max_problems=3), "eval")[0].metadata["task"] == "word_sorting"
    )


def test_parse_answer():
    assert parse_answer("I think <answer>3</answer>") == (True, 2)
    assert parse_answer("<answer> None </answer>") == (True, None)
    assert parse_answer("<answer>step 1</answer>") == (True, 0)
    assert parse_answer("<answer>0</answer>") == (False, None)
    assert parse_answer("the third") == (False, None)


def play(task, answers, max_turns=1):
    return play_env(MistakeEnv(MistakeParams(max_turns=max_turns)), task, answers)


def test_env_and_reward_on_a_real_trace():
    task = next(t for t in load_tasks(MistakeParams(tasks="word_sorting"), "train") if t.metadata["mistake_index"] == 1)
    assert "Thought 2:" in task.prompt and task.metadata["num_steps"] == len(task.metadata["steps"])
    right = play(task, ["<answer>2</answer>"])
    assert right.turns[-1].info == {"score": 1.0, "invalid": False, "predicted": 1, "gold": 1, "task": "word_sorting"}
    retried = play(task, ["<answer>3</answer>", "<answer>2</answer>"], max_turns=2)
    assert [t.info["score"] for t in retried.turns] == [0.0, 1.0] and "not the first mistake" in retried.turns[
        0
    ].observation

    reward = build_reward([{"name": "mistake_location", "params": {"near": 0.5, "invalid": -0.5}}])
    assert reward(right).total == 1.0
    assert reward(play(task, ["<answer>3</answer>"])).total == 0.5  # one step off
    assert reward(play(task, ["<answer>5</answer>"])).total == 0.0
    assert reward(play(task, ["step two"])).total == -0.5


def test_accuracy_per_task_of_always_answering_step_two(tmp_path):
    # Answering "2" is right exactly on the traces whose second step (index 1) is the first wrong one: count them.
    p = MistakeParams(tasks="word_sorting,tracking_shuffled_objects", max_problems=60)
    tasks = load_tasks(p, "train")
    path = tmp_path / "episodes.jsonl"
    path.write_text(
        "".join(json.dumps({"trajectory": play(t, ["<answer>2</answer>"]).to_dict()}) + "\n" for t in tasks)
    )
    acc = location_accuracy(lab.load_trajectories(path))
    for task in ("word_sorting", "tracking_shuffled_objects"):
        golds = [t.metadata["mistake_index"] for t in tasks if t.metadata["task"] == task]
        assert acc[task]["n"] == 60
        assert golds.count(1) > 0 and acc[task]["accuracy"] == pytest.approx(golds.count(1) / 60)
        assert acc[task]["accuracy_with_mistake"] == pytest.approx(golds.count(1) / (60 - golds.count(None)))
    assert acc["all"]["n"] == 120
    main(["mistakes", str(path)])


def sort_words(prompt: str) -> str:
    """A correct word-sorting step-writer: reads the question from the prompt and answers it."""
    words = re.search(r"Question: (.*)\n", prompt).group(1).split()
    return "The answer is " + " ".join(sorted(words))


def test_backtracking_at_the_gold_step_fixes_wrong_traces_and_keeps_clean_ones():
    records = list(load_records("word_sorting"))[:40]
    result = evaluate(records, gold_finder, sort_words)
    wrong_with_mistake = [r for r in records if r["mistake_index"] is not None and r["answer"] != r["target"]]
    assert result.gains == len(wrong_with_mistake) > 0 and result.losses == 0
    clean = next(r for r in records if r["mistake_index"] is None)
    assert backtrack(clean["input"], clean["steps"], None, sort_words) == clean["steps"]
    # with a perfect step-writer any flagged step leads to the right answer, so a random finder scores 1 too
    assert evaluate(records, random_finder(0), sort_words).accuracy_after == 1.0


def test_backtracking_takes_the_first_candidate_that_differs_then_continues_greedily():
    steps = ["a", "b wrong", "c", "The answer is x"]
    draws = iter(["b wrong", "b wrong", "b fixed", "b other"])
    prompts = []

    def greedy(prompt):
        prompts.append(prompt)
        return "so" if len(prompts) == 1 else "The answer is y."

    out = backtrack("q", steps, 1, lambda prompt: next(draws), greedy, n_candidates=4)
    assert out == ["a", "b fixed", "so", "The answer is y."]
    assert prompts[0].endswith("Thought 2: b fixed\nThought 3:") and extract_answer(out) == "y"
