"""Functions by name: the advantage estimators (rl/learn/credit.py) and the policy losses (rl/learn/losses.py).

A function declares what it needs where it is registered (`@register_estimator("gae", needs_values=True)`); the
learner and the config read the declarations, never the names, so a user's function can need what a built-in does."""

from __future__ import annotations

from typing import Callable

import envs.names
from rl.config import allow, declares


class Registry(envs.names.Registry):
    """name -> function, filled by the `register(name, **declarations)` decorator.

    A name registered here also becomes a valid value of the config option that selects these functions, so
    `algo.advantage=my_estimator` loads once the module that registers it is imported (the config's `imports`).
    """

    def __init__(self, kind: str, option: str, declarations: tuple[str, ...] = ()):
        super().__init__(kind)
        self.option = option  # the config option that names one: "advantage", "policy_loss"
        self.declarations = set(declarations)  # what a function may declare about itself (each False unless it says so)

    def register(self, name: str, **declarations: bool) -> Callable[[Callable], Callable]:
        """Register under `name`, with what the function declares about itself (e.g. `needs_values=True`):
        the learner reads the declarations, never the name."""
        unknown = set(declarations) - self.declarations
        if unknown:
            raise ValueError(
                f"{self.kind} {name!r}: unknown declaration {sorted(unknown)[0]!r}"
                f" (use {', '.join(sorted(self.declarations))})"
            )
        add = super().register(name)

        def add_and_allow(fn: Callable) -> Callable:
            add(fn)
            allow(self.option, name, **declarations)
            return fn

        return add_and_allow

    def declares(self, name: str, what: str) -> bool:
        """What the function registered as `name` declared about itself (False when it said nothing)."""
        self[name]  # an unknown name fails here, with the valid ones
        return declares(self.option, name, what)
