"""Command line: `python -m rl train CONFIG [key=value ...]`."""

from __future__ import annotations

import argparse
import sys

from rl.config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl", description="selfcorrect: RL for self-correcting LM agents")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a policy; resume=RUN_DIR continues a run")
    train.add_argument("config", help="YAML config file")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. learner.lr=1e-5")
    args = parser.parse_args(argv)

    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    from rl.trainer import Trainer  # heavy imports only once the config is known to be valid

    hf_logging.disable_progress_bar()  # one progress bar: ours

    try:
        trainer = Trainer(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        final = trainer.train()
    finally:
        trainer.close()
    summary = ", ".join(f"{k}={v:.3f}" for k, v in final.items() if k in ("reward/mean", "eval/reward/mean", "eval/score/first_turn", "eval/score/last_turn"))
    print(f"done: {trainer.run_dir} ({summary})")
    return 0
