"""How long `rl view` takes to open a run of 10,000 episodes: the page, the run's JSON, the first step's episodes
and one episode in full, over HTTP from a server on loopback (what a browser asks for before it draws).

    python benchmarks/viewer.py                      # 10,000 episodes: 125 steps of 80, then one step of 10,000

The run is synthetic, in the trainer's format (rl/run/trainer.py): lookup-like episodes of two turns, 40 tokens each.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from rl.view.page import Run, make_server


def episode(step: int, i: int, rng: random.Random) -> dict:
    n = 40
    first, last = rng.random() < 0.4, rng.random() < 0.6
    turns = [
        {"action": " red", "observation": " no , try again :", "info": {"score": float(first)}},
        {"action": " blue", "observation": "", "info": {"score": float(last)}},
    ]
    mask = [0] * 20 + [1] * 5 + [0] * 10 + [1] * 5
    return {
        "step": step,
        "trajectory": {"task": {"id": f"task-{i // 8}", "prompt": "what is it", "metadata": {}}, "turns": turns},
        "group": i // 8,
        "seed": i,
        "token_ids": [rng.randrange(128) for _ in range(n)],
        "loss_mask": mask,
        "logprobs": [-rng.random() * m for m in mask],
        "turn_ids": [-1] * 20 + [0] * 15 + [1] * 5,
        "finish": "done",
        "error": "",
        "reward": {
            "total": float(last),
            "outcome": float(last),
            "process": [0.0, 0.0],
            "components": {"outcome": float(last)},
        },
        "learner_logprobs": [-rng.random() * m for m in mask],
        "advantage": rng.gauss(0, 1),
        "token_advantages": [rng.gauss(0, 1) * m for m in mask],
    }


def write_run(root: Path, steps: int, per_step: int) -> None:
    rng = random.Random(0)
    (root / "episodes").mkdir(parents=True)
    with (root / "metrics.jsonl").open("w") as metrics:
        for step in range(1, steps + 1):
            eps = [episode(step, i, rng) for i in range(per_step)]
            (root / "episodes" / f"step_{step:06d}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
            metrics.write(
                json.dumps(
                    {
                        "step": step,
                        "reward/mean": sum(e["reward"]["total"] for e in eps) / per_step,
                        "learner/loss": rng.random(),
                        "sync/probe_max_abs": 0.0,
                    }
                )
                + "\n"
            )


def time_open(root: Path) -> float:
    """Seconds from a fresh server to the answers the page needs to draw its first view."""
    t0 = time.perf_counter()
    server = make_server(Run(root), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        urllib.request.urlopen(base).read()
        info = json.loads(urllib.request.urlopen(base + "api/run").read())
        shown = info["steps"][-1]["file"]  # the page opens on the last step
        urllib.request.urlopen(base + f"api/episodes?file={shown}").read()
        urllib.request.urlopen(base + f"api/episode?file={shown}&i=0").read()
        return time.perf_counter() - t0
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10_000)
    args = parser.parse_args()
    print(f"{'layout':<28}{'episodes':>10}{'open (s)':>10}")
    for steps, per_step in ((args.episodes // 80, 80), (1, args.episodes)):
        with tempfile.TemporaryDirectory() as tmp:
            write_run(Path(tmp), steps, per_step)
            print(f"{f'{steps} steps of {per_step}':<28}{steps * per_step:>10}{time_open(Path(tmp)):>10.2f}")


if __name__ == "__main__":
    main()
