"""One typed config: every option of a run, as dataclasses loaded from YAML with `key=value` overrides.

    python -m rl train configs/lookup.yaml steps=50 learner.lr=1e-3 rollout.group_size=4

Values in overrides are parsed as YAML (`reward=[{name: outcome}]` works). An unknown key
fails with its name and the closest valid key; a named option (a `Literal`) fails the same
way on an unknown value, when the config loads, before any model or data is built.
Each field's documentation is the `#:` comment above it.

This module is a leaf of `rl/`: it imports no other module of `rl/`, nor torch or
transformers, so a config can be checked in a fraction of a second.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from envs.names import did_you_mean
from envs.registry import check_env_name, get_env_spec
from rewards.base import RewardSpec, check_reward_spec

# ---------------------------------------------------------------- named options


def registrations(module: str, decorator: str) -> dict[str, dict[str, Any]]:
    """name -> declarations of each `@decorator("name", key=value, ...)` in rl/`module`, read from its source.

    The built-in estimators and policy losses are named once, where they are registered; reading the source
    instead of importing it keeps a config check free of torch."""
    tree = ast.parse((Path(__file__).parent / module).read_text())
    calls = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == decorator
    ]
    return {c.args[0].value: {k.arg: ast.literal_eval(k.value) for k in c.keywords} for c in calls}


ESTIMATORS = registrations("learn/credit.py", "register_estimator")
POLICY_LOSSES = registrations("learn/losses.py", "register_policy_loss")
IS_CORRECTIONS = registrations("learn/losses.py", "register_is_correction")
Estimator = Literal[tuple(ESTIMATORS)]  # in the order registered: the first is the default
PolicyLoss = Literal[tuple(POLICY_LOSSES)]
ISCorrection = Literal[tuple(IS_CORRECTIONS)]
LossAggregation = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]
KLEstimator = Literal["k1", "k2", "k3", "k3+"]
KLTurns = Literal["all", "first"]
TISLevel = Literal["token", "sequence"]
Critic = Literal["head", "separate"]
EngineName = Literal["hf", "vllm"]
VLLMDtype = Literal["auto", "float32", "bfloat16", "float16"]
SFTSchedule = Literal["constant", "cosine"]
ObservationRole = Literal["user", "tool", "system"]
Schedule = Literal["reproducible", "overlap", "lockstep"]
WorkerPlacement = Literal["default", "spread"]
WeightTransport = Literal["object_store", "broadcast"]
LORA_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)  # attention and MLP projections


def check_choice(value: Any, choices: tuple, name: str, where: str = "") -> None:
    """Raise a one-line error naming the option, its closest valid value and all of them."""
    if value in choices:
        return
    hint = did_you_mean(str(value), choices, cutoff=0.5)
    at = f"{where}: " if where else ""
    raise ValueError(f"{at}unknown {name} {value!r}{hint} (use one of {', '.join(map(repr, choices))})")


# Names registered beyond the built-in ones, per named option, with what each declares: `register_estimator("x")`
# (rl/learn/credit.py) adds "x" to "advantage" and "judge_advantage", `register_policy_loss("y")` (rl/learn/losses.py)
# adds "y" to "policy_loss".
_REGISTERED: dict[str, dict[str, dict[str, Any]]] = {
    "advantage": ESTIMATORS,
    "policy_loss": POLICY_LOSSES,
    "tis_mode": IS_CORRECTIONS,
}


def allow(option: str, name: str, **declarations: Any) -> None:
    """Accept `name` as a value of `option` from now on (a registry calls this when a user registers a function)."""
    _REGISTERED.setdefault(option, {}).setdefault(name, declarations)


def choices(hint, option: str) -> tuple:
    """The values a named option accepts: its `Literal`'s, then those registered since."""
    return get_args(hint) + tuple(n for n in _REGISTERED.get(option, {}) if n not in get_args(hint))


def declares(option: str, name: str, what: str) -> Any:
    """What the function registered as `name` for `option` declared about itself (False when it said nothing)."""
    return _REGISTERED[option].get(name, {}).get(what, False)


