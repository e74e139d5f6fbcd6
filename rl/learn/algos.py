"""RL math as pure functions over tensors and masks.

Shapes: B = sequences in a (micro-)batch, T = tokens per padded sequence.
Token-aligned tensors are [B, T]: entry [b, t] concerns token t of sequence b
(its logprob is log p(token t | tokens < t)); `mask` is 1 on tokens the policy
sampled and 0 on prompt, observation and padding tokens, which then contribute
nothing to any loss.
"""

from __future__ import annotations

import math
from typing import get_args

import torch

from rl.config import KLEstimator, LossAggregation, TISLevel

# ---------------------------------------------------------------- advantages


def group_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, norm_by_std: bool = True, eps: float = 1e-6, lone_score: bool = False
) -> torch.Tensor:
    """GRPO: each episode's reward minus its group's mean, divided by the group's std when `norm_by_std`.

    rewards: [N] float; groups: [N] int group id of each episode (groups may differ in size).
    Returns [N]. `norm_by_std=False` is Dr.GRPO (no std division, no difficulty bias).
    The std is the unbiased one (N-1), as in GRPO's reference implementations. A group of
    one episode has no baseline and gets advantage 0; `lone_score` gives it its raw reward
    instead (verl's convention: mean 0, std 1 for a group of one).
    """
    _, index = groups.unique(return_inverse=True)  # [N] in 0..G-1
    n_groups = int(index.max()) + 1
    count = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, index, torch.ones_like(rewards))  # [G]
    mean = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, index, rewards) / count  # [G]
    centered = rewards - mean[index]  # [N]
    lone = rewards if lone_score else torch.zeros_like(rewards)
    if not norm_by_std:
        return torch.where(count[index] > 1, centered, lone)
    sq = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, index, centered**2)  # [G]
    std = (sq / (count - 1).clamp(min=1)).sqrt()  # [G]
    adv = centered / (std[index] + eps)
    return torch.where(count[index] > 1, adv, lone)


