"""The model a run starts from: a Hugging Face directory (or hub id), or a tiny model built for
the env, then the supervised warm start when `sft.steps > 0`.

    base = model.path                      or   run_dir/base_model (a tiny model, its tokenizer
                                                trained on the env's text and the SFT demos)
    start = run_dir/sft/model (sft.steps > 0)   or   base

`train`, `sft`, `eval` and `demo` all make their starting model through `starting_model`:
one path for a tiny model and a real one.
"""

from __future__ import annotations

import time
from pathlib import Path

from transformers import AutoTokenizer

from envs.base import Trajectory
from rl.config import Config
from rl.model import load_model, resolve_device


def starting_path(cfg: Config, run_dir: Path) -> Path:
    """Where the model RL starts from is (or will be): the SFT stage's output when there is one, else `model.path`
    or the tiny base model."""
    if cfg.sft.steps:
        return run_dir / "sft" / "model"
    return Path(cfg.model.path) if cfg.model.path else run_dir / "base_model"


def starting_model(cfg: Config, run_dir: Path, callbacks: tuple = ()) -> tuple[Path, dict[str, float]]:
    """The model RL starts from, and the seconds each stage took to make it.

    Each stage runs once: a rerun or a resume finds base_model/ and sft/model/ already there.
    The tiny model's tokenizer is trained on the env's text and, when there is an SFT stage, on
    its trajectories too (the tags and names the model will read and write).
    `callbacks`: more TRL callbacks for the SFT stage (the demo's, which changes the thread count).
    """
    from rl.run import sft  # TRL and datasets, imported only by runs that fine-tune
    from rl.run.tiny import build_tiny_model

    timings: dict[str, float] = {}
    base = Path(cfg.model.path) if cfg.model.path else run_dir / "base_model"
    sft_model = starting_path(cfg, run_dir)
    trajectories: list[Trajectory] = []
    if cfg.sft.steps and not (sft_model / "config.json").exists():
        t0 = time.perf_counter()
        trajectories = sft.load_trajectories(cfg)
        timings["sft_data"] = time.perf_counter() - t0
    if not cfg.model.path and not (base / "config.json").exists():
        t0 = time.perf_counter()
        spec, params = cfg.env.resolve()
        texts = spec.sample_text(params)
        build_tiny_model(base, texts + [sft.trajectory_text(t) for t in trajectories[:2000]], cfg.model.tiny, cfg.seed)
        timings["model_build"] = time.perf_counter() - t0
    if not cfg.sft.steps:
        return sft_model, timings
    if trajectories:
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = load_model(base, resolve_device(cfg.learner.device))
        sft.run_sft(cfg, model, tokenizer, sft_model, trajectories, callbacks)
        timings["sft"] = time.perf_counter() - t0
    return sft_model, timings
