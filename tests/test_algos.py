"""Advantages and losses against numbers computed by hand or in float64 numpy."""

import math

import numpy as np
import pytest
import torch

from rl.config import AlgoConfig
from rl.learn import algos


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 4.0, 5.0], dtype=torch.float64)
    groups = torch.tensor([7, 7, 7, 3, 3, 9])  # ragged: sizes 3, 2, 1
    adv = algos.group_advantages(rewards, groups, norm_by_std=True, eps=0.0)
    # group 7: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3)
    s7 = math.sqrt(1 / 3)
    # group 3: mean 3, unbiased std sqrt(2)
    expected = [(2 / 3) / s7, (-1 / 3) / s7, (-1 / 3) / s7, -1 / math.sqrt(2), 1 / math.sqrt(2), 0.0]
    assert adv.tolist() == pytest.approx(expected)
    dr = algos.group_advantages(rewards, groups, norm_by_std=False)
    assert dr.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, -1.0, 1.0, 0.0])


def test_group_advantages_equal_rewards_give_zero():
    adv = algos.group_advantages(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0, 0, 0]))
    assert adv.tolist() == [0.0, 0.0, 0.0]


def test_a_group_of_one_gets_zero_or_its_raw_score():
    rewards, groups = torch.tensor([1.0, 0.0, 0.7], dtype=torch.float64), torch.tensor([0, 0, 1])
    for fn in (
        algos.group_advantages,
        lambda r, g, lone_score: algos.group_advantages(r, g, False, lone_score=lone_score),
        algos.rloo_advantages,
    ):
        assert fn(rewards, groups, lone_score=False)[2].item() == 0.0  # no baseline: no update
        assert fn(rewards, groups, lone_score=True)[2].item() == pytest.approx(0.7, rel=1e-5)  # verl's convention
        assert fn(rewards, groups, lone_score=True)[0].item() == fn(rewards, groups, lone_score=False)[0].item()


def test_whitening_variance_biased_or_unbiased():
    x, mask = (
        torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 6.0]], dtype=torch.float64),
        torch.tensor([[1, 1, 0], [1, 0, 1]]),
    )
    vals = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    for unbiased in (False, True):
        z = (vals - vals.mean()) / vals.std(unbiased=unbiased)
        out = algos.masked_whiten(x, mask, eps=0.0, unbiased=unbiased)
        assert out[mask.bool()].tolist() == pytest.approx(z.tolist()) and (out[~mask.bool()] == 0).all()


def test_ppo_clip_loss_by_hand():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7]]))  # ratios
    adv = torch.tensor([[1.0, -1.0, -2.0, 1.0]])
    loss, clipped = algos.ppo_clip_loss(logp, old, adv, clip_low=0.2, clip_high=0.3)
    # -min(r A, clip(r, 0.8, 1.3) A)
    expected = [-min(1.5, 1.3), -min(-0.5, -0.8), -min(-2.2, -2.2), -min(0.7, 0.8)]
    assert loss[0].tolist() == pytest.approx(expected)
    assert clipped[0].tolist() == [True, True, False, False]


def test_dual_clip_caps_negative_advantages_and_the_log_ratio_is_clamped():
    old = torch.zeros(1, 5)
    logp = torch.tensor([[math.log(5.0), math.log(5.0), math.log(2.0), 25.0, 25.0]])
    adv = torch.tensor([[-1.0, 2.0, -1.0, -1.0, -2.0]])
    loss, clipped = algos.ppo_clip_loss(logp, old, adv, clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0)
    # A < 0, r = 5: PPO alone gives -min(-5, -1.2) = 5, dual clip caps it at 3 |A|; A > 0: untouched (clip to 1.2);
    # r = 2 < 3: PPO's 2; r = e^25: capped at 3 |A|
    assert loss[0].tolist() == pytest.approx([3.0, -2.4, 2.0, 3.0, 6.0])
    assert clipped[0].tolist() == [True, True, False, True, True]
    plain, _ = algos.ppo_clip_loss(logp, old, adv, clip_low=0.2, clip_high=0.2, clip_ratio_c=0.0)
    assert plain[0, :3].tolist() == pytest.approx([5.0, -2.4, 2.0])
    # Without dual clip the log-ratio clamp still bounds the loss: e^20 |A|, not e^25 |A| (7e10).
    assert plain[0, 3].item() == pytest.approx(math.exp(algos.LOG_RATIO_LIMIT), rel=1e-5)
    assert torch.isfinite(plain).all() and plain.max().item() < 1e9
    # GSPO: one sequence, mean log-ratio log 5, A = -1: the same cap.
    mask = torch.ones(1, 2)
    seq, seq_clipped = algos.gspo_loss(
        torch.full((1, 2), math.log(5.0)), torch.zeros(1, 2), -torch.ones(1, 2), mask, 0.2, 0.2, 3.0
    )
    assert seq[0].tolist() == pytest.approx([3.0, 3.0]) and seq_clipped.all()


def test_dual_clip_leaves_no_gradient_on_the_capped_tokens():
    logp = torch.tensor([[math.log(5.0), math.log(2.0)]], requires_grad=True)
    loss, _ = algos.ppo_clip_loss(logp, torch.zeros(1, 2), torch.tensor([[-1.0, -1.0]]), 0.2, 0.2, clip_ratio_c=3.0)
    loss.sum().backward()
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 1].item() == pytest.approx(2.0)  # d(r |A|)/dlogp = r


