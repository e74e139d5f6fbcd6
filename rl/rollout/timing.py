"""Where a rollout's time goes: in the engine, in the environments, in both at once, or in neither.

The rollout measures itself where it calls the engine and the envs; the pool adds up its workers'
`RolloutTimes`, and the trainer logs them:

    time/rollout_engine_share      share of the workers' rollout time spent inside the engine's steps
    time/rollout_env_share         share during which at least one env call was running (the two add
                                   up to more than 1 when they overlap)
    time/rollout_last_episode      seconds until the batch's last episode came back (the slowest worker)
    throughput/episodes_per_s      episodes over that time
    throughput/in_flight_episodes  requests in each engine step, on average
    rollout/prefix_cache_hit_rate  share of the prompt tokens the engines took from their caches
                                   (an episode's earlier turns; on vLLM also a group's shared prompt)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from rl.episode import Episode


@dataclass
class RolloutTimes:
    worker_s: float = 0.0  # the workers' rollout time, summed: what the shares divide
    engine_s: float = 0.0  # inside the engines' step, summed over workers
    env_s: float = 0.0  # while at least one env call ran, summed over workers
    last_episode_s: float = 0.0  # the slowest worker's rollout time: when the batch's last episode came back
    episodes: int = 0
    requests: int = 0  # requests in flight at each engine step, summed over steps
    calls: int = 0  # engine steps
    prompt_tokens: int = 0  # prompt tokens the engines took in
    cached_tokens: int = 0  # of which they found in a cache

    def add(self, other: RolloutTimes) -> RolloutTimes:
        """Two workers' times (or two rollouts') as one: sums, and the later of the last episodes."""
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        return RolloutTimes(**summed | {"last_episode_s": max(self.last_episode_s, other.last_episode_s)})

    def since(self, earlier: RolloutTimes) -> RolloutTimes:
        """What was added after `earlier` (a snapshot of the same running counts)."""
        return RolloutTimes(**{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)})

    def metrics(self) -> dict[str, float]:
        busy = max(self.worker_s, 1e-9)
        return {
            "time/rollout_engine_share": self.engine_s / busy,
            "time/rollout_env_share": self.env_s / busy,
            "time/rollout_last_episode": self.last_episode_s,
            "throughput/episodes_per_s": self.episodes / max(self.last_episode_s, 1e-9),
            "throughput/in_flight_episodes": self.requests / max(self.calls, 1),
            "rollout/prefix_cache_hit_rate": self.cached_tokens / max(self.prompt_tokens, 1),
        }


@dataclass
class Rollout:
    """What a rollout gives back: the episodes, in the order of the items asked for, and where the time went."""

    episodes: list[Episode]
    times: RolloutTimes = field(default_factory=RolloutTimes)
