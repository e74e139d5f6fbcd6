"""The sharded learner: real FSDP2 ranks (gloo) as real Ray actors, against the one-process learner; and LoRA."""

import re

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from envs.base import Task
from envs.lookup import LookupEnv, LookupParams
from rewards.base import Reward
from rl.batch import PAD_ROW, Batch
from rl.cli import main
from rl.config import AlgoConfig, LearnerConfig, RolloutConfig, load_config
from rl.learn import lora
from rl.learn.learner import Learner
from rl.learn.sharding import ShardedLearner, combine
from rl.rollout.chat import TurnFormatter
from rl.rollout.engine import HFEngine
from rl.rollout.loop import rollout
from rl.run.trainer import Trainer
from tests import ray_cluster as ray_cluster_of_our_own
from tests.test_trainer import LOOKUP, metrics


@pytest.fixture(scope="module")
def ray_cluster():
    # Logical CPUs: two learner ranks and two rollout workers at once, on whatever cores there are.
    temp_dir = ray_cluster_of_our_own.start(num_cpus=4)
    yield temp_dir
    ray_cluster_of_our_own.stop(temp_dir)


@pytest.fixture(scope="module")
def groups(tiny):
    """Two GRPO groups of four episodes (prompts of different lengths, multi-turn), scored at random: a random
    reward for every turn and a random outcome, so every estimator (and a critic) has something to learn."""
    model, tok = tiny
    tasks = [Task("a", "what is kalu", {"answer": "blue"}), Task("b", "what is kalu red red", {"answer": "blue"})]
    items = [(task, g, 10 * g + k) for g, task in enumerate(tasks) for k in range(4)]
    episodes = rollout(
        HFEngine(model, tok),
        TurnFormatter(tok),
        lambda: LookupEnv(LookupParams(max_turns=3)),
        items,
        RolloutConfig(max_turn_tokens=6),
    ).episodes
    gen = torch.Generator().manual_seed(0)
    for ep in episodes:
        ep.reward = Reward(
            torch.randn(len(ep.trajectory.turns), generator=gen).tolist(), float(torch.randn((), generator=gen))
        )
    return episodes


def of_lengths(lengths: list[int]) -> Batch:
    """A batch of episodes of these lengths (all that `Batch.shares` reads), any number of them, none included."""
    n, width = len(lengths), max(lengths, default=0)
    zeros = torch.zeros(n, width)
    return Batch(
        token_ids=zeros.long(),
        lengths=torch.tensor(lengths, dtype=torch.long),
        loss_mask=zeros,
        turn_ids=zeros.long(),
        groups=torch.zeros(n, dtype=torch.long),
        sampler_logprobs=zeros,
        policy_version=zeros.long(),
        process_rewards=torch.zeros(n, 1, dtype=torch.float64),
        turns=torch.zeros(n, dtype=torch.long),
        outcome_rewards=torch.zeros(n, dtype=torch.float64),
    )


def gathered(learner) -> dict[str, torch.Tensor]:
    out = {}
    for bucket in learner.weight_buckets(0.01):
        out |= {k: torch.tensor(v) for k, v in (bucket if isinstance(bucket, dict) else ray.get(bucket)).items()}
    return out


