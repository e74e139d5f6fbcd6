"""Reward results, the reward registry, and weighted combination.

A reward function maps a text-level `Trajectory` to a `Reward`: one process
reward per agent turn plus an outcome reward. Reward functions are built by name
from a spec (`{"name": ..., "weight": ..., "params": {...}}`), the same spec for
training and for offline re-scoring, so swapping a reward is a config change.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from envs.base import Trajectory
from envs.names import Registry, did_you_mean


@dataclass
class Reward:
    process: list[float]  # one reward per agent turn, earned by that turn
    outcome: float  # earned by the episode as a whole
    components: dict[str, float] = field(default_factory=dict)  # named parts (each a total), for logging

    @property
    def total(self) -> float:
        return self.outcome + sum(self.process)


RewardFn = Callable[[Trajectory], Reward]
# name -> factory(**params) -> RewardFn; `@register_reward("name")` adds one.
REWARDS = Registry("reward")
register_reward = REWARDS.register


def reward_names() -> list[str]:
    return sorted(REWARDS)


@dataclass
class RewardSpec:
    #: registered reward name
    name: str
    #: multiplies both its process and outcome rewards
    weight: float = 1.0
    #: keyword arguments of the reward's factory
    params: dict[str, Any] = field(default_factory=dict)


def check_reward_spec(spec: RewardSpec, where: str = "") -> None:
    """Fail on an unknown reward name or parameter (before anything is built), naming the closest valid one."""
    at = f"{where}: " if where else ""
    if spec.name not in REWARDS:
        hint = did_you_mean(spec.name, REWARDS, parenthesised=True)
        raise ValueError(f"{at}unknown reward {spec.name!r}{hint}; known: {reward_names()}")
    accepted = inspect.signature(REWARDS[spec.name]).parameters
    try:
        hints = typing.get_type_hints(REWARDS[spec.name])
    except Exception:  # an annotation that does not resolve here: the defaults' types still check
        hints = {}
    for key, value in spec.params.items():
        if key not in accepted:
            hint = did_you_mean(key, accepted, parenthesised=True)
            raise ValueError(f"{at}reward {spec.name!r} has no parameter {key!r}{hint}; it takes {list(accepted)}")
        _check_type(value, hints.get(key, type(accepted[key].default)), f"{at}reward {spec.name!r} parameter {key!r}")


def _check_type(value: Any, hint: Any, where: str) -> None:
    """A parameter's value against its annotation (or its default's type): numbers, strings, bools, Literal choices."""
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            options = typing.get_args(hint)
            raise ValueError(
                f"{where}: {value!r} is not one of {', '.join(map(repr, options))}"
                f"{did_you_mean(str(value), options, parenthesised=True)}"
            )
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
    elif hint in (int, str, bool, list, dict):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")


def build_one(spec: RewardSpec) -> RewardFn:
    check_reward_spec(spec)
    return REWARDS[spec.name](**spec.params)


def build_reward(specs: list[RewardSpec | dict]) -> RewardFn:
    """Build the weighted sum of several rewards; components are named after each spec."""
    specs = [s if isinstance(s, RewardSpec) else RewardSpec(**s) for s in specs]
    if not specs:
        raise ValueError("at least one reward is needed")
    parts = [(s, build_one(s)) for s in specs]

    def combined(trajectory: Trajectory) -> Reward:
        n_turns = len(trajectory.turns)
        process = [0.0] * n_turns
        outcome = 0.0
        components: dict[str, float] = {}
        for spec, fn in parts:
            r = fn(trajectory)
            if len(r.process) != n_turns:
                raise ValueError(f"reward {spec.name!r} gave {len(r.process)} process rewards for {n_turns} turns")
            process = [p + spec.weight * q for p, q in zip(process, r.process)]
            outcome += spec.weight * r.outcome
            components[spec.name] = components.get(spec.name, 0.0) + spec.weight * r.total
            for sub, value in r.components.items():
                if sub != spec.name:
                    components[f"{spec.name}/{sub}"] = value
        return Reward(process, outcome, components)

    return combined
