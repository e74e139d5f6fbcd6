"""The batch: the scored episodes of one step as padded tensors,
the only thing that crosses from scoring to the gradient.

    episodes (rl/rollout) --score--> Batch.from_episodes --> learner.update(batch) --> metrics
                                                             credit fills advantages (and returns),
                                                             the learner its logprobs and values

B episodes, T tokens (the longest episode), K turns (the most per-turn rewards of any episode).
Every per-token tensor is [B, T] on the CPU, right-padded with 0, and named by who produced it:
the engine that sampled (`sampler_logprobs`), the learner before its update (`old_logprobs`, `learner_logprobs`),
the reference model (`ref_logprobs`), the critic at sampling time (`critic_values`), credit
assignment (`advantages`, `returns`). A mini-batch, a micro-batch and a rank's share are Batches too
(`select`), so the same code serves one learner and N ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from rl.episode import PROMPT_TURN, Episode
from rl.tensors import pad

PAD_ROW = -1  # in a share's rows: a padding item, two tokens without a policy token (a rank short of a micro-batch)
PAD_TOKENS = 2


@dataclass
class Batch:
    token_ids: torch.Tensor  # [B, T] long: prompt, actions and observations, then 0
    lengths: torch.Tensor  # [B] long: tokens of each episode
    loss_mask: torch.Tensor  # [B, T] float32: 1 exactly on the tokens the policy sampled
    turn_ids: torch.Tensor  # [B, T] long: the turn of each token (PROMPT_TURN on the prompt, 0 on padding)
    groups: torch.Tensor  # [B] long: the GRPO group of each episode (its task in this step)
    sampler_logprobs: torch.Tensor  # [B, T] float32: the engine's logprob of each policy token when it sampled it
    # [B, T] long: optimizer updates applied to the weights that sampled each policy token (-1 on the others)
    policy_version: torch.Tensor
    process_rewards: torch.Tensor  # [B, K] float64: the reward each turn earned, as the reward function gave it
    turns: torch.Tensor  # [B] long: per-turn rewards of each episode (K counts up to the largest)
    outcome_rewards: torch.Tensor  # [B] float64: what the episode earned as a whole
    # [B, T] float32: 1 on tokens of <judge> spans (when algo.judge_advantage credits them apart; else None)
    judge_mask: torch.Tensor | None = None
    # Filled while the learner updates (None until then, or when the algorithm needs none):
    ref_logprobs: torch.Tensor | None = None  # [B, T] float32: the reference model's (KL to the reference)
    # [B, T] float32: the learner's before the update, PPO's ratio denominator (when several optimizer steps follow;
    # else each micro-batch's detached own)
    old_logprobs: torch.Tensor | None = None
    critic_values: torch.Tensor | None = None  # [B, T] float32: the critic's values before the update
    advantages: torch.Tensor | None = None  # [B, T] float32: credit assignment's, 0 off policy tokens
    returns: torch.Tensor | None = None  # [B, T] float32: the critic's targets
    # [B, T] float32: the learner's before its first step, on the first mini-batch's policy tokens, NaN on the other
    # rows (for the episode logs: the engine/learner mismatch token by token)
    learner_logprobs: torch.Tensor | None = None

    @staticmethod
    def from_episodes(episodes: list[Episode], judge_masks: list[list[int]] | None = None) -> Batch:
        """The episodes (none failed) as one batch. An episode not scored yet (no reward) counts as rewarded 0."""
        lengths = torch.tensor([len(ep.token_ids) for ep in episodes])
        process = [ep.reward.process if ep.reward else [] for ep in episodes]
        return Batch(
            token_ids=pad([ep.token_ids for ep in episodes], 0, torch.long),
            lengths=lengths,
            loss_mask=pad([ep.loss_mask for ep in episodes], 0, torch.float32),
            turn_ids=pad([ep.turn_ids for ep in episodes], 0, torch.long),
            groups=torch.tensor([ep.group for ep in episodes]),
            sampler_logprobs=pad([ep.logprobs for ep in episodes], 0, torch.float32),
            # episodes made by hand (tests, old logs) may carry no versions: unknown, -1
            policy_version=pad([ep.versions or [-1] * len(ep.token_ids) for ep in episodes], -1, torch.long),
            process_rewards=pad([p or [0.0] for p in process]),
            turns=torch.tensor([len(p) for p in process]),
            outcome_rewards=torch.tensor(
                [ep.reward.outcome if ep.reward else 0.0 for ep in episodes], dtype=torch.float64
            ),
            judge_mask=pad(judge_masks, 0, torch.float32) if judge_masks is not None else None,
        )

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        """T: the padded length."""
        return self.token_ids.shape[1]

    def select(self, rows: list[int]) -> Batch:
        """These episodes (PAD_ROW: a padding item), cut to the longest of them: a mini-batch, micro-batch or share."""
        index = torch.tensor([max(r, 0) for r in rows], dtype=torch.long)
        is_pad = torch.tensor([r == PAD_ROW for r in rows])
        lengths = torch.where(is_pad, PAD_TOKENS, self.lengths[index])
        width = int(lengths.max())
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                out[f.name] = None
                continue
            picked = value[index]
            if picked.dim() == 2 and f.name != "process_rewards":
                picked = picked[:, :width].clone()
                picked[is_pad] = 0
                if f.name == "turn_ids":
                    picked[is_pad, :PAD_TOKENS] = PROMPT_TURN
            elif f.name != "process_rewards":
                picked = picked.clone()
                picked[is_pad] = 0
            out[f.name] = picked
        out["lengths"] = lengths
        return Batch(**out)

    def minibatches(self, n: int) -> list[list[int]]:
        """Row indices of `n` mini-batches (one optimizer step each): every n-th episode,
        so each holds some of every group."""
        n = max(1, min(n, len(self)))
        return [list(range(k, len(self), n)) for k in range(n)]

    def micro_batches(self, size: int) -> list[list[int]]:
        """Row indices, `size` at a time, sorted by length.

        Episodes of similar length share a micro-batch, so little compute goes to padding (search episodes
        run from one search to several: padded to the longest, two thirds of a batch was padding). The
        loss is normalized by the mini-batch's totals, so the grouping changes no gradient.
        """
        lengths = self.lengths.tolist()
        by_length = sorted(range(len(self)), key=lengths.__getitem__)
        return [by_length[start : start + size] for start in range(0, len(self), size)]

    def shares(self, world_size: int, micro_batch_size: int) -> list[list[int]]:
        """Row indices for each of `world_size` ranks, every rank with the same number of micro-batches.

        FSDP gathers and reduces in every forward and backward, so all ranks must run the same passes.
        The micro-batches (sorted by length, as one learner cuts them) are dealt round-robin. Only the last
        can be short and it goes to a rank with the most, so a rank with one fewer holds whole ones: one
        PAD_ROW gives it its last. Every rank gets at least one micro-batch, so every rank steps.
        """
        micro = self.micro_batches(micro_batch_size)
        shares = [[i for m in micro[r::world_size] for i in m] for r in range(world_size)]
        most = max(1, -(-len(micro) // world_size))
        for share in shares:
            if -(-len(share) // micro_batch_size) < most:
                share.append(PAD_ROW)
        return shares

    def counts(self, skip_empty: bool) -> tuple[float, float]:
        """(policy tokens, sequences): what every loss term of this mini-batch divides by.
        `skip_empty` leaves sequences without a policy token out of the count (verl's `seq_mean_skips_empty`)."""
        num_seqs = float((self.loss_mask.sum(-1) > 0).sum()) if skip_empty else float(len(self))
        return float(self.loss_mask.sum()), num_seqs

    def first_turn_mask(self) -> torch.Tensor:
        """[B, T] 1 on the policy tokens of the first turn (turn id 0):
        what `algo.kl_turns=first` pulls to the reference."""
        return self.loss_mask * (self.turn_ids == 0)

    def row(self, tensor: torch.Tensor | None, i: int) -> list | None:
        """Row i of a [B, T] tensor, cut to episode i's length, as a list."""
        return None if tensor is None else tensor[i, : int(self.lengths[i])].tolist()


def unshared(shares: list[list[int]], parts: list[torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """A [B, T] tensor from each rank's [b, t] result on its share: every row back in its batch row, padding dropped."""
    out = torch.zeros(shape)
    for share, part in zip(shares, parts):
        for row, i in enumerate(share):
            if i != PAD_ROW:
                out[i, : part.shape[1]] = part[row]
    return out
