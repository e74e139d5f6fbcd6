"""Command line (`selfcorrect` is the same program).

python -m rl train CONFIG [key=value ...]      # (tiny model build,) SFT warm start if sft.steps > 0, RL, eval
python -m rl config CONFIG [key=value ...]     # the resolved config, every option with its doc
python -m rl sft CONFIG [key=value ...]        # only the SFT stage: RUN_DIR/sft/model
python -m rl eval CONFIG --checkpoint PATH [--out FILE] [--samples K]
                                               # held-out metrics of any checkpoint, as JSON
python -m rl demo CONFIG [CONFIG ...] [key=value ...] [--seeds 0 1 2] [--samples K]
                                               # train each, SFT vs RL side by side
python -m rl view RUN_DIR [--port P] [--host H] [--html OUT]   # a web page of a run's curves and episodes
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from rl import logs
from rl.config import Config, describe, load_config, trainer_threads
from rl.run_dir import plan_run


def main(argv: list[str] | None = None) -> int:
    prog = "selfcorrect" if Path(sys.argv[0]).name == "selfcorrect" else "python -m rl"
    parser = argparse.ArgumentParser(prog=prog, description="selfcorrect: RL for self-correcting LM agents")
    sub = parser.add_subparsers(dest="command", required=True)
    options = f"every option, its default and its doc: {prog} config CONFIG [key=value ...]"
    train = sub.add_parser("train", help="train a policy; resume=RUN_DIR continues a run", epilog=options)
    sft = sub.add_parser("sft", help="only the supervised warm start (sft.steps must be > 0)", epilog=options)
    show = sub.add_parser("config", help="print the resolved config, each option with its one-line doc")
    for p in (train, sft, show):
        p.add_argument("config", help="YAML config file")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. learner.lr=1e-5")
    ev = sub.add_parser("eval", help="evaluation of a checkpoint on the env's held-out tasks (greedy, or --samples K)")
    ev.add_argument("config", help="YAML config file (env, rollout limits, rewards)")
    ev.add_argument("overrides", nargs="*", help="key=value overrides")
    ev.add_argument(
        "--checkpoint", required=True, help="a Hugging Face model directory, e.g. RUN_DIR/checkpoints/step_000100/model"
    )
    ev.add_argument("--out", default="", help="JSON file for the metrics (default: eval.json beside the checkpoint)")
    ev.add_argument(
        "--samples",
        type=int,
        default=0,
        help="sample K episodes per task at rollout.temperature and add pass@K (default: greedy)",
    )
    demo = sub.add_parser("demo", help="train each config, then evaluate its SFT and RL checkpoints side by side")
    demo.add_argument("configs", nargs="+", help="YAML config files, then key=value overrides applied to every one")
    demo.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="one run per seed (in RUN_DIR/seed_N), then mean and range"
    )
    demo.add_argument(
        "--samples",
        type=int,
        default=4,
        help="also evaluate K sampled episodes per task at rollout.temperature (0: greedy only)",
    )
    view = sub.add_parser("view", help="serve a page of a run's curves and episodes (or write it as one file)")
    view.add_argument("run_dir", help="a run directory")
    view.add_argument("--port", type=int, default=8000, help="port to serve on (0: any free one)")
    view.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    view.add_argument(
        "--html",
        default="",
        help="write the page to this file instead of serving: every curve, and "
        "the episodes of 10 steps at most (the page says what it left out)",
    )
    args = parser.parse_args(argv)

    if args.command == "view":
        from rl.view.page import main as view_main

        try:
            return view_main(args.run_dir, args.port, args.host, args.html)
        except (FileNotFoundError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.command == "demo":
        configs = [c for c in args.configs if "=" not in c]
        overrides = [c for c in args.configs if "=" in c]
    else:
        configs, overrides = [args.config], args.overrides
    try:
        cfgs = [load_config(c, overrides) for c in configs]
        if args.command == "sft" and not cfgs[0].sft.steps:
            raise ValueError("sft.steps is 0: set it in the config or as sft.steps=N")
        if args.command == "train":  # the run directory too, before anything is imported, built or written
            plan_run(cfgs[0].run_dir, cfgs[0].resume, cfgs[0].overwrite)
    except (ValueError, FileNotFoundError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(describe(cfgs[0]))
        return 0
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one progress bar: ours
    logs.to_console()
    logs.quiet_libraries(cfgs[0].log_level)
    try:
        if args.command == "sft":
            from rl.run.start import starting_model  # heavy imports only once the config is known to be valid

            path, timings = starting_model(cfgs[0], Path(cfgs[0].run_dir))
            print(f"done: {path} ({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())})")
        elif args.command == "eval":
            from rl.run.evaluate import main as evaluate_main

            evaluate_main(cfgs[0], args.checkpoint, args.out, args.samples)
        elif args.command == "demo":
            from rl.run.demo import main as demo_main

            demo_main(configs, overrides, args.seeds, args.samples)
        else:
            return _train(cfgs[0], [prog, *(argv if argv is not None else sys.argv[1:])])
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nstopped ({args.command} interrupted)", file=sys.stderr)
        return 130
    return 0


def _train(cfg: Config, command: list[str]) -> int:
    """Train; a first Ctrl-C ends the run after the current step with a checkpoint, a second one at once."""
    import torch

    from envs.registry import get_env_spec
    from rl.learn.sharding import LearnerRankError
    from rl.run.scoring import headline
    from rl.run.trainer import Trainer

    torch.set_num_threads(trainer_threads(cfg))
    try:
        trainer = Trainer(cfg)
    except KeyboardInterrupt:
        print("\nstopped before the first step: nothing to resume", file=sys.stderr)
        return 130
    except LearnerRankError as e:  # the ranks could not start: which addresses, which resources
        print(f"error: {e}", file=sys.stderr)
        return 1

    def on_ctrl_c(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt  # the second one: at once
        trainer.stop_requested = True
        print("\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again to stop at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        try:
            final = trainer.train()
        finally:
            signal.signal(signal.SIGINT, previous)
            trainer.close()
    except LearnerRankError as e:  # the checkpoints written so far stay: resume=RUN_DIR continues from the last
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\nstopped at once during step {trainer.step + 1}; continue from the last checkpoint: "
            f"{_resume_line(command, trainer)}",
            file=sys.stderr,
        )
        return 130
    if trainer.stop_requested:
        print(
            f"stopped after step {trainer.step} (checkpoint saved); continue with: {_resume_line(command, trainer)}",
            file=sys.stderr,
        )
        return 130
    # the training reward, then the final evaluation of the env's headline metrics (EnvSpec.headline)
    shown = dict.fromkeys(["reward/mean"] + [f"eval/{k}" for k in headline(get_env_spec(cfg.env.name))])
    summary = ", ".join(f"{k}={final[k]:.3f}" for k in shown if k in final)
    print(f"done: {trainer.run_dir} ({summary})")
    return 0


def _resume_line(command: list[str], trainer) -> str:
    """The command that continues this run: the same one, with resume= (and without run_dir=, resume= names it)."""
    kept = [a for a in command if not a.startswith(("resume=", "run_dir=", "overwrite="))]
    return " ".join([*kept, f"resume={trainer.run_dir}"])
