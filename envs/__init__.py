"""Environments: tasks, multi-turn episodes as text. Knows nothing of models or RL."""

from envs.base import Env, Message, Prompt, StepResult, Task, Trajectory, Turn
from envs.registry import EnvSpec, get_env_spec

__all__ = ["Env", "EnvSpec", "Message", "Prompt", "StepResult", "Task", "Trajectory", "Turn", "get_env_spec"]
