"""The new estimators and losses of rl/learn/algos.py against numbers computed by hand or in float64 numpy."""

import math

import numpy as np
import pytest
import torch

from rl.learn import algos

D = torch.float64


def test_rloo_by_hand_ragged_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 4.0, 5.0], dtype=D)
    groups = torch.tensor([7, 7, 7, 3, 3, 9])
    # reward minus the mean of the others; a group of one gets 0
    assert algos.rloo_advantages(rewards, groups).tolist() == pytest.approx([1.0, -0.5, -0.5, -2.0, 2.0, 0.0])


def test_zero_variance_groups_and_overlong_penalty():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 3.0], dtype=D)
    groups = torch.tensor([0, 0, 1, 1, 2])
    assert algos.zero_variance_groups(rewards, groups).tolist() == [True, True, False, False, True]
    lengths = torch.tensor([5, 8, 9, 10, 12, 20])
    # max 12, cache 4: 0 up to 8, then (8 - L) / 4, -1 beyond 12
    assert algos.overlong_penalty(lengths, 12, 4).tolist() == pytest.approx([0.0, 0.0, -0.25, -0.5, -1.0, -1.0])


def test_discounted_returns_skip_observation_tokens():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0, 2.0]], dtype=D)  # 7.0 sits on an observation token: ignored
    mask = torch.tensor([[0, 1, 1, 0, 1]])
    out = algos.discounted_returns(rewards, mask, gamma=0.9)
    assert out[0].tolist() == pytest.approx([0.0, 0.9 * 2.8, 2.8, 0.0, 2.0])


def test_gae_by_hand_over_policy_tokens_only():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0, 2.0]], dtype=D)
    values = torch.tensor([[0.0, 0.5, 0.4, 9.0, 0.3]], dtype=D)  # 9.0: an observation token's value, never used
    mask = torch.tensor([[0, 1, 1, 0, 1]])
    adv, ret = algos.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    a4 = 2.0 - 0.3
    a2 = 1.0 + 0.9 * 0.3 - 0.4 + 0.9 * 0.8 * a4
    a1 = 0.0 + 0.9 * 0.4 - 0.5 + 0.9 * 0.8 * a2
    assert adv[0].tolist() == pytest.approx([0.0, a1, a2, 0.0, a4])
    assert ret[0].tolist() == pytest.approx([0.0, a1 + 0.5, a2 + 0.4, 0.0, a4 + 0.3])


def test_gae_matches_a_float64_numpy_loop_on_random_batches():
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(4, 9)), rng.normal(size=(4, 9))
    m = (rng.random((4, 9)) > 0.3).astype(np.int64)
    gamma, lam = 0.97, 0.9
    expected = np.zeros_like(r)
    for b in range(4):
        steps = [t for t in range(9) if m[b, t]]
        nxt_v, nxt_a = 0.0, 0.0
        for t in reversed(steps):
            nxt_a = r[b, t] + gamma * nxt_v - v[b, t] + gamma * lam * nxt_a
            nxt_v, expected[b, t] = v[b, t], nxt_a
    adv, ret = algos.gae_advantages(torch.tensor(r), torch.tensor(v), torch.tensor(m), gamma, lam)
    assert np.allclose(adv.numpy(), expected) and np.allclose(ret.numpy(), (expected + v) * m)
    # gamma = lam = 1 with V = 0: GAE is the return-to-go
    adv1, _ = algos.gae_advantages(torch.tensor(r), torch.zeros(4, 9, dtype=D), torch.tensor(m), 1.0, 1.0)
    assert torch.allclose(adv1, algos.discounted_returns(torch.tensor(r), torch.tensor(m), 1.0))


def test_masked_whiten_ignores_masked_entries():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, 4.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    vals = np.array([1.0, 2.0, 3.0, 4.0])
    z = (vals - vals.mean()) / vals.std()
    out = algos.masked_whiten(x, mask, eps=0.0)
    assert out[mask.bool()].tolist() == pytest.approx(z.tolist()) and (out[~mask.bool()] == 0).all()


def test_turn_advantages_by_hand_with_different_turn_counts():
    # group 0: episodes with 1, 2 and 3 turns; group 1: one episode of 2 turns
    rewards = torch.tensor([[1.0, 0, 0], [0.0, 2.0, 0], [1.0, 0.0, 3.0], [5.0, 1.0, 0]], dtype=D)
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0]])
    groups = torch.tensor([0, 0, 0, 1])
    adv = algos.turn_advantages(rewards, mask, groups)
    # returns-to-go: [1], [2, 2], [4, 3, 3], [6, 1]; baseline: mean over the *other* episodes that reached the turn
    expected = [
        [1 - (2 + 4) / 2, 0, 0],
        [2 - (1 + 4) / 2, 2 - 3, 0],
        [4 - (1 + 2) / 2, 3 - 2, 3 - 0],  # nobody else reached turn 3: baseline 0
        [6, 1],  # alone in its group: baseline 0
    ]
    expected[3].append(0)
    assert adv.tolist() == [pytest.approx(row) for row in expected]


