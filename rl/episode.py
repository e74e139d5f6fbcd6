"""The token-level episode: exactly what the policy saw and sampled."""

from __future__ import annotations

from dataclasses import dataclass, field

from envs.base import Trajectory
from rewards.base import Reward

PROMPT_TURN = -1  # turn index of the task prompt's tokens


@dataclass
class Episode:
    trajectory: Trajectory  # the same episode as text, for rewards and logs
    group: int  # episodes of one task in one step share a group (GRPO's baseline)
    seed: int  # sampling seed of this episode
    token_ids: list[int] = field(default_factory=list)  # prompt, then actions and observations in order
    loss_mask: list[int] = field(default_factory=list)  # 1 exactly on tokens the policy sampled
    logprobs: list[float] = field(default_factory=list)  # sampling logprob of each policy token, 0.0 elsewhere
    turn_ids: list[int] = field(default_factory=list)  # PROMPT_TURN, or the turn an action/observation token belongs to
    finish: str = ""  # "done" (env ended it), "max_turns", "length" (token budget), or "error"
    error: str = ""  # why the episode failed, when finish == "error"
    traceback: str = ""  # where it failed: the traceback of the env's or the reward's exception
    reward: Reward | None = None
    learner_logprobs: list[float] = field(default_factory=list)  # the learner's logprob of each policy token before its update (logs only)

    @property
    def failed(self) -> bool:
        return self.finish == "error"

    def append(self, ids: list[int], turn: int, logprobs: list[float] | None = None) -> None:
        """Append policy tokens (with their logprobs) or observation tokens (without)."""
        self.token_ids += ids
        self.loss_mask += [1 if logprobs is not None else 0] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.turn_ids += [turn] * len(ids)

    def to_dict(self) -> dict:
        reward = None
        if self.reward is not None:
            r = self.reward
            reward = {"total": r.total, "outcome": r.outcome, "process": r.process, "components": r.components}
        return {
            "trajectory": self.trajectory.to_dict(),
            "group": self.group,
            "seed": self.seed,
            "token_ids": self.token_ids,
            "loss_mask": self.loss_mask,
            "logprobs": self.logprobs,
            "turn_ids": self.turn_ids,
            "finish": self.finish,
            "error": self.error,
            "traceback": self.traceback,
            "reward": reward,
            "learner_logprobs": self.learner_logprobs,
        }
