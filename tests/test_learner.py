"""Learner invariants with a real tiny model and real optimizer steps."""

import copy

import pytest
import torch

from envs.base import Task
from envs.lookup import LookupEnv, LookupParams
from rewards.base import Reward
from rl.batch import Batch
from rl.cli import main
from rl.config import AlgoConfig, LearnerConfig, RolloutConfig, load_config
from rl.learn import algos
from rl.learn.learner import Learner
from rl.rollout.chat import TurnFormatter
from rl.rollout.engine import HFEngine
from rl.rollout.loop import rollout
from rl.tensors import pad


@pytest.fixture(scope="module")
def batch(tiny):
    model, tok = tiny
    params = LookupParams(max_turns=3)
    # Prompts of different lengths, so the batch is ragged and padding is exercised.
    items = [(Task(f"t{i}", "what is kalu" + " red" * i, {"answer": "blue"}), i, i) for i in range(8)]
    episodes = rollout(
        HFEngine(model, tok), TurnFormatter(tok), lambda: LookupEnv(params), items, RolloutConfig(max_turn_tokens=6)
    ).episodes
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn((), generator=gen) for _ in episodes]
    advantages = [a * torch.tensor(ep.loss_mask, dtype=torch.float32) for a, ep in zip(scores, episodes)]
    # Each episode is alone in its group (group i): with algo.lone_group_score, GRPO gives it its outcome as its
    # advantage, so an update that assigns credit itself reproduces `advantages`.
    for a, ep in zip(scores, episodes):
        ep.reward = Reward([0.0] * len(ep.trajectory.turns), float(a))
    assert len(episodes) == 8 and len({len(ep.token_ids) for ep in episodes}) > 1
    return episodes, advantages


def rows(tensor, episodes):
    """A [B, T] tensor as one row per episode, cut to its tokens."""
    return [tensor[i, : len(ep.token_ids)] for i, ep in enumerate(episodes)]


def as_batch(episodes, advantages, old=None, ref=None, returns=None, critic_values=None):
    """The episodes as a Batch, with the per-episode (per-token) inputs of the loss padded onto it."""
    batch = Batch.from_episodes(episodes)
    on = lambda xs: None if xs is None else pad(list(xs), 0, torch.float32)  # noqa: E731
    batch.advantages, batch.old_logprobs, batch.ref_logprobs = on(advantages), on(old), on(ref)
    batch.returns, batch.critic_values = on(returns), on(critic_values)
    return batch


def accumulate(learner, episodes, advantages, fresh=False, **per_token):
    batch = as_batch(episodes, advantages, **per_token)
    return learner.accumulate(batch, batch.counts(learner.algo.seq_mean_skips_empty), fresh=fresh)


def grads(learner):
    return {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_micro_batch_1x8_equals_8x1(tiny_model_dir, batch, loss_agg):
    episodes, advantages = batch
    algo = AlgoConfig(loss_agg=loss_agg, kl_coef=0.1)  # KL in the loss too: a reference model is loaded
    results = []
    for micro in (1, 8):
        learner = Learner(tiny_model_dir, LearnerConfig(device="cpu", micro_batch_size=micro), algo, temperature=1.0)
        ref = rows(learner.reference_logprobs(Batch.from_episodes(episodes)), episodes)
        # Take the old policy slightly off the current one, so ratios differ from 1 and clipping can act.
        old = [lp + 0.3 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(1)) for lp in ref]
        stats = accumulate(learner, episodes, advantages, old=old, ref=ref)
        results.append((stats, grads(learner)))
    (s1, g1), (s8, g8) = results
    assert float(s1["loss"]) == pytest.approx(float(s8["loss"]), rel=1e-5, abs=1e-7)
    assert float(s1["clip_frac"]) == pytest.approx(float(s8["clip_frac"]), rel=1e-6) and float(s1["clip_frac"]) > 0
    assert g1.keys() == g8.keys() and len(g1) > 10
    for name in g1:
        assert torch.allclose(g1[name], g8[name], rtol=1e-4, atol=1e-6), name


