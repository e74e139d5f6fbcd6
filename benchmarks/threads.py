"""The lookup spine's speed against torch threads, on an idle machine and beside busy processes.

Run from the repository root (a few minutes on 2 cores):

    python benchmarks/threads.py                 # 20 steps each way
    python benchmarks/threads.py --steps 40

Each row runs `python -m rl train configs/lookup.yaml` (tiny model, in-process engine) for
--steps steps, with `threads=N`, idle and then with --busy processes beside it that spin on
the CPU (what another job on a shared machine does). "torch default" is what the trainer ran
with before `threads` existed: torch's own default, one thread per core. The figure is steps
per second over the training steps (rollout, update and weight sync from the metrics' time keys:
model build and start excluded).
Target: with the default `threads`, busy within 2x of idle.
"""

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spin() -> None:
    while True:
        pass


def steps_per_second(steps: int, threads: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"steps={steps}", "save_every=0", "eval_every=0", f"run_dir={tmp}/run"]
        if threads:
            overrides.append(f"threads={threads}")
        subprocess.run([sys.executable, "-m", "rl", "train", "configs/lookup.yaml", *overrides], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        rows = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
    seconds = sum(r["time/rollout_wait"] + r["time/update"] + r["time/sync"] for r in rows if "time/update" in r)
    return steps / seconds


p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--steps", type=int, default=20)
p.add_argument("--busy", type=int, default=2, help="spinning processes beside the run")
args = p.parse_args()

cores = multiprocessing.cpu_count()
settings = [("torch default (one per core)", str(cores)), ("threads=1", "1"), ("default threads", "")]
print(f"lookup spine, {args.steps} steps, {cores} cores, {args.busy} busy processes in the busy column")
print(f"{'threads':<30}{'idle steps/s':>14}{'busy steps/s':>14}{'busy/idle':>11}")
for name, threads in settings:
    idle = steps_per_second(args.steps, threads)
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for s in spinners:
        s.start()
    try:
        busy = steps_per_second(args.steps, threads)
    finally:
        for s in spinners:
            s.kill()
            s.join()
    print(f"{name:<30}{idle:>14.2f}{busy:>14.2f}{busy / idle:>11.2f}")
