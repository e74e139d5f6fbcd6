"""One typed config: dataclasses loaded from YAML, with `key=value` overrides.

    python -m rl train configs/lookup.yaml steps=50 learner.lr=1e-3 rollout.group_size=4

Values in overrides are parsed as YAML (`reward=[{name: outcome}]` works). An
unknown key fails with its name and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rewards.base import RewardSpec
from rl.learner import AlgoConfig, LearnerConfig
from rl.rollout import RolloutConfig
from rl.sft import SFTConfig
from rl.tiny import TinyModelConfig
from rl.workers import WorkersConfig


@dataclass
class ModelConfig:
    path: str = ""  # Hugging Face model directory or hub id; empty builds a tiny model for the env
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)  # shape of the tiny model built when path is empty


@dataclass
class EnvConfig:
    name: str = "lookup"  # a built-in env (lookup) or a module path exposing ENV_SPEC
    params: dict[str, Any] = field(default_factory=dict)  # options of the env's own params dataclass


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)  # supervised warm start before RL (off unless sft.steps > 0)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    reward: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("outcome")])  # weighted sum of named rewards
    seed: int = 0  # fixes model init, task order and sampling
    steps: int = 100  # training steps (one rollout batch and its update each)
    run_dir: str = "runs/default"  # where config, metrics, episodes and checkpoints go
    save_every: int = 50  # checkpoint every N steps (and at the end); 0 = only at the end
    eval_every: int = 0  # greedy evaluation on the env's eval tasks every N steps (0 = only at the end)
    log_episodes: bool = True  # write every episode of every step to run_dir/episodes/
    resume: str = ""  # a run directory to continue from its latest checkpoint


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())  # YAML errors point at the column over several lines


def _suggest(key: str, options) -> str:
    if not isinstance(key, str):  # YAML keys can be numbers, booleans or null
        return ""
    match = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


def _build(cls, data: Any, where: str):
    """Build dataclass `cls` from a dict, checking every key and the type of every value."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ValueError(f"unknown config key {path!r}{_suggest(key, names)}")
        kwargs[key] = _convert(hints[key], value, path)
    return cls(**kwargs)


def _convert(hint, value, path: str):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is float and not isinstance(value, bool):
        try:  # PyYAML reads "1e-5" (no dot) as a string; accept it as the number it means
            return float(value)
        except (TypeError, ValueError):
            pass
    wrong_type = hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool)))
    if wrong_type:
        raise ValueError(f"{path}: expected {hint.__name__}, got {value!r}")
    return value


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = tree.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {k!r} is not a section")
        tree = node
    tree[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    data: dict = {}
    if path:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a YAML file ({one_line(e)})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config must be a mapping at the top level")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not YAML ({one_line(e)})") from None
        _set(data, key.strip(), value)
    return _build(Config, data, "")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def build_params(cls, params: dict, where: str):
    """Build an env's params dataclass from the config's free-form dict, with the same key checks."""
    return _build(cls, params, where)
