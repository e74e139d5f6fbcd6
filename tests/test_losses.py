"""rl/learn/losses.py and the registries: the loss is the sum of its named terms, and an estimator or policy loss
registered by name is the one a real learner update uses."""

import inspect
from dataclasses import replace
from typing import get_args

import pytest
import torch

from envs.base import Task
from envs.lookup import LookupEnv, LookupParams
from rewards.base import Reward
from rl.batch import Batch
from rl.config import AlgoConfig, Estimator, LearnerConfig, PolicyLoss, RolloutConfig
from rl.learn import algos, credit
from rl.learn.credit import ESTIMATORS, register_estimator
from rl.learn.learner import Learner
from rl.learn.losses import POLICY_LOSSES, LossInputs, register_policy_loss, total_loss
from rl.rollout.chat import TurnFormatter
from rl.rollout.engine import HFEngine
from rl.rollout.loop import rollout


@pytest.fixture(scope="module")
def episodes(tiny):
    """Eight scored lookup episodes of different lengths; episode i's outcome is i / 8."""
    model, tok = tiny
    items = [(Task(f"t{i}", "what is kalu" + " red" * i, {"answer": "blue"}), i // 4, i) for i in range(8)]
    eps = rollout(
        HFEngine(model, tok),
        TurnFormatter(tok),
        lambda: LookupEnv(LookupParams(max_turns=3)),
        items,
        RolloutConfig(max_turn_tokens=6),
    ).episodes
    for i, ep in enumerate(eps):
        ep.reward = Reward([0.0] * len(ep.trajectory.turns), i / 8)
    assert len({len(ep.token_ids) for ep in eps}) > 1
    return eps


@pytest.fixture
def toy_policy_loss():
    """Vanilla policy gradient, -A log pi on every policy token, summed and divided by the mini-batch's sequences."""

    @register_policy_loss("toy-pg")
    def toy_pg(inputs: LossInputs, algo):
        loss = -(inputs.advantages * inputs.policy_logprobs * inputs.loss_mask).sum() / inputs.num_seqs
        return loss, {"toy_token_share": inputs.loss_mask.sum() / inputs.num_tokens}

    yield toy_pg
    del POLICY_LOSSES["toy-pg"]


@pytest.fixture
def toy_estimator():
    """Each episode's raw total on every one of its policy tokens: REINFORCE without a baseline."""

    @register_estimator("toy-total")
    def toy_total(batch: Batch, rewards: torch.Tensor, algo):
        return rewards.sum(-1)[:, None] * batch.loss_mask.double(), None

    yield toy_total
    del ESTIMATORS["toy-total"]


def test_registries_hold_every_name_and_refuse_unknown_ones():
    # The built-ins come first; other tests of this process may have registered more after them.
    assert tuple(ESTIMATORS)[:7] == ("grpo", "drgrpo", "rloo", "reinforce++", "reinforce++-baseline", "gae", "turn")
    assert tuple(POLICY_LOSSES)[:2] == ("ppo", "gspo")
    with pytest.raises(ValueError, match=r"^unknown policy loss 'cispo': use one of \('ppo', 'gspo'"):
        POLICY_LOSSES["cispo"]
    with pytest.raises(
        ValueError, match=r"unknown policy_loss 'cispo'; did you mean 'gspo'\? \(use one of 'ppo', 'gspo'"
    ):
        AlgoConfig(policy_loss="cispo")  # the config lists the registry's names
    assert (
        get_args(Estimator) == tuple(ESTIMATORS)[:7] and get_args(PolicyLoss) == tuple(POLICY_LOSSES)[:2]
    )  # the typed names are the built-ins
    with pytest.raises(ValueError, match="advantage estimator 'grpo' registered twice"):
        register_estimator("grpo")(lambda batch, rewards, algo: None)
    assert ESTIMATORS["grpo"] is credit.grpo  # the failed registration changed nothing


def test_a_registered_policy_loss_is_the_one_the_learner_uses(tiny_model_dir, episodes, toy_policy_loss):
    # Each episode alone in its group, scored a random outcome: with lone_group_score, GRPO's advantage is that outcome.
    gen = torch.Generator().manual_seed(0)
    scored = [
        replace(ep, group=i, reward=Reward(ep.reward.process, float(torch.randn((), generator=gen))))
        for i, ep in enumerate(episodes)
    ]
    algo = AlgoConfig(policy_loss="toy-pg", lone_group_score=True)
    advantages, _ = credit.advantages(Batch.from_episodes(scored), algo)  # [B, T]: what the update assigns
    assert all(a[m.bool()].unique().numel() == 1 for a, m in zip(advantages, Batch.from_episodes(scored).loss_mask))
    learner = Learner(tiny_model_dir, LearnerConfig(device="cpu", micro_batch_size=3, lr=1e-2), algo, temperature=1.0)
    batch = Batch.from_episodes(scored)
    before = learner.logprobs(batch)  # [B, T]
    expected = -float((advantages * before * batch.loss_mask).sum()) / len(episodes)
    metrics = learner.update(batch)
    assert torch.equal(batch.advantages, advantages)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5) and expected != 0
    assert metrics["toy_token_share"] == pytest.approx(1.0)  # three micro-batches, summed: every policy token seen once
    assert "clip_frac" not in metrics  # PPO's term did not run
    after = learner.logprobs(batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # its gradient took the step


def test_a_registered_estimator_is_usable_by_name_through_credit_and_the_learner(
    tiny_model_dir, episodes, toy_estimator
):
    algo = AlgoConfig(advantage="toy-total")
    advantages, returns = credit.advantages(Batch.from_episodes(episodes), algo)
    assert returns is None
    for i, ep in enumerate(episodes):
        assert torch.equal(
            advantages[i, : len(ep.token_ids)], (i / 8) * torch.tensor(ep.loss_mask, dtype=torch.float32)
        )
        assert not advantages[i, len(ep.token_ids) :].any()  # 0 on the padding
    batch = Batch.from_episodes(episodes)
    metrics = Learner(tiny_model_dir, LearnerConfig(device="cpu"), algo, temperature=1.0).update(
        batch
    )  # the update assigns credit by name
    assert torch.equal(batch.advantages, advantages)
    # PPO on fresh samples: every ratio is 1, so the token-mean loss is minus the mean advantage over policy tokens.
    num_tokens = sum(sum(ep.loss_mask) for ep in episodes)
    assert metrics["loss"] == pytest.approx(
        -sum(i / 8 * sum(ep.loss_mask) for i, ep in enumerate(episodes)) / num_tokens, rel=1e-6
    )


def test_total_loss_is_the_tis_weighted_policy_loss_plus_kl_and_value_terms():
    gen = torch.Generator().manual_seed(3)
    r = lambda: torch.randn(2, 5, generator=gen)  # noqa: E731
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.float32)
    logprobs, old, sampler, ref = r() - 2, r() - 2, r() - 2, r() - 2
    values, critic_values, returns, advantages = r(), r(), r(), r() * mask
    inputs = LossInputs(
        logprobs,
        old,
        advantages,
        mask,
        num_tokens=12.0,
        num_seqs=4.0,
        sampler_logprobs=sampler,
        ref_logprobs=ref,
        values=values,
        critic_values=critic_values,
        returns=returns,
    )
    algo = AlgoConfig(advantage="gae", tis_cap=1.5, kl_coef=0.3, vf_coef=0.7, loss_agg="seq-mean-token-sum")
    loss, metrics = total_loss(inputs, algo)
    weight = algos.truncated_is_weight(old, sampler, 1.5, mask)
    token_loss, clipped = algos.ppo_clip_loss(
        logprobs, old, advantages, algo.clip_low, algo.clip_high, algo.clip_ratio_c
    )
    per_seq_sum = lambda x: float((x * mask).sum()) / 4.0  # noqa: E731  seq-mean-token-sum over the mini-batch's 4 sequences
    value_loss = per_seq_sum(algos.clipped_value_loss(values, critic_values, returns, algo.value_clip)[0])
    expected = (
        per_seq_sum(token_loss * weight) + 0.3 * per_seq_sum(algos.kl_penalty(logprobs, ref, "k3+")) + 0.7 * value_loss
    )
    assert float(loss) == pytest.approx(expected, rel=1e-6) and float(metrics["loss"]) == float(loss)
    assert float(metrics["value_loss"]) == pytest.approx(value_loss, rel=1e-6)
    assert float(metrics["tis_weight"]) == pytest.approx(float((weight * mask).sum()) / 12.0, rel=1e-6)
    assert float(metrics["clip_frac"]) == pytest.approx(float((clipped * mask).sum()) / 12.0)
    assert {"kl_ref", "tis_capped_frac", "value_clip_frac"} <= metrics.keys()
    without = LossInputs(logprobs, old, advantages, mask, num_tokens=12.0, num_seqs=4.0, sampler_logprobs=sampler)
    assert set(total_loss(without, AlgoConfig())[1]) == {
        "loss",
        "clip_frac",
    }  # no reference, no critic, no TIS: the policy term alone


def test_kl_on_the_first_turn_pulls_only_the_first_attempt_to_the_reference(episodes):
    # SCoRe: the first attempt is held near the reference; later turns learn freely.
    ep = episodes[5]
    assert ep.turn_ids.count(1) and any(m and t == 0 for m, t in zip(ep.loss_mask, ep.turn_ids))
    first = Batch.from_episodes([ep]).first_turn_mask()[0].tolist()
    assert first == [float(m == 1 and t == 0) for m, t in zip(ep.loss_mask, ep.turn_ids)] and 0 < sum(first) < sum(
        ep.loss_mask
    )
    gen = torch.Generator().manual_seed(4)
    logprobs, ref = (
        torch.randn(1, len(ep.token_ids), generator=gen) - 2,
        torch.randn(1, len(ep.token_ids), generator=gen) - 2,
    )
    mask, kl_mask = torch.tensor([ep.loss_mask], dtype=torch.float32), torch.tensor([first])
    zero = torch.zeros_like(logprobs)
    algo = AlgoConfig(advantage="turn", loss_agg="seq-mean-token-sum", kl_coef=0.5, learn_from_turn=2, kl_turns="first")
    inputs = LossInputs(
        logprobs, logprobs, zero, mask, num_tokens=float(mask.sum()), num_seqs=1.0, ref_logprobs=ref, kl_mask=kl_mask
    )
    loss, metrics = total_loss(inputs, algo)
    kl = algos.kl_penalty(logprobs, ref, "k3+")
    assert float(loss) == pytest.approx(
        0.5 * float((kl * kl_mask).sum()), rel=1e-6
    )  # advantages 0: the loss is the KL term alone
    assert float(metrics["kl_ref"]) == pytest.approx(
        float((kl * mask).sum() / mask.sum()), rel=1e-6
    )  # the drift of every token
    for bad in ({"kl_coef": 0.0}, {"kl_in_reward": True}):
        with pytest.raises(ValueError, match="algo.kl_turns=first"):
            AlgoConfig(**{"kl_coef": 0.5, "kl_turns": "first"} | bad)


def test_accumulate_reads_as_a_short_story():
    assert len(inspect.getsource(Learner.accumulate).splitlines()) < 40


def test_the_masked_importance_weight_by_hand():
    ratios = torch.tensor([[0.3, 1.0, 1.5, 3.0]])
    old, sampler = ratios.log(), torch.zeros(1, 4)  # pi_old / pi_sampler = ratios
    icepop = algos.masked_is_weight(old, sampler, 0.5, 2.0)
    assert icepop[0].tolist() == pytest.approx([0.0, 1.0, 1.5, 0.0])
    decoupled = algos.masked_is_weight(old, sampler, 0.0, 2.0)  # AReaL: only the far side of the cap leaves
    assert decoupled[0].tolist() == pytest.approx([0.3, 1.0, 1.5, 0.0])
    # Per sequence: the product over its policy tokens decides for all of them (0.3 x 1.0 out; 1.5 x 1.2 in).
    two = torch.tensor([[0.3, 1.0, 9.0], [1.5, 1.2, 9.0]]).log()
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    per_seq = algos.masked_is_weight(two, torch.zeros(2, 3), 0.5, 2.0, mask, "sequence")
    assert per_seq.flatten().tolist() == pytest.approx([0.0] * 3 + [1.8] * 3)
    huge = algos.masked_is_weight(torch.tensor([[200.0]]), torch.zeros(1, 1), 0.0, 2.0)  # no inf, no nan
    assert huge.tolist() == [[0.0]]


def test_masked_tokens_leave_the_loss_and_its_gradient():
    mask = torch.ones(1, 4)
    old = torch.tensor([[0.3, 1.0, 1.5, 3.0]]).log() - 1.0
    sampler = torch.full((1, 4), -1.0)
    logprobs = (old + 0.05).requires_grad_()
    advantages = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    inputs = LossInputs(logprobs, old, advantages, mask, num_tokens=4.0, num_seqs=1.0, sampler_logprobs=sampler)
    algo = AlgoConfig(tis_cap=2.0, tis_mode="mask", tis_low=0.5)
    loss, metrics = total_loss(inputs, algo)
    loss.backward()
    assert logprobs.grad[0, 0] == 0 and logprobs.grad[0, 3] == 0 and (logprobs.grad[0, 1:3] != 0).all()
    token_loss, _ = algos.ppo_clip_loss(logprobs.detach(), old, advantages, 0.2, 0.2, algo.clip_ratio_c)
    assert float(loss.detach()) == pytest.approx(float(token_loss[0, 1] + token_loss[0, 2] * 1.5) / 4.0, rel=1e-6)
    assert float(metrics["tis_masked_frac"]) == 0.5 and float(metrics["tis_weight"]) == pytest.approx(2.5 / 4)


def test_an_importance_correction_is_chosen_by_a_registered_name():
    with pytest.raises(ValueError, match="unknown tis_mode 'masked'.*did you mean 'mask'"):
        AlgoConfig(tis_cap=2.0, tis_mode="masked")
    with pytest.raises(ValueError, match="tis_low"):
        AlgoConfig(tis_cap=2.0, tis_mode="mask", tis_low=2.0)
