"""The main job: for each world, a tiny model is built, warm-started by SFT, trained by RL, and
both checkpoints are evaluated on the same held-out tasks.

    python -m rl demo configs/tiny_code_feedback.yaml configs/tiny_search.yaml overwrite=true   # what `make demo` runs
    python -m rl demo configs/tiny_code.yaml steps=4 sft.steps=10      # overrides apply to every config
    python -m rl demo configs/tiny_code.yaml --seeds 0 1 2             # one run per seed, then mean and range
    python -m rl demo configs/tiny_code.yaml --samples 0               # greedy evaluation only

Prints, per world, the SFT and RL checkpoints' metrics side by side, then the wall time
of each stage; writes the same to RUN_DIR/demo.json. Each checkpoint is evaluated twice on
the same held-out tasks: one greedy episode per task, and `samples` episodes per task at
rollout.temperature (rows "sampled/..." and pass@K). The sampled rows measure the policy
RL trains (their mean is the pass@1 estimate of R1-style papers); greedy decoding shows a
gain only where RL changes which answer is the most likely one (docs/training.md, "Evaluation").

Each run directory also holds the training curves (reward.png, eval.png) and every
evaluated episode. With several seeds each runs in RUN_DIR/seed_N, and a last table gives,
per metric, the mean and the range (min..max) over seeds of SFT, RL and their difference:
the run-to-run spread that an improvement has to beat.

Runs are pipelined: while one run trains, the next one's model build and SFT run in another
process, on half of the CPU cores, and on all of them once the run is over (its log in
RUN_DIR/sft/log.txt). In `make demo` on 2 cores the whole code world trains beside the
search world's SFT (benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from envs.registry import get_env_spec
from rl import logs
from rl.config import Config, load_config
from rl.run.evaluate import evaluate, format_table
from rl.run.scoring import headline
from rl.run.start import starting_path
from rl.run.trainer import Trainer
from rl.run_dir import checkpoints, plan_run, start_over

log = logging.getLogger(__name__)

STAGES = ["model_build", "sft_data", "sft", "rollout", "learner", "sync", "eval"]


def evaluate_both_ways(cfg: Config, checkpoint: Path, run_dir: Path, name: str, samples: int) -> dict[str, float]:
    """Greedy metrics, then (with `samples` > 0) the sampled ones under "sampled/" and pass@samples."""
    metrics = evaluate(cfg, checkpoint, run_dir / f"eval_{name}_episodes.jsonl")
    if samples:
        sampled = evaluate(cfg, checkpoint, run_dir / f"eval_{name}_sampled_episodes.jsonl", samples)
        metrics.update({k if k.startswith("pass@") else f"sampled/{k}": v for k, v in sampled.items()})
    return metrics


class MoreThreadsOnceFree(TrainerCallback):
    """SFT beside a run starts on part of the cores; once the run is over (`free` is set), it takes them all."""

    def __init__(self, free, threads: int):
        self.free, self.threads = free, threads

    def on_step_begin(self, args, state, control, **kwargs):
        if self.free.is_set() and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
            log.info("sft step %d: the run beside is over, %d threads from here", state.global_step, self.threads)


_cores_free = None  # in the spawned process: the event WarmStartBeside sets once the run beside it is over


def _remember(free) -> None:
    global _cores_free
    _cores_free = free


def _warm_start(config: str, overrides: list[str], threads: int, all_threads: int) -> dict[str, float]:
    """A run's model build and SFT, in a process of its own: the seconds each stage took."""
    from transformers.utils import logging as hf_logging

    from rl.run.start import starting_model

    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    cfg = load_config(config, overrides)
    log = Path(cfg.run_dir) / "sft" / "log.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        logs.to_console()  # the console of this process is the log file
        return starting_model(cfg, Path(cfg.run_dir), (MoreThreadsOnceFree(_cores_free, all_threads),))[1]


class WarmStartBeside:
    """A run's model build and SFT, started now in a spawned process with `threads` torch threads;
    it goes on with `all_threads` once the caller waits for it."""

    def __init__(self, config: str, overrides: list[str], threads: int, all_threads: int):
        context = multiprocessing.get_context("spawn")
        self.free = context.Event()  # an Event reaches a spawned process only as it starts, hence the initializer
        self.pool = context.Pool(1, initializer=_remember, initargs=(self.free,))
        self.job = self.pool.apply_async(_warm_start, (config, overrides, threads, all_threads))

    def timings(self) -> dict[str, float]:
        """Wait for it to finish: the seconds each stage took. Its error, if it failed, is raised here."""
        self.free.set()
        try:
            return self.job.get()
        finally:
            self.stop()

    def stop(self) -> None:
        self.pool.terminate()


def run_one(config: str, overrides: list[str], samples: int, beside: dict[str, float] | None = None) -> dict:
    """Train one config end to end; evaluate its SFT and final RL checkpoints on the held-out tasks.

    `beside`: the timings of this run's warm start, when another process made it beside the previous run.
    """
    cfg = load_config(config, overrides)
    start = time.perf_counter()
    trainer = Trainer(cfg)
    try:
        trainer.train()
    finally:
        trainer.close()
    run_dir = trainer.run_dir
    rl_model = checkpoints(run_dir)[trainer.step] / "model"
    sft_model = starting_path(cfg, run_dir)  # without an SFT stage, "sft" is the model RL started from
    t0 = time.perf_counter()
    results = {
        name: evaluate_both_ways(cfg, path, run_dir, name, samples)
        for name, path in (("sft", sft_model), ("rl", rl_model))
    }
    timings = {**trainer.timings, "final_eval": time.perf_counter() - t0, "total": time.perf_counter() - start}
    out = {
        "config": config,
        "run_dir": str(run_dir),
        "sft": results["sft"],
        "rl": results["rl"],
        "timings": timings,
        "timings_beside_previous_run": beside or {},
    }
    (run_dir / "demo.json").write_text(json.dumps(out, indent=1))
    return out


