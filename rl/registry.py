"""Functions by name: the advantage estimators (rl/learn/credit.py) and the policy losses (rl/learn/losses.py)."""

from __future__ import annotations

from typing import Callable

from rl.config import allow


class Registry(dict):
    """name -> function, filled by the `register(name)` decorator.

    It reads as its names (`in`, iteration, repr). A name registered here also becomes a valid value
    of the config option that selects these functions, so `algo.advantage=my_estimator` loads once
    the module that registers it is imported (the config's `imports`).
    """

    def __init__(self, kind: str, option: str):
        super().__init__()
        self.kind = kind  # what the functions are, for error messages: "advantage estimator", "policy loss"
        self.option = option  # the config option that names one: "advantage", "policy_loss"

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def add(fn: Callable) -> Callable:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self[name] = fn
            allow(self.option, name)
            return fn

        return add

    def __missing__(self, name: str):
        raise ValueError(f"unknown {self.kind} {name!r}: use one of {self}")

    def __repr__(self) -> str:
        return repr(tuple(self))
