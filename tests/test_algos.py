"""Advantages and losses against numbers computed by hand or in float64 numpy."""

import math

import numpy as np
import pytest
import torch

from rl import algos


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


def test_ppo_clip_loss_by_hand():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7]]))  # ratios
    adv = torch.tensor([[1.0, -1.0, -2.0, 1.0]])
    loss, clipped = algos.ppo_clip_loss(logp, old, adv, clip_low=0.2, clip_high=0.3)
    # -min(r A, clip(r, 0.8, 1.3) A)
    expected = [-min(1.5, 1.3), -min(-0.5, -0.8), -min(-2.2, -2.2), -min(0.7, 0.8)]
    assert loss[0].tolist() == pytest.approx(expected)
    assert clipped[0].tolist() == [True, True, False, False]


def test_kl_estimators_float64():
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    lp, lq = torch.tensor(p), torch.tensor(q)
    assert np.allclose(algos.kl_penalty(lp, lq, "k1").numpy(), p - q)
    assert np.allclose(algos.kl_penalty(lp, lq, "k2").numpy(), 0.5 * (p - q) ** 2)
    assert np.allclose(algos.kl_penalty(lp, lq, "k3").numpy(), np.exp(q - p) - 1 - (q - p))
    assert (algos.kl_penalty(lp, lq, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k4"):
        algos.kl_penalty(lp, lq, "k4")


def test_kl_estimators_are_unbiased_where_they_should_be():
    # Sample tokens from p; E_p[k1] = E_p[k3] = KL(p || q) exactly in expectation.
    p = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    for est in ("k1", "k3"):
        per_token = algos.kl_penalty(p.log(), q.log(), est)
        assert float((p * per_token).sum()) == pytest.approx(exact)


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
