"""A run directory a user can trust: nothing overwritten by mistake, one history after a resume, clear
errors before anything is built, and Ctrl-C that stops cleanly with the line that continues the run.

Real runs of `python -m rl train` on the lookup task, as a user starts them.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOOKUP = str(ROOT / "configs" / "lookup.yaml")
FAST = ["learner.lr=3e-3", "eval_every=0", "learner.warmup_steps=2"]
pytestmark = pytest.mark.timeout(600)


def cli(*args: str, wait: bool = True):
    """`python -m rl ARGS` in a fresh process, as a user runs it
    (one torch thread: the same numbers on every machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rl", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if not wait:
        return proc
    out, err = proc.communicate(timeout=500)
    return proc.returncode, out, err


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith(("time/", "throughput/", "placement"))} for m in rows]


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("runs") / "lookup"
    code, _, err = cli("train", LOOKUP, "steps=4", "save_every=2", f"run_dir={run}", *FAST)
    assert code == 0, err[-2000:]
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def test_a_second_run_into_a_run_directory_is_refused_and_nothing_in_it_changes(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path)
    before = snapshot(run)
    code, _, err = cli("train", LOOKUP, "steps=2", f"run_dir={run}")
    assert (
        code == 2
        and err.count("\n") == 1
        and "holds a run already" in err
        and f"resume={run}" in err
        and "overwrite=true" in err
    )
    assert snapshot(run) == before
    code, _, err = cli("train", LOOKUP, "steps=2", "save_every=0", f"run_dir={run}", "overwrite=true", *FAST)
    assert code == 0, err[-2000:]
    assert [m["step"] for m in metrics(run)] == [1, 2, 2] and sorted(
        p.name for p in (run / "checkpoints").iterdir()
    ) == ["step_000002"]
    assert not (run / "episodes" / "step_000003.jsonl").exists()  # nothing of the old run is left


def test_resuming_from_an_earlier_checkpoint_leaves_one_history(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path)
    code, _, err = cli("train", LOOKUP, "steps=4", "save_every=2", f"resume={run}@2", *FAST)
    assert code == 0, err[-2000:]
    assert comparable(metrics(run)) == comparable(
        metrics(finished_run)
    )  # steps 3 and 4 again, exactly as the first time
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002", "step_000004"]
    aside = run / "abandoned" / "from_step_000002"
    assert sorted(
        str(p.relative_to(aside)) for p in aside.iterdir() for p in [p, *p.iterdir()] if p.parent != aside
    ) == ["checkpoints/step_000004", "episodes/step_000003.jsonl", "episodes/step_000004.jsonl"]  # fmt: skip
    assert "moved to" in (run / "log.txt").read_text()


def test_a_checkpoint_that_does_not_load_is_named_with_the_others(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path)
    state = run / "checkpoints" / "step_000004" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # truncated, as a full disk leaves it
    code, _, err = cli("train", LOOKUP, "steps=6", f"resume={run}")
    assert code == 2 and str(state) in err and "step 2" in err and "resume=DIR@STEP" in err
    code, _, err = cli("train", LOOKUP, "steps=6", f"resume={run}@3")
    assert code == 2 and "no checkpoint of step 3; there are step 2, step 4" in err


BAD = {
    "a reward parameter of the wrong type": (
        ["reward=[{name: format, params: {penalty: lots}}]"],
        "reward 'format' parameter 'penalty': expected a number, got 'lots'",
    ),
    "an env parameter of the wrong type": (
        ["env.params.max_turns=two"],
        "env.params.max_turns: expected int, got 'two'",
    ),
    "an env option that does not exist": (
        ["env.params.feedback=test"],
        "unknown feedback 'test'; did you mean 'tests'?",
    ),
    "a resume without a checkpoint": (["resume=configs"], "no checkpoint in configs/checkpoints"),
    "a resume step that is not a number": (["resume=runs@last"], "the step after '@' must be a number"),
    "an SFT data file that is not there": (
        ["sft.steps=5", "sft.data=nowhere.jsonl"],
        "sft.data: no file 'nowhere.jsonl'",
    ),
    "vLLM's sleep mode with another engine": (
        ["workers.vllm_sleep_mode=true"],
        "workers.vllm_sleep_mode is vLLM's: it needs workers.engine=vllm",
    ),
}


@pytest.mark.parametrize("bad", list(BAD))
def test_bad_input_fails_before_torch_is_imported_and_nothing_is_written(bad, tmp_path):
    overrides, message = BAD[bad]
    config = str(ROOT / "configs" / "tiny_code.yaml") if "feedback" in overrides[0] else LOOKUP
    probe = "import sys; from rl.cli import main; code = main(sys.argv[1:]); print(code, 'torch' in sys.modules)"
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-c", probe, "train", config, f"run_dir={run}", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.stdout.split() == ["2", "False"] and message in proc.stderr and proc.stderr.count("\n") == 1, (
        proc.stderr
    )
    assert not run.exists()


def test_data_that_does_not_load_leaves_no_run_directory(tmp_path):
    run = tmp_path / "run"
    code, _, err = cli(
        "train",
        str(ROOT / "configs" / "tiny_code.yaml"),
        f"run_dir={run}",
        "env.params.dataset=nowhere.jsonl",
        "sft.steps=0",
    )
    assert code == 2 and "no problems 'nowhere.jsonl'" in err and not run.exists()


def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_the_line_that_continues(tmp_path):
    run = tmp_path / "run"
    proc = cli("train", LOOKUP, "steps=500", "save_every=0", f"run_dir={run}", *FAST, wait=False)
    try:
        deadline = time.monotonic() + 400
        while not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 2) and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("stopped after step ") and "continue with:" in last, err[-2000:]
    step = int(last.split("stopped after step ")[1].split()[0])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step_{step:06d}"]
    command = last.split("continue with: ")[1].split()
    assert command[:3] == ["python", "-m", "rl"] and command[-1] == f"resume={run}" and "steps=500" in command
    again = [a for a in command[3:-1] if not a.startswith("steps=")]
    code, _, err = cli(*again, f"steps={step + 1}", command[-1])  # the same command, one step further
    assert code == 0, err[-2000:]
    assert [m["step"] for m in metrics(run) if "reward/mean" in m] == list(range(1, step + 2))


def test_the_config_command_prints_every_option_with_its_doc():
    code, out, err = cli("config", LOOKUP, "steps=7")
    assert code == 0, err
    assert "steps: 7  # training steps" in out and "overwrite: false  # start over" in out
    assert "  params:" in out and "num_keys: 8" in out  # the env's own params, resolved
    code, out, _ = cli("train", "--help")
    assert code == 0 and "python -m rl config CONFIG" in out
    console = Path(sys.executable).with_name(
        "selfcorrect"
    )  # the package's console script: the same program, its own name
    if console.exists():
        out = subprocess.run([str(console), "train", "--help"], capture_output=True, text=True, timeout=60).stdout
        assert out.startswith("usage: selfcorrect train") and "selfcorrect config CONFIG" in out
