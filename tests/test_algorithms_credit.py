"""rl/learn/credit.py: rewards land on the right tokens, each estimator by name gives hand-computed advantages,
observation and prompt tokens get nothing, judge spans are found and get their own estimator."""

import math

import pytest
import torch

from rewards.base import Reward
from rl.batch import Batch
from rl.config import AlgoConfig
from rl.episode import PROMPT_TURN, Episode
from rl.learn import algos, credit
from rl.tensors import pad


def episode(group, turns, process, outcome, obs=1, prompt=2):
    """turns: policy tokens per turn; an observation of `obs` tokens follows every turn but the last."""
    ep = Episode(trajectory=None, group=group, seed=0)
    ep.append([1] * prompt, PROMPT_TURN)
    for k, n in enumerate(turns):
        ep.append([5] * n, k, [-0.5] * n)
        if k < len(turns) - 1:
            ep.append([9] * obs, k)
    ep.reward = Reward(process, outcome)
    return ep


def advantages(eps, algo, values=None, kl=None, judge=None):
    """credit.advantages on the episodes as one Batch (values: the critic's [B, T]),
    cut back to each episode's tokens."""
    batch = Batch.from_episodes(eps, judge_masks=judge)
    batch.critic_values = None if values is None else values.float()
    adv, returns = credit.advantages(batch, algo, kl=kl)
    assert adv.dtype == torch.float32 and adv.shape == batch.token_ids.shape
    rows = lambda x: None if x is None else [x[i, : len(ep.token_ids)] for i, ep in enumerate(eps)]  # noqa: E731
    return rows(adv), rows(returns)


def test_rewards_sit_on_the_last_sampled_token_of_their_turn():
    ep = episode(0, [2, 0, 1], [1.0, 2.0, 3.0], 10.0)
    # tokens: P P a a o | o | a  -> positions 2,3 turn 0; 4 obs; 5 obs (turn 1 sampled nothing); 6 turn 2
    out = credit.token_rewards(Batch.from_episodes([ep]), AlgoConfig())[0].tolist()
    assert out == [
        0,
        0,
        0,
        1.0 + 2.0,
        0,
        0,
        3.0 + 10.0,
    ]  # the empty turn's reward goes to the last sampled token before it
    shaped = credit.token_rewards(
        Batch.from_episodes([ep]), AlgoConfig(overlong_max_tokens=3, overlong_cache_tokens=2, turn_outcome_only=True)
    )[0]
    # 3 policy tokens, penalty from 1 token on: (1 - 3) / 2 = -1; turn_outcome_only drops the process rewards
    assert shaped.tolist() == [0, 0, 0, 0, 0, 0, 10.0 - 1.0]
    ramp = credit.token_rewards(
        Batch.from_episodes([ep]), AlgoConfig(overlong_max_tokens=4, overlong_cache_tokens=2, overlong_coef=0.5)
    )[0]
    assert ramp[-1].item() == pytest.approx(13.0 + 0.5 * (2 - 3) / 2)


def batch():
    return [
        episode(0, [1, 2], [0.0, 1.0], 1.0),  # total 2
        episode(0, [2], [0.5], 0.0),  # total 0.5
        episode(0, [1, 1, 1], [0.0, 0.0, 0.0], 0.0),  # total 0
        episode(1, [1], [0.0], 3.0),  # alone
    ]


def test_group_estimators_broadcast_on_policy_tokens_only():
    eps = batch()
    totals = torch.tensor([2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1])
    for name, expected in [
        ("grpo", algos.group_advantages(totals, groups, True)),
        ("drgrpo", algos.group_advantages(totals, groups, False)),
        ("rloo", torch.tensor([2.0 - 0.25, 0.5 - 1.0, 0.0 - 1.25, 0.0], dtype=torch.float64)),
    ]:
        adv, returns = advantages(eps, AlgoConfig(advantage=name))
        assert returns is None
        for a, ep, e in zip(adv, eps, expected.tolist()):
            mask = torch.tensor(ep.loss_mask, dtype=torch.float32)
            assert torch.allclose(a, e * mask), name  # prompt and observation tokens: exactly 0


