"""Turn-level credit: the estimator's expected policy gradient equals the exact one when the policy
decides how many turns an episode has, while naive per-turn-index normalization (verl RFC #7244) is
measurably off; so is the estimator itself when the loss divides each episode by its own length.

Toy problem: at turns 0 and 1 the policy continues with probability sigmoid(theta_k) or stops; turn 2,
if reached, is the last. Every turn earns a process reward of 1; the outcome is 0, 0.5 or -2 for
stopping after 1, 2 or 3 turns. Expected return J(theta) is enumerated exactly, its gradient comes from
autograd in float64, and the estimators' gradients sum_k A_k d/dtheta log pi(a_k) are averaged over many
sampled groups of 4 episodes.
"""

import torch

from rl.learn import algos

D = torch.float64
THETA = torch.tensor([0.3, -0.2], dtype=D)
OUTCOME = torch.tensor([0.0, 0.5, -2.0], dtype=D)  # by number of turns - 1
G, N_GROUPS = 4, 40_000


def exact_gradient() -> torch.Tensor:
    theta = THETA.clone().requires_grad_(True)
    p = torch.sigmoid(theta)
    probs = torch.stack([1 - p[0], p[0] * (1 - p[1]), p[0] * p[1]])  # 1, 2, 3 turns
    returns = torch.arange(1, 4, dtype=D) + OUTCOME  # one process reward per turn, then the outcome
    (probs * returns).sum().backward()
    return theta.grad


def sample():
    gen = torch.Generator().manual_seed(0)
    p = torch.sigmoid(THETA)
    cont = torch.rand(N_GROUPS * G, 2, generator=gen, dtype=D) < p  # [N, 2] continue decisions
    n_turns = 1 + cont[:, 0].long() + (cont[:, 0] & cont[:, 1]).long()  # [N]
    turn_mask = (torch.arange(3) < n_turns[:, None]).to(D)  # [N, 3]
    rewards = turn_mask.clone()  # process reward 1 per turn taken
    rewards[torch.arange(len(n_turns)), n_turns - 1] += OUTCOME[n_turns - 1]
    # d/dtheta_k log pi(a_k) for the decisions actually taken (turns 0 and 1; turn 2 decides nothing)
    score = (cont.to(D) - p) * turn_mask[:, :2]  # [N, 2]
    groups = torch.arange(N_GROUPS).repeat_interleave(G)
    return rewards, turn_mask, score, groups


def naive_per_turn_index(rewards, turn_mask, groups):
    """MT-GRPO style: center each turn's reward on the (leave-one-out) mean of the other episodes
    with that turn index, then sum the centered rewards from turn k to the episode's own end."""
    index, n = algos._group_index(groups)
    total = algos._group_sum(rewards * turn_mask, index, n)[index]
    count = algos._group_sum(turn_mask, index, n)[index]
    others = count - turn_mask
    mean = torch.where(others > 0, (total - rewards * turn_mask) / others.clamp(min=1), torch.zeros_like(total))
    centered = (rewards - mean) * turn_mask
    return centered.flip(-1).cumsum(-1).flip(-1) * turn_mask


def gradient_samples(adv, score):
    """Per group: (1/G) sum over its episodes and decision turns of A_k * d log pi(a_k). [N_GROUPS, 2]"""
    per_episode = adv[:, :2, None] * torch.eye(2, dtype=D) * score[:, :, None]  # [N, k, theta]
    return per_episode.sum(1).reshape(N_GROUPS, G, 2).mean(1)


def test_turn_estimator_is_unbiased_where_per_turn_index_normalization_is_not():
    exact = exact_gradient()
    rewards, turn_mask, score, groups = sample()
    ours = gradient_samples(algos.turn_advantages(rewards, turn_mask, groups), score)
    naive = gradient_samples(naive_per_turn_index(rewards, turn_mask, groups), score)
    se = ours.std(0) / N_GROUPS**0.5
    ours_err, naive_err = ours.mean(0) - exact, naive.mean(0) - exact
    print(f"exact {exact.tolist()} ours {ours.mean(0).tolist()} naive {naive.mean(0).tolist()} se {se.tolist()}")
    assert (ours_err.abs() < 4 * se).all(), (ours_err, se)
    # Each continue decision loses the +1 process reward of the turn it buys: a bias of many standard errors.
    assert (naive_err.abs() > 15 * se).all() and (naive_err.abs() > 0.05).all(), (naive_err, se)


