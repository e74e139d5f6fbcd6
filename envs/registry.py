"""Environments by name.

An environment module exposes `ENV_SPEC`: its options (a dataclass), how to build
one env, which tasks it plays, sample text to train a tokenizer on for a tiny
model, and optionally scripted demonstrations for a supervised warm start.
Built-in names map to modules here; any other name is taken as a module path
(`mypkg.my_env`), so users add environments without touching this file.
Modules are imported only when chosen, so an unused env costs nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

from envs.base import Env, Task, Trajectory
from envs.names import did_you_mean

BUILTIN = {
    "lookup": "envs.lookup",
    "code": "envs.code",
    "search": "envs.search",
    "mistake": "envs.mistake",
    "bbq": "envs.bbq",
}


@dataclass
class EnvSpec:
    params: type  # dataclass of the env's options, each with a default
    make_env: Callable[[Any], Env]  # params -> a fresh env
    load_tasks: Callable[[Any, str], list[Task]]  # (params, split: "train" | "eval") -> tasks
    sample_text: Callable[[Any], list[str]]  # params -> text a tokenizer for this task is trained on
    # (params, n, seed, keep_share, hesitation) -> n scripted Trajectory demos for an SFT warm start; None = no demos
    demonstrations: Callable[[Any, int, int, float, float], list[Trajectory]] | None = None
    # trajectories -> the env's own evaluation metrics (e.g. BBQ's bias scores); None = none beyond reward and score
    metrics: Callable[[list[Trajectory]], dict[str, float]] | None = None
    headline: tuple[str, ...] = ()  # the metrics a summary table shows first (`rl demo`); () = reward and score


def check_env_name(name: str) -> None:
    """Fail on an env that is neither built in nor an importable module, without importing it."""
    module_name = BUILTIN.get(name, name)
    try:
        found = importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):  # a missing parent package, or an empty or relative name
        found = False
    if not found:
        raise ValueError(
            f"env.name: unknown env {name!r}{did_you_mean(name, BUILTIN)} "
            f"(built-in envs are {sorted(BUILTIN)}, or give a module path)"
        )


def get_env_spec(name: str) -> EnvSpec:
    module_name = BUILTIN.get(name, name)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(
            f"unknown env {name!r}: built-in envs are {sorted(BUILTIN)}, or give a module path ({e})"
        ) from e
    if not hasattr(module, "ENV_SPEC"):
        raise ValueError(f"module {module_name!r} has no ENV_SPEC")
    return module.ENV_SPEC
