"""Credit assignment: from scored episodes to one advantage per token, by the estimator named in `algo.advantage`.

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

from rl import algos
from rl.episode import Episode

ESTIMATORS = ("grpo", "drgrpo", "rloo", "reinforce++", "reinforce++-baseline", "gae", "turn")


def pad(rows: list, value: float = 0.0, dtype=torch.float64) -> torch.Tensor:
    """Right-pad lists or 1-D tensors into one [B, T] tensor."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


def turn_end_positions(ep: Episode) -> dict[int, int]:
    """Turn index -> position of the last token the policy sampled in that turn (turns with none are absent)."""
    return {turn: t for t, (turn, m) in enumerate(zip(ep.turn_ids, ep.loss_mask)) if m}


def episode_rewards(ep: Episode, algo) -> tuple[list[float], float]:
    """(process rewards by turn, outcome plus overlong penalty) as the estimators see them."""
    process = [0.0] * len(ep.reward.process) if algo.turn_outcome_only else list(ep.reward.process)
    outcome = ep.reward.outcome
    if algo.overlong_max_tokens:
        length = torch.tensor([sum(ep.loss_mask)])
        outcome += algo.overlong_coef * float(algos.overlong_penalty(length, algo.overlong_max_tokens, algo.overlong_cache_tokens)[0])
    return process, outcome


def token_rewards(episodes: list[Episode], algo) -> torch.Tensor:
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


def _broadcast(per_episode: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return per_episode[:, None] * mask  # [B] -> [B, T]


def estimate(name: str, episodes: list[Episode], algo, values: torch.Tensor | None, kl: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Advantages [B, T] (0 off policy tokens) by estimator `name`, and value targets [B, T] for gae.

    values: [B, T] critic values at sampling time (gae only); kl: [B, T] per-token KL penalty
    already multiplied by its coefficient, subtracted from the rewards (None: KL not in the reward).
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}: use one of {ESTIMATORS}")
    mask = pad([ep.loss_mask for ep in episodes])  # [B, T]
    rewards = token_rewards(episodes, algo)  # [B, T]
    if kl is not None:
        rewards = rewards - kl * mask
    groups = torch.tensor([ep.group for ep in episodes])
    totals = rewards.sum(-1)  # [B]
    if name in ("grpo", "drgrpo"):
        return _broadcast(algos.group_advantages(totals, groups, algo.norm_by_std and name == "grpo", lone_score=algo.lone_group_score), mask), None
    if name == "rloo":
        return _broadcast(algos.rloo_advantages(totals, groups, algo.lone_group_score), mask), None
    if name in ("reinforce++", "reinforce++-baseline"):
        returns = algos.discounted_returns(rewards, mask, algo.gamma)  # [B, T]
        if name == "reinforce++-baseline":
            # The group's mean total, the same for every token of every episode of the group. Put on the
            # last token instead, it would reach token t as gamma^(tokens after t) * mean: a baseline
            # that the episode's own later actions (when to stop) decide, biased whenever gamma < 1.
            # The mean includes the episode itself (OpenRLHF's convention).
            returns = returns - _broadcast(algos.group_mean(totals, groups), mask)
        return algos.masked_whiten(returns, mask, unbiased=algo.whiten_unbiased), None
    if name == "gae":
        if values is None:
            raise ValueError("advantage 'gae' needs critic values")
        adv, returns = algos.gae_advantages(rewards, values * mask, mask, algo.gamma, algo.lam)
        return algos.masked_whiten(adv, mask, unbiased=algo.whiten_unbiased), returns
    # turn: one reward per turn, the outcome on the last turn, each turn's advantage on its tokens.
    n_turns = [len(ep.reward.process) or 1 for ep in episodes]
    turn_r = torch.zeros(len(episodes), max(n_turns), dtype=torch.float64)
    turn_m = torch.zeros_like(turn_r)
    for b, ep in enumerate(episodes):
        turn_m[b, : n_turns[b]] = 1
        for t in range(len(ep.token_ids)):  # every reward lands on the turn of the token that carries it
            if rewards[b, t] != 0:
                turn_r[b, min(max(ep.turn_ids[t], 0), n_turns[b] - 1)] += rewards[b, t]
    adv = algos.turn_advantages(turn_r, turn_m, groups)  # [B, K]
    out = torch.zeros_like(mask)
    for b, ep in enumerate(episodes):
        for t, (turn, m) in enumerate(zip(ep.turn_ids, ep.loss_mask)):
            if m:
                out[b, t] = adv[b, min(turn, n_turns[b] - 1)]
    return out, None


def token_advantages(
    episodes: list[Episode], algo, values: torch.Tensor | None = None, kl: torch.Tensor | None = None, judge: list[list[int]] | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Per-token float32 advantages of each episode (and gae's value targets), judge spans by their own estimator."""
    adv, returns = estimate(algo.advantage, episodes, algo, values, kl)
    if algo.judge_advantage and judge is not None:
        judge_adv, judge_returns = estimate(algo.judge_advantage, episodes, algo, values, kl)
        role = pad(judge)
        adv = role * judge_adv + (1 - role) * adv
        returns = returns if returns is not None else judge_returns  # the critic learns whenever one role uses it
    cut = lambda x: [x[b, : len(ep.token_ids)].float() for b, ep in enumerate(episodes)]  # noqa: E731
    return cut(adv), (cut(returns) if returns is not None else None)