def test_kl_estimators_float64():
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    lp, lq = torch.tensor(p), torch.tensor(q)
    assert np.allclose(algos.kl_penalty(lp, lq, "k1").numpy(), p - q)
    assert np.allclose(algos.kl_penalty(lp, lq, "k2").numpy(), 0.5 * (p - q) ** 2)
    k3 = np.minimum(np.exp(q - p) - 1 - (q - p), algos.K3_LIMIT)
    assert np.allclose(algos.kl_penalty(lp, lq, "k3").numpy(), k3)
    assert np.allclose(algos.kl_penalty(lp, lq, "k3+").numpy(), k3)  # k3's value
    assert (algos.kl_penalty(lp, lq, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k4"):
        algos.kl_penalty(lp, lq, "k4")


def test_k3_is_clamped_where_the_policy_has_all_but_dropped_a_token():
    # log(p/q) = -25: k3 would be e^25 ~ 7e10.
    lp, lq = torch.tensor([[-25.0, -0.1]], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    k3 = algos.kl_penalty(lp, lq, "k3")
    assert k3[0, 0].item() == algos.K3_LIMIT and k3[0, 1].item() == pytest.approx(math.exp(0.1) - 1 - 0.1)


def test_kl_estimators_are_unbiased_where_they_should_be():
    # Sample tokens from p; E_p[k1] = E_p[k3] = KL(p || q) exactly in expectation.
    p = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    for est in ("k1", "k3", "k3+"):
        per_token = algos.kl_penalty(p.log(), q.log(), est)
        assert float((p * per_token).sum()) == pytest.approx(exact)


def kl_gradient(estimator, logits, ref):
    """Exact expected gradient of the per-token KL term over tokens sampled from the policy: autograd
    through the estimator, the sampling distribution held fixed (the loss sees samples, not p)."""
    theta = logits.clone().requires_grad_(True)
    logp = theta.log_softmax(-1)
    (logp.exp().detach() * algos.kl_penalty(logp, ref, estimator)).sum().backward()
    return theta.grad


def test_the_default_kl_term_pulls_toward_the_reverse_kl():
    # A small categorical: the gradient of KL(p || ref) over the full distribution, by autograd.
    logits = torch.tensor([0.3, -1.2, 0.8, 0.0, -0.4], dtype=torch.float64)
    ref = torch.tensor([-0.5, 0.4, 0.1, -1.0, 0.9], dtype=torch.float64).log_softmax(-1)

    def exact(kl_of):
        theta = logits.clone().requires_grad_(True)
        kl_of(theta.log_softmax(-1)).backward()
        return theta.grad

    reverse = exact(lambda logp: (logp.exp() * (logp - ref)).sum())  # KL(p || ref)
    forward = exact(lambda logp: (ref.exp() * (ref - logp)).sum())  # KL(ref || p)
    assert not torch.allclose(reverse, forward, atol=1e-3)
    assert torch.allclose(kl_gradient(AlgoConfig().kl_estimator, logits, ref), reverse)
    assert torch.allclose(kl_gradient("k2", logits, ref), reverse)
    assert torch.allclose(kl_gradient("k3+", logits, ref), reverse)
    assert torch.allclose(kl_gradient("k3", logits, ref), forward)
    assert torch.allclose(kl_gradient("k1", logits, ref), torch.zeros_like(reverse))


def test_aggregation_modes_by_hand_and_masked_tokens_count_nothing():
    loss = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0]])
    assert algos.aggregate_loss(loss, mask, "token-mean", 4, 2).item() == pytest.approx((1 + 2 + 3 + 5) / 4)
    assert algos.aggregate_loss(loss, mask, "seq-mean-token-sum", 4, 2).item() == pytest.approx((6 + 5) / 2)
    assert algos.aggregate_loss(loss, mask, "seq-mean-token-mean", 4, 2).item() == pytest.approx((2 + 5) / 2)
    # Changing masked entries changes nothing, gradients included.
    for mode in algos.LOSS_AGGREGATIONS:
        x = loss.clone().requires_grad_(True)
        algos.aggregate_loss(x, mask, mode, 4, 2).backward()
        assert (x.grad[mask == 0] == 0).all()


def test_aggregation_is_additive_over_micro_batches():
    torch.manual_seed(0)
    loss, mask = torch.rand(6, 5), (torch.rand(6, 5) > 0.4).int()
    n_tok, n_seq = float(mask.sum()), 6.0
    for mode in algos.LOSS_AGGREGATIONS:
        whole = algos.aggregate_loss(loss, mask, mode, n_tok, n_seq)
        parts = sum(algos.aggregate_loss(loss[i : i + 2], mask[i : i + 2], mode, n_tok, n_seq) for i in range(0, 6, 2))
        assert torch.allclose(whole, parts)


def test_token_logprobs_matches_log_softmax():
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    out = algos.token_logprobs(logits, ids, temperature=0.7)
    ref = (logits[:, :-1] / 0.7).log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    assert out.shape == (2, 5) and (out[:, 0] == 0).all()
    assert torch.allclose(out[:, 1:], ref, atol=1e-6)
