"""Credit assignment: from scored episodes to one advantage per token, by the estimator named in `algo.advantage`.

Each estimator is one function registered by name (`@register_estimator("grpo")`) in ESTIMATORS,
all with one signature: `fn(batch: CreditInputs, algo) -> (advantages [B, T], value targets [B, T] or None)`.

Rewards are dense: the process reward of turn k sits on the last token the policy sampled in
turn k, the outcome (plus DAPO's overlong penalty and, with `kl_in_reward`, minus the KL
penalty) on its last sampled token. Group estimators (grpo, drgrpo, rloo) use each episode's
total; token estimators (reinforce++, gae) use the per-token rewards; `turn` gives each turn
an advantage from the rewards of that turn and after it (`algos.turn_advantages`). Judge spans
(`<judge>...</judge>` in an action) may use their own estimator (`algo.judge_advantage`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from rl.learn import algos
from rl.config import AlgoConfig
from rl.episode import Episode
from rl.registry import Registry
from rl.tensors import pad


def turn_end_positions(ep: Episode) -> dict[int, int]:
    """Turn index -> position of the last token the policy sampled in that turn (turns with none are absent)."""
    return {turn: t for t, (turn, m) in enumerate(zip(ep.turn_ids, ep.loss_mask)) if m}


def episode_rewards(ep: Episode, algo: AlgoConfig) -> tuple[list[float], float]:
    """(process rewards by turn, outcome plus overlong penalty) as the estimators see them."""
    process = [0.0] * len(ep.reward.process) if algo.turn_outcome_only else list(ep.reward.process)
    outcome = ep.reward.outcome
    if algo.overlong_max_tokens:
        length = torch.tensor([sum(ep.loss_mask)])
        outcome += algo.overlong_coef * float(algos.overlong_penalty(length, algo.overlong_max_tokens, algo.overlong_cache_tokens)[0])
    return process, outcome


def token_rewards(episodes: list[Episode], algo: AlgoConfig) -> torch.Tensor:
    """[B, T] float64: every reward on the last sampled token of the turn (or episode) that earned it."""
    rows = []
    for ep in episodes:
        row = [0.0] * len(ep.token_ids)
        process, outcome = episode_rewards(ep, algo)
        ends = turn_end_positions(ep)
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


@dataclass
class CreditInputs:
    """What an estimator reads about a batch of B episodes, padded to [B, T] (T: the longest episode)."""

    rewards: torch.Tensor  # [B, T] float64: each reward on the token that earned it (token_rewards), minus the KL penalty when it is in the reward
    mask: torch.Tensor  # [B, T] float64: 1 on the tokens the policy sampled
    groups: torch.Tensor  # [B] group id of each episode (its task's GRPO group)
    turn_ids: torch.Tensor  # [B, T] long: the turn of each token (PROMPT_TURN on the prompt, 0 on padding)
    turns: torch.Tensor  # [B] long: turns of each episode, as its process rewards count them (at least 1)
    values: torch.Tensor | None = None  # [B, T] critic values at sampling time (gae)


# One function per estimator: fn(batch: CreditInputs, algo) -> (advantages [B, T], 0 off policy tokens; value targets [B, T] or None).
ESTIMATORS = Registry("advantage estimator", "advantage")
register_estimator = ESTIMATORS.register


def credit_inputs(episodes: list[Episode], algo: AlgoConfig, values: torch.Tensor | None = None, kl: torch.Tensor | None = None) -> CreditInputs:
    """values: [B, T] critic values at sampling time; kl: [B, T] per-token KL penalty already multiplied
    by its coefficient, subtracted from the rewards on policy tokens (None: KL not in the reward)."""
    mask = pad([ep.loss_mask for ep in episodes])  # [B, T]
    rewards = token_rewards(episodes, algo)  # [B, T]
    if kl is not None:
        rewards = rewards - kl * mask
    return CreditInputs(
        rewards=rewards,
        mask=mask,
        groups=torch.tensor([ep.group for ep in episodes]),
        turn_ids=pad([ep.turn_ids for ep in episodes], 0, torch.long),
        turns=torch.tensor([len(ep.reward.process) or 1 for ep in episodes]),
        values=values,
    )


def _broadcast(per_episode: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return per_episode[:, None] * mask  # [B] -> [B, T]


@register_estimator("grpo")
def grpo(batch: CreditInputs, algo: AlgoConfig) -> tuple[torch.Tensor, None]:
    """Each episode's total minus its group's mean, divided by the group's std when `algo.norm_by_std`."""
    adv = algos.group_advantages(batch.rewards.sum(-1), batch.groups, algo.norm_by_std, lone_score=algo.lone_group_score)  # [B]
    return _broadcast(adv, batch.mask), None


