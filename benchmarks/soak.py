"""Chaos soak: train the lookup task on a local Ray cluster while rollout workers are killed and env steps hang.

Run from the repository root:

    python benchmarks/soak.py --steps 300 --kill-every 25 --seed 0   # benchmarks/README.md's table

Every `--kill-every` steps a random rollout worker process gets SIGKILL, alternately after its
rollout came back (before the weight sync that follows the update) and while its rollout runs.
Env steps hang at random (`--hang-prob`) and `rollout.env_timeout_s` cuts them off: those episodes
fail and are left out. An episode is lost when it was submitted and came back neither as a result
nor as a reported failure; the goal is 0. The table also gives the wall-time cost of recovery: the
time of the steps that had a kill, minus the median time of the steps that had none.

(Learner ranks are not killed here: tests/test_distributed.py kills one and resumes the run.)
"""

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without `pip install -e .`
from rl.config import load_config  # noqa: E402
from rl.run.trainer import Submission, Trainer  # noqa: E402
from tests import ray_cluster  # noqa: E402


def count(sub: Submission, episodes: list) -> dict[str, int]:
    """Returned, failed and timed-out episodes of a submission; one missing or belonging to another item is lost."""
    out = {"returned": 0, "failed": 0, "timeouts": 0}
    for (task, group, seed), ep in zip(sub.items, episodes):
        if ep is None or (ep.trajectory.task.id, ep.group, ep.seed) != (task.id, group, seed):
            continue
        out["failed" if ep.failed else "returned"] += 1
        out["timeouts"] += ep.failed and "no answer within" in ep.error
    out["lost"] = len(sub.items) - out["returned"] - out["failed"]
    return out


def soak(steps: int, kill_every: int, seed: int, hang_prob: float, env_timeout_s: float, run_dir: str) -> dict:
    overrides = [
        f"run_dir={run_dir}", f"steps={steps}", f"seed={seed}", "save_every=0", "eval_every=0", "log_episodes=false",
        "learner.lr=3e-3", "workers.ray=true", "workers.num_workers=2", f"rollout.env_timeout_s={env_timeout_s}",
        "env.name=tests.slow_env", f"env.params={{step_seconds: 0, hang_prob: {hang_prob}, hang_seed: {seed}}}",
    ]  # fmt: skip
    # A cluster of its own (temp dir, ports, namespace) unless one runs;
    # its workers import the test env from this checkout.
    temp_dir = None if ray.is_initialized() else ray_cluster.start(num_cpus=2)
    trainer = Trainer(load_config(ROOT / "configs" / "lookup.yaml", overrides))
    rng = random.Random(seed)
    out = {"steps": 0, "kills": 0, "submitted": 0, "returned": 0, "failed": 0, "timeouts": 0, "lost": 0}
    times: dict[bool, list[float]] = {True: [], False: []}  # step wall times, with and without a kill
    start = time.perf_counter()
    try:
        for step in range(1, steps + 1):
            kill = step % kill_every == 0
            # Pids first: a Ray actor runs its calls in order, so asking after the submit would wait for the rollout.
            victim = rng.choice(trainer.pool.pids()) if kill else None
            t0 = time.perf_counter()
            sub = trainer.submit(step)
            if kill and out["kills"] % 2 == 1:
                os.kill(victim, signal.SIGKILL)  # while its rollout runs
            episodes = sub.rollout.result().episodes
            if kill and out["kills"] % 2 == 0:
                os.kill(victim, signal.SIGKILL)  # after its rollout, before the update's weight sync
            out["kills"] += kill
            out["submitted"] += len(sub.items)
            for key, n in count(sub, episodes).items():
                out[key] += n
            trainer.pending.append(sub)  # the step trains on it: a rollout's result is kept
            metrics = trainer.train_step()
            trainer.log(step, metrics)
            times[kill].append(time.perf_counter() - t0)
            out["steps"] = step
            out["reward"] = metrics.get("reward/mean", float("nan"))
    finally:
        out["restarts"] = trainer.pool.restarts
        out["wall_s"] = time.perf_counter() - start
        trainer.close()
        if temp_dir:
            ray_cluster.stop(temp_dir)
    median = statistics.median(times[False]) if times[False] else 0.0
    out["median_step_s"] = median
    out["recovery_s"] = sum(t - median for t in times[True])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps")
    p.add_argument("--kill-every", type=int, default=10, help="SIGKILL a random rollout worker every N steps")
    p.add_argument("--seed", type=int, default=0, help="seeds the run, the choice of victims and the hangs")
    p.add_argument("--hang-prob", type=float, default=0.002, help="chance that an env.step hangs")
    p.add_argument(
        "--env-timeout", type=float, default=0.5, help="rollout.env_timeout_s: a hanging env.step fails after this"
    )
    p.add_argument("--run-dir", default="", help="where the run's metrics go (default: a temp dir)")
    args = p.parse_args()
    if args.steps < 1 or args.kill_every < 1:
        p.error("--steps and --kill-every must be at least 1")
    r = soak(
        args.steps,
        args.kill_every,
        args.seed,
        args.hang_prob,
        args.env_timeout,
        args.run_dir or tempfile.mkdtemp(prefix="soak-"),
    )
    rows = [
        ("steps completed", f"{r['steps']}"),
        ("workers killed", f"{r['kills']}"),
        ("worker restarts", f"{r['restarts']}"),
        ("episodes submitted", f"{r['submitted']}"),
        ("episodes returned", f"{r['returned']}"),
        ("episodes failed", f"{r['failed']}"),
        ("  of which env.step timed out", f"{r['timeouts']}"),
        ("episodes lost", f"{r['lost']}"),
        ("wall time", f"{r['wall_s']:.1f} s"),
        ("median step, no kill", f"{r['median_step_s']:.3f} s"),
        (
            "recovery cost, all kill steps",
            f"{r['recovery_s']:.1f} s ({r['recovery_s'] / max(r['kills'], 1):.2f} s per kill)",
        ),
        ("reward/mean, last step", f"{r['reward']:.3f}"),
    ]
    for name, value in rows:
        print(f"{name:<32}{value:>28}")


if __name__ == "__main__":
    main()