def test_length_sorted_micro_batches_keep_each_episode_with_its_own_data(tiny_model_dir, batch):
    # Micro-batches are cut from the episodes sorted by length: whatever the batch's order and the
    # micro-batch size, every episode keeps its own advantages and old logprobs, so the gradient is the same.
    episodes, advantages = batch
    results = []
    for micro, order in ((8, range(8)), (3, range(8)), (3, reversed(range(8)))):
        order = list(order)
        learner = Learner(
            tiny_model_dir, LearnerConfig(device="cpu", micro_batch_size=micro), AlgoConfig(), temperature=1.0
        )
        old = [
            lp + 0.3 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(i))
            for i, lp in enumerate(rows(learner.logprobs(Batch.from_episodes(episodes)), episodes))
        ]
        stats = accumulate(
            learner, [episodes[i] for i in order], [advantages[i] for i in order], old=[old[i] for i in order]
        )
        results.append((float(stats["loss"]), grads(learner)))
    (loss, reference), *others = results
    for other_loss, other in others:
        assert other_loss == pytest.approx(loss, rel=1e-5, abs=1e-7)
        for name in reference:
            assert torch.allclose(other[name], reference[name], rtol=1e-4, atol=1e-6), name


def test_shared_prompt_forward_gives_the_full_forward_logprobs_and_gradients(tiny, tiny_model_dir):
    # Two GRPO groups of 4 (prompts of different lengths), multi-turn: observations sit inside the rest.
    model, tok = tiny
    tasks = [Task("a", "what is kalu", {"answer": "blue"}), Task("b", "what is kalu red red red", {"answer": "blue"})]
    items = [(task, g, 10 * g + k) for g, task in enumerate(tasks) for k in range(4)]
    episodes = rollout(
        HFEngine(model, tok),
        TurnFormatter(tok),
        lambda: LookupEnv(LookupParams(max_turns=3)),
        items,
        RolloutConfig(max_turn_tokens=6),
    ).episodes
    assert any(0 in ep.loss_mask[ep.loss_mask.index(1) :] for ep in episodes)  # an observation after the first action
    gen = torch.Generator().manual_seed(0)
    advantages = [torch.randn((), generator=gen) * torch.tensor(ep.loss_mask, dtype=torch.float32) for ep in episodes]
    results = []
    for micro in (
        1,
        8,
    ):  # one episode per micro-batch: nothing to share; all eight: two prompt passes for eight episodes
        learner = Learner(
            tiny_model_dir, LearnerConfig(device="cpu", micro_batch_size=micro), AlgoConfig(), temperature=0.7
        )
        old = [lp + 0.2 for lp in rows(learner.logprobs(Batch.from_episodes(episodes)), episodes)]
        stats = accumulate(learner, episodes, advantages, old=old)
        results.append((stats, grads(learner)))
    shared = learner._shared_prompt_logprobs(Batch.from_episodes(episodes), entropy=False)
    full = learner._forward_logprobs(learner.model, pad([ep.token_ids for ep in episodes], 0, torch.long))[0]
    mask = pad([ep.loss_mask for ep in episodes], 0, torch.float32)
    assert shared is not None and torch.allclose(shared[0] * mask, full * mask, atol=1e-5)
    (s1, g1), (s8, g8) = results
    assert float(s1["loss"]) == pytest.approx(float(s8["loss"]), rel=1e-5, abs=1e-7)
    for name in g1:
        assert torch.allclose(g1[name], g8[name], rtol=1e-4, atol=1e-6), name