def test_outcome_only_rewards_reduce_to_a_leave_one_out_episode_baseline():
    # With only an outcome (on the last turn) every turn's return is the episode's outcome, and turn 0's
    # advantage is RLOO's.
    turn_mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=D)
    outcome = torch.tensor([1.0, 0.0, 3.0], dtype=D)
    rewards = torch.zeros(3, 3, dtype=D)
    rewards[torch.arange(3), turn_mask.sum(-1).long() - 1] = outcome
    groups = torch.zeros(3, dtype=torch.long)
    adv = algos.turn_advantages(rewards, turn_mask, groups)
    assert torch.allclose(adv[:, 0], algos.rloo_advantages(outcome, groups))


TURN_TOKENS = 3  # each turn's action: its continue/stop token, then tokens the parameters do not touch


def aggregated_gradient_samples(adv, cont, turn_mask, mode):
    """Per group: the gradient of the learner's loss, PPO's surrogate at ratio 1 aggregated by `mode`, one
    group per optimizer step. Each group has its own copy of theta,
    so one backward gives every group's. [N_GROUPS, 2]"""
    theta = THETA.repeat(N_GROUPS, 1).requires_grad_(True)  # [N_GROUPS, 2]
    per_episode = theta.repeat_interleave(G, 0)  # [N, 2]
    decision_logp = torch.where(
        cont, torch.nn.functional.logsigmoid(per_episode), torch.nn.functional.logsigmoid(-per_episode)
    )
    logp = torch.zeros(len(cont), 3 * TURN_TOKENS, dtype=D)  # [N, T]
    logp = logp.index_put(
        (torch.arange(len(cont))[:, None], torch.tensor([0, TURN_TOKENS])), decision_logp * turn_mask[:, :2]
    )
    mask = turn_mask.repeat_interleave(TURN_TOKENS, 1)  # [N, T]
    token_adv = adv.repeat_interleave(TURN_TOKENS, 1) * mask
    loss, _ = algos.ppo_clip_loss(logp, logp.detach(), token_adv, 0.2, 0.2)
    # The seq-mean modes divide by the group's G sequences: summed over groups,
    # each theta copy gets its group's gradient.
    algos.aggregate_loss(loss, mask, mode, float(mask.sum()), float(G)).backward()
    return -theta.grad


def test_turn_estimator_is_unbiased_under_seq_mean_token_sum_only():
    # The learner's actual loss on token sequences: an episode with more turns has more tokens.
    exact = exact_gradient()
    rewards, turn_mask, score, groups = sample()
    cont = score > 0  # score = cont - p with 0 < p < 1: positive exactly where the episode continued
    adv = algos.turn_advantages(rewards, turn_mask, groups)
    token_sum = aggregated_gradient_samples(adv, cont, turn_mask, "seq-mean-token-sum")
    assert torch.allclose(token_sum, gradient_samples(adv, score))  # the loss's gradient is the estimator's
    err, se = token_sum.mean(0) - exact, token_sum.std(0) / N_GROUPS**0.5
    assert (err.abs() < 4 * se).all(), (err, se)
    # seq-mean-token-mean divides each episode by its own length: not even a multiple of the exact gradient.
    token_mean = aggregated_gradient_samples(adv, cont, turn_mask, "seq-mean-token-mean")
    scale = float(token_mean.mean(0) @ exact / (exact @ exact))  # the best multiple
    off = token_mean - scale * exact  # [N_GROUPS, 2]
    off_se = off.std(0) / N_GROUPS**0.5
    print(
        f"exact {exact.tolist()} token-sum {token_sum.mean(0).tolist()} token-mean "
        f"{token_mean.mean(0).tolist()} off/se {(off.mean(0) / off_se).tolist()}"
    )
    assert (off.mean(0).abs() / off_se).max() > 15, (off.mean(0), off_se)
