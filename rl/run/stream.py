"""Fully asynchronous rollouts (`workers.partial_rollouts`): GRPO groups admitted as the staleness bound allows,
taken by the trainer as they finish.

With N groups a step and bound K, a group admitted when the learner has made v updates may start on weights
of version v or later, and must be trained by step v + K + 1 (whose update starts from version v + K): so no
token it holds is more than K versions older than the update that trains on it, however long it waited.
Admission stops at (v + K + 1) * N groups in all. Then at step s at most N groups are left that step s must
take (admitted at version s - 1 - K: at most s * N were admitted by then, (s - 1) * N are trained), and the
step waits for them; the rest of its N come from whichever groups finished first, the oldest first.

Group n plays the task and seeds the synchronous trainer would give the n % N-th group of step n // N + 1;
with K = 0 (never streamed, see the trainer) the two are the same run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rl.episode import Item
from rl.rollout.timing import Rollout


@dataclass
class Group:
    number: int  # admission order, from 0
    items: list[Item]
    version: int  # the learner's updates when it was admitted: the oldest weights it may sample from
    rollout: Rollout | None = None  # once it has finished
    finished: int = -1  # finishing order, once finished


class GroupStream:
    def __init__(self, pool, max_staleness: int, groups_per_step: int, total_groups: int):
        self.pool, self.K, self.N, self.total = pool, max_staleness, groups_per_step, total_groups
        self.admitted = 0  # groups admitted so far
        self.groups: dict[int, Group] = {}  # admitted and not yet trained
        self.finishes = 0

    def admit(self, version: int, make_items: Callable[[int], list[Item]]) -> None:
        """Start groups up to the bound: (version + K + 1) * N admitted in all (never more than the run needs)."""
        while self.admitted < min((version + self.K + 1) * self.N, self.total):
            group = Group(self.admitted, make_items(self.admitted), version)
            self.groups[group.number] = group
            self.pool.submit_group(group.number, group.items, version)
            self.admitted += 1

    def take(self, step: int) -> list[Group]:
        """The N groups step `step` trains on, in admission order: every group it must take, then those that
        finished first. Waits for them."""
        must = [g for g in self.groups.values() if g.version <= step - 1 - self.K]
        while not (all(g.rollout for g in must) and sum(1 for g in self.groups.values() if g.rollout) >= self.N):
            self.collect(block=True)
        rest = sorted((g for g in self.groups.values() if g.rollout and g not in must), key=lambda g: g.finished)
        taken = sorted(must + rest[: self.N - len(must)], key=lambda g: g.number)
        for g in taken:
            del self.groups[g.number]
        return taken

    def collect(self, block: bool = False) -> None:
        """Record the groups that have finished (`block`: wait for at least one)."""
        for number, rolled in self.pool.finished_groups(block):
            group = self.groups[number]
            group.rollout, group.finished = rolled, self.finishes
            self.finishes += 1

    def counts(self) -> tuple[int, int]:
        """(groups finished and waiting to be trained, groups still playing)."""
        ready = sum(1 for g in self.groups.values() if g.rollout)
        return ready, len(self.groups) - ready

    def drain(self) -> list[Group]:
        """Wait for every group in flight; the groups admitted and not trained (for a checkpoint)."""
        while any(g.rollout is None for g in self.groups.values()):
            self.collect(block=True)
        return sorted(self.groups.values(), key=lambda g: g.number)

    def restore(self, admitted: int, groups: list[Group]) -> None:
        """Continue a checkpointed stream: these groups finished, none in flight."""
        self.admitted, self.groups = admitted, {g.number: g for g in groups}
        self.finishes = max((g.finished for g in groups), default=-1) + 1