def test_update_steps_the_optimizer_and_reports_first_ratio_one(tiny_model_dir, batch):
    episodes, advantages = batch
    learner = Learner(
        tiny_model_dir,
        LearnerConfig(device="cpu", lr=1e-3, warmup_steps=4),
        AlgoConfig(lone_group_score=True),
        temperature=1.0,
    )
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    batch = Batch.from_episodes(episodes)
    metrics = learner.update(batch)
    assert torch.equal(
        batch.advantages, pad(advantages, 0, torch.float32)
    )  # the credit the update assigned: the fixture's
    policy = batch.loss_mask.bool()  # the learner's logprobs before its step: the engine's
    assert (batch.learner_logprobs[policy] - batch.sampler_logprobs[policy]).abs().max() < 1e-4
    assert metrics["mismatch_max_abs"] < 1e-4  # the engine's logprobs are the learner's: ratio 1
    assert metrics["clip_frac"] == 0.0
    assert metrics["grad_norm"] > 0 and metrics["lr"] == pytest.approx(1e-3 * 2 / 4)  # warm-up: step 1 of 4 done
    changed = [n for n, p in learner.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def test_several_mini_batches_recompute_old_logprobs(tiny_model_dir, batch):
    episodes, advantages = batch
    cfg = LearnerConfig(device="cpu", lr=1e-2, optim_steps_per_batch=2, epochs=2)
    learner = Learner(
        tiny_model_dir, cfg, AlgoConfig(clip_low=0.01, clip_high=0.01, lone_group_score=True), temperature=1.0
    )
    batch = Batch.from_episodes(episodes)
    metrics = learner.update(batch)
    assert torch.equal(batch.advantages, pad(advantages, 0, torch.float32))
    # After the first optimizer step the policy has moved away from the recomputed old one: clipping shows.
    assert metrics["clip_frac"] > 0
    assert learner.scheduler.last_epoch == 4


def test_missing_model_path_fails_clearly():
    with pytest.raises(FileNotFoundError, match="model path '/no/such/model' does not exist"):
        Learner("/no/such/model", LearnerConfig(device="cpu"), AlgoConfig(), temperature=1.0)


def test_unknown_loss_aggregation(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown loss_agg 'token_mean'"):
        Learner(tiny_model_dir, LearnerConfig(device="cpu"), AlgoConfig(loss_agg="token_mean"), temperature=1.0)


@pytest.mark.parametrize("critic", ["head", "separate"])
def test_critic_gspo_and_sequence_tis_are_micro_batch_invariant(tiny_model_dir, batch, critic):
    episodes, advantages = batch
    algo = AlgoConfig(
        advantage="gae",
        critic=critic,
        policy_loss="gspo",
        clip_low=0.05,
        clip_high=0.05,
        tis_cap=1.5,
        tis_level="sequence",
    )
    gen = torch.Generator().manual_seed(2)
    returns = [torch.randn(len(ep.token_ids), generator=gen) for ep in episodes]
    old_values = [torch.randn(len(ep.token_ids), generator=gen) * 0.1 for ep in episodes]
    results = []
    for micro in (1, 8):
        learner = Learner(tiny_model_dir, LearnerConfig(device="cpu", micro_batch_size=micro), algo, temperature=1.0)
        old = [
            lp + 0.3 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(1))
            for lp in rows(learner.logprobs(Batch.from_episodes(episodes)), episodes)
        ]
        stats = accumulate(
            learner, episodes, advantages, fresh=True, old=old, returns=returns, critic_values=old_values
        )
        g = grads(learner) | {f"head.{n}": p.grad.clone() for n, p in learner.value_head.named_parameters()}
        if critic == "separate":
            g |= {
                f"critic.{n}": p.grad.clone() for n, p in learner.critic_model.named_parameters() if p.grad is not None
            }
        results.append((stats, g))
    (s1, g1), (s8, g8) = results
    for key in ("loss", "value_loss", "tis_weight", "mismatch_seq_max_abs", "clip_frac"):
        assert float(s1[key]) == pytest.approx(float(s8[key]), rel=1e-5, abs=1e-7), key
    assert float(s1["value_loss"]) > 0 and float(s1["clip_frac"]) > 0
    assert g1.keys() == g8.keys() and any(k.startswith("head.") for k in g1)
    assert any(k.startswith("critic.") for k in g1) == (critic == "separate")
    for name in g1:
        assert torch.allclose(g1[name], g8[name], rtol=1e-4, atol=1e-6), name


def test_critic_weights_and_optimizer_are_in_the_learner_state(tiny_model_dir, batch):
    episodes, _ = batch
    # gamma = lam = 1, an outcome of 1 and process rewards of 0:
    # with V = 0 the critic's targets are 1 on every policy token.
    algo = AlgoConfig(advantage="gae", gamma=1.0, lam=1.0)
    learner = Learner(tiny_model_dir, LearnerConfig(device="cpu", lr=1e-2), algo, temperature=1.0)
    batch = Batch.from_episodes(episodes)
    batch.outcome_rewards = torch.ones(len(episodes), dtype=torch.float64)
    values = learner.sampling_values(batch)
    assert values.shape == batch.token_ids.shape and (values == 0).all()  # the head starts at V = 0
    metrics = learner.update(batch)
    assert torch.equal(batch.critic_values, values) and torch.equal(
        batch.returns, batch.loss_mask
    )  # the values and targets it used
    assert metrics["critic_grad_norm"] > 0 and metrics["value_loss"] == pytest.approx(0.5)
    state = learner.state_dict()
    fresh = Learner(tiny_model_dir, LearnerConfig(device="cpu", lr=1e-2), algo, temperature=1.0)
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.value_head.parameters(), learner.value_head.parameters()))
    assert fresh.critic_optimizer.state_dict()["state"].keys() == learner.critic_optimizer.state_dict()["state"].keys()