@register_estimator("drgrpo")
def drgrpo(batch: CreditInputs, algo: AlgoConfig) -> tuple[torch.Tensor, None]:
    """Dr.GRPO: GRPO without the division by the group's std."""
    adv = algos.group_advantages(batch.rewards.sum(-1), batch.groups, False, lone_score=algo.lone_group_score)  # [B]
    return _broadcast(adv, batch.mask), None


@register_estimator("rloo")
def rloo(batch: CreditInputs, algo: AlgoConfig) -> tuple[torch.Tensor, None]:
    """Each episode's total minus the mean of the other episodes of its group."""
    return _broadcast(algos.rloo_advantages(batch.rewards.sum(-1), batch.groups, algo.lone_group_score), batch.mask), None


@register_estimator("reinforce++")
def reinforce_pp(batch: CreditInputs, algo: AlgoConfig) -> tuple[torch.Tensor, None]:
    """Discounted return-to-go of every policy token, whitened over the batch."""
    returns = algos.discounted_returns(batch.rewards, batch.mask, algo.gamma)  # [B, T]
    return algos.masked_whiten(returns, batch.mask, unbiased=algo.whiten_unbiased), None


@register_estimator("reinforce++-baseline")
def reinforce_pp_baseline(batch: CreditInputs, algo: AlgoConfig) -> tuple[torch.Tensor, None]:
    """REINFORCE++'s returns minus the group's mean total, whitened over the batch.

    The baseline is the same for every token of every episode of the group. Put on the last token
    instead, it would reach token t as gamma^(tokens after t) * mean: a baseline that the episode's
    own later actions (when to stop) decide, biased whenever gamma < 1. The mean includes the
    episode itself (OpenRLHF's convention).
    """
    returns = algos.discounted_returns(batch.rewards, batch.mask, algo.gamma)  # [B, T]
    returns = returns - _broadcast(algos.group_mean(batch.rewards.sum(-1), batch.groups), batch.mask)
    return algos.masked_whiten(returns, batch.mask, unbiased=algo.whiten_unbiased), None


@register_estimator("gae")
def gae(batch: CreditInputs, algo: AlgoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over policy tokens with the critic's values, whitened; the un-whitened advantages plus values are the critic's targets."""
    if batch.values is None:
        raise ValueError("advantage 'gae' needs critic values")
    adv, returns = algos.gae_advantages(batch.rewards, batch.values * batch.mask, batch.mask, algo.gamma, algo.lam)
    return algos.masked_whiten(adv, batch.mask, unbiased=algo.whiten_unbiased), returns


@register_estimator("turn")
def turn_level(batch: CreditInputs, algo: AlgoConfig) -> tuple[torch.Tensor, None]:
    """One reward per turn (the outcome on the last turn), each turn's advantage (algos.turn_advantages) on its tokens."""
    turn_of = batch.turn_ids.clamp(min=0).minimum(batch.turns[:, None] - 1)  # [B, T]: the turn a token's reward and advantage belong to
    turn_r = torch.zeros(len(batch.turns), int(batch.turns.max()), dtype=torch.float64)  # [B, K]
    for b, t in batch.rewards.nonzero().tolist():  # in token order: each turn's rewards add up in the order they were earned
        turn_r[b, int(turn_of[b, t])] += batch.rewards[b, t]
    turn_m = (torch.arange(turn_r.shape[1]) < batch.turns[:, None]).to(turn_r.dtype)  # [B, K]
    adv = algos.turn_advantages(turn_r, turn_m, batch.groups)  # [B, K]
    return torch.where(batch.mask.bool(), adv.gather(1, turn_of), 0.0), None


def token_advantages(
    episodes: list[Episode], algo: AlgoConfig, values: torch.Tensor | None = None, kl: torch.Tensor | None = None, judge: list[list[int]] | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Per-token float32 advantages of each episode by the estimator `algo.advantage` (and gae's value targets),
    judge spans by `algo.judge_advantage`. values, kl: [B, T], as `credit_inputs` takes them."""
    batch = credit_inputs(episodes, algo, values, kl)
    adv, returns = ESTIMATORS[algo.advantage](batch, algo)
    if algo.judge_advantage and judge is not None:
        judge_adv, judge_returns = ESTIMATORS[algo.judge_advantage](batch, algo)
        role = pad(judge)
        adv = role * judge_adv + (1 - role) * adv
        returns = returns if returns is not None else judge_returns  # the critic learns whenever one role uses it
    if algo.learn_from_turn > 1:
        # Earlier turns' tokens (turn ids count from 0) get no policy gradient; the critic still learns their values.
        adv = adv * (batch.turn_ids >= algo.learn_from_turn - 1)
    cut = lambda x: [x[b, : len(ep.token_ids)].float() for b, ep in enumerate(episodes)]  # noqa: E731
    return cut(adv), (cut(returns) if returns is not None else None)
