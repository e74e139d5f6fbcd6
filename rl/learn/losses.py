"""The learner's objective as named terms over one micro-batch: `total_loss(inputs, algo) -> (loss, metrics)`.

    loss = policy loss (its tokens weighted by an importance correction, when on)
         + kl_coef * KL to the reference (when there is a reference model and the KL is not in the reward)
         + vf_coef * value loss (when there is a critic)

The policy loss is chosen by name (`algo.policy_loss`) from POLICY_LOSSES; each one aggregates
its own per-token loss. The math lives in rl/learn/algos.py; this module only composes it. Every
term divides by the token/sequence counts of the whole mini-batch (`num_tokens`, `num_seqs`),
so summing micro-batches gives the mini-batch's loss and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from rl.config import AlgoConfig
from rl.learn import algos
from rl.registry import Registry


@dataclass
class LossInputs:
    """One micro-batch of b sequences, right-padded to T tokens;
    all [b, T] tensors are float32 on the learner's device."""

    # [b, T] the policy's logprob of each token as it steps, with autograd (0 on the prompt)
    policy_logprobs: torch.Tensor
    # [b, T] the learner's before this update (PPO's ratio denominator), no autograd
    old_logprobs: torch.Tensor
    advantages: torch.Tensor  # [b, T] 0 off policy tokens
    loss_mask: torch.Tensor  # [b, T] 1 on the tokens the policy sampled
    num_tokens: float  # policy tokens in the whole mini-batch
    # sequences in the whole mini-batch (those without policy tokens left out with algo.seq_mean_skips_empty)
    num_seqs: float
    # [b, T] the engine's logprobs at sampling time (TIS, mismatch metrics)
    sampler_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None  # [b, T] the reference model's (None: no KL term)
    # [b, T] the critic's values as it steps, with autograd (None: no value term)
    values: torch.Tensor | None = None
    # [b, T] the critic's values before the update (value clipping's anchor)
    critic_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None  # [b, T] the critic's targets
    # [b, T] weight of each token's policy loss (TIS; None: 1), applied before aggregation
    policy_weight: torch.Tensor | None = None
    # [b, T] 1 on the policy tokens the KL term covers (algo.kl_turns; None: all of them)
    kl_mask: torch.Tensor | None = None


def policy_token_mean(x: torch.Tensor, inputs: LossInputs) -> torch.Tensor:
    """Sum of `x` [b, T] over policy tokens, divided by the mini-batch's policy tokens -> 0-d."""
    return (x * inputs.loss_mask).sum() / max(inputs.num_tokens, 1.0)


def aggregate(token_loss: torch.Tensor, inputs: LossInputs, mode: str) -> torch.Tensor:
    """A per-token loss [b, T] reduced by `mode` (algos.LOSS_AGGREGATIONS) with the mini-batch's counts -> 0-d."""
    return algos.aggregate_loss(token_loss, inputs.loss_mask, mode, inputs.num_tokens, inputs.num_seqs)


def weighted(token_loss: torch.Tensor, inputs: LossInputs) -> torch.Tensor:
    """A per-token policy loss [b, T] times `inputs.policy_weight`: every policy loss applies it before aggregating."""
    return token_loss if inputs.policy_weight is None else token_loss * inputs.policy_weight


# ---------------------------------------------------------------- policy losses

# One function per policy loss: fn(inputs: LossInputs, algo) -> (loss: 0-d tensor, metrics: dict[str, 0-d tensor]).
# A loss registered with sequence_level=True weighs each sequence as a whole (one ratio per sequence, a mean of its
# tokens), whatever `algo.loss_agg` says: the config then refuses the estimators that are unbiased only
# under a token sum.
POLICY_LOSSES = Registry("policy loss", "policy_loss", ("sequence_level",))
register_policy_loss = POLICY_LOSSES.register


