"""Rewards: score text-level trajectories. Knows nothing of engines or RL."""

from rewards import generic  # noqa: F401  (registers the generic rewards)
from rewards import code  # noqa: F401  (registers the code-episode rewards)
from rewards import search  # noqa: F401  (registers the search-episode rewards)
from rewards import mistake, preferences  # noqa: F401  (register mistake_location and the learned reward)
from rewards import bbq  # noqa: F401  (registers bbq_correct and bbq_bias)
from rewards.base import Reward, RewardFn, RewardSpec, build_reward, register_reward, reward_names

__all__ = ["Reward", "RewardFn", "RewardSpec", "build_reward", "register_reward", "reward_names"]
