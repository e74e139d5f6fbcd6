"""A lookup env that always takes two turns and holds chosen episodes between them, to put a weight sync in the
middle of their rollout: the first `open_first` episodes a process makes pass, the next `gated` wait in their
first step (each leaves a file in `gate_dir`) until `gate_dir/release` exists; the passing ones wait in theirs
until every gated one is waiting, so the gated ones sampled their first action before any episode ended."""

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

from envs import lookup
from envs.base import StepResult
from envs.registry import EnvSpec


@dataclass
class GatedParams(lookup.LookupParams):
    gate_dir: str = ""
    open_first: int = 0
    gated: int = 0


_made = itertools.count()  # envs made in this process


class GatedEnv(lookup.LookupEnv):
    def __init__(self, params: GatedParams):
        super().__init__(params)
        self.params, self.number = params, next(_made)

    def step(self, action):
        p, gate = self.params, Path(self.params.gate_dir)
        if self.turn == 0:
            if p.open_first <= self.number < p.open_first + p.gated:
                (gate / f"waiting_{os.getpid()}_{self.number}").touch()
                wait_for(lambda: (gate / "release").exists())
            else:
                wait_for(lambda: len(list(gate.glob("waiting_*"))) >= p.gated)
            self.turn += 1
            return StepResult(lookup.RETRY, False, {"score": 0.0, "invalid": False})
        return super().step(action)


def wait_for(condition) -> None:
    while not condition():
        time.sleep(0.01)


ENV_SPEC = EnvSpec(GatedParams, GatedEnv, lookup.load_tasks, lookup.sample_text)