def test_shares_give_every_rank_the_same_number_of_micro_batches():
    for n_items in range(0, 12):
        for mb in (1, 2, 3, 5):
            for world in (2, 3):
                lengths = [(7 * i) % 11 for i in range(n_items)]
                shares = of_lengths(lengths).shares(world, mb)
                real = sorted(i for s in shares for i in s if i != PAD_ROW)
                assert real == list(range(n_items))  # every item once
                counts = {-(-len(s) // mb) for s in shares}
                assert len(counts) == 1 and counts.pop() >= 1, (n_items, mb, world, shares)
                assert all(s.count(PAD_ROW) <= 1 for s in shares)
    assert combine(
        [
            {"loss": 1.0, "mismatch_max_abs": 0.5, "grad_norm": 2.0},
            {"loss": 2.0, "mismatch_max_abs": 0.7, "grad_norm": 2.0},
        ]
    ) == {"loss": 3.0, "mismatch_max_abs": 0.7, "grad_norm": 2.0}


@pytest.mark.parametrize(
    "algo",
    [
        AlgoConfig(kl_coef=0.1),
        AlgoConfig(advantage="gae", critic="separate", kl_coef=0.1, clip_low=0.05, clip_high=0.05),
    ],
    ids=["grpo", "gae-separate"],
)
def test_two_ranks_take_the_step_of_one(tiny_model_dir, groups, ray_cluster, algo):
    episodes = groups
    critic = algo.advantage == "gae"
    # Three micro-batches of at most 3: one rank gets two, the other one and an empty one. grpo takes the
    # shared-prompt forward (GRPO groups); gae two mini-batches and gradient checkpointing.
    cfg = LearnerConfig(
        device="cpu",
        lr=1e-3,
        micro_batch_size=3,
        warmup_steps=2,
        optim_steps_per_batch=2 if critic else 1,
        gradient_checkpointing=bool(critic),
    )
    one_batch, two_batch = Batch.from_episodes(episodes), Batch.from_episodes(episodes)
    one = Learner(tiny_model_dir, cfg, algo, temperature=1.0)
    m1 = one.update(one_batch)
    two = ShardedLearner(tiny_model_dir, LearnerConfig(**{**cfg.__dict__, "world_size": 2}), algo, temperature=1.0)
    try:
        m2 = two.update(two_batch)
        w2 = gathered(two)
        probe = [ep.token_ids for ep in episodes[:3]]
        p1, p2 = one.probe_logprobs(probe), two.probe_logprobs(probe)
    finally:
        two.close()
    assert m1.keys() == m2.keys() and {"loss", "grad_norm", "kl_ref", "lr"} <= m1.keys()
    for key in m1:
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-6), key
    assert m1["grad_norm"] > 0 and (m1["value_loss"] > 0 if critic else True)
    w1 = dict(one.named_weights())
    assert w1.keys() == w2.keys()
    for name in w1:
        assert torch.allclose(w2[name], w1[name], atol=1e-5, rtol=0), name
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(p1, p2))
    # What the update filled in: the same credit (from the same reference and critic passes), the same learner logprobs
    # (NaN outside the first mini-batch).
    assert one_batch.advantages.abs().sum() > 0
    for name in ("ref_logprobs", "critic_values", "advantages", "returns", "old_logprobs", "learner_logprobs"):
        a, b = getattr(one_batch, name), getattr(two_batch, name)
        assert (a is None) == (b is None), name
        assert a is None or torch.allclose(b, a, atol=1e-5, equal_nan=True), name


def make_trainer(run_dir, *overrides):
    # seed 2: the first batch holds a rewarded episode, so the first update moves the weights
    return Trainer(load_config(LOOKUP, [f"run_dir={run_dir}", "eval_every=0", "learner.lr=3e-3", "seed=2", *overrides]))


def run(trainer):
    try:
        return trainer.train(progress=False)
    finally:
        trainer.close()


def comparable(run_dir):
    return [
        {k: v for k, v in m.items() if not k.startswith(("time/", "throughput/", "placement"))}
        for m in metrics(run_dir)
    ]


