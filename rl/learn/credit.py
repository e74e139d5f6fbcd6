"""Credit assignment: from scored episodes to one advantage per token, by the estimator named in `algo.advantage`.

Each estimator is one function registered by name (`@register_estimator("grpo")`) in ESTIMATORS,
all with one signature: `fn(batch, rewards, algo) -> (advantages [B, T], value targets [B, T] or None)`, reading
what it needs from the Batch (rl/batch.py); one that reads the critic's values says so (`needs_values=True`).

Rewards are dense: the process reward of turn k sits on the last token the policy sampled in
turn k, the outcome (plus DAPO's overlong penalty and, with `kl_in_reward`, minus the KL
penalty) on its last sampled token. Group estimators (grpo, drgrpo, rloo) use each episode's
total; token estimators (reinforce++, gae) use the per-token rewards; `turn` gives each turn
an advantage from the rewards of that turn and after it (`algos.turn_advantages`). Judge spans
(`<judge>...</judge>` in an action) may use their own estimator (`algo.judge_advantage`).
"""

from __future__ import annotations

import re

import torch

from rl.batch import Batch
from rl.config import AlgoConfig
from rl.episode import Episode
from rl.learn import algos
from rl.registry import Registry
from rl.tensors import pad


def turn_end_positions(loss_mask: list[float], turn_ids: list[int]) -> dict[int, int]:
    """Turn index -> position of the last token the policy sampled in that turn (turns with none are absent)."""
    return {turn: t for t, (turn, m) in enumerate(zip(turn_ids, loss_mask)) if m}


def shaped_rewards(batch: Batch, algo: AlgoConfig) -> tuple[list[list[float]], list[float]]:
    """(process rewards by turn, outcome plus overlong penalty) of each episode, as the estimators see them."""
    process, outcome = [], []
    for b in range(len(batch)):
        turns = batch.process_rewards[b, : int(batch.turns[b])].tolist()
        process.append([0.0] * len(turns) if algo.turn_outcome_only else turns)
        reward = float(batch.outcome_rewards[b])
        if algo.overlong_max_tokens:
            length = batch.loss_mask[b].sum().long()[None]
            reward += algo.overlong_coef * float(
                algos.overlong_penalty(length, algo.overlong_max_tokens, algo.overlong_cache_tokens)[0]
            )
        outcome.append(reward)
    return process, outcome


def token_rewards(batch: Batch, algo: AlgoConfig) -> torch.Tensor:
    """[B, T] float64: every reward on the last sampled token of the turn (or episode) that earned it."""
    rows = []
    for b, (process, outcome) in enumerate(zip(*shaped_rewards(batch, algo))):
        row = [0.0] * batch.width
        ends = turn_end_positions(batch.loss_mask[b].tolist(), batch.turn_ids[b].tolist())
        last = max(ends.values(), default=None)
        for turn, r in enumerate(process):
            # A turn that sampled nothing passes its reward to the last token sampled before it.
            pos = max((t for k, t in ends.items() if k <= turn), default=None)
            if pos is not None:
                row[pos] += r
        if last is not None:
            row[last] += outcome
        rows.append(row)
    return pad(rows)  # built as lists, then one tensor: per-element tensor writes cost more than the rest of this


def judge_mask(ep: Episode, tokenizer, tag: str = "judge") -> list[int]:
    """1 on the sampled tokens that overlap a `<tag>...</tag>` span of an action (tags included), else 0.

    Each action (a run of sampled tokens of one turn) is decoded token by token; the spans are
    found in the joined text and mapped back through the tokens' character offsets.
    """
    out = [0] * len(ep.token_ids)
    pattern = re.compile(rf"<{tag}>.*?(</{tag}>|$)", re.S)
    t = 0
    while t < len(ep.token_ids):
        if not ep.loss_mask[t]:
            t += 1
            continue
        end = t
        while end < len(ep.token_ids) and ep.loss_mask[end] and ep.turn_ids[end] == ep.turn_ids[t]:
            end += 1
        pieces = [tokenizer.decode([i]) for i in ep.token_ids[t:end]]
        starts = [0]
        for p in pieces:
            starts.append(starts[-1] + len(p))
        for m in pattern.finditer("".join(pieces)):
            for j in range(len(pieces)):
                if starts[j] < m.end() and starts[j + 1] > m.start():
                    out[t + j] = 1
        t = end
    return out


# One function per estimator: fn(batch, rewards, algo) ->
# (advantages [B, T], 0 off policy tokens; value targets [B, T] or None).
# `rewards` [B, T] float64 holds each reward on the token that earned it (token_rewards),
# minus the KL penalty when it is
# in the reward. An estimator registered with needs_values=True reads the critic's `batch.critic_values`: the learner
# then trains a critic; one registered with requires_token_sum=True is unbiased only when each episode's loss is the sum
# over its tokens (the config then refuses every other aggregation and sequence-level policy losses).
ESTIMATORS = Registry("advantage estimator", "advantage", ("needs_values", "requires_token_sum"))
register_estimator = ESTIMATORS.register


