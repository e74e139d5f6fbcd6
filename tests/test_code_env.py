"""The code-correction env: CoCoS prompts, code extraction, episodes with and without feedback,
and the trainer on it."""

import json

import pytest

from envs.base import Trajectory
from envs.code import CodeParams, load_tasks, make_env, problems, sample_text
from envs.code.env import REQUEST, extract_code, first_prompt
from envs.registry import get_env_spec
from rewards import build_reward
from rl.config import load_config
from rl.run.trainer import Trainer

ADD = "def add_7(x):\n    return x + 7"


def test_code_is_extracted_from_fences_or_markers():
    assert extract_code(ADD + "\n[DONE]") == ADD
    assert extract_code("Here it is:\n```python\n" + ADD + "\n```\nand more\n[DONE]") == ADD
    assert extract_code("```\n" + ADD + "\n") == ADD  # an unclosed fence still counts
    assert extract_code("[CORRECT]\n" + ADD + "\n[DONE]\nprint('after done')") == ADD
    assert extract_code("[BEGIN]\nold\n[BEGIN]\n" + ADD) == ADD
    assert extract_code("  \n[DONE]") == ""


def test_prompts_follow_cocos():
    assert first_prompt("Write f.", ["assert f(1) == 1", "assert f(2) == 2"]) == (
        "You are an expert Python programmer, and here is your task: Write f. Your code should pass these tests:\n\n"
        "assert f(1) == 1\nassert f(2) == 2\n\n[BEGIN]\n"
    )


def test_short_prompts_for_tiny_models():
    p = CodeParams(synthetic_problems=4, max_turns=2, prompt="short")
    q, task_id = synthetic_task(p)
    task = next(t for t in load_tasks(p, "train") if t.id == task_id)
    assert task.prompt == f"Task: {q.text}\n[BEGIN]\n"
    first, _ = play(p, task_id, q.reference + "[DONE]", q.reference + "[DONE]")
    assert (
        first.observation == "\nThere might be an error. Rewrite the solution.\n[CORRECT]\n"
        and first.info["score"] == 1.0
    )
    with pytest.raises(ValueError, match="prompt must be one of"):
        load_tasks(CodeParams(prompt="long"), "train")


def play(params: CodeParams, task_id: str, *actions):
    task = next(t for t in load_tasks(params, "train") if t.id == task_id)
    env = make_env(params)
    assert env.reset(task) == task.prompt
    return [env.step(a) for a in actions]


def synthetic_task(params):
    q = problems(params, "train")[0]
    return q, q.task_id


def test_cocos_episode_gives_no_feedback_and_records_every_turn():
    p = CodeParams(synthetic_problems=4, max_turns=3)
    q, task_id = synthetic_task(p)
    name = q.entry_point
    wrong, invalid, right = play(
        p, task_id, f"def {name}(x):\n    return None\n[DONE]", "I cannot do it [DONE]", q.reference + "[DONE]"
    )
    assert wrong.observation == "\n\n" + REQUEST + "\n\n[CORRECT]\n" and not wrong.done  # nothing about the tests
    assert wrong.info["tests"] == ["failed"] * 3 and wrong.info["score"] == 0.0 and not wrong.info["invalid"]
    assert (
        invalid.info["invalid"]
        and invalid.info["tests"] == ["error"] * 3
        and invalid.info["messages"][0].startswith("SyntaxError")
    )
    assert right.done and right.info == {
        "score": 1.0,
        "n_passed": 3,
        "n_tests": 3,
        "tests": ["passed"] * 3,
        "messages": ["", "", ""],
        "code": q.reference.strip(),
        "invalid": False,
    }
    json.dumps([wrong.info, invalid.info, right.info])  # episodes are logged as JSON


def test_feedback_variant_shows_the_failing_asserts_and_can_stop_early():
    p = CodeParams(synthetic_problems=4, max_turns=3, feedback="tests", stop_when_correct=True)
    q, task_id = synthetic_task(p)
    wrong, right = play(p, task_id, f"def {q.entry_point}(x):\n    return None\n[DONE]", q.reference + "[DONE]")
    assert wrong.observation.startswith("\n\nRunning the code above on the tests gave:\n" + q.tests[0] + "\n# failed: ")
    assert wrong.observation.endswith(REQUEST + "\n\n[CORRECT]\n")
    assert right.done and right.info["score"] == 1.0  # all passed at turn 2 of 3: the episode ends


