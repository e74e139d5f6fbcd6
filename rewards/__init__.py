"""Rewards: score text-level trajectories. Knows nothing of engines or RL."""

from rewards import generic  # noqa: F401  (registers the generic rewards)
from rewards.base import Reward, RewardFn, RewardSpec, build_reward, register_reward, reward_names

__all__ = ["Reward", "RewardFn", "RewardSpec", "build_reward", "register_reward", "reward_names"]