def _broadcast(per_episode: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return per_episode[:, None] * mask  # [B] -> [B, T]


@register_estimator("grpo")
def grpo(batch: Batch, rewards: torch.Tensor, algo: AlgoConfig) -> tuple[torch.Tensor, None]:
    """Each episode's total minus its group's mean, divided by the group's std when `algo.norm_by_std`."""
    mask = batch.loss_mask.double()  # [B, T]
    adv = algos.group_advantages(
        rewards.sum(-1), batch.groups, algo.norm_by_std, lone_score=algo.lone_group_score
    )  # [B]
    return _broadcast(adv, mask), None


@register_estimator("drgrpo")
def drgrpo(batch: Batch, rewards: torch.Tensor, algo: AlgoConfig) -> tuple[torch.Tensor, None]:
    """Dr.GRPO: GRPO without the division by the group's std."""
    mask = batch.loss_mask.double()  # [B, T]
    adv = algos.group_advantages(rewards.sum(-1), batch.groups, False, lone_score=algo.lone_group_score)  # [B]
    return _broadcast(adv, mask), None


@register_estimator("rloo")
def rloo(batch: Batch, rewards: torch.Tensor, algo: AlgoConfig) -> tuple[torch.Tensor, None]:
    """Each episode's total minus the mean of the other episodes of its group."""
    mask = batch.loss_mask.double()  # [B, T]
    return _broadcast(algos.rloo_advantages(rewards.sum(-1), batch.groups, algo.lone_group_score), mask), None


@register_estimator("reinforce++")
def reinforce_pp(batch: Batch, rewards: torch.Tensor, algo: AlgoConfig) -> tuple[torch.Tensor, None]:
    """Discounted return-to-go of every policy token, whitened over the batch."""
    mask = batch.loss_mask.double()  # [B, T]
    returns = algos.discounted_returns(rewards, mask, algo.gamma)  # [B, T]
    return algos.masked_whiten(returns, mask, unbiased=algo.whiten_unbiased), None


@register_estimator("reinforce++-baseline")
def reinforce_pp_baseline(batch: Batch, rewards: torch.Tensor, algo: AlgoConfig) -> tuple[torch.Tensor, None]:
    """REINFORCE++'s returns minus the group's mean total, whitened over the batch.

    The baseline is the same for every token of every episode of the group. Put on the last token
    instead, it would reach token t as gamma^(tokens after t) * mean: a baseline that the episode's
    own later actions (when to stop) decide, biased whenever gamma < 1. The mean includes the
    episode itself (OpenRLHF's convention).
    """
    mask = batch.loss_mask.double()  # [B, T]
    returns = algos.discounted_returns(rewards, mask, algo.gamma)  # [B, T]
    returns = returns - _broadcast(algos.group_mean(rewards.sum(-1), batch.groups), mask)
    return algos.masked_whiten(returns, mask, unbiased=algo.whiten_unbiased), None


@register_estimator("gae", needs_values=True)
def gae(batch: Batch, rewards: torch.Tensor, algo: AlgoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over policy tokens with the critic's values, whitened;
    the un-whitened advantages plus values are the critic's targets."""
    mask = batch.loss_mask.double()  # [B, T]
    if batch.critic_values is None:
        raise ValueError("advantage 'gae' needs critic values")
    adv, returns = algos.gae_advantages(rewards, batch.critic_values.double() * mask, mask, algo.gamma, algo.lam)
    return algos.masked_whiten(adv, mask, unbiased=algo.whiten_unbiased), returns


@register_estimator("turn", requires_token_sum=True)
def turn_level(batch: Batch, rewards: torch.Tensor, algo: AlgoConfig) -> tuple[torch.Tensor, None]:
    """One reward per turn (the outcome on the last turn), each turn's advantage
    (algos.turn_advantages, discounted by algo.turn_gamma from turn to turn) on its tokens."""
    mask = batch.loss_mask.double()  # [B, T]
    turns = batch.turns.clamp(min=1)  # [B]: an episode without per-turn rewards still has its outcome's turn
    turn_of = batch.turn_ids.clamp(min=0).minimum(
        turns[:, None] - 1
    )  # [B, T]: the turn a token's reward and advantage belong to
    turn_r = torch.zeros(len(turns), int(turns.max()), dtype=torch.float64)  # [B, K]
    for b, t in rewards.nonzero().tolist():  # in token order: each turn's rewards add up in the order they were earned
        turn_r[b, int(turn_of[b, t])] += rewards[b, t]
    turn_m = (torch.arange(turn_r.shape[1]) < turns[:, None]).to(turn_r.dtype)  # [B, K]
    adv = algos.turn_advantages(turn_r, turn_m, batch.groups, algo.turn_gamma)  # [B, K]
    return torch.where(mask.bool(), adv.gather(1, turn_of), 0.0), None


def advantages(
    batch: Batch, algo: AlgoConfig, kl: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """([B, T] float32 advantages by the estimator `algo.advantage`, judge spans by `algo.judge_advantage`;
    the critic's [B, T] float32 targets or None). kl: [B, T] per-token KL penalty already multiplied by its
    coefficient, subtracted from the rewards on policy tokens (None: KL not in the reward)."""
    rewards = token_rewards(batch, algo)  # [B, T]
    if kl is not None:
        rewards = rewards - kl * batch.loss_mask.double()
    adv, returns = ESTIMATORS[algo.advantage](batch, rewards, algo)
    if algo.judge_advantage and batch.judge_mask is not None:
        judge_adv, judge_returns = ESTIMATORS[algo.judge_advantage](batch, rewards, algo)
        role = batch.judge_mask.double()
        adv = role * judge_adv + (1 - role) * adv
        returns = returns if returns is not None else judge_returns  # the critic learns whenever one role uses it
    if algo.learn_from_turn > 1:
        # Earlier turns' tokens (turn ids count from 0) get no policy gradient; the critic still learns their values.
        adv = adv * (batch.turn_ids >= algo.learn_from_turn - 1)
    return adv.float(), (returns.float() if returns is not None else None)