def test_turn_gamma_discounts_the_later_turns_and_zero_credits_each_turn_its_own_reward():
    rewards = torch.tensor([[1.0, 0, 0], [0.0, 2.0, 0], [1.0, 0.0, 3.0], [5.0, 1.0, 0]], dtype=D)
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0]])
    groups = torch.tensor([0, 0, 0, 1])
    # gamma 0.5, returns-to-go: [1], [1, 2], [1.75, 1.5, 3], [5.5, 1]
    half = algos.turn_advantages(rewards, mask, groups, gamma=0.5)
    expected = [[1 - (1 + 1.75) / 2, 0, 0], [1 - (1 + 1.75) / 2, 2 - 1.5, 0], [1.75 - 1, 1.5 - 2, 3], [5.5, 1, 0]]
    assert half.tolist() == [pytest.approx(row) for row in expected]
    # gamma 0 (SCoRe): each turn's own reward against the other episodes' rewards at that turn
    own = algos.turn_advantages(rewards, mask, groups, gamma=0.0)
    expected = [[1 - (0 + 1) / 2, 0, 0], [0 - (1 + 1) / 2, 2 - 0, 0], [1 - (1 + 0) / 2, 0 - 2, 3], [5, 1, 0]]
    assert own.tolist() == [pytest.approx(row) for row in expected]


def test_gspo_loss_by_hand_shares_one_ratio_per_sequence():
    old = torch.zeros(2, 3, dtype=D)
    logp = torch.tensor([[0.0, 0.3, 0.1], [0.0, -0.2, 5.0]], dtype=D, requires_grad=True)
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])  # the 5.0 is masked: it does not enter the ratio
    adv = torch.tensor([[0.0, 1.0, 1.0], [0.0, -1.0, -1.0]], dtype=D)
    loss, clipped = algos.gspo_loss(logp, old, adv, mask, clip_low=0.1, clip_high=0.1)
    s0, s1 = math.exp(0.2), math.exp(-0.2)  # geometric-mean ratios over policy tokens
    assert loss[0, 1:].tolist() == pytest.approx([-min(s0, 1.1)] * 2)
    assert loss[1, 1].item() == pytest.approx(-min(-s1, -0.9))
    assert clipped[0, 1:].tolist() == [True, True] and clipped[1, 1].item() is True
    # unclipped: the gradient of each token is -A * s * grad logp_t
    logp2 = logp.detach().clone().requires_grad_(True)
    loss2, _ = algos.gspo_loss(logp2, old, adv, mask, clip_low=1.0, clip_high=1.0)
    (loss2 * mask).sum().backward()
    assert logp2.grad[0, 1:].tolist() == pytest.approx([-s0, -s0]) and logp2.grad[1, 2].item() == 0


def test_clipped_value_loss_by_hand():
    v = torch.tensor([[1.0, 0.0, 2.0]], dtype=D)
    old = torch.tensor([[0.5, 0.5, 0.0]], dtype=D)
    ret = torch.tensor([[2.0, 0.0, 0.0]], dtype=D)
    loss, clipped = algos.clipped_value_loss(v, old, ret, clip=0.2)
    # token 0: plain (1-2)^2 = 1, clipped (0.7-2)^2 = 1.69 -> max; token 1: 0 vs (0.3)^2; token 2: 4 vs 0.04
    assert loss[0].tolist() == pytest.approx([0.5 * 1.69, 0.5 * 0.09, 0.5 * 4.0])
    assert clipped[0].tolist() == [True, True, False]
    plain, _ = algos.clipped_value_loss(v, old, ret, clip=0.0)
    assert plain[0].tolist() == pytest.approx([0.5, 0.0, 2.0])


def test_truncated_is_weight_token_and_sequence_levels():
    old = torch.tensor([[0.0, 0.2, 0.5, 0.0]], dtype=D)
    beh = torch.tensor([[0.0, 0.0, 0.0, 3.0]], dtype=D)
    mask = torch.tensor([[0, 1, 1, 0]])
    tok = algos.truncated_is_weight(old, beh, cap=1.5)
    assert tok[0].tolist() == pytest.approx([1.0, math.exp(0.2), 1.5, math.exp(-3.0)])
    seq = algos.truncated_is_weight(old, beh, cap=10.0, mask=mask, level="sequence")
    assert seq[0].tolist() == pytest.approx([math.exp(0.7)] * 4)  # the masked -3.0 does not count
    assert algos.truncated_is_weight(old, beh, cap=1.5, mask=mask, level="sequence")[0].tolist() == pytest.approx(
        [1.5] * 4
    )
    with pytest.raises(ValueError, match="unknown TIS level"):
        algos.truncated_is_weight(old, beh, 2.0, mask, "turn")


def test_group_mean_by_hand():
    rewards = torch.tensor([1.0, 0.0, 2.0, 5.0], dtype=D)
    assert algos.group_mean(rewards, torch.tensor([4, 4, 4, 1])).tolist() == pytest.approx([1.0, 1.0, 1.0, 5.0])
