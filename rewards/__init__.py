"""Rewards: score text-level trajectories. Knows nothing of engines or RL."""

from rewards import (  # noqa: F401  (register mistake_location and the learned reward)
    bbq,  # noqa: F401  (registers bbq_correct and bbq_bias)
    code,  # noqa: F401  (registers the code-episode rewards)
    generic,  # noqa: F401  (registers the generic rewards)
    mistake,
    preferences,
    search,  # noqa: F401  (registers the search-episode rewards)
)
from rewards.base import Reward, RewardFn, RewardSpec, build_reward, register_reward, reward_names

__all__ = ["Reward", "RewardFn", "RewardSpec", "build_reward", "register_reward", "reward_names"]