def table_keys(metrics: dict, env_name: str) -> list[str]:
    """The env's headline metrics (its `EnvSpec.headline`), greedy then sampled, and pass@K: those present in
    `metrics`."""
    main = headline(get_env_spec(env_name))
    keys = main + [f"sampled/{k}" for k in main] + sorted(k for k in metrics if k.startswith("pass@"))
    return [k for k in keys if k in metrics]


def report(result: dict, env_name: str) -> str:
    keys = table_keys(result["rl"], env_name)
    delta = {k: result["rl"][k] - result["sft"][k] for k in keys}
    table = format_table({"SFT": result["sft"], "RL": result["rl"], "RL - SFT": delta}, keys)
    stages = "  ".join(
        f"{s} {result['timings'][s]:.0f}s" for s in STAGES + ["final_eval", "total"] if s in result["timings"]
    )
    beside = "  ".join(f"{s} {v:.0f}s" for s, v in result.get("timings_beside_previous_run", {}).items())
    beside = f"\nbeside the previous run, in another process: {beside}" if beside else ""
    title = f"== {result['config']}  ({result['run_dir']}, held-out tasks: {result['rl']['episodes/count']:.0f})"
    return f"{title}\n{table}\nwall time: {stages}{beside}"


def seed_summary(results: list[dict], env_name: str) -> str:
    """Mean and range over the seeds' runs of one config, for SFT, RL and RL - SFT."""
    keys = table_keys(results[0]["rl"], env_name)
    lines = [f"== {results[0]['config']} over {len(results)} seeds: mean [min .. max]"]
    for k in keys:
        cells = []
        for values in (
            [r["sft"][k] for r in results],
            [r["rl"][k] for r in results],
            [r["rl"][k] - r["sft"][k] for r in results],
        ):
            values = [v for v in values if not math.isnan(v)]  # e.g. confidence: undefined with no right first attempt
            cells.append(
                f"{sum(values) / len(values):7.3f} [{min(values):.3f} .. {max(values):.3f}]"
                if values
                else f"{'nan':>7}{'':19}"
            )
            cells[-1] += "" if len(values) == len(results) else f" ({len(values)} seeds)"
        lines.append(f"{k:<30}" + "   ".join(cells))
    return "\n".join([lines[0], f"{'':<30}{'SFT':<27}{'RL':<27}RL - SFT", *lines[1:]])


def main(configs: list[str], overrides: list[str], seeds: list[int] | None = None, samples: int = 4) -> list[dict]:
    if samples < 0:
        raise ValueError(f"samples must be 0 (greedy only) or a number of sampled episodes per task, got {samples}")
    start = time.perf_counter()
    runs: list[tuple[str, list[str]]] = []  # (config, overrides) of every run, in order
    for config in configs:
        base = load_config(config, overrides).run_dir
        runs += (
            [(config, overrides + [f"seed={seed}", f"run_dir={Path(base) / f'seed_{seed}'}"]) for seed in seeds]
            if seeds
            else [(config, overrides)]
        )
    run_dirs = [str(Path(load_config(c, o).run_dir).resolve()) for c, o in runs]
    if len(set(run_dirs)) < len(runs):
        shared = sorted({d for d in run_dirs if run_dirs.count(d) > 1})
        raise ValueError(f"the demo's runs need run directories of their own; these are shared: {shared}")
    for config, run_overrides in runs:  # every run's directory checked (and cleared with overwrite=true) before work
        cfg = load_config(config, run_overrides)
        run_dir, _ = plan_run(cfg.run_dir, cfg.resume, cfg.overwrite)
        if cfg.overwrite:
            start_over(run_dir)  # now, not when its run starts: its SFT may be made beside the run before it
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = torch.get_num_threads()
    results, next_warm_start = [], None
    try:
        for i, (config, run_overrides) in enumerate(runs):
            beside = next_warm_start.timings() if next_warm_start else None  # this run's SFT, made beside the last run
            next_warm_start = (
                WarmStartBeside(*runs[i + 1], threads=max(1, cores // 2), all_threads=threads)
                if i + 1 < len(runs)
                else None
            )
            torch.set_num_threads(max(1, cores - cores // 2) if next_warm_start else threads)
            results.append(run_one(config, run_overrides, samples, beside))
            print(report(results[-1], load_config(config, overrides).env.name), flush=True)
    finally:
        torch.set_num_threads(threads)
        if next_warm_start:
            next_warm_start.stop()
    summaries = []
    if seeds:
        for k, config in enumerate(configs):
            summaries.append(
                seed_summary(results[k * len(seeds) : (k + 1) * len(seeds)], load_config(config, overrides).env.name)
            )
    if len(results) > 1:
        print("\n" + "\n\n".join(report(r, load_config(r["config"], overrides).env.name) for r in results))
    if summaries:
        print("\n" + "\n\n".join(summaries))
    curves = ", ".join(str(Path(r["run_dir"]) / "reward.png") for r in results)
    print(f"\ndemo done in {time.perf_counter() - start:.0f}s; curves: {curves}")
    return results