def _group_index(groups: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[N] arbitrary group ids -> ([N] dense ids in 0..G-1, G)."""
    _, index = groups.unique(return_inverse=True)
    return index, int(index.max()) + 1


def _group_sum(values: torch.Tensor, index: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Sum of `values` [N, ...] per group -> [G, ...]."""
    return torch.zeros((n_groups, *values.shape[1:]), dtype=values.dtype).index_add_(0, index, values)


def group_mean(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """The mean reward of each episode's group. [N] -> [N]."""
    index, n_groups = _group_index(groups)
    return (_group_sum(rewards, index, n_groups) / _group_sum(torch.ones_like(rewards), index, n_groups))[index]


def rloo_advantages(rewards: torch.Tensor, groups: torch.Tensor, lone_score: bool = False) -> torch.Tensor:
    """RLOO: each episode's reward minus the mean of the *other* episodes of its group. [N] -> [N].

    Equals n / (n - 1) times the group-centered reward; the baseline never contains the episode
    itself, so the estimator is unbiased. A group of one has no baseline and gets 0, or its raw
    reward with `lone_score` (verl's convention).
    """
    index, n_groups = _group_index(groups)
    count = _group_sum(torch.ones_like(rewards), index, n_groups)[index]  # [N]
    mean = _group_sum(rewards, index, n_groups)[index] / count  # [N]
    lone = rewards if lone_score else torch.zeros_like(rewards)
    return torch.where(count > 1, (rewards - mean) * count / (count - 1).clamp(min=1), lone)


def zero_variance_groups(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """[N] bool: the episode's group has one reward value only, so every group-relative advantage in it is 0.

    DAPO's dynamic sampling drops these groups (they carry no gradient but dilute the batch).
    """
    index, n_groups = _group_index(groups)
    lo = torch.full((n_groups,), float("inf"), dtype=rewards.dtype).scatter_reduce(0, index, rewards, "amin")
    hi = torch.full((n_groups,), float("-inf"), dtype=rewards.dtype).scatter_reduce(0, index, rewards, "amax")
    return (hi == lo)[index]


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, cache_tokens: int) -> torch.Tensor:
    """DAPO's soft overlong punishment of an episode with `lengths` [N] policy tokens -> [N] (<= 0).

    0 up to max_tokens - cache_tokens, then falling linearly to -1 at max_tokens, -1 beyond.
    Lengths count sampled tokens only: a long observation must not punish the policy.
    """
    start = max_tokens - cache_tokens
    ramp = (start - lengths.double()) / max(cache_tokens, 1)
    return torch.where(lengths <= start, torch.zeros_like(ramp), ramp.clamp(min=-1.0))


def turn_advantages(
    turn_rewards: torch.Tensor, turn_mask: torch.Tensor, groups: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """Critic-free turn-level credit: return-to-go of each turn minus a leave-one-out per-turn baseline.

    turn_rewards: [N, K] reward earned by turn k of episode n (the outcome added to its last turn);
    turn_mask: [N, K] 1 where episode n has a turn k (episodes have different turn counts);
    groups: [N] group ids. Returns [N, K] advantages, 0 where turn_mask is 0.

    A[n, k] = G[n, k] - b[n, k], with G[n, k] = sum_{j >= k} gamma^(j - k) turn_rewards[n, j] the return-to-go
    (gamma = 0: each turn its own reward, SCoRe's instantaneous credit) and
    b[n, k] the mean of G[m, k] over the *other* episodes m of the group that reached turn k
    (0 when none did).

    Why this is unbiased when the policy decides how many turns an episode has: the policy gradient
    stays unbiased under a baseline as long as the baseline does not depend on the action it is
    subtracted from, nor on anything that action causes. b[n, k] is built only from other
    episodes, which are sampled independently of episode n, so E[b grad log pi(a_nk | s_nk)] = 0.
    The naive per-turn-index normalization (MT-GRPO; verl RFC #7244) instead normalizes each
    turn's reward by the mean over episodes that have that turn and sums the normalized rewards
    from turn k to the episode's *own* last turn: the baseline it subtracts has as many terms as
    episode n has turns, which the actions at turn k and later decide. That baseline is
    action-dependent, and the gradient picks up a spurious -sum(per-turn mean reward) on every
    "take another turn" decision (plus the episode's own reward inside its mean and std).
    No std division here for the same reason: a scale computed from the episode itself biases it.

    The argument holds for the loss `seq-mean-token-sum` builds: each episode's sum over its tokens
    of A * log pi, divided by a count that does not depend on the episode. `seq-mean-token-mean`
    divides each episode by its own length, which its actions decide (another turn, more tokens),
    and `token-mean` divides by the batch's token count, which contains the episode's length (a
    bias of order length / batch tokens); GSPO averages each sequence's tokens as well. AlgoConfig
    refuses `turn` under anything but `seq-mean-token-sum`
    (`tests/test_algorithms_turn_credit.py` measures both aggregations).
    """
    mask = turn_mask.to(turn_rewards.dtype)
    returns = torch.zeros_like(turn_rewards)  # [N, K] return-to-go
    running = torch.zeros_like(turn_rewards[:, 0])
    for k in range(turn_rewards.shape[1] - 1, -1, -1):
        running = (turn_rewards[:, k] + gamma * running) * mask[:, k]
        returns[:, k] = running
    index, n_groups = _group_index(groups)
    total = _group_sum(returns, index, n_groups)[index]  # [N, K] sum over the group, self included
    count = _group_sum(mask, index, n_groups)[index]  # [N, K] episodes of the group with turn k
    others = (count - mask).clamp(min=1)
    baseline = torch.where(count - mask > 0, (total - returns) / others, torch.zeros_like(total))
    return (returns - baseline) * mask


def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Return-to-go over policy tokens. token_rewards, mask: [B, T] -> [B, T], 0 where mask is 0.

    Observation tokens are not steps of the policy: they pass the return through undiscounted.
    """
    out = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])  # [B]
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        m = mask[:, t].to(token_rewards.dtype)
        running = m * (token_rewards[:, t] + gamma * running) + (1 - m) * running
        out[:, t] = m * running
    return out


def gae_advantages(
    token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over policy tokens. All [B, T] -> (advantages, returns), 0 off mask.

    delta_t = r_t + gamma V(next policy token) - V(t); A_t = delta_t + gamma lam A(next policy token);
    V after the last policy token is 0 (the episode is over). Observation and padding tokens are
    skipped: the next step of the policy after an observation is its next sampled token.
    returns = advantages + values, the value targets.
    """
    adv = torch.zeros_like(token_rewards)
    next_value = torch.zeros_like(token_rewards[:, 0])  # [B]
    next_adv = torch.zeros_like(next_value)
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        m = mask[:, t].to(token_rewards.dtype)
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        next_adv = m * a + (1 - m) * next_adv
        next_value = m * values[:, t] + (1 - m) * next_value
        adv[:, t] = m * a
    mask = mask.to(token_rewards.dtype)
    return adv, (adv + values) * mask


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, unbiased: bool = False) -> torch.Tensor:
    """(x - mean) / std over the entries where mask is 1 (the batch's policy tokens); 0 elsewhere. [B, T] -> [B, T].

    The variance divides by n, the number of policy tokens (OpenRLHF); `unbiased` divides by n - 1 (verl).
    """
    mask = mask.to(x.dtype)
    n = mask.sum().clamp(min=1)
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / ((n - 1).clamp(min=1) if unbiased else n)
    return (x - mean) * torch.rsqrt(var + eps) * mask


# ---------------------------------------------------------------- losses

# Log-ratios beyond this are clamped before exp: a token the old policy all but never sampled
# would otherwise weigh e^25 ~ 7e10 times its advantage (verl clamps at the same value).
LOG_RATIO_LIMIT = 20.0


def _clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float, clip_ratio_c: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A), capped at -clip_ratio_c A where A < 0 (dual clip; 0 = off).

    ratio, advantages: [B, T] ->
    (loss [B, T], clipped [B, T] bool: where a clip decided the loss, so no gradient flows).
    """
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.min(unclipped, clipped)
    was_clipped = clipped < unclipped
    if clip_ratio_c > 0:
        # With A < 0 the loss grows with r without bound; dual clip (Ye et al. 2020) caps it at c |A|.
        cap = -clip_ratio_c * advantages
        dual = (advantages < 0) & (loss > cap)
        loss = torch.where(dual, cap, loss)
        was_clipped = was_clipped | dual
    return loss, was_clipped


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, per token, with separate low/high clip ranges (DAPO's clip-higher).

    All inputs [B, T]. Returns (loss [B, T], clipped [B, T] bool: where a clip was active).
    loss = -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A),
    r = exp(clamp(logprobs - old_logprobs, ±LOG_RATIO_LIMIT)),
    and with `clip_ratio_c` > 1 at most clip_ratio_c * |A| on tokens with A < 0 (dual clip).
    """
    ratio = torch.exp((logprobs - old_logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    return _clipped_surrogate(ratio, advantages, clip_low, clip_high, clip_ratio_c)


def gspo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GSPO: PPO's clipped surrogate on the sequence-level ratio s = exp(mean_t (logp - old_logp)).

    All inputs [B, T]; advantages are per token (constant within a sequence for group estimators).
    Per token, s_t = sg(s) * exp(logp_t - sg(logp_t)): its value is s and its gradient is
    s * grad logp_t, so every token of a sequence shares one ratio and one clipping decision.
    The mean log-ratio is clamped to ±LOG_RATIO_LIMIT, and `clip_ratio_c` is PPO's dual clip.
    Returns (loss [B, T], clipped [B, T] bool). GSPO's objective is the mean over sequences of
    each sequence's token mean: aggregate this loss with seq-mean-token-mean
    (rl/learn/losses.py does, whatever algo.loss_agg says).
    """
    m = mask.to(logprobs.dtype)
    seq_log_ratio = ((logprobs - old_logprobs) * m).sum(-1) / m.sum(-1).clamp(min=1.0)  # [B]
    seq_log_ratio = seq_log_ratio.detach().clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = torch.exp(seq_log_ratio)[:, None] * torch.exp(logprobs - logprobs.detach())  # [B, T]
    return _clipped_surrogate(ratio, advantages, clip_low, clip_high, clip_ratio_c)


def clipped_value_loss(
    values: torch.Tensor, critic_values: torch.Tensor, returns: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's value loss, per token. All [B, T] -> (loss [B, T], clipped [B, T] bool).

    0.5 max((V - R)^2, (V_critic + clip(V - V_critic, -clip, clip) - R)^2): the critic cannot gain by
    moving further than `clip` from the values it had at sampling time. clip = 0: plain 0.5 (V - R)^2.
    """
    plain = (values - returns) ** 2
    if clip <= 0:
        return 0.5 * plain, torch.zeros_like(plain, dtype=torch.bool)
    limited = (critic_values + (values - critic_values).clamp(-clip, clip) - returns) ** 2
    return 0.5 * torch.max(plain, limited), limited > plain


TIS_LEVELS = get_args(TISLevel)


def truncated_is_weight(
    old_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    cap: float,
    mask: torch.Tensor | None = None,
    level: str = "token",
) -> torch.Tensor:
    """Truncated importance weight min(pi_old / pi_sampler, cap), no gradient. [B, T] -> [B, T].

    pi_sampler is the engine that sampled (maybe a step stale, maybe numerically different);
    pi_old is the learner's policy before this update. Truncation bounds the variance (TIS).
    level "token": one weight per token; "sequence": the product of the ratios over the
    sequence's policy tokens (`mask`), one weight for all its tokens (exact for the sequence's
    probability, higher variance).
    """
    log_ratio = (old_logprobs - sampler_logprobs).detach()
    if level == "token":
        return torch.exp(log_ratio).clamp(max=cap)
    if level == "sequence":
        seq = (log_ratio * mask.to(log_ratio.dtype)).sum(-1, keepdim=True)  # [B, 1]
        return torch.exp(seq.clamp(max=math.log(cap))).expand_as(log_ratio)
    raise ValueError(f"unknown TIS level {level!r}: use one of {TIS_LEVELS}")


def masked_is_weight(
    old_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    low: float,
    high: float,
    mask: torch.Tensor | None = None,
    level: str = "token",
) -> torch.Tensor:
    """Masked importance weight: r = pi_old / pi_sampler where low <= r <= high, else 0; no gradient. [B, T] -> [B, T].

    Where the TIS weight keeps a far-off token at the cap, this one takes it out of the loss: a token the
    sampler and the learner disagree on that much (a stale engine, a numerical mismatch) teaches nothing
    reliable. IcePop masks outside a band around 1 (e.g. [0.5, 2]); AReaL's decoupled PPO weights by
    pi_proximal / pi_behaviour with low = 0 (pi_old is the proximal policy here, the sampler the behaviour one).
    level "sequence": r is the product over the sequence's policy tokens (`mask`), and a whole sequence stays or
    leaves.
    """
    log_ratio = (old_logprobs - sampler_logprobs).detach()
    if level == "sequence":
        log_ratio = (log_ratio * mask.to(log_ratio.dtype)).sum(-1, keepdim=True).expand_as(log_ratio)
    elif level != "token":
        raise ValueError(f"unknown TIS level {level!r}: use one of {TIS_LEVELS}")
    ratio = torch.exp(log_ratio.clamp(max=math.log(high) + 1.0))  # past the band either way: no overflow to inf
    return torch.where((ratio >= low) & (ratio <= high), ratio, torch.zeros_like(ratio))


KL_ESTIMATORS = get_args(KLEstimator)
# k3 grows as q/p: one token the policy has all but dropped would swamp the loss (verl clamps at 10 too)
K3_LIMIT = 10.0


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(p || q), p the policy (which sampled the tokens), q the reference. [B, T] -> [B, T].

    With r = log(p/q) on a sampled token, the value's expectation and the gradient's, under p:
      k1  = r                        value: KL(p || q), unbiased;  gradient: 0 in expectation (E_p[grad log p] = 0)
      k2  = r^2 / 2                  value: biased (>= 0);         gradient: grad KL(p || q), the reverse KL
      k3  = q/p - 1 - log(q/p)       value: KL(p || q), unbiased, >= 0, low variance (Schulman);
                                     gradient: grad KL(q || p), the forward KL
      k3+ = k3's value, k2's gradient: the unbiased value to log or put in the reward, and the
            reverse KL's gradient in the loss (verl's "k3+")
    In the reward only the value counts (k1, k3 or k3+); in the loss only the gradient (k2 or k3+).
    k3 (and k3+'s value) is clamped at K3_LIMIT.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator in ("k3", "k3+"):
        k3 = (torch.exp(-log_ratio) - 1.0 + log_ratio).clamp(max=K3_LIMIT)
        if estimator == "k3":
            return k3
        k2 = 0.5 * log_ratio**2
        return k3.detach() + k2 - k2.detach()
    raise ValueError(f"unknown KL estimator {estimator!r}: use one of {KL_ESTIMATORS}")


LOSS_AGGREGATIONS = get_args(LossAggregation)


def aggregate_loss(
    loss: torch.Tensor, mask: torch.Tensor, mode: str, num_tokens: float, num_seqs: float
) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    `num_tokens` and `num_seqs` are the counts over the whole optimizer step (all micro-batches),
    so accumulating micro-batch results gives exactly the full-batch loss:
      token-mean          sum of all token losses / tokens in the step (DAPO; long answers weigh more)
      seq-mean-token-sum  per-sequence sum, averaged over sequences (Dr.GRPO without the constant)
      seq-mean-token-mean per-sequence mean, averaged over sequences (the original GRPO)
    The learner counts in `num_seqs` the sequences without policy tokens too, unless
    `algo.seq_mean_skips_empty` (verl's count).
    """
    mask = mask.to(loss.dtype)
    if mode == "token-mean":
        return (loss * mask).sum() / max(num_tokens, 1.0)
    per_seq = (loss * mask).sum(-1)  # [B]
    if mode == "seq-mean-token-sum":
        return per_seq.sum() / max(num_seqs, 1.0)
    if mode == "seq-mean-token-mean":
        return (per_seq / mask.sum(-1).clamp(min=1.0)).sum() / max(num_seqs, 1.0)
    raise ValueError(f"unknown loss aggregation {mode!r}: use one of {LOSS_AGGREGATIONS}")


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Logprob of each token given the ones before it. logits: [B, T, V]; token_ids: [B, T] -> [B, T].

    Column 0 (no context) is 0. Uses gather - logsumexp, so no second [B, T, V] tensor is made.
    """
    logits = logits[:, :-1].float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    picked = logits.gather(-1, token_ids[:, 1:, None])[..., 0] - logits.logsumexp(-1)  # [B, T-1]
    return torch.cat([picked.new_zeros(picked.shape[0], 1), picked], dim=1)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the distribution each token was drawn from, aligned as token_logprobs. logits: [B, T, V] -> [B, T].

    Column 0 (no context) is 0. H = logsumexp(z) - sum softmax(z) z, no gradient: a metric (cleanRL logs it too)
    that shows the policy collapsing to near-deterministic tokens before the reward says so.
    """
    with torch.no_grad():
        z = logits[:, :-1].float()
        if temperature not in (0.0, 1.0):
            z = z / temperature
        entropy = z.logsumexp(-1) - (z.softmax(-1) * z).sum(-1)  # [B, T-1]
    return torch.cat([entropy.new_zeros(entropy.shape[0], 1), entropy], dim=1)