@register_policy_loss("ppo")
def ppo(inputs: LossInputs, algo: AlgoConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate on each token's ratio, aggregated by `algo.loss_agg`."""
    token_loss, clipped = algos.ppo_clip_loss(
        inputs.policy_logprobs, inputs.old_logprobs, inputs.advantages, algo.clip_low, algo.clip_high, algo.clip_ratio_c
    )
    loss = aggregate(weighted(token_loss, inputs), inputs, algo.loss_agg)
    return loss, {"clip_frac": policy_token_mean(clipped.float(), inputs)}


@register_policy_loss("gspo", sequence_level=True)
def gspo(inputs: LossInputs, algo: AlgoConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO: the clipped surrogate on each sequence's ratio,
    a mean over sequences of token means whatever `algo.loss_agg` says."""
    token_loss, clipped = algos.gspo_loss(
        inputs.policy_logprobs,
        inputs.old_logprobs,
        inputs.advantages,
        inputs.loss_mask,
        algo.clip_low,
        algo.clip_high,
        algo.clip_ratio_c,
    )
    loss = aggregate(
        weighted(token_loss, inputs), inputs, "seq-mean-token-mean"
    )  # GSPO's objective, whatever algo.loss_agg says
    return loss, {"clip_frac": policy_token_mean(clipped.float(), inputs)}


# ---------------------------------------------------------------- the other terms


# ---------------------------------------------------------------- importance corrections

# One function per correction of the sampler's tokens towards pi_old (`algo.tis_mode`, on when `algo.tis_cap` > 0):
# fn(inputs, algo) -> [b, T] weights, no gradient, applied to each token's policy loss before aggregation.
IS_CORRECTIONS = Registry("importance correction", "tis_mode")
register_is_correction = IS_CORRECTIONS.register


@register_is_correction("truncate")
def truncate(inputs: LossInputs, algo: AlgoConfig) -> torch.Tensor:
    """TIS: min(pi_old / pi_sampler, tis_cap): samples from a stale or numerically different engine are
    reweighted towards the old policy, the variance bounded by the cap."""
    return algos.truncated_is_weight(
        inputs.old_logprobs, inputs.sampler_logprobs, algo.tis_cap, inputs.loss_mask, algo.tis_level
    )


@register_is_correction("mask")
def mask(inputs: LossInputs, algo: AlgoConfig) -> torch.Tensor:
    """pi_old / pi_sampler where it lies in [tis_low, tis_cap], else 0: tokens the two disagree on that much leave
    the loss (IcePop; AReaL's decoupled PPO with tis_low = 0)."""
    return algos.masked_is_weight(
        inputs.old_logprobs, inputs.sampler_logprobs, algo.tis_low, algo.tis_cap, inputs.loss_mask, algo.tis_level
    )


def tis_weight(inputs: LossInputs, algo: AlgoConfig) -> torch.Tensor | None:
    """[b, T] importance weights of `algo.tis_mode`; None when `algo.tis_cap` is 0."""
    return IS_CORRECTIONS[algo.tis_mode](inputs, algo) if algo.tis_cap > 0 else None


def tis_metrics(weight: torch.Tensor, inputs: LossInputs, algo: AlgoConfig) -> dict[str, torch.Tensor]:
    """The mean weight over policy tokens, the share of them at the cap, and the share masked out (weight 0)."""
    return {
        "tis_weight": policy_token_mean(weight, inputs),
        "tis_capped_frac": policy_token_mean((weight >= algo.tis_cap).float(), inputs),
        "tis_masked_frac": policy_token_mean((weight == 0).float(), inputs),
    }


def kl_term(inputs: LossInputs, algo: AlgoConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL(policy || reference) by `algo.kl_estimator` on the tokens of `inputs.kl_mask`, aggregated by `algo.loss_agg`
    (weighted by kl_coef in total_loss)."""
    kl = algos.kl_penalty(inputs.policy_logprobs, inputs.ref_logprobs, algo.kl_estimator)  # [b, T]
    covered = kl if inputs.kl_mask is None else kl * inputs.kl_mask
    # kl_ref is the drift of every policy token, covered or not: with kl_turns=first it shows the later turns moving.
    return aggregate(covered, inputs, algo.loss_agg), {"kl_ref": policy_token_mean(kl.detach(), inputs)}


def value_term(inputs: LossInputs, algo: AlgoConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The critic's clipped value loss, aggregated by `algo.loss_agg` (weighted by vf_coef in total_loss)."""
    token_loss, clipped = algos.clipped_value_loss(inputs.values, inputs.critic_values, inputs.returns, algo.value_clip)
    loss = aggregate(token_loss, inputs, algo.loss_agg)
    return loss, {"value_loss": loss.detach(), "value_clip_frac": policy_token_mean(clipped.float(), inputs)}


def total_loss(inputs: LossInputs, algo: AlgoConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss to backpropagate on one micro-batch (see the module docstring), and every term's metrics
    (0-d, detached)."""
    weight = tis_weight(inputs, algo)
    loss, metrics = POLICY_LOSSES[algo.policy_loss](replace(inputs, policy_weight=weight), algo)
    if weight is not None:
        metrics |= tis_metrics(weight, inputs, algo)
    if inputs.ref_logprobs is not None:
        kl, kl_metrics = kl_term(inputs, algo)
        loss, metrics = loss + algo.kl_coef * kl, metrics | kl_metrics
    if inputs.values is not None:
        value, value_metrics = value_term(inputs, algo)
        loss, metrics = loss + algo.vf_coef * value, metrics | value_metrics
    return loss, {"loss": loss.detach(), **metrics}


def mismatch_metrics(inputs: LossInputs) -> dict[str, torch.Tensor]:
    """How far the learner's logprobs are from the engine's on the sampled tokens,
    while the learner is still the sampling policy.

    mismatch_kl: the k3 estimate of KL(sampler || learner) per policy token; mismatch_max_abs: the largest
    token gap; mismatch_seq_max_abs: the largest |log pi_learner(seq) - log pi_sampler(seq)|, what a
    sequence-level TIS weight sees.
    """
    diff = (inputs.policy_logprobs.detach() - inputs.sampler_logprobs) * inputs.loss_mask  # [b, T]
    return {
        "mismatch_kl": policy_token_mean(torch.exp(diff) - 1 - diff, inputs),
        "mismatch_max_abs": diff.abs().max(),
        "mismatch_seq_max_abs": diff.sum(-1).abs().max(),
    }


def add_metrics(total: dict[str, torch.Tensor], part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A micro-batch's metrics added into the mini-batch's: maxima (`*_max_abs`) by max, the rest by sum
    (each is already divided by the mini-batch's counts)."""
    out = dict(total)
    for name, value in part.items():
        before = total.get(name, torch.zeros((), device=value.device))
        out[name] = torch.maximum(before, value) if name.endswith("_max_abs") else before + value
    return out
