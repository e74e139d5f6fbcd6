"""Text-level types shared by every environment.

An environment knows nothing of models, tokens or RL: it receives the agent's
action as text and answers with an observation as text. The rollout in `rl/`
turns these into tokens; the rewards in `rewards/` score the `Trajectory`.

Convention for `info`: an environment that can judge an action writes
`info["score"]` (a float in [0, 1], e.g. the fraction of unit tests passed or
whether the answer is right) and may flag a malformed action with
`info["invalid"] = True`. The generic rewards in `rewards/` read these keys.
A turn is right (solved) when its score reaches SOLVED: `solved(turn.info)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Union

Message = dict  # {"role": "user" | "system" | "assistant", "content": str}
Prompt = Union[str, list[Message]]
SOLVED = 1.0  # the info["score"] of a right turn: all tests passed, an exact answer


def solved(info: dict) -> bool:
    """Whether the env judged the turn right: its info["score"] reaches SOLVED (a missing or non-numeric score
    does not)."""
    score = info.get("score", 0.0)
    return isinstance(score, (int, float)) and score >= SOLVED


@dataclass
class Task:
    """One problem: an id, the first prompt, and whatever the env and the rewards need to judge it."""

    id: str
    prompt: Prompt
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    """What the env answers to one action."""

    observation: str  # text shown to the agent before its next turn ("" when done)
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Turn:
    """One agent turn: what the agent said, what the env answered, and the env's judgement."""

    action: str
    observation: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trajectory:
    """A whole episode as text. `turns[t].info` is what rewards read."""

    task: Task
    turns: list[Turn] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "task": {"id": self.task.id, "prompt": self.task.prompt, "metadata": self.task.metadata},
            "turns": [{"action": t.action, "observation": t.observation, "info": t.info} for t in self.turns],
        }

    @staticmethod
    def from_dict(d: dict) -> "Trajectory":
        task = Task(d["task"]["id"], d["task"]["prompt"], d["task"].get("metadata", {}))
        return Trajectory(task, [Turn(t["action"], t["observation"], t.get("info", {})) for t in d["turns"]])


class Env(Protocol):
    """A multi-turn environment. One instance plays one episode at a time.

    `stop_strings` end an agent action: generation stops right after the first one
    the agent writes (e.g. "</search>"), and the env then gets the action text.
    The envs of concurrent episodes are called at the same time, each from a thread of
    its own: what instances share (an index, a sandbox, a client) must be thread-safe.
    `reset` and `step` may also be `async def`, for envs that await remote tools.
    """

    stop_strings: list[str]

    def reset(self, task: Task) -> Prompt:
        """Start an episode on `task`; return the first prompt (text or chat messages)."""
        ...

    def step(self, action: str) -> StepResult:
        """Apply the agent's action; return the observation, whether the episode is over, and info."""
        ...


def play(env: Env, task: Task, actions: list[str]) -> Trajectory:
    """A scripted policy through a real env: `actions` in turn until the episode ends (or they run out)."""
    env.reset(task)
    trajectory = Trajectory(task)
    for action in actions:
        result = env.step(action)
        trajectory.turns.append(Turn(action, result.observation, result.info))
        if result.done:
            break
    return trajectory