class Options:
    """A config section: its `Literal` fields are checked however it is made (from YAML or in code)."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if typing.get_origin(hints[f.name]) is Literal:
                check_choice(getattr(self, f.name), choices(hints[f.name], f.name), f.name)


# ---------------------------------------------------------------- sections


@dataclass
class TinyModelConfig(Options):
    #: transformer blocks
    layers: int = 2
    #: hidden size
    hidden: int = 64
    #: MLP width
    intermediate: int = 128
    #: attention heads
    heads: int = 4
    #: key/value heads (grouped-query attention, as in Qwen2)
    kv_heads: int = 2
    #: upper bound on the BPE vocabulary trained on the task text
    vocab_size: int = 512
    #: keep all 256 byte symbols (any text encodes); False keeps only bytes seen in the text
    byte_alphabet: bool = True
    #: strings encoded as one token each, e.g. an env's tags: "<search>" then gives a copy of what followed it one place
    #: to look
    single_tokens: list[str] = field(default_factory=list)
    #: longest sequence the model accepts
    max_positions: int = 2048


@dataclass
class ModelConfig(Options):
    #: Hugging Face model directory or hub id; empty builds a tiny model for the env
    path: str = ""
    #: shape of the tiny model built when path is empty
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class EnvConfig(Options):
    #: a built-in env (lookup, search, code, mistake, bbq) or a module path exposing ENV_SPEC
    name: str = "lookup"
    #: options of the env's own params dataclass
    params: dict[str, Any] = field(default_factory=dict)

    def resolve(self, overrides: dict | None = None, where: str = "env.params"):
        """(the env's EnvSpec, its params dataclass built from `params`, updated by `overrides`): every user of the
        env (trainer, workers, SFT, evaluation) gets them here, with the same key and value checks."""
        spec = get_env_spec(self.name)
        return spec, build_params(spec.params, {**self.params, **(overrides or {})}, where)


@dataclass
class SFTConfig(Options):
    #: optimizer steps of the warm start before RL (0 = no SFT stage)
    steps: int = 0
    #: "demos" (the env's scripted demonstrations) or a JSONL file of trajectories
    data: str = "demos"
    #: demonstrations to generate when data is "demos"
    demos: int = 2000
    #: share of demos whose first attempt is right and kept (confidence); the rest fix a wrong one (critique)
    keep_share: float = 0.4
    #: share of keep demos that doubt before the right call (AdvChain's hesitation-correction)
    hesitation: float = 0.5
    #: also train on the wrong steps of fix demos (AdvChain trains on the whole chain)
    train_on_mistakes: bool = False
    #: env.params overrides for the demos, e.g. other worlds than RL's
    env_params: dict[str, Any] = field(default_factory=dict)
    #: AdamW learning rate (peak, after warm-up)
    lr: float = 1.0e-3
    #: linear warm-up, then the schedule
    warmup_steps: int = 20
    #: learning rate after warm-up: constant, or cosine (decays to 0 at sft.steps)
    schedule: SFTSchedule = "constant"
    #: examples per optimizer step
    batch_size: int = 16
    #: longest example in tokens; longer ones are left out
    max_length: int = 1024
    #: end SFT early once greedy episodes on RL's train tasks score this much on average (0 = run all steps)
    stop_score: float = 0.0
    #: optimizer steps between those checks (with stop_score > 0)
    check_every: int = 25
    #: train tasks each check plays
    check_tasks: int = 32


@dataclass
class RolloutConfig(Options):
    #: distinct tasks per training step
    tasks_per_step: int = 8
    #: episodes per task (GRPO's group)
    group_size: int = 8
    #: cap on agent turns per episode; the env usually ends it sooner
    max_turns: int = 8
    #: longest single action, in tokens
    max_turn_tokens: int = 64
    #: an observation is cut to this many tokens
    max_obs_tokens: int = 256
    #: prompt + all actions and observations
    max_total_tokens: int = 1024
    #: sampling temperature (0 = greedy)
    temperature: float = 1.0
    #: nucleus sampling mass
    top_p: float = 1.0
    #: top-k sampling (0 = off)
    top_k: int = 0
    #: chat role of observations, for models with a chat template
    observation_role: ObservationRole = "user"
    #: an env.reset/env.step that takes longer fails its episode (0 = no limit)
    env_timeout_s: float = 300.0
    #: an episode whose env calls take longer than this in all fails (0 = no limit): a slow tool fails only its episodes
    episode_env_s: float = 0.0
    #: env calls running at once per rollout worker, each on its own thread
    env_workers: int = 64
    #: when the engine steps: reproducible (a seed fixes every bit), overlap (fastest: the engine never waits for
    #: envs), lockstep (each turn one batch); see rl/rollout/loop.py
    schedule: Schedule = "reproducible"

    def __post_init__(self):
        super().__post_init__()
        for name in ("max_turns", "max_turn_tokens", "env_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"rollout.{name}={getattr(self, name)}: must be at least 1")


@dataclass
class AlgoConfig(Options):
    #: estimator, registered in rl/learn/credit.py: grpo, drgrpo, rloo, reinforce++, reinforce++-baseline, gae (PPO
    #: critic), turn
    advantage: Estimator = get_args(Estimator)[0]
    #: grpo divides by the group's std; False (or advantage=drgrpo) gives Dr.GRPO
    norm_by_std: bool = True
    #: grpo, drgrpo, rloo: a group of one episode gets its raw total (verl) instead of advantage 0
    lone_group_score: bool = False
    #: registered in rl/learn/losses.py: ppo (token-level ratio) or gspo (sequence-level ratio; use small clip ranges,
    #: e.g. 3e-4/4e-4)
    policy_loss: PolicyLoss = get_args(PolicyLoss)[0]
    #: PPO clip range below 1
    clip_low: float = 0.2
    #: PPO clip range above 1 (DAPO's clip-higher uses 0.28)
    clip_high: float = 0.2
    #: dual clip: a token with A < 0 loses at most clip_ratio_c * |A| (> 1; 0 = off)
    clip_ratio_c: float = 3.0
    #: weight of KL(policy || reference); 0 loads no reference model
    kl_coef: float = 0.0
    #: k1, k2, k3 or k3+ (k3's value, k2's gradient: the reverse KL's); algos.kl_penalty says which estimates what
    kl_estimator: KLEstimator = "k3+"
    #: subtract the KL penalty from the rewards (PPO/REINFORCE++ style) instead of adding it to the loss
    kl_in_reward: bool = False
    #: token-mean, seq-mean-token-sum or seq-mean-token-mean (gspo's policy term: always seq-mean-token-mean)
    loss_agg: LossAggregation = "token-mean"
    #: seq-mean-*: leave sequences without policy tokens out of the count (verl) instead of counting them
    seq_mean_skips_empty: bool = False
    #: importance correction of the sampler's tokens towards pi_old, r = pi_old / pi_sampler, up to this cap; 0 = off
    tis_cap: float = 0.0
    #: registered in rl/learn/losses.py: truncate (TIS: weight min(r, cap)) or mask (weight r where tis_low <= r <=
    #: cap, else 0: IcePop; with tis_low=0 AReaL's decoupled PPO)
    tis_mode: ISCorrection = get_args(ISCorrection)[0]
    #: tis_mode=mask: tokens (or sequences) with r below this leave the loss
    tis_low: float = 0.0
    #: token (one ratio per token) or sequence (product over the sequence's policy tokens)
    tis_level: TISLevel = "token"
    #: discount per policy token (gae, reinforce++)
    gamma: float = 1.0
    #: discount from turn to turn of the turn estimator's returns (0: each turn credited with its own reward, SCoRe)
    turn_gamma: float = 1.0
    #: GAE's lambda
    lam: float = 0.95
    #: reinforce++ and gae whiten with the n - 1 variance (verl) instead of the n one (OpenRLHF)
    whiten_unbiased: bool = False
    #: gae's value model: head (on the policy backbone) or separate (a copy of the base model)
    critic: Critic = "head"
    #: critic learning rate (0 = learner.lr)
    critic_lr: float = 0.0
    #: weight of the value loss (head critic: it shares the backbone's gradient)
    vf_coef: float = 0.5
    #: PPO value clipping around the values at sampling time (0 = off)
    value_clip: float = 0.2
    #: DAPO: drop groups whose rewards are all equal and sample replacement groups
    dynamic_sampling: bool = False
    #: dynamic sampling: at most this many extra rounds of sampling per step
    max_refill_rounds: int = 3
    #: DAPO soft overlong punishment at this many policy tokens (0 = off)
    overlong_max_tokens: int = 0
    #: ... ramping linearly from 0 to -overlong_coef over the last this many tokens
    overlong_cache_tokens: int = 0
    #: ... scale of the overlong penalty
    overlong_coef: float = 1.0
    #: ablation: estimators see the outcome reward only, process rewards dropped
    turn_outcome_only: bool = False
    #: policy tokens of earlier turns get advantage 0 (2: SCoRe's stage I, training the correction; without kl_coef the
    #: first attempt still drifts)
    learn_from_turn: int = 1
    #: the tokens the KL term covers: all policy tokens, or the first turn's only (SCoRe: the first attempt held near
    #: the reference while the correction learns; with learn_from_turn=2, SCoRe's stage I)
    kl_turns: KLTurns = "all"
    #: estimator for tokens in <judge>...</judge> spans ("" = the same as the rest)
    judge_advantage: Estimator | Literal[""] = ""
    #: tag that marks judge spans
    judge_tag: str = "judge"

    def __post_init__(self):
        super().__post_init__()
        if self.judge_advantage:
            check_choice(self.judge_advantage, choices(Estimator, "advantage"), "judge_advantage")
        if not 0 <= self.tis_low < max(self.tis_cap, 1e-9) and self.tis_cap > 0:
            raise ValueError(
                f"algo.tis_low={self.tis_low}: the masked band [tis_low, tis_cap] needs 0 <= tis_low < tis_cap"
                f" ({self.tis_cap})"
            )
        if self.clip_ratio_c != 0 and self.clip_ratio_c <= 1:
            raise ValueError(
                f"algo.clip_ratio_c={self.clip_ratio_c}: the dual clip "
                "bounds ratios above 1, so it must be > 1 (or 0: off)"
            )
        if not 0.0 <= self.turn_gamma <= 1.0:
            raise ValueError(f"algo.turn_gamma={self.turn_gamma:g}: a discount between 0 and 1")
        if self.learn_from_turn < 1:
            raise ValueError(f"algo.learn_from_turn={self.learn_from_turn}: turns count from 1 (1 trains every turn)")
        if self.kl_turns == "first" and (self.kl_coef <= 0 or self.kl_in_reward):
            raise ValueError(
                "algo.kl_turns=first pulls the first turn to the reference "
                f"in the loss: it needs kl_coef > 0 (got {self.kl_coef}) "
                f"and kl_in_reward=false"
            )
        sequence_level = declares("policy_loss", self.policy_loss, "sequence_level")
        for name in (self.advantage, self.judge_advantage):
            if declares("advantage", name, "requires_token_sum") and (
                sequence_level or self.loss_agg != "seq-mean-token-sum"
            ):
                # Such a baseline is unbiased only if no episode's weight in the loss depends on its own length.
                why = (
                    f"{self.policy_loss} averages each sequence's tokens"
                    if sequence_level
                    else f"loss_agg={self.loss_agg} divides by a count that holds the episode's own length"
                )
                raise ValueError(
                    f"advantage {name!r} is unbiased only under "
                    f"algo.loss_agg=seq-mean-token-sum with a token-level policy loss ({why})"
                )


@dataclass
class LearnerConfig(Options):
    #: peak learning rate of AdamW
    lr: float = 1e-6
    #: AdamW beta1
    adam_beta1: float = 0.9
    #: AdamW beta2
    adam_beta2: float = 0.999
    #: AdamW decoupled weight decay
    weight_decay: float = 0.0
    #: optimizer steps of linear learning-rate warm-up
    warmup_steps: int = 0
    #: gradient clipping by global norm (0 = off)
    max_grad_norm: float = 1.0
    #: sequences per forward/backward pass (cut from the batch sorted by length: little padding)
    micro_batch_size: int = 8
    #: mini-batches (optimizer steps) per rollout batch
    optim_steps_per_batch: int = 1
    #: passes over each rollout batch
    epochs: int = 1
    #: "auto" (CUDA when present), "cuda", "cuda:1", "cpu"
    device: str = "auto"
    #: bf16 autocast on CUDA; CPU always runs float32
    bf16: bool = True
    #: trade compute for activation memory on large models
    gradient_checkpointing: bool = False
    #: learner ranks: 1 runs in this process; N > 1 shards the models over N Ray actors with FSDP2
    #: (rl/learn/sharding.py)
    world_size: int = 1
    #: CPUs Ray reserves for each learner rank (world_size > 1)
    cpus_per_rank: float = 1.0
    #: GPUs Ray reserves for each learner rank; > 0 runs the ranks on CUDA with NCCL, 0 on the CPU with gloo
    gpus_per_rank: float = 0.0
    #: a learner rank (or one of its collectives) silent this long fails the step (world_size > 1)
    timeout_s: float = 600.0
    #: at the start, each rank tries this long to reach every other rank before the run fails (world_size > 1)
    connect_timeout_s: float = 10.0
    #: network interface of the ranks' collectives (GLOO_/NCCL_SOCKET_IFNAME); empty: the one holding each
    #: rank's Ray node address (or the node's own GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME, where set)
    socket_ifname: str = ""
    #: LoRA adapters of this rank on `lora_targets` (0 = full fine-tuning); only the adapters train
    lora_rank: int = 0
    #: LoRA scale: the update is (lora_alpha / lora_rank) * B @ A
    lora_alpha: float = 16.0
    #: names of the modules that get adapters
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    #: modules trained whole beside the adapters (peft's modules_to_save), e.g. [embed_tokens]; a tied head stays tied
    lora_modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        super().__post_init__()
        if self.world_size < 1:
            raise ValueError(f"learner.world_size={self.world_size}: use 1 (this process) or more ranks")
        if self.connect_timeout_s <= 0:
            raise ValueError(f"learner.connect_timeout_s={self.connect_timeout_s:g}: a number of seconds, above 0")
        if self.lora_rank < 0:
            raise ValueError(f"learner.lora_rank={self.lora_rank}: use 0 (off) or a positive rank")
        if self.lora_rank and not self.lora_targets:
            raise ValueError("learner.lora_targets is empty: name the modules that get adapters, e.g. [q_proj, v_proj]")


@dataclass
class WorkersConfig(Options):
    #: run rollout workers as Ray actors; False runs one worker in this process
    ray: bool = False
    #: Ray cluster to join ("auto", "ray://host:10001"); empty starts a local one
    address: str = ""
    #: Ray actors, each with its own engine (groups are split between them)
    num_workers: int = 2
    #: CPUs Ray reserves for each worker (its torch threads)
    cpus_per_worker: float = 1.0
    #: GPUs Ray reserves for each worker; > 0 puts its engine on CUDA
    gpus_per_worker: float = 0.0
    #: dead workers replaced within one rollout (or one probe of a worker) before the step fails
    max_restarts: int = 3
    #: where Ray starts the workers: default (where it finds room, this node first) or spread (each on the live
    #: node with the fewest of them; a replacement avoids the node its predecessor was on)
    placement: WorkerPlacement = "default"
    #: K: no trained token was sampled more than K updates before the one that trains on it (0 = synchronous;
    #: 1 without partial_rollouts = one-step-off: the rollouts of step k+1 run during update k)
    max_staleness: int = 0
    #: with max_staleness > 0: workers take GRPO groups as the bound admits them, a sync reaches generations
    #: in flight (they go on with the new weights), the trainer takes groups as they finish; false: each
    #: step's rollouts run whole on one version, one step after another
    partial_rollouts: bool = False
    #: weight-sync bucket size (one object-store object and one call per bucket)
    bucket_mb: float = 64.0
    #: how a sync reaches the workers: object_store (each bucket put in Ray's object store, every worker reads
    #: it) or broadcast (a process group between the learner's rank 0 and the workers: gloo on the CPU, NCCL on
    #: GPUs; a worker started later loads the weights through the object store)
    weight_transport: WeightTransport = "object_store"
    #: largest |engine - learner| logprob on the probe batch after a sync (bf16 vLLM: ~0.05)
    probe_tolerance: float = 1e-4
    #: hf (transformers; CPU or GPU) or vllm (GPU: pip install '.[vllm]'; CPU: docs/vllm.md)
    engine: EngineName = "hf"
    #: weight dtype of the vLLM engine; auto: float32 on the CPU, bfloat16 on a GPU
    vllm_dtype: VLLMDtype = "auto"
    #: vLLM's share of the GPU (weights + KV cache); the learner needs the rest
    vllm_gpu_memory_utilization: float = 0.3
    #: vLLM's KV cache per engine; 0: sized from vllm_gpu_memory_utilization on a GPU, 256 MB on the CPU
    vllm_kv_cache_mb: float = 0.0
    #: free vLLM's GPU memory during each update (synchronous mode only)
    vllm_sleep_mode: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.max_staleness < 0:
            raise ValueError(f"workers.max_staleness={self.max_staleness}: a number of updates, 0 or more")
        if self.vllm_sleep_mode and self.max_staleness:
            raise ValueError("workers.vllm_sleep_mode needs synchronous training (workers.max_staleness=0)")
        if self.partial_rollouts and not self.ray:
            raise ValueError(
                "workers.partial_rollouts needs workers.ray=true: the in-process worker runs rollouts on the "
                "training thread, between updates, so no generation is in flight at a sync"
            )
        if self.weight_transport == "broadcast" and not self.ray:
            raise ValueError(
                "workers.weight_transport=broadcast needs workers.ray=true: the in-process worker shares the "
                "learner's process and takes its weights directly"
            )
        if self.partial_rollouts and not self.max_staleness:
            raise ValueError("workers.partial_rollouts needs workers.max_staleness > 0 (0 is synchronous)")
        if self.vllm_sleep_mode and self.engine != "vllm":
            raise ValueError(
                f"workers.vllm_sleep_mode is vLLM's: it needs workers.engine=vllm (the engine is {self.engine!r})"
            )


@dataclass
class StageConfig(Options):
    #: the stage's name in the logs (stage_1, stage_2, ... when empty)
    name: str = ""
    #: training steps of this stage
    steps: int = 0
    #: key=value overrides of algo.* and reward for this stage, on top of the config's own
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self):
        super().__post_init__()
        if self.steps < 1:
            raise ValueError(f"stages: steps={self.steps}: each stage runs 1 step or more")
        for item in self.overrides:
            key = item.split("=", 1)[0].strip()
            if "=" not in item or not (key.startswith("algo.") or key in ("algo", "reward")):
                raise ValueError(
                    f"stages: overrides {item!r}: a stage changes only algo.* and reward (key=value); the rest of"
                    " the run (model, learner, workers, env) is the same in every stage"
                )


@dataclass
class Config:
    #: modules imported before the rest is checked: your estimators, losses, rewards (e.g. mypkg.losses)
    imports: list[str] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    #: supervised warm start before RL (off unless sft.steps > 0)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    #: weighted sum of named rewards
    reward: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("outcome")])
    #: stages run one after the other, each its steps with its own algo/reward (SCoRe's stage I, then II);
    #: steps is then their sum
    stages: list[StageConfig] = field(default_factory=list)
    #: fixes model init, task order and sampling
    seed: int = 0
    #: training steps (one rollout batch and its update each)
    steps: int = 100
    #: where config, metrics, episodes and checkpoints go
    run_dir: str = "runs/default"
    #: checkpoint every N steps (and at the end); 0 = only at the end
    save_every: int = 50
    #: greedy evaluation on the env's eval tasks every N steps (0 = only at the end)
    eval_every: int = 0
    #: write every episode of every step to run_dir/episodes/
    log_episodes: bool = True
    #: a run directory to continue from its latest checkpoint, or RUN_DIR@STEP from an earlier one
    resume: str = ""
    #: start over in a run_dir that holds a run (removes that run whole); without it such a run_dir is refused
    overwrite: bool = False
    #: torch threads of the trainer's process (its learner, and its engine without Ray); 0: see trainer_threads
    threads: int = 0
    #: debug: the libraries' own logs too (vLLM, Ray, transformers); info keeps them to warnings
    log_level: Literal["info", "debug"] = "info"

    def __post_init__(self):
        if self.workers.partial_rollouts and self.rollout.schedule != "overlap":
            raise ValueError(
                f"workers.partial_rollouts needs rollout.schedule=overlap (it is {self.rollout.schedule!r}): a sync's"
                " timing already decides which tokens each version samples, and the reproducible and lockstep"
                " schedules would hold every generation of a worker while any of its env calls runs"
            )
        if self.workers.partial_rollouts and self.algo.dynamic_sampling:
            raise ValueError(
                "algo.dynamic_sampling needs workers.partial_rollouts=false: its refill rounds sample whole steps"
            )


def trainer_threads(cfg: Config) -> int:
    """`threads`, or its default: 1 for a tiny model, else the cores that Ray workers leave (each of them runs
    `workers.cpus_per_worker` threads). A tiny model's matrices are too small for threads to pay much: on 2 cores a
    second thread gains a fifth idle, and beside busy processes its threads spin waiting for each other and the
    run is several times slower (benchmarks/threads.py)."""
    if cfg.threads:
        return cfg.threads
    if not cfg.model.path:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    beside = cfg.workers.num_workers * cfg.workers.cpus_per_worker if cfg.workers.ray else 0
    return max(1, int(cores - beside))


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())  # YAML errors point at the column over several lines


def _suggest(key: str, options) -> str:
    return did_you_mean(key, options, cutoff=0.5)  # "" for a key that is not text (YAML keys can be numbers or null)


def _build(cls, data: Any, where: str):
    """Build dataclass `cls` from a dict, checking every key and the type of every value."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ValueError(f"unknown config key {path!r}{_suggest(key, names)}")
        kwargs[key] = _convert(hints[key], value, path)
    return cls(**kwargs)


def _convert(hint, value, path: str):
    origin = typing.get_origin(hint)
    if origin is Literal:
        check_choice(value, choices(hint, path.rsplit(".", 1)[-1]), path.rsplit(".", 1)[-1], path)
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is float and not isinstance(value, bool):
        try:  # PyYAML reads "1e-5" (no dot) as a string; accept it as the number it means
            return float(value)
        except (TypeError, ValueError):
            pass
    wrong_type = hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    )
    if wrong_type:
        raise ValueError(f"{path}: expected {hint.__name__}, got {value!r}")
    return value


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = tree.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {k!r} is not a section")
        tree = node
    tree[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    data: dict = {}
    if path:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a YAML file ({one_line(e)})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config must be a mapping at the top level")
    _override(data, overrides)
    import_user_modules(data.get("imports") or [])
    cfg = _build(Config, data, "")
    for i, spec in enumerate(cfg.reward):
        check_reward_spec(spec, f"reward[{i}]")
    check_stages(cfg)
    check_env_name(cfg.env.name)
    cfg.env.resolve()  # every key and value of the env's params, now
    if cfg.sft.steps and cfg.sft.data != "demos" and not Path(cfg.sft.data).is_file():
        raise ValueError(
            f'sft.data: no file {cfg.sft.data!r} (a JSONL of trajectories, or "demos" for the env\'s demonstrations)'
        )
    return cfg


def _override(data: dict, overrides) -> None:
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not YAML ({one_line(e)})") from None
        _set(data, key.strip(), value)


def stage_config(cfg: Config, k: int) -> Config:
    """The config stage k runs with: `cfg` with the stage's overrides on top."""
    data = to_dict(cfg)
    data["stages"] = []
    try:
        _override(data, cfg.stages[k].overrides)
        return _build(Config, data, "")
    except ValueError as e:
        raise ValueError(f"stages[{k}]: {e}") from None


def stage_at(cfg: Config, step: int) -> int:
    """The stage that runs training step `step` (counted from 1); 0 without stages."""
    end = 0
    for k, stage in enumerate(cfg.stages):
        end += stage.steps
        if step <= end:
            return k
    return max(len(cfg.stages) - 1, 0)


def check_stages(cfg: Config) -> None:
    """Every stage's config is valid, the steps add up, and the learner's structure is the same in all."""
    if not cfg.stages:
        return
    total = sum(stage.steps for stage in cfg.stages)
    if cfg.steps != total:
        raise ValueError(f"steps={cfg.steps}: with stages, steps is the sum of the stages' steps ({total})")
    first = stage_config(cfg, 0).algo
    for k in range(len(cfg.stages)):
        stage = stage_config(cfg, k)
        for i, spec in enumerate(stage.reward):
            check_reward_spec(spec, f"stages[{k}].reward[{i}]")
        # what the learner loads at its start (a KL reference, a critic) serves every stage
        for name in ("advantage", "judge_advantage", "critic"):
            if getattr(stage.algo, name) != getattr(first, name):
                raise ValueError(f"stages[{k}]: algo.{name} is the learner's structure: the same in every stage")
        if (stage.algo.kl_coef > 0) != (first.kl_coef > 0):
            raise ValueError(
                f"stages[{k}]: algo.kl_coef > 0 in some stages and not others: the KL reference is loaded for the"
                " whole run (use a small kl_coef where a stage wants little KL)"
            )


def import_user_modules(modules) -> None:
    """Import the config's `imports`, so what they register is known when the rest of the config is checked."""
    if not isinstance(modules, list):
        raise ValueError(f"imports: expected a list of module names, got {modules!r}")
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"imports: cannot import {name!r} ({one_line(e)})") from None


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def build_params(cls, params: dict, where: str):
    """Build an env's params dataclass from the config's free-form dict, with the same key checks."""
    return _build(cls, params, where)


def describe(cfg: Config) -> str:
    """The resolved config as YAML, each option with its one-line doc (`python -m rl config CONFIG`)."""
    lines: list[str] = []
    _describe(cfg, "", lines)
    return "\n".join(lines)


def _describe(section: Any, pad: str, lines: list[str]) -> None:
    docs = field_docs(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        doc = f"  # {docs[f.name]}" if docs.get(f.name) else ""
        if isinstance(section, EnvConfig) and f.name == "params":  # the env's own params, resolved, with their docs
            value = section.resolve()[1]
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:{doc}")
            _describe(value, pad + "  ", lines)
            continue
        plain = (
            [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
            if isinstance(value, list)
            else value
        )
        text = yaml.safe_dump(plain, default_flow_style=True, width=1 << 20).strip().removesuffix("...").strip()
        lines.append(f"{pad}{f.name}: {text}{doc}")


def field_docs(cls: type) -> dict[str, str]:
    """The `#:` comment above each field of a dataclass (one line or several), as written in its source."""
    docs, pending = {}, []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"\s+(\w+): ", line)
        if match and pending:
            docs[match.group(1)] = " ".join(pending)
        pending = []
    return docs
