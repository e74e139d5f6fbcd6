"""The reward lab on the command line (no GPU, no torch).

    python -m rewards score EPISODES... [--reward SPEC ...] [--out DIR]  re-score episodes, compare specs
    python -m rewards prefs-demo [--out DIR]                             partial-return vs regret fits on synthetic data
    python -m rewards fit PREFS.jsonl --features score,invalid --out M.json   learn a reward from preferences
    python -m rewards mistakes EPISODES...                                mistake-location accuracy per task

EPISODES: episode files or run directories, as many as wanted; their episodes are pooled.

A SPEC is what a config's `reward:` list holds, as YAML ('{name: outcome, weight: 2}', or a
list of such) or short ('outcome + 0.5*format:penalty=2'); see rewards.lab.parse_spec.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rewards import lab, mistake, preferences


def cmd_score(args) -> None:
    for line in lab.env_warnings(args.episodes, args.reward):  # the scores still come: a reward may be tried on purpose
        print(f"warning: {line}", file=sys.stderr)
    t0 = time.perf_counter()
    episodes, scored = lab.score_files(args.episodes, args.reward, args.workers)
    rep = lab.report(episodes, scored)
    t1 = time.perf_counter()
    print(lab.format_table(rep))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=1))
    written = [out / "report.json"]
    try:
        written += lab.plot(episodes, scored, out)
    except ImportError:
        print("(no PNG plots: pip install matplotlib)")
    print(f"scored in {t1 - t0:.2f}s; wrote {', '.join(str(p) for p in written)}")


def cmd_prefs_demo(args) -> None:
    results = preferences.demo(n_pairs=args.pairs, seed=args.seed)
    print(preferences.format_demo(results))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "prefs_demo.json").write_text(json.dumps(results, indent=1))


def cmd_fit(args) -> None:
    model = preferences.fit_trajectory_preferences(args.prefs, args.features.split(","), args.means, l2=args.l2)
    Path(args.out).write_text(json.dumps(model, indent=1))
    print(preferences.format_model(model))
    print(f"wrote {args.out}; train with  reward: [{{name: learned, params: {{path: {args.out}}}}}]")


def cmd_mistakes(args) -> None:
    acc = mistake.location_accuracy(lab.load_trajectories(args.episodes))
    print(f"{'task':<28} {'n':>6} {'accuracy':>9} {'w/ mistake':>11} {'no mistake':>11}")
    for task, a in acc.items():
        print(
            f"{task:<28} {a['n']:>6} {a['accuracy']:9.3f} "
            f"{a['accuracy_with_mistake']:11.3f} {a['accuracy_no_mistake']:11.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rewards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="re-score recorded episodes under reward specs")
    p.add_argument("episodes", nargs="+", help="episodes JSONL files or run directories, pooled")
    p.add_argument("--reward", action="append", required=True, help="a reward spec; repeat to compare")
    p.add_argument("--out", default="reward_lab", help="folder for report.json and the PNG plots")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes that load and score")
    p.set_defaults(fn=cmd_score)

    p = sub.add_parser("prefs-demo", help="fit both preference models on synthetic data from both models")
    p.add_argument("--pairs", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    p.set_defaults(fn=cmd_prefs_demo)

    p = sub.add_parser("fit", help="learn a linear per-turn reward from trajectory preferences")
    p.add_argument("prefs", help='JSONL: {"a": trajectory, "b": trajectory, "label": 1 if a is preferred else 0}')
    p.add_argument("--features", required=True, help="comma-separated numeric info keys, e.g. score,invalid")
    p.add_argument(
        "--means",
        choices=["reward", "advantage"],
        default="reward",
        help="how the preferences were given: by outcomes (partial return: a reward) or by "
        "decisions (regret: the fit is an optimal advantage, Knox et al.)",
    )
    p.add_argument("--l2", type=float, default=1e-3)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_fit)

    p = sub.add_parser("mistakes", help="accuracy of mistake location per task (envs/mistake episodes)")
    p.add_argument("episodes", nargs="+", help="episodes JSONL files or run directories, pooled")
    p.set_defaults(fn=cmd_mistakes)

    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, OSError) as e:  # bad input files and specs: one line, exit code 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
