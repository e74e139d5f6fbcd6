"""Where a rollout's time goes: in the engine, in the environments, or in neither (the loop, waiting).

A worker times its rollout by wrapping its engine and its envs (`Clock`), so the measure does not depend on
how the rollout schedules them; the pool adds up its workers' `RolloutTimes`, and the trainer logs them:

    time/rollout_engine_share     share of the workers' rollout time spent inside the engine's generate
    time/rollout_env_share        share spent inside env.reset and env.step
    time/rollout_last_episode     seconds until the batch's last episode came back (the slowest worker)
    throughput/episodes_per_s     episodes over that time
    throughput/in_flight_episodes episodes in each generate call, on average
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from envs.base import Env
from rl.episode import Episode


@dataclass
class RolloutTimes:
    worker_s: float = 0.0  # the workers' rollout time, summed: what the shares divide
    engine_s: float = 0.0  # inside the engines' generate, summed over workers
    env_s: float = 0.0  # inside env.reset and env.step, summed over workers
    last_episode_s: float = 0.0  # the slowest worker's rollout time: when the batch's last episode came back
    episodes: int = 0
    requests: int = 0  # requests the engines got, summed over their generate calls
    calls: int = 0  # generate calls

    def add(self, other: RolloutTimes) -> RolloutTimes:
        """Two workers' times (or two rollouts') as one: sums, and the later of the last episodes."""
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        return RolloutTimes(**summed | {"last_episode_s": max(self.last_episode_s, other.last_episode_s)})

    def metrics(self) -> dict[str, float]:
        busy = max(self.worker_s, 1e-9)
        return {
            "time/rollout_engine_share": self.engine_s / busy,
            "time/rollout_env_share": self.env_s / busy,
            "time/rollout_last_episode": self.last_episode_s,
            "throughput/episodes_per_s": self.episodes / max(self.last_episode_s, 1e-9),
            "throughput/in_flight_episodes": self.requests / max(self.calls, 1),
        }


@dataclass
class Rollout:
    """What a pool's rollout gives back: the episodes, in the order of the items asked for, and where the time went."""

    episodes: list[Episode]
    times: RolloutTimes = field(default_factory=RolloutTimes)


class Clock:
    """Times one rollout on one worker: hand the rollout `engine(...)` and `envs(...)`, then read `stop(...)`."""

    def __init__(self):
        self.times = RolloutTimes()
        self.start = time.perf_counter()

    def engine(self, engine: Any) -> Any:
        return _TimedEngine(engine, self.times)

    def envs(self, make_env: Callable[[], Env]) -> Callable[[], Env]:
        return lambda: _TimedEnv(make_env(), self.times)

    def stop(self, episodes: list[Episode]) -> RolloutTimes:
        self.times.worker_s = self.times.last_episode_s = time.perf_counter() - self.start
        self.times.episodes = len(episodes)
        return self.times


class _TimedEngine:
    """An engine whose generate calls add their time and size to `times`."""

    def __init__(self, engine: Any, times: RolloutTimes):
        self.engine, self.times = engine, times

    def generate(self, requests, params):
        start = time.perf_counter()
        try:
            return self.engine.generate(requests, params)
        finally:
            self.times.engine_s += time.perf_counter() - start
            self.times.requests += len(requests)
            self.times.calls += 1


class _TimedEnv:
    """An env whose reset and step add their time to `times` (a call cut off by its timeout too)."""

    def __init__(self, env: Env, times: RolloutTimes):
        self.env, self.times = env, times
        self.stop_strings = env.stop_strings

    def reset(self, task):
        return self._timed(self.env.reset, task)

    def step(self, action):
        return self._timed(self.env.step, action)

    def _timed(self, call, arg):
        start = time.perf_counter()
        try:
            return call(arg)
        finally:
            self.times.env_s += time.perf_counter() - start
