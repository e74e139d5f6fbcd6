"""Functions by name: the advantage estimators (rl/credit.py) and the policy losses (rl/losses.py)."""

from __future__ import annotations

from typing import Callable


class Registry(dict):
    """name -> function, filled by the `register(name)` decorator.

    It reads as its names (`in`, iteration, repr), so the config's `unknown ...: use one of ...`
    check lists exactly what can be chosen, names registered after import included.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind  # what the functions are, for error messages: "advantage estimator", "policy loss"

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def add(fn: Callable) -> Callable:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self[name] = fn
            return fn

        return add

    def __missing__(self, name: str):
        raise ValueError(f"unknown {self.kind} {name!r}: use one of {self}")

    def __repr__(self) -> str:
        return repr(tuple(self))
