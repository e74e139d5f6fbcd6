"""The code examples of the README and the guide (docs/) run as written, wherever they live.

Each example is a `python` block that starts with `# mypkg/NAME.py`, followed on its page by the
`python -m rl train` command that uses it; the tests write the block as that module and run the command
(through the CLI for the estimator and the loss, through the config loader and the registries for the
reward and the environment).
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import rewards.base
from envs.base import Task, Trajectory, Turn
from envs.registry import get_env_spec
from rewards.base import build_reward
from rl.config import build_params, load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def example(module_file: str) -> tuple[str, list[str]]:
    """The example module `# mypkg/<module_file>` and its command's arguments after `python -m rl`."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        block = re.search(rf"```python\n(# mypkg/{re.escape(module_file)}\n.*?)```", text, re.DOTALL)
        if block:
            command = re.search(r"```bash\n(python -m rl train .*?)\n```", text[block.end() :], re.DOTALL)
            assert command, f"{page.name}: no `python -m rl train` command after the example mypkg/{module_file}"
            return block.group(1), shlex.split(command.group(1))[3:]
    raise AssertionError(f"no example `# mypkg/{module_file}` in README.md or docs/*.md")


def write_package(root: Path, module_file: str, code: str) -> None:
    (root / "mypkg").mkdir(exist_ok=True)
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / module_file).write_text(code)


@pytest.fixture
def mypkg(tmp_path, monkeypatch):
    """A fresh `mypkg` on sys.path, and registries that forget what the example registers."""
    monkeypatch.syspath_prepend(str(tmp_path))
    registered = dict(rewards.base.REWARDS)
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        monkeypatch.delitem(sys.modules, name)
    yield tmp_path
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]
    rewards.base.REWARDS.clear()
    rewards.base.REWARDS.update(registered)


def test_the_registered_estimator_and_loss_train(tmp_path):
    code, args = example("algorithms.py")
    write_package(tmp_path, "algorithms.py", code)
    args = args + ["steps=2", "seed=2", "save_every=0", f"run_dir={tmp_path / 'run'}"]
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "rl", *args], check=False, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "learner/pg_adv" in r]
    assert len(trained) == 2  # the example's loss ran: its metric is in every step's line
    assert all("learner/clip_frac" not in r for r in trained)  # and PPO's did not
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "advantage: reinforce" in config and "policy_loss: pg" in config


def test_the_reward_of_the_guide_scores_through_its_config(mypkg):
    code, args = example("rewards.py")
    write_package(mypkg, "rewards.py", code)
    assert args[0] == "train"
    cfg = load_config(ROOT / args[1], args[2:])  # imports mypkg.rewards, then checks the reward's params
    assert [spec.name for spec in cfg.reward] == ["outcome", "shorter_is_better"]
    reward = build_reward(cfg.reward)
    scale = cfg.reward[1].params["scale"]
    trajectory = Trajectory(
        Task("t", "say hi"), [Turn("hi there", "try again", {"score": 0.0}), Turn("hi", "", {"score": 1.0})]
    )
    result = reward(trajectory)
    assert result.process == pytest.approx([-scale * 8, -scale * 2])  # each turn pays for its length
    assert result.outcome == 1.0  # outcome's: the last turn's score
    assert result.components["shorter_is_better"] == pytest.approx(-scale * 10)
    with pytest.raises(ValueError, match="scale"):  # its parameters are checked like a built-in reward's
        load_config(ROOT / args[1], [*args[2:], "reward=[{name: shorter_is_better, params: {scale: lots}}]"])


def test_the_environment_of_the_guide_loads_and_plays(mypkg):
    code, args = example("my_env.py")
    write_package(mypkg, "my_env.py", code)
    assert args[0] == "train"
    cfg = load_config(ROOT / args[1], args[2:])
    assert cfg.env.name == "mypkg.my_env"
    spec = get_env_spec(cfg.env.name)
    params = build_params(spec.params, cfg.env.params, "env.params")
    word = params.word
    assert word != spec.params().word  # the command's params reached the env
    (task,) = spec.load_tasks(params, "train")
    assert all(word in text for text in spec.sample_text(params))  # a tiny model's tokenizer sees the word
    env = spec.make_env(params)
    assert word in env.reset(task)
    right = env.step(f"{word}.")
    assert right.done and right.info == {"score": 1.0, "invalid": False}
    env = spec.make_env(params)
    env.reset(task)
    assert env.step("something else.").info["score"] == 0.0
    with pytest.raises(ValueError, match="wrd"):  # an unknown param fails when the config loads, as a built-in env's
        load_config(ROOT / args[1], [*args[2:], "env.params.wrd=hi"])