@pytest.mark.parametrize(
    "field,value", [("advantage", "ppo"), ("policy_loss", "cispo"), ("tis_level", "turn"), ("critic", "shared")]
)
def test_unknown_algorithm_names(tiny_model_dir, field, value):
    with pytest.raises(ValueError, match=f"unknown {field} '{value}'"):
        Learner(tiny_model_dir, LearnerConfig(device="cpu"), AlgoConfig(**{field: value}), temperature=1.0)


def perturbed_old(learner, episodes):
    """The learner's logprobs moved off by noise, so ratios differ from 1."""
    gen = torch.Generator().manual_seed(1)
    return [
        lp + 0.3 * torch.randn(lp.shape, generator=gen)
        for lp in rows(learner.logprobs(Batch.from_episodes(episodes)), episodes)
    ]


def test_gspo_averages_over_sequences_whatever_loss_agg_says(tiny_model_dir, batch):
    episodes, advantages = batch  # one advantage per sequence, sequences of different lengths
    results = []
    for loss_agg in algos.LOSS_AGGREGATIONS:
        learner = Learner(
            tiny_model_dir,
            LearnerConfig(device="cpu"),
            AlgoConfig(policy_loss="gspo", loss_agg=loss_agg),
            temperature=1.0,
        )
        old = perturbed_old(learner, episodes)
        stats = accumulate(learner, episodes, advantages, old=old)
        results.append((float(stats["loss"]), grads(learner)))
    # GSPO's objective: the mean over sequences of -min(s A, clip(s) A), s = exp(mean log-ratio of the sequence).
    expected = 0.0
    for ep, a, lp, o in zip(episodes, advantages, rows(learner.logprobs(Batch.from_episodes(episodes)), episodes), old):
        m = torch.tensor(ep.loss_mask, dtype=torch.bool)
        s, adv = torch.exp((lp - o)[m].mean()), float(a[m][0])
        expected += -min(s * adv, s.clamp(0.8, 1.2) * adv) / len(episodes)
    for loss, g in results:
        assert loss == pytest.approx(float(expected), rel=1e-5)
        assert all(torch.allclose(g[n], results[0][1][n], rtol=1e-5, atol=1e-7) for n in g)


