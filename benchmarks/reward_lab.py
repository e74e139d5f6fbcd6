"""Reward lab benchmark: re-score many recorded search episodes under three specs, on the CPU.

Run from the repository root:

    python benchmarks/reward_lab.py  # 100k episodes, 3 specs per set (target: under 60 s on 2 cores)
    python benchmarks/reward_lab.py --episodes 10000 --tokens 512 --workers 1

It writes trainer-format episode lines (envs/search turns: search with information, judge,
answer; `--tokens` ids, mask, logprobs and turn ids per episode, as rl/run/trainer.py records them)
to a temporary file, then times what `python -m rewards score` does: load, score under each spec,
and the statistics (Kendall tau between every pair of specs included), for two sets of three
specs: the search rewards and the generic ones. Plots are not timed.
"""

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards import lab  # noqa: E402

SPEC_SETS = {
    "search": [  # ReSeek's rewards: the judge reward normalises every retrieved passage, the costly part
        "search_answer",
        "search_answer + search_judge + 0.5*search_format",
        "search_answer + search_judge:aggregate_by=sum,answer_bonus=0.1",
    ],
    "generic": ["outcome", "outcome:binary=true + 0.5*format", "turn_score + format:penalty=0.5"],
}
NAMES = ["Mozastan", "Pelora", "Quibet", "Rastania", "Sovel", "Tarnis"]


def fake_episode(rng: random.Random, step: int, token_rows: list[tuple]) -> dict:
    """A search episode of 0-4 (search, judge) pairs and usually an answer, like envs/search writes."""
    gold = rng.choice(NAMES)
    turns = []
    for _ in range(rng.randint(0, 4)):
        found = rng.random() < 0.4
        information = " ".join(rng.choice(["the", "capital", "of", "born", "in", "city"]) for _ in range(40))
        information += f" {gold}" if found else f" {rng.choice(NAMES)}x"
        turns.append(
            {
                "action": "<search>where was X born</search>",
                "observation": f"<information>{information}</information>",
                "info": {
                    "action": "search",
                    "doc_ids": [str(rng.randint(0, 99))],
                    "information": information,
                    "score": 0.0,
                },
            }
        )
        yes = rng.random() < 0.5
        turns.append(
            {
                "action": f"<judge>{'yes' if yes else 'no'}</judge>",
                "observation": "",
                "info": {
                    "action": "judge",
                    "verdict": "yes" if yes else "no",
                    "judged_turn": len(turns) - 1,
                    "score": 0.0,
                },
            }
        )
    if rng.random() < 0.9:
        answer = gold if rng.random() < 0.5 else rng.choice(NAMES)
        turns.append(
            {
                "action": f"<answer>{answer}</answer>",
                "observation": "",
                "info": {"action": "answer", "score": float(answer == gold)},
            }
        )
    else:
        turns.append(
            {"action": "I am not sure", "observation": "", "info": {"action": "invalid", "invalid": True, "score": 0.0}}
        )
    task = {
        "id": f"q{rng.randint(0, 10**6)}",
        "prompt": "Question: Where was X born?\n",
        "metadata": {"question": "Where was X born?", "answers": [gold], "hops": 1, "gold_doc_ids": ["1"]},
    }
    ids, logprobs = rng.choice(token_rows)  # their content does not matter, only what parsing them costs
    return {
        "step": step,
        "trajectory": {"task": task, "turns": turns},
        "group": 0,
        "seed": rng.randint(0, 10**9),
        "token_ids": ids,
        "loss_mask": [1] * len(ids),
        "logprobs": logprobs,
        "turn_ids": [0] * len(ids),
        "finish": "done",
        "error": "",
        "reward": {"total": 0.0, "outcome": 0.0, "process": [0.0] * len(turns), "components": {}},
        "advantage": 0.0,
    }


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished workers."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--tokens", type=int, default=128, help="token ids, mask, logprobs per recorded episode")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "episodes.jsonl"
        rng = random.Random(args.seed)
        rows = [
            (
                [rng.randint(0, 800) for _ in range(args.tokens)],
                [round(-rng.random() * 3, 6) for _ in range(args.tokens)],
            )
            for _ in range(16)
        ]
        t0 = time.perf_counter()
        with path.open("w") as f:
            for i in range(args.episodes):
                f.write(json.dumps(fake_episode(rng, i // 64, rows)) + "\n")
        print(
            f"wrote {args.episodes} episodes ({path.stat().st_size / 1e6:.0f} MB, {args.tokens} tokens each) "
            f"in {time.perf_counter() - t0:.1f}s (not timed); {args.workers} workers"
        )

        # Wall time depends on what else the machine runs; CPU seconds (this process and its workers) do not:
        # cpu / workers is what the wall time would be on `workers` idle cores.
        print(
            f"\n{'spec set':<9} {'load+score':>10} {'stats':>6} {'wall s':>7} "
            f"{'cpu s':>7} {'cpu/workers':>11} {'< 60 s':>7}  specs (mean total; taus)"
        )
        for name, texts in SPEC_SETS.items():
            t, cpu = time.perf_counter(), cpu_seconds()
            episodes, scored = lab.score_files(path, texts, args.workers)
            t_score = time.perf_counter() - t
            rep = lab.report(episodes, scored)
            wall, cpu = time.perf_counter() - t, cpu_seconds() - cpu
            means = ", ".join(f"{s.total.mean():.3f}" for s in scored)
            taus = ", ".join(f"{v:.3f}" for v in rep["kendall_tau"].values())
            verdict = "PASS" if min(wall, cpu / args.workers) < 60 else "FAIL"
            print(
                f"{name:<9} {t_score:10.2f} {wall - t_score:6.2f} {wall:7.2f} "
                f"{cpu:7.2f} {cpu / args.workers:11.2f} {verdict:>7}  "
                f"{texts} ({means}; {taus})"
            )


if __name__ == "__main__":
    main()