def test_reinforce_pp_and_gae_by_hand():
    eps = [episode(0, [1, 1], [1.0, 0.0], 2.0), episode(0, [2], [0.0], 0.0)]
    # token rewards: ep0 tokens P P a o a -> [0,0,1,0,2]; ep1 P P a a -> [0,0,0,0]
    # returns (gamma 1): ep0 [_,_,3,_,2], ep1 [_,_,0,0]; whitened over the 4 policy tokens
    vals = torch.tensor([3.0, 2.0, 0.0, 0.0])
    z = ((vals - vals.mean()) / vals.std(unbiased=False)).tolist()
    adv, _ = advantages(eps, AlgoConfig(advantage="reinforce++", gamma=1.0))
    assert adv[0].tolist() == pytest.approx([0, 0, z[0], 0, z[1]], abs=1e-6) and adv[1].tolist() == pytest.approx(
        [0, 0, z[2], z[3]], abs=1e-6
    )
    # baseline variant: the group mean total (1.5) is subtracted from every token's return
    vals = torch.tensor([1.5, 0.5, -1.5, -1.5])
    z = ((vals - vals.mean()) / vals.std(unbiased=False)).tolist()
    adv, _ = advantages(eps, AlgoConfig(advantage="reinforce++-baseline", gamma=1.0))
    assert adv[0].tolist() == pytest.approx([0, 0, z[0], 0, z[1]], abs=1e-6) and adv[1].tolist() == pytest.approx(
        [0, 0, z[2], z[3]], abs=1e-6
    )
    # gae with values: the targets are un-whitened advantages plus values, 0 off policy tokens
    values = pad([[9, 9, 0.5, 9, 1.0], [9, 9, 0.2, 0.1]])
    adv, returns = advantages(eps, AlgoConfig(advantage="gae", gamma=1.0, lam=1.0), values=values)
    assert returns[0].tolist() == pytest.approx([0, 0, 3.0, 0, 2.0]) and returns[1].tolist() == pytest.approx(
        [0, 0, 0, 0]
    )
    raw = torch.tensor([3.0 - 0.5, 2.0 - 1.0, -0.2, -0.1])
    z = ((raw - raw.mean()) / raw.std(unbiased=False)).tolist()
    assert adv[0].tolist() == pytest.approx([0, 0, z[0], 0, z[1]], abs=1e-5)


def test_reinforce_pp_baseline_does_not_depend_on_the_episode_length():
    # Two episodes of equal reward, 2 and 5 tokens long, group mean 1, gamma 0.9. The baseline is 1 on
    # every token of both; subtracted on the last token it would reach token t as 0.9^(tokens after t),
    # [0.9, 1] and [0.656, 0.729, 0.81, 0.9, 1]: a baseline the episode's length decides.
    eps = [episode(0, [2], [0.0], 1.0), episode(0, [5], [0.0], 1.0)]
    adv, _ = advantages(eps, AlgoConfig(advantage="reinforce++-baseline", gamma=0.9))
    returns = torch.tensor([0.9, 1.0, 0.9**4, 0.9**3, 0.9**2, 0.9, 1.0], dtype=torch.float64)
    z = ((returns - 1.0) - (returns - 1.0).mean()) / (returns - 1.0).std(unbiased=False)
    assert adv[0][2:].tolist() == pytest.approx(z[:2].tolist(), abs=1e-5) and adv[1][2:].tolist() == pytest.approx(
        z[2:].tolist(), abs=1e-5
    )
    # whiten_unbiased: verl's n - 1 variance
    adv, _ = advantages(eps, AlgoConfig(advantage="reinforce++-baseline", gamma=0.9, whiten_unbiased=True))
    assert adv[1][2:].tolist() == pytest.approx((z[2:] * math.sqrt(6 / 7)).tolist(), abs=1e-5)


def test_kl_in_reward_is_subtracted_on_policy_tokens():
    eps = [episode(0, [1, 1], [0.0, 0.0], 1.0), episode(0, [1], [0.0], 0.0)]
    kl = pad([[7, 7, 0.25, 7, 0.5], [7, 7, 0.1]])  # 7s sit on prompt/observation tokens: ignored
    adv, _ = advantages(eps, AlgoConfig(advantage="rloo"), kl=kl)
    # totals 1 - 0.75 = 0.25 and -0.1: rloo gives +-0.35
    assert adv[0].tolist() == pytest.approx([0, 0, 0.35, 0, 0.35]) and adv[1].tolist() == pytest.approx([0, 0, -0.35])