def test_seq_mean_counts_sequences_without_policy_tokens_unless_told(tiny_model_dir, batch):
    episodes, advantages = batch
    empty = copy.deepcopy(episodes[0])
    empty.loss_mask = [0] * len(empty.loss_mask)
    losses = {}
    for skips in (False, True):
        learner = Learner(
            tiny_model_dir,
            LearnerConfig(device="cpu"),
            AlgoConfig(loss_agg="seq-mean-token-sum", seq_mean_skips_empty=skips),
            temperature=1.0,
        )
        with_empty = episodes + [empty]
        losses[skips] = float(
            accumulate(learner, with_empty, advantages + [advantages[0] * 0], old=perturbed_old(learner, with_empty))[
                "loss"
            ]
        )
    assert losses[True] == pytest.approx(losses[False] * 9 / 8, rel=1e-5) and losses[True] != 0


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["algo.advantage=turn"], "'turn' is unbiased only under algo.loss_agg=seq-mean-token-sum.*token-mean"),
        (
            ["algo.judge_advantage=turn", "algo.loss_agg=seq-mean-token-mean"],
            "'turn' is unbiased only.*seq-mean-token-mean",
        ),
        (
            ["algo.advantage=turn", "algo.loss_agg=seq-mean-token-sum", "algo.policy_loss=gspo"],
            "gspo averages each sequence's tokens",
        ),
        (["algo.clip_ratio_c=0.5"], "algo.clip_ratio_c=0.5: .* must be > 1"),
        (["algo.kl_estimator=k4"], "unknown kl_estimator 'k4'"),
    ],
)
def test_algorithm_combinations_are_refused_at_config_load(overrides, message, capsys):
    with pytest.raises(ValueError, match=message):
        load_config("configs/lookup.yaml", overrides)
    assert main(["train", "configs/lookup.yaml", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error:") and err.count("\n") == 1  # one line, no traceback
    assert (
        load_config("configs/lookup.yaml", ["algo.advantage=turn", "algo.loss_agg=seq-mean-token-sum"]).algo.advantage
        == "turn"
    )


def test_the_logged_entropy_is_the_policys_on_its_sampled_tokens_whichever_forward_computes_it(tiny_model_dir, tiny):
    """Four episodes of one prompt: the prompt runs once (the shared-prompt forward), or, with gradient
    checkpointing, each episode runs whole. Both log the mean entropy over policy tokens of the distributions
    the tokens were drawn from."""
    model, tok = tiny
    items = [(Task("t", "what is kalu", {"answer": "blue"}), 0, seed) for seed in range(4)]
    episodes = rollout(
        HFEngine(model, tok),
        TurnFormatter(tok),
        lambda: LookupEnv(LookupParams(max_turns=2)),
        items,
        RolloutConfig(max_turn_tokens=6),
    ).episodes
    batch = as_batch(episodes, [torch.zeros(len(ep.token_ids)) for ep in episodes])
    logged = []
    for checkpointing in (False, True):
        learner = Learner(
            tiny_model_dir,
            LearnerConfig(device="cpu", gradient_checkpointing=checkpointing),
            AlgoConfig(),
            temperature=0.7,
        )
        assert (learner._shared_prompt_logprobs(batch, entropy=False) is None) == checkpointing
        logged.append(float(learner.accumulate(batch, batch.counts(False), fresh=True)["entropy"]))
    with torch.no_grad():
        entropy = algos.token_entropy(learner.model(input_ids=batch.token_ids).logits, 0.7)  # [B, T], every position
    expected = float((entropy * batch.loss_mask).sum() / batch.loss_mask.sum())
    assert logged == pytest.approx([expected, expected], rel=1e-5)
    assert 0 < expected < float(torch.log(torch.tensor(float(learner.model.config.vocab_size))))
