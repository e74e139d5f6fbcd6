"""Things by name: the one registry of functions by name (rewards, advantage estimators, policy losses) and the
one "did you mean" of the project's errors on an unknown name (a config key, an option's value, an env, a reward
or one of its parameters). A leaf: it imports no other module of the project, so every layer may use it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any


def did_you_mean(word: Any, options: Iterable[Any], cutoff: float = 0.6, parenthesised: bool = False) -> str:
    """The end of an error message: "; did you mean 'x'?" naming the option (as text) that `word` most likely
    misspells, or "" when none is close or `word` is not text (a YAML key may be a number, a boolean or null).

    `cutoff` is difflib's similarity threshold; `parenthesised` gives " (did you mean 'x'?)" instead."""
    if not isinstance(word, str):
        return ""
    match = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=cutoff)
    if not match:
        return ""
    return f" (did you mean {match[0]!r}?)" if parenthesised else f"; did you mean {match[0]!r}?"


class Registry(dict):
    """name -> function, filled by the `register(name)` decorator; it reads as its names (`in`, iteration, repr).

    Rewards (rewards/base.py), advantage estimators and policy losses (rl/registry.py adds what the config needs)
    are registered this way. Envs are named differently on purpose: by module path, imported only when chosen."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind  # what the functions are, for error messages: "reward", "advantage estimator", "policy loss"

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def add(fn: Callable) -> Callable:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self[name] = fn
            return fn

        return add

    def __missing__(self, name: str):
        raise ValueError(f"unknown {self.kind} {name!r}: use one of {self}{did_you_mean(name, self)}")

    def __repr__(self) -> str:
        return repr(tuple(self))