def test_a_program_written_again_reuses_its_verdicts():
    # A coin-flip program: run each time, 12 attempts would almost surely not all get the same verdicts.
    p = CodeParams(synthetic_problems=4, max_turns=12)
    q, task_id = synthetic_task(p)
    coin = (
        f"import random\ndef {q.entry_point}(x):\n"
        f"    return {q.reference.split('return ')[1].strip()} if random.random() < 0.5 else None\n[DONE]"
    )
    cached = play(p, task_id, *[coin] * 12)
    assert len({tuple(step.info["tests"]) for step in cached}) == 1
    fresh = play(CodeParams(synthetic_problems=4, max_turns=12, cache_verdicts=False), task_id, *[coin] * 12)
    assert len({tuple(step.info["tests"]) for step in fresh}) > 1


HOSTILE = {
    "a value too large to print": "def NAME(*a, **k):\n    return 10**5000\n",
    "a forged reply": (
        "import os, struct\ndef NAME(*a, **k):\n"
        '    d = b\'{"status": "ok", "values": [{"$complex": [1e400, 0]}]}\'\n'
        "    os.write(4, struct.pack('>I', len(d)) + d)\n    os._exit(0)\n"
    ),
    "values sharing a hash": "def NAME(*a, **k):\n    return [n * (2**61 - 1) for n in range(1, 5000)]\n",
    "leaving without a word": "import os\ndef NAME(*a, **k):\n    os._exit(3)\n",
    "closing its own pipes": (
        "import os\nfor fd in (1, 2, 4):\n    os.close(fd)\ndef NAME(*a, **k):\n    while True:\n        pass\n"
    ),
}


@pytest.mark.parametrize("hostile", list(HOSTILE))
def test_the_env_never_raises_on_a_hostile_program(hostile):
    # Each one's verdicts are errors or failures; the env steps on, and the next program is judged as usual.
    p = CodeParams(synthetic_problems=4, max_turns=2, cache_verdicts=False)
    q, task_id = synthetic_task(p)
    bad, good = play(p, task_id, HOSTILE[hostile].replace("NAME", q.entry_point) + "[DONE]", q.reference + "[DONE]")
    assert "passed" not in bad.info["tests"] and len(bad.info["tests"]) == 3, bad.info
    assert good.info["tests"] == ["passed"] * 3


def test_tasks_splits_and_tokenizer_text():
    spec = get_env_spec("code")
    mbpp = CodeParams(dataset="mbpp", eval_dataset="humaneval", max_problems=5)
    train, test = spec.load_tasks(mbpp, "train"), spec.load_tasks(mbpp, "eval")
    assert [t.id for t in train][:2] == ["mbpp/601", "mbpp/602"] and [t.id for t in test][:2] == [
        "HumanEval/0",
        "HumanEval/1",
    ]
    assert train[0].metadata["tests"] and train[0].prompt.endswith("[BEGIN]\n")
    syn = CodeParams(synthetic_problems=6)
    train_ids, eval_ids = {t.id for t in load_tasks(syn, "train")}, {t.id for t in load_tasks(syn, "eval")}
    assert len(train_ids) == len(eval_ids) == 6 and not train_ids & eval_ids
    text = sample_text(syn)
    assert len(text) == 13 and all("[DONE]" in s for s in text[:12]) and REQUEST in text[0]


def test_two_training_steps_on_the_code_env(tmp_path):
    overrides = [
        f"run_dir={tmp_path}",
        "env.name=code",
        "env.params={dataset: synthetic, synthetic_problems: 2, max_turns: 2}",  # 2 training and 2 eval tasks
        "model.tiny.vocab_size=512",
        "rollout.max_turn_tokens=32",
        "rollout.group_size=2",
        "rollout.tasks_per_step=2",
        "steps=2",
        "save_every=0",
        "eval_every=0",
        "reward=[{name: cocos}, {name: code_pass, weight: 0.5}]",
    ]
    trainer = Trainer(load_config(None, overrides))
    try:
        trainer.train(progress=False)
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/mean" in r] == [1, 2] and all(
        r["episodes/failed"] == 0 for r in rows if "reward/mean" in r
    )
    fn = build_reward([{"name": "cocos"}, {"name": "code_pass", "weight": 0.5}])
    episodes = [json.loads(line) for line in (tmp_path / "episodes" / "step_000001.jsonl").read_text().splitlines()]
    assert len(episodes) == 4
    for e in episodes:
        turns = e["trajectory"]["turns"]
        assert len(turns) == 2 and all(t["info"]["n_tests"] == 3 and len(t["info"]["tests"]) == 3 for t in turns)
        assert fn(Trajectory.from_dict(e["trajectory"])).total == e["reward"]["total"]  # re-scored offline from the log