def test_turn_estimator_through_episodes():
    eps = batch()
    adv, _ = advantages(eps, AlgoConfig(advantage="turn", loss_agg="seq-mean-token-sum"))
    # turn rewards (outcome on the last turn): [0, 2], [0.5], [0, 0, 0], [3]; returns [2, 2], [0.5], [0, 0, 0], [3]
    # turn 0 baselines: (0.5+0)/2, (2+0)/2, (2+0.5)/2; turn 1: 0 vs 2 each other; turn 2: none
    a0, a1 = 2 - 0.25, 2 - 0.0
    assert adv[0].tolist() == pytest.approx([0, 0, a0, 0, a1, a1])
    assert adv[1].tolist() == pytest.approx([0, 0, 0.5 - 1.0, 0.5 - 1.0])
    assert adv[2].tolist() == pytest.approx([0, 0, -1.25, 0, -2.0, 0, 0.0])
    assert adv[3].tolist() == pytest.approx([0, 0, 3.0])
    outcome_only, _ = advantages(
        eps, AlgoConfig(advantage="turn", loss_agg="seq-mean-token-sum", turn_outcome_only=True)
    )
    assert outcome_only[1].tolist() == pytest.approx([0, 0, -0.5, -0.5])  # 0 minus (1 + 0) / 2
    # learn_from_turn=2: the first turn's tokens get nothing, later turns keep their advantages.
    later, _ = advantages(eps, AlgoConfig(advantage="turn", loss_agg="seq-mean-token-sum", learn_from_turn=2))
    assert later[0].tolist() == pytest.approx([0, 0, 0, 0, a1, a1])
    assert later[2].tolist() == pytest.approx([0, 0, 0, 0, -2.0, 0, 0.0])
    assert not later[1].any() and not later[3].any()  # one-turn episodes: nothing to learn from
    with pytest.raises(ValueError, match="algo.learn_from_turn=0: turns count from 1"):
        AlgoConfig(learn_from_turn=0)


def test_unknown_estimator():
    algo = AlgoConfig()
    algo.advantage = "ppo"  # past the config's own check: the registry's lookup must refuse it too
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        credit.advantages(Batch.from_episodes(batch()), algo)


def test_judge_spans_are_found_and_get_their_own_estimator(tiny):
    _, tok = tiny
    ids = tok.encode("try <judge>wrong</judge> red")
    ep = Episode(trajectory=None, group=0, seed=0)
    ep.append(tok.encode("what is"), PROMPT_TURN)
    ep.append(ids, 0, [0.0] * len(ids))
    ep.append(tok.encode(" no"), 0)
    tail = tok.encode("<judge>ok")  # an unclosed span runs to the end of the action
    ep.append(tail, 1, [0.0] * len(tail))
    mask = credit.judge_mask(ep, tok)
    judged = "".join(tok.decode([i]) for i, m in zip(ep.token_ids, mask) if m)
    assert judged == "<judge>wrong</judge><judge>ok"
    assert all(m <= lm for m, lm in zip(mask, ep.loss_mask))  # never on prompt or observation tokens
    ep.reward = Reward([1.0, 0.0], 0.0)
    other = episode(0, [1], [0.0], 0.0)
    other.token_ids = [5] * len(other.token_ids)
    algo = AlgoConfig(advantage="grpo", judge_advantage="turn", loss_agg="seq-mean-token-sum")
    adv, _ = advantages([ep, other], algo, judge=[mask, [0] * len(other.token_ids)])
    grpo, _ = advantages([ep, other], AlgoConfig(advantage="grpo"))
    turn, _ = advantages([ep, other], AlgoConfig(advantage="turn", loss_agg="seq-mean-token-sum"))
    m = torch.tensor(mask, dtype=torch.bool)
    assert torch.equal(adv[0][m], turn[0][m]) and torch.equal(adv[0][~m], grpo[0][~m])
    assert not torch.equal(turn[0][m], grpo[0][m])  # the two estimators really differ here
