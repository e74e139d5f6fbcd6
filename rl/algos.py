"""RL math as pure functions over tensors and masks.

Shapes: B = sequences in a (micro-)batch, T = tokens per padded sequence.
Token-aligned tensors are [B, T]: entry [b, t] concerns token t of sequence b
(its logprob is log p(token t | tokens < t)); `mask` is 1 on tokens the policy
sampled and 0 on prompt, observation and padding tokens, which then contribute
nothing to any loss.
"""

from __future__ import annotations

import torch


# ---------------------------------------------------------------- advantages


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, norm_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: each episode's reward minus its group's mean, divided by the group's std when `norm_by_std`.

    rewards: [N] float; groups: [N] int group id of each episode (groups may differ in size).
    Returns [N]. `norm_by_std=False` is Dr.GRPO (no std division, no difficulty bias).
    The std is the unbiased one (N-1), as in GRPO's reference implementations; a group of
    one episode has no baseline and gets advantage 0.
    """
    _, index = groups.unique(return_inverse=True)  # [N] in 0..G-1
    n_groups = int(index.max()) + 1
    count = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, index, torch.ones_like(rewards))  # [G]
    mean = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, index, rewards) / count  # [G]
    centered = rewards - mean[index]  # [N]
    if not norm_by_std:
        return torch.where(count[index] > 1, centered, torch.zeros_like(centered))
    sq = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, index, centered**2)  # [G]
    std = (sq / (count - 1).clamp(min=1)).sqrt()  # [G]
    adv = centered / (std[index] + eps)
    return torch.where(count[index] > 1, adv, torch.zeros_like(adv))


# ---------------------------------------------------------------- losses


def ppo_clip_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, per token, with separate low/high clip ranges (DAPO's clip-higher).

    All inputs [B, T]. Returns (loss [B, T], clipped [B, T] bool: where the clip was active).
    loss = -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A), r = exp(logprobs - old_logprobs).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    return -torch.min(unclipped, clipped), clipped < unclipped


def truncated_is_weight(old_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Token-level truncated importance weight min(pi_old / pi_behaviour, cap), no gradient. [B, T] -> [B, T].

    pi_behaviour is the engine that sampled (maybe a step stale, maybe numerically different);
    pi_old is the learner's policy before this update. Truncation bounds the variance (TIS).
    """
    return torch.exp(old_logprobs - behaviour_logprobs).clamp(max=cap).detach()


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy. [B, T] -> [B, T].

    k1 = log(p/q) (unbiased, high variance); k2 = (log(p/q))^2 / 2; k3 = q/p - 1 - log(q/p)
    (unbiased and always >= 0, Schulman's low-variance estimator).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(-log_ratio) - 1.0 + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}: use k1, k2 or k3")


LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


def aggregate_loss(loss: torch.Tensor, mask: torch.Tensor, mode: str, num_tokens: float, num_seqs: float) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    `num_tokens` and `num_seqs` are the counts over the whole optimizer step (all micro-batches),
    so accumulating micro-batch results gives exactly the full-batch loss:
      token-mean          sum of all token losses / tokens in the step (DAPO; long answers weigh more)
      seq-mean-token-sum  per-sequence sum, averaged over sequences (Dr.GRPO without the constant)
      seq-mean-token-mean per-sequence mean, averaged over sequences (the original GRPO)
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
