"""The token-level episode: exactly what the policy saw and sampled."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from envs.base import Task, Trajectory
from rewards.base import Reward

PROMPT_TURN = -1  # turn index of the task prompt's tokens


class Item(NamedTuple):
    """What one episode is asked to play: everything a worker needs to make it, and nothing else."""

    task: Task
    group: int  # the task's GRPO group in this step (episodes of a group share a baseline)
    seed: int  # the episode's sampling seed (rl.run.scoring.episode_seed)


@dataclass
class Episode:
    trajectory: Trajectory  # the same episode as text, for rewards and logs
    group: int  # episodes of one task in one step share a group (GRPO's baseline)
    seed: int  # sampling seed of this episode
    token_ids: list[int] = field(default_factory=list)  # prompt, then actions and observations in order
    loss_mask: list[int] = field(default_factory=list)  # 1 exactly on tokens the policy sampled
    logprobs: list[float] = field(default_factory=list)  # sampling logprob of each policy token, 0.0 elsewhere
    turn_ids: list[int] = field(default_factory=list)  # PROMPT_TURN, or the turn an action/observation token belongs to
    # the weight version that sampled each policy token (the learner's updates behind it), -1 elsewhere
    versions: list[int] = field(default_factory=list)
    finish: str = ""  # "done" (env ended it), "max_turns", "length" (token budget), or "error"
    error: str = ""  # why the episode failed, when finish == "error"
    traceback: str = ""  # where it failed: the traceback of the env's or the reward's exception
    reward: Reward | None = None

    @property
    def failed(self) -> bool:
        return self.finish == "error"

    @property
    def oldest_version(self) -> int | None:
        """The version of its oldest policy token: what its staleness counts from (None: it sampled nothing)."""
        return min((v for v in self.versions if v >= 0), default=None)

    def append(
        self, ids: list[int], turn: int, logprobs: list[float] | None = None, versions: list[int] | None = None
    ) -> None:
        """Append policy tokens (with their logprobs and the versions that sampled them) or observation tokens
        (without)."""
        self.token_ids += ids
        self.loss_mask += [1 if logprobs is not None else 0] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.turn_ids += [turn] * len(ids)
        self.versions += versions if versions is not None else [-1] * len(ids)

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
            "versions": self.versions,
            "finish": self.finish,
            "error": self.error,
            "traceback": self.traceback,
            "reward": reward,
        }

    @staticmethod
    def from_dict(d: dict) -> "Episode":
        """The episode `to_dict` wrote (a line of a run's episodes/step_N.jsonl); keys written beside it are ignored,
        and the reward's "total" is computed again from its parts."""
        r = d.get("reward")
        reward = None if r is None else Reward(list(r["process"]), r["outcome"], dict(r.get("components", {})))
        return Episode(
            trajectory=Trajectory.from_dict(d["trajectory"]),
            group=d["group"],
            seed=d["seed"],
            token_ids=list(d.get("token_ids", [])),
            loss_mask=list(d.get("loss_mask", [])),
            logprobs=list(d.get("logprobs", [])),
            turn_ids=list(d.get("turn_ids", [])),
            versions=list(d.get("versions", [])),
            finish=d.get("finish", ""),
            error=d.get("error", ""),
            traceback=d.get("traceback", ""),
            reward=reward,
        )