def test_two_ranks_train_as_one_learner_a_dead_rank_fails_the_run_and_resume_continues_exactly(
    tmp_path, ray_cluster, capsys
):
    # A policy loss from a user module: the ranks import the config's `imports` too.
    common = [
        "steps=4",
        "save_every=2",
        "learner.warmup_steps=3",
        "imports=[tests.registered_loss]",
        "algo.policy_loss=ppo_from_a_user_module",
    ]
    sharded = [*common, "learner.world_size=2", "workers.ray=true"]
    run(make_trainer(tmp_path / "one", *common[1:], "steps=2"))
    run(make_trainer(tmp_path / "straight", *sharded))
    one, two = [[m for m in metrics(tmp_path / d) if "reward/mean" in m] for d in ("one", "straight")]
    assert len(one) == 2 and len(two) == 4
    for a, b in zip(one, two):  # the first two steps of the sharded run are the one-process run's
        assert b["reward/mean"] == a["reward/mean"]  # the same episodes: the synced engines sample as the one learner's
        for key in ("learner/loss", "learner/grad_norm", "learner/mismatch_max_abs"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    assert one[0]["learner/grad_norm"] > 0 and all(m["sync/probe_max_abs"] < 1e-4 for m in two)

    # The last rank exits inside the third update: `rl train` says so in one line and exits non-zero.
    code = main(
        [
            "train",
            str(LOOKUP),
            f"run_dir={tmp_path / 'crashed'}",
            "eval_every=0",
            "learner.lr=3e-3",
            "seed=2",
            *sharded,
            "algo.policy_loss=ppo_that_kills_the_last_rank_in_update_3",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and re.search(
        r"error: learner rank 1 \(node [\d.]+\) died during the update; resume=RUN_DIR continues", err
    ), err[-2000:]
    checkpoint = tmp_path / "crashed" / "checkpoints" / "step_000002"
    assert sorted(p.name for p in (tmp_path / "crashed" / "checkpoints").iterdir()) == ["step_000002"]
    assert {"__0_0.distcp", "__1_0.distcp"} <= {
        p.name for p in (checkpoint / "dcp").iterdir()
    }  # one shard file per rank
    assert (
        AutoModelForCausalLM.from_pretrained(checkpoint / "model") is not None
    )  # the gathered model: what eval and the demo read
    with pytest.raises(ValueError, match="written by learner.world_size=2"):
        make_trainer(tmp_path / "x", *common, f"resume={tmp_path / 'crashed'}")
    run(make_trainer(tmp_path / "x", *sharded, f"resume={tmp_path / 'crashed'}"))
    assert comparable(tmp_path / "straight") == comparable(tmp_path / "crashed")
    final = [
        AutoModelForCausalLM.from_pretrained(tmp_path / d / "checkpoints" / "step_000004" / "model").state_dict()
        for d in ("straight", "crashed")
    ]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


# ---------------------------------------------------------------- LoRA


def test_lora_trains_only_the_adapters_and_the_engine_serves_them_merged(tiny_model_dir, groups):
    episodes = groups
    cfg = LearnerConfig(device="cpu", lr=1e-2, lora_rank=4, lora_alpha=8.0)
    learner = Learner(tiny_model_dir, cfg, AlgoConfig(kl_coef=0.1), temperature=1.0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    targets = [m for name, m in base.named_modules() if name.rsplit(".", 1)[-1] in cfg.lora_targets]
    assert (
        learner.trainable_params
        == lora.adapter_params(learner.model)
        == sum(4 * (m.in_features + m.out_features) for m in targets)
    )
    metrics = learner.update(Batch.from_episodes(episodes))
    assert metrics["trainable_params"] == learner.trainable_params and metrics["grad_norm"] > 0
    sequences = [ep.token_ids for ep in episodes]
    # The KL reference is the base model: the adapters switched off, whatever they learned.
    ref = learner.reference_logprobs(Batch.from_episodes(episodes))
    expected = Learner(tiny_model_dir, LearnerConfig(device="cpu"), AlgoConfig(), temperature=1.0).logprobs(
        Batch.from_episodes(episodes)
    )
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ref, expected))
    merged = dict(learner.named_weights())
    assert merged.keys() == dict(base.named_parameters()).keys()  # the base model's names: any engine loads them
    changed = [k for k in merged if not torch.equal(merged[k], base.state_dict()[k])]
    assert changed and all(k.rsplit(".", 2)[-2] in cfg.lora_targets for k in changed)
    engine = HFEngine(base, learner_tokenizer(tiny_model_dir))
    for bucket in learner.weight_buckets(0.01):
        engine.update_weights(bucket)
    engine.finish_sync(1)
    got, want = engine.probe_logprobs(sequences[:4]), learner.probe_logprobs(sequences[:4])
    assert max(float((torch.tensor(g) - w[1:]).abs().max()) for g, w in zip(got, want)) < 1e-5


def test_lora_trains_named_modules_whole_and_a_tied_head_follows_them(tiny_model_dir, groups):
    # A random tiny model's frozen embeddings and norm cap every logit far below what a table needs: its tied
    # embeddings are trained whole beside the adapters (peft's modules_to_save), and the head stays tied to them.
    episodes = groups
    cfg = LearnerConfig(device="cpu", lr=1e-2, lora_rank=4, lora_modules_to_save=["embed_tokens"])
    learner = Learner(tiny_model_dir, cfg, AlgoConfig(kl_coef=0.1), temperature=1.0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    embed = base.get_input_embeddings().weight
    assert learner.trainable_params == lora.adapter_params(learner.model) + embed.numel()
    learner.update(Batch.from_episodes(episodes))
    sequences = [ep.token_ids for ep in episodes]
    expected = Learner(tiny_model_dir, LearnerConfig(device="cpu"), AlgoConfig(), temperature=1.0).logprobs(
        Batch.from_episodes(episodes)
    )
    assert all(
        torch.allclose(a, b, atol=1e-5)
        for a, b in zip(learner.reference_logprobs(Batch.from_episodes(episodes)), expected)
    )
    merged = dict(learner.named_weights())
    assert merged.keys() == dict(base.named_parameters()).keys()
    assert (merged["model.embed_tokens.weight"] - embed).abs().max() > 1e-3  # the trained copy is what engines get
    engine = HFEngine(base, learner_tokenizer(tiny_model_dir))
    for bucket in learner.weight_buckets(0.01):
        engine.update_weights(bucket)
    engine.finish_sync(1)
    got, want = engine.probe_logprobs(sequences[:4]), learner.probe_logprobs(sequences[:4])
    assert (
        max(float((torch.tensor(g) - w[1:]).abs().max()) for g, w in zip(got, want)) < 1e-5
    )  # the engine's head is tied to it too
    with pytest.raises(ValueError, match=r"learner.lora_modules_to_save: the model has no module named \['embed'\]"):
        Learner(
            tiny_model_dir,
            LearnerConfig(device="cpu", lora_rank=4, lora_modules_to_save=["embed"]),
            AlgoConfig(),
            temperature=1.0,
        )


def learner_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_lora_with_two_ranks_takes_the_step_of_one(tiny_model_dir, groups, ray_cluster):
    episodes = groups
    cfg = LearnerConfig(device="cpu", lr=1e-2, micro_batch_size=3, lora_rank=4)
    algo = AlgoConfig(kl_coef=0.1)
    one = Learner(tiny_model_dir, cfg, algo, temperature=1.0)
    m1 = one.update(Batch.from_episodes(episodes))
    two = ShardedLearner(tiny_model_dir, LearnerConfig(**{**cfg.__dict__, "world_size": 2}), algo, temperature=1.0)
    try:
        m2 = two.update(Batch.from_episodes(episodes))
        w2 = gathered(two)
    finally:
        two.close()
    assert two.trainable_params == one.trainable_params == m2["trainable_params"]
    for key in m1:
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-6), key
    w1 = dict(one.named_weights())
    assert all(torch.allclose(w2[k], w1[k], atol=1e-5, rtol=0) for k in w1)


def test_lookup_trains_with_lora_resumes_exactly_and_the_engine_follows_the_merged_weights(tmp_path):
    lora_run = ["learner.lora_rank=8", "learner.lora_modules_to_save=[embed_tokens]", "learner.lr=1e-2", "save_every=2"]
    run(make_trainer(tmp_path / "straight", "steps=4", *lora_run))
    run(make_trainer(tmp_path / "resumed", "steps=2", *lora_run))
    run(make_trainer(tmp_path / "resumed", "steps=4", *lora_run, f"resume={tmp_path / 'resumed'}"))
    rows, resumed = [[m for m in comparable(tmp_path / d) if "reward/mean" in m] for d in ("straight", "resumed")]
    assert (
        len(rows) == 4 and rows == resumed
    )  # the adapters and the trained copy resume (the first half's final eval aside)
    assert all(m["sync/probe_max_abs"] < 1e-4 for m in rows)  # the engine runs the merged weights
    adapters = 2 * 8 * (128 + 96 + 96 + 128 + 192 + 192 + 192)  # lookup.yaml's shape: 2 layers
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "base_model").state_dict()
    assert rows[0]["learner/trainable_params"] == adapters + base["model.embed_tokens.weight"].numel()
    saved = [
        AutoModelForCausalLM.from_pretrained(tmp_path / d / "checkpoints" / "step_000004" / "model").state_dict()
        for d in ("straight", "resumed")
    ]
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])
    changed = {k for k in base if not torch.equal(base[k], saved[0][k])}
    assert "model.embed_tokens.weight" in changed
    merged = changed - {"model.embed_tokens.weight", "lm_head.weight"}
    assert merged and all(
        k.rsplit(".", 2)[-2] in LearnerConfig().lora_targets for k in merged
    )  # the adapters, merged into their targets


@pytest.mark.parametrize(
    "override,message",
    [
        ("learner.world_size=0", "learner.world_size=0: use 1"),
        ("learner.lora_rank=-1", "learner.lora_rank=-1: use 0"),
        ("learner.lora_targets=[]", "learner.lora_targets is empty"),
    ],
)
def test_bad_sharding_and_lora_options_fail_at_config_load(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(LOOKUP, ["learner.lora_rank=4", override] if "targets" in override else [override])


def test_unknown_lora_target_names_the_modules_there_are(tiny_model_dir):
    with pytest.raises(ValueError, match=r"learner.lora_targets: the model has no module named \['qproj'\]"):
        Learner(
            tiny_model_dir,
            LearnerConfig(device="cpu", lora_rank=4, lora_targets=["qproj", "v_proj"]),
            AlgoConfig(),
            temperature=1.0,
        )
